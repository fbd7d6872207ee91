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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from monitor.audio import AudioError, plan_segments, probe
from monitor.config import Preprocess
from monitor.deployments import DeploymentTable, default_deployment
from monitor.detect import parse_iso
from monitor.discover import Found, discover, fingerprint
from monitor.errors import MonitorError
from monitor.logs import listing, plural, say
from monitor.metadata import read_metadata
from monitor.plan import FileJob
from monitor.remote import is_url, url_name
from monitor.store import FileKey, ResultsStore

log = logging.getLogger(__name__)


@dataclass
class WorkPlan:
    """What a run has to do: the jobs to score, with their metadata, and what was found on the card."""

    jobs: list[FileJob]
    metas: dict[str, dict[str, Any]]
    found: int
    resumed: int
    todo: int
    segments: int
    audio_s: float
    deployments: list[str]
    input_dir: str
    card: int = 0
    card_name: str = ""
    unmatched_rows: list[str] = field(default_factory=list)


def too_short_reason(duration_s: float, min_segment_s: float) -> str:
    return f"too short to analyse ({duration_s:.2f} s; the minimum is {min_segment_s:g} s)"


class _Identity:
    """Is a file on the card the one stored under a key? Same size, and the same mtime or content fingerprint
    (a copied card keeps contents, not mtimes). Fingerprints are read once, only when needed."""

    def __init__(self) -> None:
        self._fp: dict[str, str] = {}

    def fingerprint(self, f: Found) -> str:
        key = str(f.path)
        if key not in self._fp:
            self._fp[key] = fingerprint(f.path, f.size)
        return self._fp[key]

    def same(self, row: dict[str, Any] | None, f: Found) -> bool:
        if row is None or row["size"] != f.size:
            return False
        return row["mtime_ns"] == f.mtime_ns or bool(row["fingerprint"]) and row["fingerprint"] == self.fingerprint(f)


def which_card(store: ResultsStore, entries: list[tuple[Found, FileKey, Any]], ident: _Identity
               ) -> tuple[int | None, list[tuple[Found, FileKey, str]]]:
    """The stored card this scan is a re-scan of (the card most of its known recordings belong to; None: a new
    card), and the recordings already stored, with the same contents, under another deployment."""
    votes: Counter[int] = Counter()
    elsewhere = []
    for f, key, _ in entries:
        row = store.file_row(key.deployment, key.file)
        if ident.same(row, f):
            if row["card"] is not None:
                votes[row["card"]] += 1
            continue
        for dep, other in store.deployments_of(key.file):
            if dep != key.deployment and ident.same(other, f):
                elsewhere.append((f, key, dep))
                if other["card"] is not None:
                    votes[other["card"]] += 1
                break
    card = max(sorted(votes), key=lambda c: votes[c]) if votes else None
    return card, elsewhere


