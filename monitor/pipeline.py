"""``monitor run``: discover -> metadata -> front end -> model -> store -> reports.

The input folder is only ever read. Each file's results are committed to the store in one
transaction; CSVs, the workbook and ``run.json`` are always regenerated from the store, so an
interrupted run loses at most the file in flight and a re-run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from monitor import __version__
from monitor.errors import MonitorError

log = logging.getLogger(__name__)

RECORDING_COLUMNS = ["file", "status", "reason", "recorder", "device_id", "deployment_id", "firmware",
                     "start_time", "utc_offset", "temperature_c", "battery_v", "gain", "sample_rate_hz",
                     "channels", "duration_s", "segments"]
RECORDING_EXTRAS = ["latitude", "longitude", "filter", "trigger", "stop_reason", "comment", "warnings"]


class Interrupted(MonitorError):
    """Ctrl-C: finished work is saved; the message says how to resume."""


def check_folders(input_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Resolve and validate; output inside the input folder is refused (the card is read-only to us)."""
    input_dir, out_dir = Path(input_dir).expanduser(), Path(out_dir).expanduser()
    if not input_dir.is_dir():
        raise MonitorError(f"input folder not found: {input_dir}")
    src, dst = input_dir.resolve(), out_dir.resolve()
    if dst == src or dst.is_relative_to(src):
        raise MonitorError(
            f"--out {out_dir} is inside the input folder {input_dir}; monitor never writes to the card: "
            "choose an output folder elsewhere"
        )
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MonitorError(f"cannot create output folder {out_dir}: {exc.strerror}") from None
    return src, dst


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
    compile: bool = False,
) -> dict[str, Any]:
    """Run detection over ``input_dir`` into ``out_dir``; returns the run info written to ``run.json``."""
    from monitor.store import STORE_NAME, DirLock, ResultsStore

    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise MonitorError(f"--batch-size must be a whole number >= 1 or auto, got {batch_size!r}")
    src, dst = check_folders(input_dir, out_dir)
    bundles = load_models(models)
    labels = list(bundles[0].labels)
    from monitor.detect import resolve_thresholds

    thr = resolve_thresholds(labels, bundles[0].thresholds, thresholds)
    started = datetime.now(timezone.utc).astimezone()
    with DirLock(dst):
        store = ResultsStore(dst / STORE_NAME)
        try:
            if not resume:
                store.clear()
            model_hash = ensemble_hash(bundles)
            store.bind_model(model_hash, labels, " + ".join(f"{b.name} {b.version}" for b in bundles))
            with _StopOnSigint() as stop:  # Ctrl-C during the reports still lets them finish
                stats, interrupted = _process(src, store, bundles, model_hash, device, batch_size, workers,
                                              precision, progress, stop.state, compile)
                info = _run_info(src, dst, bundles, thr, command, started, stats)
                store.set_meta("run_info", info)
                info = write_outputs(dst, store, thr, info)
                interrupted = interrupted or stop.state["flag"]
        finally:
            store.close()
    if interrupted:
        raise Interrupted(
            f"interrupted: {stats['done']} files finished and saved; run the same command again to resume"
        )
    return info


def _process(src: Path, store, bundles, model_hash: str, device: str, batch_size: int | str, workers: int | None,
             precision: str, progress: bool | None, stop: dict[str, bool],
             compile: bool = False) -> tuple[dict[str, Any], bool]:
    """Discover, skip finished files, decode/score the rest; commit each file as it completes."""
    from monitor.infer import LocalEngine

    # the engine starts now: its worker processes' imports overlap discovery, metadata and model loading
    with LocalEngine(bundles, device=device, precision=precision, batch_size=batch_size, workers=workers,
                     compile=compile) as engine:
        return _process_in(engine, src, store, bundles, model_hash, progress, stop)


