"""``monitor run``: discover -> metadata -> front end -> model -> store -> reports.

The input folder is only ever read. Each file's results are committed to the store in one
transaction; CSVs, the workbook and ``run.json`` are always regenerated from the store (through one
``results.Results``), so an interrupted run loses at most the files in flight and a re-run resumes
where it stopped. One output folder holds many cards (rows are keyed by deployment and file);
reviewers' verdicts typed into ``report.xlsx`` are read back into the store before any workbook is
replaced, and nothing is deleted without ``--prune``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from monitor import __version__
from monitor.errors import MonitorError
from monitor.results import ModelRef, RunInfo

log = logging.getLogger(__name__)

FAILED_SHOWN = 5  # failed files named in the final summary (the rest are counted)


class Interrupted(MonitorError):
    """Ctrl-C: finished work is saved; the message says how to resume."""


def check_folders(input_dir: Path | str, out_dir: Path) -> tuple[Path | str, Path]:
    """Resolve and validate; output inside the input folder is refused (the card is read-only to us), and an
    output folder that cannot be written fails here, in one line, before any work. ``input_dir`` may be an
    fsspec URL (a str with ``://``: ``monitor.remote``); it is returned as a URL."""
    from monitor.remote import check_input_url, is_url

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


def check_writable(dst: Path) -> None:
    """Create ``dst`` if needed and prove a file can be written there; else one-line ``MonitorError``."""
    try:
        dst.mkdir(parents=True, exist_ok=True)
        probe = dst / f".monitor-write-test.{os.getpid()}"
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        raise MonitorError(f"cannot write to the output folder {dst} ({_os_reason(exc)}); choose another --out"
                           ) from None


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the disk"
    if exc.errno == errno.EFBIG:
        return "file too large for the disk or its limits"
    return exc.strerror or str(exc)


def load_models(names: Sequence[str] | None):
    """Bundles for an ensemble (same labels and preprocessing); default: the bundled demo model."""
    from monitor.model.bundle import DEFAULT_MODEL, load_bundle

    bundles = [load_bundle(n) for n in (names or [DEFAULT_MODEL])]
    first = bundles[0]
    for b in bundles[1:]:
        if list(b.labels) != list(first.labels) or b.task != first.task:
            raise MonitorError(f"ensemble models must share labels and task: {first.name} {first.labels} vs {b.name} {b.labels}")
        if b.preprocessing != first.preprocessing:
            raise MonitorError(f"ensemble models must share preprocessing: {first.name} and {b.name} differ")
    return bundles


def ensemble_hash(bundles) -> str:
    import hashlib

    if len(bundles) == 1:
        return bundles[0].sha256
    return hashlib.sha256("+".join(b.sha256 for b in bundles).encode()).hexdigest()


def _too_short_reason(duration_s: float, min_segment_s: float) -> str:
    return f"too short to analyse ({duration_s:.2f} s; the minimum is {min_segment_s:g} s)"


def _say(msg: str) -> None:
    """A line for the person running the job (stderr, beside the progress bar) and the log file."""
    log.info("%s", msg)
    print(f"monitor: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def open_out(out_dir: Path, *, harvest: bool = True, create: bool = False) -> Iterator[Any]:
    """Lock ``out_dir`` and open its store; with ``harvest``, verdicts typed into its workbook(s) since
    the last build are read into the store first."""
    from monitor.store import STORE_NAME, DirLock, ResultsStore

    out_dir = Path(out_dir)
    if not create and not (out_dir / STORE_NAME).is_file():
        raise MonitorError(f"no results store in {out_dir}; run `monitor run INPUT --out {out_dir}` first")
    with DirLock(out_dir):
        store = ResultsStore(out_dir / STORE_NAME)
        try:
            if harvest:
                sync_reviews(store, out_dir)
            yield store
        finally:
            store.close()


def run(
    input_dir: Path,
    out_dir: Path,
    *,
    models: Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int | str = "auto",
    workers: int | None = None,
    thresholds: Mapping[str, float] | None = None,
    resume: bool = True,
    precision: str = "auto",
    command: str | None = None,
    progress: bool | None = None,
    deployment: str | None = None,
    prune: bool = False,
    deployments: Path | str | None = None,
    labels: Sequence[str] | None = None,
    compile: bool = False,
    engine: str = "local",
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
) -> RunInfo:
    """Run detection over ``input_dir`` into ``out_dir``; returns the ``RunInfo`` written to ``run.json``.

    ``deployment`` names this card's deployment (default: each file's device ID, else its top folder);
    ``deployments`` is a deployments table (CSV: which files belong where, time zones, places; kept in the
    store for later runs and rebuilds until a new one is given); ``labels`` keeps only those labels in
    every output (kept likewise; ``["all"]`` clears it); ``resume=False`` re-scores this card's files
    (other cards' results and all reviews are kept); ``prune`` removes the results of files no longer on
    the card and lets changed files be replaced. ``compile``: torch.compile the model (GPU; measured
    before it is made a default). ``engine``: ``local`` (this machine) or ``ray`` (``monitor.ray_engine``:
    ``address`` None starts Ray here, ``auto``/``HOST:PORT`` joins a cluster; ``actors``, ``gpus_per_actor``).
    """
    from monitor.deployments import read_deployments
    from monitor.detect import resolve_thresholds

    if engine not in ENGINES:
        raise MonitorError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "local" and (address is not None or actors is not None or gpus_per_actor is not None):
        raise MonitorError("--address, --actors and --gpus-per-actor need --engine ray")
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise MonitorError(f"--batch-size must be a whole number >= 1 or auto, got {batch_size!r}")
    src, dst = check_folders(input_dir, out_dir)
    bundles = load_models(models)
    names = list(bundles[0].labels)
    resolve_thresholds(names, bundles[0].thresholds, thresholds)  # a bad --threshold fails before any work
    keep = label_filter(names, labels)
    table = read_deployments(deployments) if deployments else None
    started = datetime.now(timezone.utc).astimezone()
    with open_out(dst, create=True) as store:
        model_hash = ensemble_hash(bundles)
        store.bind_model(model_hash, names, " + ".join(f"{b.name} {b.version}" for b in bundles))
        store.set_meta("bundle_thresholds", dict(bundles[0].thresholds))
        remember_choices(store, table, keep)
        thr = current_thresholds(store, RunInfo(labels=names), thresholds)
        info = _run_info(src, dst, bundles, thr, command, started)
        run_id = store.begin_run(str(src), info.to_json())
        with _StopOnSigint() as stop:  # Ctrl-C during the reports still lets them finish
            stats, interrupted = _process(src, store, bundles, model_hash, device, batch_size, workers, precision,
                                          progress, stop.state, deployment, prune, resume,
                                          stored_deployments(store), compile,
                                          dict(engine=engine, address=address, actors=actors,
                                               gpus_per_actor=gpus_per_actor))
            interrupted = interrupted or stop.state["flag"]
            info = dataclasses.replace(
                info, ended=_now(), completed=not interrupted, files_done=stats["done"] + stats["resumed"],
                files_left=stats["todo"] - stats["done"], resumed_files=stats["resumed"],
                deployments=stats["deployments"], wall_s=round(stats.get("wall_s", 0.0), 3),
                audio_s=round(stats["audio_s"], 3), **{k: stats[k] for k in ("engine", "device", "precision",
                                                                               "workers", "batch_size")})
            info = write_outputs(dst, store, thr, info)
            store.end_run(run_id, not interrupted, info.to_json())
    if interrupted:
        raise Interrupted(
            f"interrupted: {info.files_done} of {info.files_done + info.files_left} files finished and saved; "
            "run the same command again to resume"
        )
    return info


def label_filter(names: Sequence[str], labels: Sequence[str] | None) -> list[str] | None:
    """``--labels``: the model's own names of the labels to keep (case-insensitive, typos fail naming the
    closest labels); ``None`` keeps the stored choice, ``["all"]`` keeps every label."""
    from monitor.detect import match_label

    if labels is None:
        return None
    wanted = [x.strip() for item in labels for x in str(item).split(",") if x.strip()]
    if not wanted:
        raise MonitorError("--labels needs at least one label name (or 'all')")
    if [w.casefold() for w in wanted] == ["all"]:
        return list(names)
    out = []
    for w in wanted:
        lab = match_label(w, names, "--labels")
        if lab not in out:
            out.append(lab)
    return out


def remember_choices(store, table, keep: list[str] | None) -> None:
    """A new deployments table or label choice replaces the stored one (kept for later runs and rebuilds)."""
    if table is not None:
        store.set_meta("deployments", table.to_json())
    if keep is not None:
        names = store.get_meta("labels") or []
        store.set_meta("label_filter", None if keep == list(names) else keep)


def stored_deployments(store):
    from monitor.deployments import DeploymentTable

    return DeploymentTable.from_json(store.get_meta("deployments"))


def _named(labels: Sequence[str], overrides: Mapping[str, float]) -> dict[str, float]:
    """``--threshold`` values keyed by the model's own label names (``all`` kept as it is)."""
    from monitor.detect import match_label

    return {k if k == "all" else match_label(k, labels): float(v) for k, v in overrides.items()}


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _process(src: Path, store, bundles, model_hash: str, device: str, batch_size: int | str, workers: int | None,
             precision: str, progress: bool | None, stop: dict[str, bool], deployment: str | None, prune: bool,
             resume: bool, table=None, compile: bool = False,
             engine_opts: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
    """Discover, skip finished files, decode/score the rest; commit each file as it completes."""
    # the engine starts now: its worker processes' imports overlap discovery, metadata and model loading
    with make_engine(bundles, device=device, precision=precision, batch_size=batch_size, workers=workers,
                     compile=compile, **(engine_opts or {})) as engine:
        plan = plan_work(src, store, bundles, model_hash, stop, deployment, prune, resume, table)
        return score_planned(engine, plan, store, bundles, progress, stop)


ENGINES = ("local", "ray")


def make_engine(bundles, *, device: str, precision: str, batch_size: int | str, workers: int | None,
                compile: bool, engine: str = "local", address: str | None = None, actors: int | None = None,
                gpus_per_actor: float | None = None):
    """The engine ``monitor run`` scores through: ``infer.LocalEngine`` or ``ray_engine.RayEngine``."""
    if engine == "ray":
        from monitor.ray_engine import RayEngine

        if compile:
            raise MonitorError("--compile is not supported with --engine ray yet")
        if workers is not None:
            raise MonitorError("--workers applies to --engine local; Ray schedules decode tasks itself")
        return RayEngine(bundles, address=address, actors=actors, gpus_per_actor=gpus_per_actor, device=device,
                         precision=precision, batch_size=batch_size)
    from monitor.infer import LocalEngine

    return LocalEngine(bundles, device=device, precision=precision, batch_size=batch_size, workers=workers,
                       compile=compile)


@dataclasses.dataclass
class WorkPlan:
    """What a run has to do: the jobs to score, with their metadata, and what was found."""

    jobs: list
    metas: dict[str, dict[str, Any]]
    found: int
    resumed: int
    todo: int
    segments: int
    audio_s: float
    deployments: list[str]
    input_dir: str


def plan_work(src: Path, store, bundles, model_hash: str, stop: Mapping[str, bool], deployment: str | None,
              prune: bool, resume: bool, table=None) -> WorkPlan:
    """Discovery, metadata, deployments, resume decisions, missing and changed files: everything before scoring."""
    from monitor.audio import AudioError, plan_segments, probe
    from monitor.deployments import default_deployment
    from monitor.detect import parse_iso
    from monitor.discover import discover, fingerprint
    from monitor.infer import FileJob
    from monitor.metadata import read_metadata
    from monitor.store import FileKey

    pre = bundles[0].preprocessing
    from monitor.remote import is_url, url_name

    card = url_name(str(src)) if is_url(src) else Path(src).name
    found = discover(src)
    entries = []  # (found, key, meta or None)
    table = table or None
    for f in found.recordings:
        meta = None if deployment and not table else read_metadata(f.path, f.rel).to_row()
        row = table.match(f.rel, meta.get("device_id"), card, parse_iso(meta.get("start_time"))) if table else None
        dep = row.deployment if row else default_deployment(f.rel, (meta or {}).get("device_id"), card, deployment)
        entries.append((f, FileKey(dep, f.rel, f.size, f.mtime_ns, model_hash), meta))
    skipped = []
    for s in found.skipped:
        row = table.match(s.rel, None, card, None) if table else None
        dep = row.deployment if row else default_deployment(s.rel, None, card, deployment)
        skipped.append((s, FileKey(dep, s.rel, 0, 0, model_hash)))
    deployments = sorted({k.deployment for _, k, _ in entries} | {k.deployment for _, k in skipped})
    if not resume:
        store.clear_files(deployments)
    todo, changed, resumed = [], [], 0
    for f, key, meta in entries:
        if store.is_done(key):
            store.restore(key)
            resumed += 1
            continue
        key = dataclasses.replace(key, fingerprint=fingerprint(f.path, f.size))
        if store.same_file(key):  # the same file with a new mtime (a copy of the card)
            store.restore(key)
            resumed += 1
            continue
        if store.changed(key):
            changed.append(key)
        todo.append((f, key, meta))
    if changed and not prune:
        k = changed[0]
        raise MonitorError(
            f"{len(changed)} file(s) of this card have the names of files already analysed in {store.path.parent} "
            f"but other contents (first: {k.deployment}/{k.file}); if this is another card, name it with "
            "--deployment NAME; to replace the earlier results, add --prune")
    present = {(k.deployment, k.file) for _, k, _ in entries} | {(k.deployment, k.file) for _, k in skipped}
    gone = store.mark_missing(deployments, present)
    if gone:
        _say(f"{len(gone)} file(s) analysed earlier are no longer on this card: marked missing, results kept "
             f"(first: {gone[0][0]}/{gone[0][1]}; --prune removes them)")
    if prune:
        n = store.prune(deployments)
        if n:
            _say(f"--prune: removed the results of {n} file(s) no longer on the card")
    for s, key in skipped:
        store.put_file(key, s.status, s.reason, {}, input_dir=str(src))
        log.info("skipped %s: %s", s.rel, s.reason)

    jobs, metas, total_segments, total_audio_s = [], {}, 0, 0.0
    for f, key, meta in todo:
        if stop["flag"]:
            break
        meta = meta if meta is not None else read_metadata(f.path, f.rel).to_row()
        try:
            info = probe(f.path)
        except AudioError as exc:
            store.put_file(key, "failed", str(exc), meta, input_dir=str(src))
            log.info("failed %s: %s", f.rel, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - any decoder surprise is this file's problem
            log.debug("probe %s", f.rel, exc_info=True)
            store.put_file(key, "failed", f"could not read audio: {exc}", meta, input_dir=str(src))
            log.info("failed %s: could not read audio: %s", f.rel, exc)
            continue
        meta.update(sample_rate_hz=info.sample_rate_hz, channels=info.channels, duration_s=round(info.duration_s, 6))
        plan = plan_segments(info.frames, info.sample_rate_hz, pre.segment)
        if not plan:
            reason = _too_short_reason(info.duration_s, pre.segment.min_segment_s)
            store.put_file(key, "skipped", reason, meta, input_dir=str(src))
            log.info("skipped %s: %s", f.rel, reason)
            continue
        jobs.append(FileJob(key, str(f.path), f.rel, info.frames, info.channels, info.sample_rate_hz))
        metas[f.rel] = meta
        total_segments += len(plan)
        total_audio_s += info.duration_s
    if resumed:
        _say(f"resuming: {resumed} of {len(entries)} files already done")
    return WorkPlan(jobs, metas, len(found.recordings) + len(found.skipped), resumed, len(jobs), total_segments,
                    total_audio_s, deployments, str(src))


def file_outcome(res, n_labels: int) -> tuple[str, str]:
    """(status, reason) of a scored file: decode errors and non-finite scores fail the file, in words."""
    if res.error:
        return "failed", res.error
    scores = np.asarray(res.scores, dtype=np.float32)
    if scores.shape != (len(res.index), n_labels):
        return "failed", f"the model gave {scores.shape} scores for {len(res.index)} segments of {n_labels} labels"
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        return "failed", (f"the model gave non-finite scores (NaN or infinity) for {int(bad.sum())} of {len(bad)} "
                          "segments; the model may be damaged (check it with `monitor models info`)")
    return "ok", f"{res.nonfinite} non-finite samples replaced with 0" if res.nonfinite else ""


def score_planned(engine, plan: WorkPlan, store, bundles, progress: bool | None,
                  stop: dict[str, bool]) -> tuple[dict[str, Any], bool]:
    """Score the planned jobs through ``engine``; each file is committed as soon as all its segments are in."""
    from tqdm.auto import tqdm

    pre = bundles[0].preprocessing
    n_labels = len(bundles[0].labels)
    stats = {"done": 0, "segments": 0, **engine.describe(), "audio_s": plan.audio_s, "found": plan.found,
             "resumed": plan.resumed, "todo": plan.todo, "deployments": plan.deployments}
    bar = tqdm(total=plan.segments, unit="seg", desc="segments", dynamic_ncols=True,
               disable=None if progress is None else not progress)  # None: only on a terminal
    t0 = time.perf_counter()
    audio_done = {"s": 0.0}
    metas = plan.metas

    def on_segments(n: int) -> None:
        bar.update(n)
        stats["segments"] += n
        audio_done["s"] += n * pre.segment.hop_s
        rt = audio_done["s"] / max(1e-9, time.perf_counter() - t0)
        bar.set_postfix_str(f"{rt:.0f}x realtime")
        if stop["flag"]:
            raise KeyboardInterrupt

    def on_file_done(job, res) -> None:
        meta = metas.pop(job.rel)
        status, reason = file_outcome(res, n_labels)
        src = plan.input_dir
        if status == "failed":
            store.put_file(job.key, "failed", reason, meta, input_dir=src)
            log.info("failed %s: %s", job.rel, reason)
        else:
            segs = list(zip(res.index, res.start_s, res.end_s, res.scores))
            store.put_file(job.key, "ok", reason, meta, segs, nonfinite=res.nonfinite, input_dir=src)
        stats["done"] += 1

    interrupted = bool(stop["flag"])
    try:
        if not interrupted:
            engine.run(plan.jobs, on_file_done, on_segments)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    stats["wall_s"] = time.perf_counter() - t0
    return stats, interrupted


class _StopOnSigint:
    """First Ctrl-C: finish the batch in hand, save, write reports, exit non-zero. Second: stop at once."""

    def __init__(self) -> None:
        self.state = {"flag": False}
        self._old = None

    def _handler(self, signum, frame) -> None:
        if self.state["flag"]:
            raise KeyboardInterrupt
        self.state["flag"] = True
        print("\nmonitor: stopping after the current batch; finished files are saved", file=sys.stderr)

    def __enter__(self) -> "_StopOnSigint":
        if _main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _run_info(src: Path, dst: Path, bundles, thr: Mapping[str, float], command: str | None,
              started: datetime) -> RunInfo:
    b = bundles[0]
    refs = [ModelRef(x.name, x.version, x.sha256, str(x.path or "")) for x in bundles]
    model = refs[0] if len(refs) == 1 else ModelRef(" + ".join(r.name for r in refs),
                                                     " + ".join(r.version for r in refs), ensemble_hash(bundles), "")
    return RunInfo(model=model, models=refs, labels=list(b.labels), task=b.task, thresholds=dict(thr),
                   preprocessing=b.preprocessing.to_dict(), package_version=__version__, command=command or "",
                   input_dir=str(src), out_dir=str(dst), started=started.isoformat(timespec="seconds"),
                   completed=False)


def write_outputs(dst: Path, store, thresholds: Mapping[str, float], info: RunInfo) -> RunInfo:
    """Regenerate every report from the store (one ``Results``), then ``run.json`` (atomically).

    Verdicts typed into the workbook since it was built are read into the store first; an output
    folder that fills up or turns read-only fails in one line, the store intact.
    """
    import uuid

    from monitor.report import write_reports
    from monitor.results import load_results

    sync_reviews(store, dst)
    build = uuid.uuid4().hex[:12]
    info = dataclasses.replace(info, report_build=build)
    results = load_results(store, thresholds, info)
    rec = results.recordings
    status = rec["status"].value_counts().to_dict() if len(rec) else {}
    counts = {"found": int(len(rec)), **{s: int(status.get(s, 0)) for s in ("ok", "skipped", "failed", "missing")},
              "segments": int(len(results.segments)), "detections": int(len(results.detections)),
              "detections_per_label": results.detections_per_label(), "reviews": int(len(results.reviews)),
              "failed_files": results.failed[:FAILED_SHOWN]}
    info = dataclasses.replace(results.run, counts=counts)
    results.run = info
    try:
        written = write_reports(dst, results, workbook=_workbook_target(store, dst, build))
        _remember_workbook(store, dst, written, build)
        write_json_atomic(dst / "run.json", info.to_json())
    except OSError as exc:
        raise MonitorError(f"could not write the reports in {dst} ({_os_reason(exc)}); the results store is "
                           "intact: free space or fix the folder, then run `monitor report` on it") from None
    store.set_meta("run_info", info.to_json())
    return info


# --- the reviewer's workbook: read back before it is replaced ----------------------------------------------

def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sync_reviews(store, out_dir: Path) -> int:
    """Read verdicts typed into ``report.xlsx`` (and into side copies written while it was open) into the
    store. Workbooks untouched since monitor wrote them are skipped. In a workbook of the latest build a
    cleared cell clears that verdict; in an older one only filled cells count. Returns verdicts changed."""
    from monitor.report.review_io import WorkbookUnreadable, read_workbook_reviews

    state = store.get_meta("workbooks") or {}
    names = sorted({"report.xlsx", *state}, key=lambda n: _mtime(out_dir / n))
    known = {}
    changed = 0
    for name in names:
        path = out_dir / name
        if not path.is_file():
            continue
        sha = _sha256(path)
        seen = state.get(name, {})
        if sha in (seen.get("sha256"), seen.get("harvested_sha256")):
            continue  # as monitor wrote it, or already read in
        try:
            wb = read_workbook_reviews(path)
        except WorkbookUnreadable as exc:
            log.warning("%s could not be read (%s): its verdicts, if any, were not read", name, exc)
            continue
        if not known:
            known = _deployments_by_file(store)
        full = bool(wb.build) and wb.build == store.get_meta("report_build")
        rows = []
        for r in wb.reviews:
            if not r.deployment:
                deps = known.get(r.file, [])
                if len(deps) != 1:
                    continue  # a workbook from before deployments, and the file is ambiguous or gone
                r = dataclasses.replace(r, deployment=deps[0])
            if full or r.verified or r.notes:
                rows.append(r)
        n = store.put_reviews(rows, source=name)
        dates = []
        for d, f, lab, v in wb.dates:
            if not d:
                deps = known.get(f, [])
                if len(deps) != 1:
                    continue
                d = deps[0]
            if full or v:
                dates.append((d, f, lab, v))
        n += store.put_review_dates(dates, source=name)
        if n:
            log.info("read %d verdict(s) and review dates from %s into the results store", n, name)
        changed += n
        state[name] = {**seen, "harvested_sha256": sha}
        store.set_meta("workbooks", state)
    return changed


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _deployments_by_file(store) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in store.files():
        out.setdefault(f["file"], []).append(f["deployment"])
    return out


def _workbook_target(store, out_dir: Path, build: str) -> Path:
    """Where the new workbook goes: ``report.xlsx``, backed up first when someone changed it since it was
    built; beside it when it is open in Excel/LibreOffice or unreadable (it is then left as it is)."""
    import shutil

    from monitor.report.review_io import WorkbookUnreadable, lock_files, read_workbook_reviews

    main = out_dir / "report.xlsx"
    if not main.is_file():
        return main
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    locks = lock_files(main)
    reason = ""
    if locks:
        reason = f"it is open in a spreadsheet program ({locks[0].name})"
    else:
        try:
            read_workbook_reviews(main)
        except WorkbookUnreadable as exc:
            reason = f"it could not be read ({exc})"
    if reason:
        side = out_dir / f"report-{stamp}.xlsx"
        log.warning("report.xlsx was not replaced because %s; the new report is %s", reason, side.name)
        return side
    state = (store.get_meta("workbooks") or {}).get("report.xlsx", {})
    if state.get("sha256") != _sha256(main):
        backups = out_dir / "backups"
        backups.mkdir(exist_ok=True)
        dest = backups / f"report-{stamp}.xlsx"
        shutil.copy2(main, dest)
        log.info("the previous report.xlsx was kept as %s", dest.relative_to(out_dir))
    return main


def _remember_workbook(store, out_dir: Path, written: Mapping[str, Path], build: str) -> None:
    state = store.get_meta("workbooks") or {}
    path = written.get("report.xlsx")
    if path is not None:
        state[path.name] = {"build": build, "sha256": _sha256(path)}  # as written: nothing to read back yet
        store.set_meta("workbooks", state)
        store.set_meta("report_build", build)


def write_json_atomic(path: Path, data: Any) -> None:
    from monitor.report.safe import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def current_thresholds(store, info: RunInfo, new: Mapping[str, float] | None = None) -> dict[str, float]:
    """The bundle's thresholds, then those set with ``--threshold`` in earlier runs or rebuilds (kept in the
    store until new ones are given), then ``new`` (which are stored in turn)."""
    from monitor.detect import resolve_thresholds

    labels = list(store.get_meta("labels") or info.labels)
    base = store.get_meta("bundle_thresholds") or info.thresholds
    thr = resolve_thresholds(labels, base, store.user_thresholds(), new)
    if new:
        store.set_user_thresholds({**store.user_thresholds(), **_named(labels, new)})
    return thr


def rebuild_reports(out_dir: Path, thresholds: Mapping[str, float] | None = None,
                    deployments: Path | str | None = None, labels: Sequence[str] | None = None) -> RunInfo:
    """``monitor report OUT_DIR``: rebuild all reports from the store; new thresholds, a new deployments table
    (time zones, places; deployment names stay as assigned when the files were analysed) and a new label
    choice are kept for later runs."""
    from monitor.deployments import read_deployments
    from monitor.store import STORE_NAME

    out_dir = Path(out_dir)
    if not (out_dir / STORE_NAME).is_file():
        raise MonitorError(f"no results store in {out_dir}; run `monitor run INPUT --out {out_dir}` first")
    check_writable(out_dir)
    table = read_deployments(deployments) if deployments else None
    with open_out(out_dir) as store:
        info = RunInfo.from_json(store.get_meta("run_info"))
        remember_choices(store, table, label_filter(store.get_meta("labels") or info.labels, labels))
        info = write_outputs(out_dir, store, current_thresholds(store, info, thresholds), info)
    return info


def record_reviews(out_dir: Path, verdicts: Mapping[int, str], notes: Mapping[int, str] | None = None,
                   source: str = "notebook") -> int:
    """Verdicts for rows of ``detections.csv`` (0-based) into the results store, then every report rebuilt.

    ``verdicts``: row -> yes / no / unsure (or '' to clear); ``notes``: row -> text. Returns verdicts written.
    """
    import pandas as pd

    from monitor.results import VERIFIED_CHOICES
    from monitor.store import Review

    out_dir = Path(out_dir)
    notes = dict(notes or {})
    bad = [v for v in verdicts.values() if v not in (*VERIFIED_CHOICES, "")]
    if bad:
        raise MonitorError(f"Verified must be one of {', '.join(VERIFIED_CHOICES)}, got {bad[0]!r}")
    with open_out(out_dir) as store:
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
        write_outputs(out_dir, store, current_thresholds(store, info), info)
    return n