def scan_card(src: Path | str, store: ResultsStore, pre: Preprocess, model_hash: str, stop: Mapping[str, bool],
              deployment: str | None = None, prune: bool = False, resume: bool = True,
              table: DeploymentTable | None = None, move: bool = False) -> WorkPlan:
    """Discovery, metadata, deployments, which card this is, resume decisions, missing and changed files:
    everything before scoring.

    A card adds to its deployments: files of other cards are never marked missing or pruned. Files already
    stored under another deployment are refused (they would be counted twice) unless ``move`` re-files them.
    Skipped, failed and too-short files are written to ``store`` here; the returned jobs are what is left
    to score.
    """
    card_name = url_name(str(src)) if is_url(src) else Path(src).name
    found = discover(src)
    entries = []  # (found, key, meta or None)
    table = table or None
    matched: set[int] = set()
    for f in found.recordings:
        meta = None if deployment and not table else read_metadata(f.path, f.rel).to_row()
        row = table.match(f.rel, meta.get("device_id"), card_name, parse_iso(meta.get("start_time"))) if table else None
        if row is not None:
            matched.add(row.line)
        dep = row.deployment if row else default_deployment(f.rel, (meta or {}).get("device_id"), card_name,
                                                             deployment)
        entries.append((f, FileKey(dep, f.rel, f.size, f.mtime_ns, model_hash), meta))
    skipped = []
    for s in found.skipped:
        row = table.match(s.rel, None, card_name, None) if table else None
        dep = row.deployment if row else default_deployment(s.rel, None, card_name, deployment)
        skipped.append((s, FileKey(dep, s.rel, 0, 0, model_hash)))
    deployments = sorted({k.deployment for _, k, _ in entries} | {k.deployment for _, k in skipped})

    ident = _Identity()
    card, elsewhere = which_card(store, entries, ident)
    moves = [(dep, key.file, key.deployment) for _, key, dep in elsewhere]
    if card is not None:  # this card's other files (CONFIG.TXT ...) stored under another deployment follow
        moves += [(dep, key.file, key.deployment) for _, key in skipped for dep, row in store.deployments_of(key.file)
                  if dep != key.deployment and row["card"] == card]
    if moves:
        where = sorted({m[0] for m in moves})
        if not move:
            raise MonitorError(
                f"{plural(len(moves), 'file')} of this card {'is' if len(moves) == 1 else 'are'} already in "
                f"{store.path.parent} under deployment {listing(where, 3)} (first: {moves[0][0]}/{moves[0][1]}), "
                f"not {moves[0][2]}: counting {'it' if len(moves) == 1 else 'them'} again would count "
                "them twice; add --move to re-file their results and verdicts, or run without --deployment")
        store.move_files(moves)
        say(f"moved {plural(len(moves), 'file')} (results and verdicts) from deployment {listing(where, 3)} to "
            f"{listing(sorted({m[2] for m in moves}), 3)}")
    if card is None:
        card = store.new_card(card_name, str(src))
    else:
        store.scanned(card, str(src))
    if not resume:
        store.clear_card(card)
    todo, changed, resumed = [], [], 0
    for f, key, meta in entries:
        if store.is_done(key):
            store.restore(key, card)
            resumed += 1
            continue
        key = dataclasses.replace(key, fingerprint=ident.fingerprint(f))
        if store.same_file(key):  # the same file with a new mtime (a copy of the card)
            store.restore(key, card)
            resumed += 1
            continue
        if store.changed(key):
            changed.append(key)
        todo.append((f, key, meta))
    _check_changed(store, changed, card, prune)

    present = {(k.deployment, k.file) for _, k, _ in entries} | {(k.deployment, k.file) for _, k in skipped}
    gone = store.mark_missing(card, present)
    if gone:
        say(f"{plural(len(gone), 'file')} analysed on an earlier scan of this card "
            f"{'is' if len(gone) == 1 else 'are'} no longer on this card: marked missing, results kept "
            f"({listing([f'{d}/{f}' for d, f in gone], 3)}; --prune archives them)")
    if prune:
        _prune(store, card)
    for s, key in skipped:
        store.put_file(key, s.status, s.reason, {}, input_dir=str(src), card=card)
        log.info("skipped %s: %s", s.rel, s.reason)

    jobs, metas, total_segments, total_audio_s = [], {}, 0, 0.0
    for f, key, meta in todo:
        if stop["flag"]:
            break
        meta = meta if meta is not None else read_metadata(f.path, f.rel).to_row()
        try:
            info = probe(f.path)
        except AudioError as exc:
            store.put_file(key, "failed", str(exc), meta, input_dir=str(src), card=card)
            log.info("failed %s: %s", f.rel, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - any decoder surprise is this file's problem
            log.debug("probe %s", f.rel, exc_info=True)
            store.put_file(key, "failed", f"could not read audio: {exc}", meta, input_dir=str(src), card=card)
            log.info("failed %s: could not read audio: %s", f.rel, exc)
            continue
        meta.update(sample_rate_hz=info.sample_rate_hz, channels=info.channels, duration_s=round(info.duration_s, 6))
        plan = plan_segments(info.frames, info.sample_rate_hz, pre.segment)
        if not plan:
            reason = too_short_reason(info.duration_s, pre.segment.min_segment_s)
            store.put_file(key, "skipped", reason, meta, input_dir=str(src), card=card)
            log.info("skipped %s: %s", f.rel, reason)
            continue
        jobs.append(FileJob(key, str(f.path), f.rel, info.frames, info.channels, info.sample_rate_hz))
        metas[f.rel] = meta
        total_segments += len(plan)
        total_audio_s += info.duration_s
    if resumed:
        say(f"resuming: {resumed} of {plural(len(entries), 'file')} already done")
    unmatched = [f"line {r.line} ({r.deployment})" for r in (table.rows if table else []) if r.line not in matched]
    return WorkPlan(jobs, metas, len(found.recordings) + len(found.skipped), resumed, len(jobs), total_segments,
                    total_audio_s, deployments, str(src), card, card_name, unmatched)


def _check_changed(store: ResultsStore, changed: list[FileKey], card: int, prune: bool) -> None:
    """Files whose names are stored with other contents: this card's changed files are replaced with
    ``--prune`` (the old results archived); another card's files of the same name are never touched."""
    if not changed:
        return
    others = [k for k in changed if store.file_row(k.deployment, k.file)["card"] != card]
    if others or not prune:
        k = (others or changed)[0]
        hint = ("if this is another card, name it with --deployment NAME" if others else
                "to replace the earlier results (they are archived), add --prune")
        raise MonitorError(
            f"{plural(len(others or changed), 'file')} of this card have the names of files already analysed in "
            f"{store.path.parent} but other contents (first: {k.deployment}/{k.file}); {hint}")
    store.archive([(k.deployment, k.file) for k in changed], "replaced by a changed file (--prune)")
    say(f"--prune: {plural(len(changed), 'changed file')} will be analysed again; the earlier results were "
        "archived (monitor report OUT --restore-pruned brings them back)")


def _prune(store: ResultsStore, card: int) -> None:
    """``--prune``: this card's missing files are listed, then archived (``--restore-pruned`` undoes it)."""
    gone = store.missing(card)
    if not gone:
        return
    names = [f"{d}/{f}" for d, f in gone]
    for n in names:
        log.info("--prune archives the results of %s", n)
    store.archive(gone, "no longer on its card (--prune)")
    say(f"--prune: archived the results of {plural(len(gone), 'file')} no longer on this card: {listing(names)} "
        "(monitor report OUT --restore-pruned brings them back)")