def _process_in(engine, src: Path, store, bundles, model_hash: str, progress: bool | None,
                stop: dict[str, bool]) -> tuple[dict[str, Any], bool]:
    from tqdm.auto import tqdm

    from monitor.audio import AudioError, plan_segments, probe
    from monitor.discover import discover
    from monitor.infer import FileJob
    from monitor.metadata import read_metadata
    from monitor.store import FileKey

    pre = bundles[0].preprocessing
    found = discover(src)
    present = {f.rel for f in found.recordings} | {s.rel for s in found.skipped}
    dropped = store.forget_missing(present)
    if dropped:
        log.info("%d files from an earlier run are no longer in the folder", dropped)
    for s in found.skipped:
        store.put_file(FileKey(s.rel, 0, 0, model_hash), s.status, s.reason, {})

    jobs, metas, total_segments, total_audio_s, resumed = [], {}, 0, 0.0, 0
    for f in found.recordings:
        if stop["flag"]:
            break
        key = FileKey(f.rel, f.size, f.mtime_ns, model_hash)
        if store.is_done(key):
            resumed += 1
            continue
        meta = read_metadata(f.path, f.rel).to_row()
        try:
            info = probe(f.path)
        except AudioError as exc:
            store.put_file(key, "failed", str(exc), meta)
            continue
        except Exception as exc:  # noqa: BLE001 - any decoder surprise is this file's problem
            log.debug("probe %s", f.rel, exc_info=True)
            store.put_file(key, "failed", f"could not read audio: {exc}", meta)
            continue
        meta.update(sample_rate_hz=info.sample_rate_hz, channels=info.channels, duration_s=round(info.duration_s, 6))
        plan = plan_segments(info.frames, info.sample_rate_hz, pre.segment)
        if not plan:
            store.put_file(key, "skipped", _too_short_reason(info.duration_s, pre.segment.min_segment_s), meta)
            continue
        jobs.append(FileJob(key, str(f.path), f.rel, info.frames, info.channels, info.sample_rate_hz))
        metas[f.rel] = meta
        total_segments += len(plan)
        total_audio_s += info.duration_s

    stats = {"done": 0, "segments": 0, **engine.describe(), "audio_s": total_audio_s,
             "found": len(found.recordings) + len(found.skipped), "resumed": resumed}
    bar = tqdm(total=total_segments, unit="seg", desc="segments", dynamic_ncols=True,
               disable=None if progress is None else not progress)  # None: only on a terminal
    t0 = time.perf_counter()
    audio_done = {"s": 0.0}

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
        if res.error:
            store.put_file(job.key, "failed", res.error, meta)
        else:
            segs = list(zip(res.index, res.start_s, res.end_s, res.scores))
            reason = f"{res.nonfinite} non-finite samples replaced with 0" if res.nonfinite else ""
            store.put_file(job.key, "ok", reason, meta, segs, nonfinite=res.nonfinite)
        stats["done"] += 1

    interrupted = bool(stop["flag"])
    try:
        if not interrupted:
            engine.run(jobs, on_file_done, on_segments)
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
              started: datetime, stats: Mapping[str, Any]) -> dict[str, Any]:
    b = bundles[0]
    describe = [{"name": x.name, "version": x.version, "sha256": x.sha256, "path": str(x.path or "")} for x in bundles]
    return {
        "model": describe[0] if len(describe) == 1 else {"name": " + ".join(d["name"] for d in describe),
                                                          "version": " + ".join(d["version"] for d in describe),
                                                          "sha256": ensemble_hash(bundles), "path": ""},
        "models": describe,
        "labels": list(b.labels),
        "task": b.task,
        "thresholds": dict(thr),
        "preprocessing": b.preprocessing.to_dict(),
        "package_version": __version__,
        "command": command or "",
        "input_dir": str(src),
        "out_dir": str(dst),
        "started": started.isoformat(timespec="seconds"),
        "ended": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "device": stats.get("device", ""),
        "precision": stats.get("precision", ""),
        "workers": stats.get("workers", 0),
        "wall_s": round(float(stats.get("wall_s", 0.0)), 3),
        "audio_s": round(float(stats.get("audio_s", 0.0)), 3),
        "resumed_files": stats.get("resumed", 0),
    }


