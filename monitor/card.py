"""What a card holds and what of it needs doing: discovery, metadata, deployments, resume decisions,
missing and changed files. Everything ``monitor run`` decides before any audio is scored.

A file's results are keyed by (deployment, path on the card). A finished file is skipped when its size,
mtime and the model's hash are unchanged, or when only its mtime changed and its content fingerprint
did not (a copy of the card). Files a card no longer holds are marked missing (results kept); only
``--prune`` removes them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from monitor.audio import AudioError, plan_segments, probe
from monitor.config import Preprocess
from monitor.deployments import DeploymentTable, default_deployment
from monitor.detect import parse_iso
from monitor.discover import discover, fingerprint
from monitor.errors import MonitorError
from monitor.logs import say
from monitor.metadata import read_metadata
from monitor.plan import FileJob
from monitor.remote import is_url, url_name
from monitor.store import FileKey, ResultsStore

log = logging.getLogger(__name__)


@dataclass
class WorkPlan:
    """What a run has to do: the jobs to score, with their metadata, and what was found."""

    jobs: list[FileJob]
    metas: dict[str, dict[str, Any]]
    found: int
    resumed: int
    todo: int
    segments: int
    audio_s: float
    deployments: list[str]
    input_dir: str


def too_short_reason(duration_s: float, min_segment_s: float) -> str:
    return f"too short to analyse ({duration_s:.2f} s; the minimum is {min_segment_s:g} s)"


def scan_card(src: Path | str, store: ResultsStore, pre: Preprocess, model_hash: str, stop: Mapping[str, bool],
              deployment: str | None = None, prune: bool = False, resume: bool = True,
              table: DeploymentTable | None = None) -> WorkPlan:
    """Discovery, metadata, deployments, resume decisions, missing and changed files: everything before scoring.

    Skipped, failed and too-short files are written to ``store`` here; the returned jobs are what is left
    to score.
    """
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
        say(f"{len(gone)} file(s) analysed earlier are no longer on this card: marked missing, results kept "
            f"(first: {gone[0][0]}/{gone[0][1]}; --prune removes them)")
    if prune:
        n = store.prune(deployments)
        if n:
            say(f"--prune: removed the results of {n} file(s) no longer on the card")
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
            reason = too_short_reason(info.duration_s, pre.segment.min_segment_s)
            store.put_file(key, "skipped", reason, meta, input_dir=str(src))
            log.info("skipped %s: %s", f.rel, reason)
            continue
        jobs.append(FileJob(key, str(f.path), f.rel, info.frames, info.channels, info.sample_rate_hz))
        metas[f.rel] = meta
        total_segments += len(plan)
        total_audio_s += info.duration_s
    if resumed:
        say(f"resuming: {resumed} of {len(entries)} files already done")
    return WorkPlan(jobs, metas, len(found.recordings) + len(found.skipped), resumed, len(jobs), total_segments,
                    total_audio_s, deployments, str(src))
