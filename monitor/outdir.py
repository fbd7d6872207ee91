"""The output folder's one owner: checks, the lock, the results store, the reviewer's workbooks and the
reports. Nothing else writes into ``OUT``.

One output folder holds many cards. Everything is regenerated from the store (one ``results.Results``):
CSVs, the workbook, Raven tables, plots, ``run.json``. Verdicts typed into ``report.xlsx`` (and into side
copies written while it was open) are read into the store before any workbook is replaced; a workbook
someone changed is backed up first; an open or unreadable one is left alone and the new one written
beside it. Thresholds, the deployments table and the label choice given once are kept in the store for
later runs and rebuilds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from monitor.deployments import DeploymentTable, read_deployments
from monitor.detect import label_filter, match_label, resolve_thresholds
from monitor.errors import MonitorError
from monitor.fileio import atomic_write_text, sha256_file
from monitor.logs import add_log_file, listing, log_file_handler, plural, remove_handler, say, warn
from monitor.remote import check_input_url, is_url
from monitor.report import write_reports
from monitor.report.review_io import WorkbookUnreadable, lock_files, read_workbook_reviews
from monitor.results import VERIFIED_CHOICES, Results, RunInfo, load_results, reviews_frame
from monitor.store import STORE_NAME, DirLock, ResultsStore, Review, when
from monitor.verdicts import normalize_verdict, unknown_text, unknown_words

log = logging.getLogger(__name__)

WORKBOOK = "report.xlsx"
LOG_NAME = "monitor.log"
FAILED_SHOWN = 5  # failed files named in the final summary (the rest are counted)


# --- the folders ------------------------------------------------------------------------------------------

def check_folders(input_dir: Path | str, out_dir: Path | str) -> tuple[Path | str, Path]:
    """Resolve and validate; output inside the input folder is refused (the card is read-only to us), and an
    output folder that cannot be written fails here, in one line, before any work. ``input_dir`` may be an
    fsspec URL (a str with ``://``: ``monitor.remote``); it is returned as a URL."""
    if is_url(input_dir):
        url = check_input_url(str(input_dir))
        if url.startswith("file://"):  # a local folder all the same: the same rule about --out
            check_folders(Path(url[len("file://"):]), out_dir)
        dst = Path(out_dir).expanduser().resolve()
        check_writable(dst)
        return url, dst
    input_dir, out_dir = Path(input_dir).expanduser(), Path(out_dir).expanduser()
    if not input_dir.is_dir():
        raise MonitorError(f"input folder not found: {input_dir}")
    src, dst = input_dir.resolve(), out_dir.resolve()
    if dst == src or dst.is_relative_to(src):
        raise MonitorError(
            f"--out {out_dir} is inside the input folder {input_dir}; monitor never writes to the card: "
            "choose an output folder elsewhere"
        )
    check_writable(dst)
    return src, dst


def check_writable(dst: Path, create: bool = False) -> None:
    """Prove a file can be written in ``dst`` (``create``: make it first; else a folder that does not exist
    yet is checked through its nearest existing parent, and nothing is created); else one-line ``MonitorError``."""
    if not create and not dst.exists():
        parent = next((p for p in dst.parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            why = "read-only file system" if parent is not None and os.statvfs(parent).f_flag & os.ST_RDONLY else \
                f"{parent or dst} is not writable"
            raise MonitorError(f"cannot create the output folder {dst} ({why}); choose another --out")
        return
    try:
        dst.mkdir(parents=True, exist_ok=True)
        probe = dst / f".monitor-write-test.{os.getpid()}"
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        raise MonitorError(f"cannot write to the output folder {dst} ({os_reason(exc)}); choose another --out"
                           ) from None


def os_reason(exc: OSError) -> str:
    """An ``OSError`` in words (read-only, full disk, ...)."""
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the disk"
    if exc.errno == errno.EFBIG:
        return "file too large for the disk or its limits"
    return exc.strerror or str(exc)


@contextlib.contextmanager
def open_out(out_dir: Path, *, create: bool = False) -> Iterator[ResultsStore]:
    """Lock ``out_dir`` and open its results store, its ``monitor.log`` attached (``create``: the folder and a
    new store if there are none)."""
    out_dir = Path(out_dir)
    if not create and not (out_dir / STORE_NAME).is_file():
        raise MonitorError(f"no results store in {out_dir}; run `monitor run INPUT --out {out_dir}` first")
    if create:
        check_writable(out_dir, create=True)
    ours = log_file_handler(out_dir / LOG_NAME) is None  # the caller (the CLI) may hold it for its own messages
    handler = add_log_file(out_dir / LOG_NAME)
    if handler is None:
        raise MonitorError(f"cannot write {out_dir / LOG_NAME}; choose another --out")
    try:
        with DirLock(out_dir):
            store = ResultsStore(out_dir / STORE_NAME)
            try:
                yield store
            finally:
                store.close()
    finally:
        if ours:
            remove_handler(handler)


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


# --- what the folder remembers: thresholds, deployments table, label choice ------------------------------

def remember_choices(store: ResultsStore, table: DeploymentTable | None, keep: list[str] | None) -> None:
    """A new deployments table or label choice replaces the stored one (kept for later runs and rebuilds)."""
    if table is not None:
        store.set_meta("deployments", table.to_json())
    if keep is not None:
        names = store.get_meta("labels") or []
        store.set_meta("label_filter", None if keep == list(names) else keep)


def stored_deployments(store: ResultsStore) -> DeploymentTable:
    return DeploymentTable.from_json(store.get_meta("deployments"))


def current_thresholds(store: ResultsStore, info: RunInfo, new: Mapping[str, float] | None = None) -> dict[str, float]:
    """The bundle's thresholds, then those set with ``--threshold`` in earlier runs or rebuilds (kept in the
    store until new ones are given), then ``new`` (which are stored in turn)."""
    labels = list(store.get_meta("labels") or info.labels)
    base = store.get_meta("bundle_thresholds") or info.thresholds
    thr = resolve_thresholds(labels, base, store.user_thresholds(), new)
    if new:
        named = {k if k == "all" else match_label(k, labels): float(v) for k, v in new.items()}
        store.set_user_thresholds({**store.user_thresholds(), **named})
    return thr


# --- the reviewer's workbooks: read back before one is replaced -------------------------------------------

@dataclass
class Workbooks:
    """The workbooks found in ``OUT`` at one harvest: sha256 of each, and why one could not be read."""

    sha256: dict[str, str] = dataclasses.field(default_factory=dict)
    unreadable: dict[str, str] = dataclasses.field(default_factory=dict)
    changed: int = 0  # verdicts and review dates read into the store


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _deployments_by_file(store: ResultsStore) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in store.files():
        out.setdefault(f["file"], []).append(f["deployment"])
    return out


def _saved_at(path: Path) -> str:
    """When a workbook was last saved (its mtime), as the store's ISO time: the time of the decisions in it."""
    return datetime.fromtimestamp(_mtime(path), timezone.utc).isoformat(timespec="microseconds")


def harvest_reviews(store: ResultsStore, out_dir: Path) -> Workbooks:
    """Read verdicts typed into ``report.xlsx`` (and side copies written while it was open) into the store.

    Workbooks untouched since monitor last wrote or read them are skipped. Of the others only cells that
    changed since then count (a cleared cell clears), and each change is dated by the workbook's save
    time: it replaces the stored verdict only when it is newer, so an older workbook never undoes a newer
    decision; two workbooks that changed the same row: the later one wins, and a warning names both.
    Workbooks from before monitor remembered their contents: filled cells count (in the latest build, cleared
    ones too), as before.
    """
    state = store.get_meta("workbooks") or {}
    names = sorted({WORKBOOK, *state}, key=lambda n: _mtime(out_dir / n))  # oldest first: the newest edit wins
    found = Workbooks()
    known: dict[str, list[str]] | None = None
    moved = store.moved()
    changed_by: dict[tuple, str] = {}  # review key -> the workbook that changed it in this harvest
    for name in names:
        path = out_dir / name
        if not path.is_file():
            continue
        sha = found.sha256[name] = sha256_file(path)
        seen = state.get(name, {})
        if sha in (seen.get("sha256"), seen.get("harvested_sha256")):
            continue  # as monitor wrote it, or already read in
        try:
            wb = read_workbook_reviews(path)
        except WorkbookUnreadable as exc:
            found.unreadable[name] = str(exc)
            warn(f"{name} could not be read ({exc}): its verdicts, if any, were not read")
            continue
        if known is None:
            known = _deployments_by_file(store)
        reviews, dates = _resolve(wb.reviews, wb.dates, known, moved)
        at = _saved_at(path)
        if seen.get("contents"):  # monitor remembers what this workbook held: only changed cells count
            before, before_dates = store.workbook_reviews(name), store.workbook_dates(name)
            edits = [dataclasses.replace(r, updated_at=at) for r in reviews
                     if (r.verified, r.notes) != before.get(r.key, ("", ""))]
            date_edits = [x for x in dates if x[3] != before_dates.get(x[:3], "")]
            _say_unknown_words(name, edits)
            n = store.put_reviews(edits, source=name, newer_only=True)
            n += store.put_review_dates(date_edits, source=name, at=at, newer_only=True)
            _say_conflicts(store, name, edits, changed_by)
        else:  # written by an older monitor
            full = bool(wb.build) and wb.build == store.get_meta("report_build")
            _say_unknown_words(name, reviews)
            n = store.put_reviews([r for r in reviews if full or r.verified or r.notes], source=name)
            n += store.put_review_dates([x for x in dates if full or x[3]], source=name)
        n += sum(store.set_card_folder(card, folder, at) for card, folder in wb.folders.items()
                 if folder and folder != (seen.get("folders") or {}).get(str(card)))
        if n:
            log.info("read %d verdict(s), review dates and card folders from %s into the results store", n, name)
        found.changed += n
        store.set_workbook_contents(name, reviews, dates)
        state[name] = {**seen, "harvested_sha256": sha, "contents": True,
                       "folders": {str(k): v for k, v in wb.folders.items()}}
        store.set_meta("workbooks", state)
    return found


def _say_unknown_words(name: str, reviews: list[Review]) -> None:
    """Warn about Verified cells outside the verdict vocabulary (kept as typed, but no verdict)."""
    odd = unknown_words([r.verified for r in reviews],
                        [f"{r.deployment}/{r.file} {r.label} at {r.start_s:g} s" for r in reviews])
    if odd:
        warn(unknown_text(odd, name))


def _resolve(reviews: list[Review], dates: list[tuple[str, str, str, str]], known: Mapping[str, list[str]],
             moved: Mapping[tuple[str, str], str]) -> tuple[list[Review], list[tuple[str, str, str, str]]]:
    """Rows keyed as the store keys them now: a workbook from before deployments names none (the file's only
    deployment is taken; ambiguous or gone: left out), and a file moved to another deployment follows it."""
    def dep_of(d: str, f: str) -> str | None:
        if not d:
            deps = known.get(f, [])
            return deps[0] if len(deps) == 1 else None
        return moved.get((d, f), d)

    out = []
    for r in reviews:
        d = dep_of(r.deployment, r.file)
        if d is not None:
            out.append(dataclasses.replace(r, deployment=d))
    out_dates = [(d, f, lab, v) for d0, f, lab, v in dates if (d := dep_of(d0, f)) is not None]
    return out, out_dates


def _say_conflicts(store: ResultsStore, name: str, edits: list[Review], changed_by: dict[tuple, str]) -> None:
    """Warn where this workbook and another changed the same row differently; the later save (this one,
    unless the stored decision is newer) is kept."""
    for r in edits:
        other = changed_by.get(r.key)
        kept = store.review(r.key)
        if other is not None and other != name:
            what = f"{kept.verified or 'no verdict'}" if kept else "no verdict"
            warn(f"{other} and {name} both changed the verdict on {r.deployment}/{r.file} {r.label} at "
                 f"{r.start_s:g} s; the later edit is kept ({what})")
        changed_by[r.key] = name
    older = [r for r in edits if (k := store.review(r.key)) is not None and when(k.updated_at) > when(r.updated_at)
             and (k.verified, k.notes) != (r.verified, r.notes)]
    if older:
        warn(f"{name}: {plural(len(older), 'verdict')} older than the one kept in the results store "
             f"{'was' if len(older) == 1 else 'were'} not applied (first: {older[0].deployment}/{older[0].file} "
             f"{older[0].label} at {older[0].start_s:g} s)")


def _workbook_target(store: ResultsStore, out_dir: Path, found: Workbooks) -> Path:
    """Where the new workbook goes: ``report.xlsx``, backed up first when someone changed it since it was
    built; beside it when it is open in Excel/LibreOffice or unreadable (it is then left as it is)."""
    main = out_dir / WORKBOOK
    if not main.is_file():
        return main
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    locks = lock_files(main)
    reason = ""
    if locks:
        reason = f"it is open in a spreadsheet program ({locks[0].name})"
    elif WORKBOOK in found.unreadable:
        reason = f"it could not be read ({found.unreadable[WORKBOOK]})"
    if reason:
        side = out_dir / f"report-{stamp}.xlsx"
        warn(f"report.xlsx was not replaced because {reason}; the new report is {side.name}")
        return side
    state = (store.get_meta("workbooks") or {}).get(WORKBOOK, {})
    if state.get("sha256") != found.sha256.get(WORKBOOK):
        backups = out_dir / "backups"
        backups.mkdir(exist_ok=True)
        dest = backups / f"report-{stamp}.xlsx"
        shutil.copy2(main, dest)
        log.info("the previous report.xlsx was kept as %s", dest.relative_to(out_dir))
    return main


def _remember_workbook(store: ResultsStore, path: Path, build: str, results: Results) -> None:
    """What monitor wrote into a workbook (its hash, verdicts, review dates and card folders): later only what a
    reviewer changed is read back."""
    state = store.get_meta("workbooks") or {}
    state[path.name] = {"build": build, "sha256": sha256_file(path), "contents": True,
                        "folders": {str(c.id): c.link_base for c in results.cards}}
    store.set_workbook_contents(path.name, store.reviews(), [(*k, v) for k, v in store.review_dates().items()])
    store.set_meta("workbooks", state)
    store.set_meta("report_build", build)


def remember_side_workbook(store: ResultsStore, out_dir: Path, path: Path, reviews: Sequence[Review],
                           folders: Mapping[int, str]) -> str:
    """A workbook monitor wrote besides ``report.xlsx`` (``search/<name>.xlsx``): from now on every harvest
    reads the verdicts a reviewer changes in it into the store, as for the report. Returns its name there."""
    name = Path(path).resolve().relative_to(Path(out_dir).resolve()).as_posix()
    state = store.get_meta("workbooks") or {}
    state[name] = {"sha256": sha256_file(path), "contents": True, "folders": {str(k): v for k, v in folders.items()}}
    store.set_workbook_contents(name, reviews, [])
    store.set_meta("workbooks", state)
    return name


# --- the reports ------------------------------------------------------------------------------------------

def write_outputs(out_dir: Path, store: ResultsStore, thresholds: Mapping[str, float], info: RunInfo,
                  found: Workbooks | None = None, warnings: Sequence[str] = ()) -> RunInfo:
    """Regenerate every report from the store (one ``Results``), then ``run.json`` (atomically).

    Verdicts typed into the workbook since it was built are read into the store first (unless the caller
    just did: ``found``); an output folder that fills up or turns read-only fails in one line, the store
    intact. ``warnings``: the run's own, beside those the results give.
    """
    found = found if found is not None else harvest_reviews(store, out_dir)
    build = uuid.uuid4().hex[:12]
    results = load_results(store, thresholds, dataclasses.replace(info, report_build=build))
    counts = _counts(results)
    counts.update(detections_per_label=results.detections_per_label(), reviews=int(len(results.reviews)),
                  failed_files=results.failed[:FAILED_SHOWN], cards=len(results.cards),
                  deployments=int(results.recordings["deployment"].nunique()) if len(results.recordings) else 0)
    card = _counts(results, info.card) if info.card else {}
    info = dataclasses.replace(results.run, counts=counts, card_counts=card,
                               warnings=[*warnings, *results.run.warnings])
    results.run = info
    try:
        target = _workbook_target(store, out_dir, found)
        info = dataclasses.replace(info, workbook=target.name)
        results.run = info
        written = write_reports(out_dir, results, workbook=target)
        _remember_workbook(store, written[WORKBOOK], build, results)
        write_json_atomic(out_dir / "run.json", info.to_json())
    except OSError as exc:
        raise MonitorError(f"could not write the reports in {out_dir} ({os_reason(exc)}); the results store is "
                           "intact: free space or fix the folder, then run `monitor report` on it") from None
    store.set_meta("run_info", info.to_json())
    return info


def _counts(results: Results, card: int | None = None) -> dict[str, Any]:
    """Files by status, segments and detections: of the whole folder, or of one card."""
    rec, seg, det = results.recordings, results.segments, results.detections
    if card is not None:
        mine = (rec["card"] == card).fillna(False).to_numpy(bool)
        rec = rec[mine]
        keys = set(zip(rec["deployment"], rec["file"]))
        seg = seg[[k in keys for k in zip(seg["deployment"], seg["file"])]] if len(seg) else seg
        det = det[[k in keys for k in zip(det["deployment"], det["file"])]] if len(det) else det
    status = rec["status"].value_counts().to_dict() if len(rec) else {}
    return {"found": int(len(rec)), **{s: int(status.get(s, 0)) for s in ("ok", "skipped", "failed", "missing")},
            "segments": int(len(seg)), "detections": int(len(det))}


def is_out(path: Path) -> bool:
    """True when ``path`` is an output folder (it holds a results store)."""
    return (Path(path) / STORE_NAME).is_file()


def rebuild_reports(out_dir: Path, thresholds: Mapping[str, float] | None = None,
                    deployments: Path | str | None = None, labels: Sequence[str] | None = None,
                    restore_pruned: bool = False) -> RunInfo:
    """``monitor report OUT_DIR``: rebuild all reports from the store; new thresholds, a new deployments table
    (time zones, places; deployment names stay as assigned when the files were analysed) and a new label
    choice are kept for later runs. ``restore_pruned``: results ``--prune`` archived come back first."""
    out_dir = Path(out_dir)
    table = read_deployments(deployments) if deployments else None
    with open_out(out_dir) as store:
        if restore_pruned:
            back = store.restore_pruned()
            say(f"--restore-pruned: {plural(len(back), 'file')} back in the results "
                f"({listing([f'{d}/{f}' for d, f in back])})" if back else "--restore-pruned: nothing archived")
        check_writable(out_dir)
        info = dataclasses.replace(RunInfo.from_json(store.get_meta("run_info")), card=0, card_name="",
                                   card_counts={})
        remember_choices(store, table, label_filter(store.get_meta("labels") or info.labels, labels))
        return write_outputs(out_dir, store, current_thresholds(store, info, thresholds), info)


def record_reviews(out_dir: Path, verdicts: Mapping[int, str], notes: Mapping[int, str] | None = None,
                   source: str = "notebook") -> int:
    """Verdicts for rows of ``detections.csv`` (0-based) into the results store, then every report rebuilt.

    ``verdicts``: row -> yes / no / unsure (or '' to clear); ``notes``: row -> text. Returns verdicts written.
    """
    import pandas as pd

    out_dir = Path(out_dir)
    notes = dict(notes or {})
    verdicts = {k: normalize_verdict(v) for k, v in verdicts.items()}  # the one vocabulary: y, n, ? ...
    bad = [v for v in verdicts.values() if v not in (*VERIFIED_CHOICES, "")]
    if bad:
        raise MonitorError(f"Verified must be one of {', '.join(VERIFIED_CHOICES)}, got {bad[0]!r}")
    with open_out(out_dir) as store:
        found = harvest_reviews(store, out_dir)  # what a reviewer typed into the workbook comes first
        det = pd.read_csv(out_dir / "detections.csv", keep_default_na=False, dtype={"deployment": str, "file": str})
        rows = []
        for row in sorted(set(verdicts) | set(notes)):
            if not 0 <= int(row) < len(det):
                raise MonitorError(f"row {row} is not a detection (detections.csv has {len(det)} rows)")
            d = det.iloc[int(row)]
            old_v, old_n = str(d.get("verified", "")), str(d.get("notes", ""))
            rows.append(Review(str(d["deployment"]), str(d["file"]), str(d["label"]), float(d["start_s"]),
                               float(d["end_s"]), verdicts.get(row, old_v), notes.get(row, old_n)))
        n = store.put_reviews(rows, source=source)
        info = RunInfo.from_json(store.get_meta("run_info"))
        write_outputs(out_dir, store, current_thresholds(store, info), info, found)
    return n


def load_reviews(out_dir: Path | str):
    """Every reviewer verdict kept in ``OUT_DIR``'s results store (training from reviews reads them here).

    Columns: ``deployment, file`` (relative to the card), ``path`` (the audio file's absolute path at
    the last run), ``label, start_s, end_s, verified`` (yes / no / unsure / ''), ``notes``. Verdicts
    typed into ``report.xlsx`` since the last rebuild are read in first.
    """
    out_dir = Path(out_dir)
    with open_out(out_dir) as store:
        harvest_reviews(store, out_dir)
        df = reviews_frame(store.reviews())
        where = {(f["deployment"], f["file"]): f["input_dir"] for f in store.files()}
    df["path"] = [_join(where[(d, f)], f) if where.get((d, f)) else "" for d, f in zip(df["deployment"],
                                                                                           df["file"])]
    return df[["deployment", "file", "path", "label", "start_s", "end_s", "verified", "notes"]]


def _join(input_dir: str, rel: str) -> str:
    """A file's path from its input folder: a local path, or a URL (``s3://b/card`` + ``x.wav``)."""
    return f"{input_dir.rstrip('/')}/{rel}" if "://" in input_dir else str(Path(input_dir) / rel)