def load_tables(store, thresholds: Mapping[str, float]):
    """recordings, segments and detections DataFrames from the store (the reports' only source)."""
    import pandas as pd

    from monitor.detect import detections_table, iso, parse_iso, wall_clock

    labels = store.get_meta("labels") or []
    rows = []
    for f in store.files():
        row = {c: None for c in RECORDING_COLUMNS + RECORDING_EXTRAS}
        row.update({k: v for k, v in f["metadata"].items() if k in row})
        row.update(file=f["file"], status=f["status"], reason=f["reason"], segments=f["segments"])
        rows.append(row)
    recordings = pd.DataFrame(rows, columns=RECORDING_COLUMNS + RECORDING_EXTRAS)
    for c in ("temperature_c", "battery_v", "duration_s", "latitude", "longitude"):
        recordings[c] = pd.to_numeric(recordings[c], errors="coerce")
    for c in ("sample_rate_hz", "channels"):
        recordings[c] = pd.to_numeric(recordings[c], errors="coerce").astype("Int64")
    text_cols = [c for c in recordings.columns if c not in ("temperature_c", "battery_v", "duration_s", "latitude",
                                                            "longitude", "sample_rate_hz", "channels", "segments")]
    recordings[text_cols] = recordings[text_cols].fillna("").astype(str)

    files, idx, s0, s1, scores = store.segments()
    starts = dict(zip(recordings["file"], recordings["start_time"]))
    parsed = {f: parse_iso(t) for f, t in starts.items()}
    seg = pd.DataFrame({"file": files, "segment": idx, "start_s": s0, "end_s": s1})
    seg["start_time"] = [iso(wall_clock(parsed.get(f), a)) for f, a in zip(files, s0)]
    for j, lab in enumerate(labels):
        seg[lab] = scores[:, j].astype(np.float64) if len(scores) else np.zeros(0)
    detections = detections_table(seg, recordings, labels, thresholds)
    return recordings, seg, detections


def write_outputs(dst: Path, store, thresholds: Mapping[str, float], info: dict[str, Any]) -> dict[str, Any]:
    """Regenerate every report from the store, then ``run.json`` (atomically)."""
    from monitor.report import write_reports

    recordings, segments, detections = load_tables(store, thresholds)
    status = recordings["status"].value_counts().to_dict() if len(recordings) else {}
    info = dict(info)
    info["thresholds"] = dict(thresholds)
    info["counts"] = {
        "found": int(len(recordings)),
        "ok": int(status.get("ok", 0)),
        "skipped": int(status.get("skipped", 0)),
        "failed": int(status.get("failed", 0)),
        "segments": int(len(segments)),
        "detections": int(len(detections)),
    }
    write_reports(dst, recordings=recordings, segments=segments, detections=detections, run_info=info,
                  input_dir=Path(info.get("input_dir") or "."))
    write_json_atomic(dst / "run.json", info)
    return info


def write_json_atomic(path: Path, data: Any) -> None:
    from monitor.report.safe import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def rebuild_reports(out_dir: Path, thresholds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """``monitor report OUT_DIR``: rebuild all reports from the store with (new) thresholds."""
    from monitor.detect import resolve_thresholds
    from monitor.store import STORE_NAME, DirLock, ResultsStore

    out_dir = Path(out_dir)
    if not (out_dir / STORE_NAME).is_file():
        raise MonitorError(f"no results store in {out_dir}; run `monitor run INPUT --out {out_dir}` first")
    with DirLock(out_dir):
        store = ResultsStore(out_dir / STORE_NAME)
        try:
            info = store.get_meta("run_info") or {}
            labels = store.get_meta("labels") or []
            thr = resolve_thresholds(labels, info.get("thresholds", {}), thresholds)
            info = write_outputs(out_dir, store, thr, info)
            store.set_meta("run_info", info)
        finally:
            store.close()
    return info


def run_cli(args) -> int:
    """The ``monitor run`` command: log file in OUT_DIR, one-line errors, summary on stdout."""
    from monitor.logs import add_log_file

    src, dst = check_folders(args.input_dir, args.out)
    add_log_file(dst / "monitor.log")
    command = " ".join(["monitor", *map(_quote, sys.argv[1:])])
    log.info("monitor %s: %s", __version__, command)
    try:
        info = run(src, dst, models=args.model, device=args.device, batch_size=args.batch_size,
                   workers=args.workers, thresholds=dict(args.threshold), resume=not args.no_resume,
                   precision=args.precision, command=command, compile=args.compile)
    except MonitorError:
        raise
    except Exception as exc:  # unexpected: full detail to the log file, one line to the user
        log.debug("run failed", exc_info=True)
        raise MonitorError(f"unexpected error: {exc} (details in {dst / 'monitor.log'})") from None
    c = info["counts"]
    print(f"monitor: {c['found']} files: {c['ok']} ok, {c['skipped']} skipped, {c['failed']} failed; "
          f"{c['segments']} segments, {c['detections']} detections")
    print(f"monitor: reports in {dst} (report.xlsx, detections.csv, recordings.csv)")
    return 0


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
