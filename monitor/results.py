"""The results seam: one typed ``Results`` object, loaded once from the store, that every report is written from.

``Results`` holds the recordings, the per-segment scores, the positives mask (thresholds are applied
here and nowhere else), the detection events with the reviewers' verdicts joined on, every review
(including those whose detection no longer passes the threshold), and the ``RunInfo`` of the run.
The column lists of the CSV outputs (``../shared/spec/interface.md``) are defined here, once.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from monitor.deployments import DeploymentTable, offset_text, to_local
from monitor.detect import detections_table, hms, iso, parse_iso, wall_clock
from monitor.logs import plural
from monitor.store import Card, start_ms

log = logging.getLogger(__name__)

RECORDINGS = ["deployment", "file", "status", "reason", "recorder", "device_id", "deployment_id", "firmware",
              "start_time", "utc_offset", "temperature_c", "battery_v", "gain", "sample_rate_hz", "channels",
              "duration_s", "segments"]
RECORDING_EXTRAS = ["latitude", "longitude", "filter", "trigger", "stop_reason", "comment", "warnings", "input_dir",
                    "time_zone", "recorder_start_time", "card"]
SEGMENTS = ["deployment", "file", "segment", "start_s", "end_s", "start_time"]
SCORED_BY = "scored_by"  # segments.csv's last column when a screen scored some rows (``monitor run --screen``)
DETECTIONS = ["deployment", "file", "label", "start_s", "end_s", "start_time", "end_time", "score_max",
              "score_mean", "segments", "device_id", "verified", "notes"]
REVIEWS = ["deployment", "file", "label", "start_s", "end_s", "verified", "notes", "updated_at", "source"]
VERIFIED_CHOICES = ("yes", "no", "unsure")
MANY_LABELS = 10  # above this many labels reports show what was detected (Summary positives, Presence, plots)
NUMERIC_RECORDING = ("temperature_c", "battery_v", "duration_s", "latitude", "longitude")
INT_RECORDING = ("sample_rate_hz", "channels", "card")


@dataclass(frozen=True)
class ModelRef:
    """Which model bundle ran: name, version, sha256 of bundle.json + weights, and its folder."""

    name: str = ""
    version: str = ""
    sha256: str = ""
    path: str = ""


@dataclass
class RunInfo:
    """What ran on what (``run.json``, the workbook's Run info). ``completed`` is False for an
    interrupted run, with ``files_done`` / ``files_left`` saying how far it got."""

    model: ModelRef = field(default_factory=ModelRef)
    models: list[ModelRef] = field(default_factory=list)  # as given with --model (an ensemble bundle is one)
    labels: list[str] = field(default_factory=list)
    task: str = "multilabel"
    thresholds: dict[str, float] = field(default_factory=dict)
    thresholds_from: str = ""  # how the model's thresholds were chosen (an ensemble's rule, in words)
    members: list[ModelRef] = field(default_factory=list)  # the bundles scored and averaged, for an ensemble
    preprocessing: dict[str, Any] = field(default_factory=dict)
    package_version: str = ""
    command: str = ""
    input_dir: str = ""
    out_dir: str = ""
    deployments: list[str] = field(default_factory=list)
    started: str = ""
    ended: str = ""
    completed: bool = True
    files_done: int = 0
    files_left: int = 0
    resumed_files: int = 0
    engine: str = "local"
    device: str = ""
    precision: str = ""
    workers: int = 0
    batch_size: int = 0
    wall_s: float = 0.0
    audio_s: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    report_build: str = ""
    card: int = 0  # the card this run scanned (``cards`` in the store); 0 for a rebuild
    card_name: str = ""
    card_counts: dict[str, Any] = field(default_factory=dict)  # as ``counts``, for this run's card only
    workbook: str = "report.xlsx"  # the workbook written (a side file while report.xlsx is open)
    screen: dict[str, Any] = field(default_factory=dict)  # --screen: the student, its thresholds, recall, escalation

    @property
    def status(self) -> str:
        if self.completed:
            return "complete"
        return (f"INCOMPLETE: interrupted after {self.files_done} of {self.files_done + self.files_left} files; "
                "run the same command again to resume")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = self.status
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> "RunInfo":
        """Tolerant of older ``run.json`` / store contents: unknown keys are dropped, missing ones default."""
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if isinstance(kw.get("model"), Mapping):
            kw["model"] = _model_ref(kw["model"])
        for key in ("models", "members"):
            kw[key] = [_model_ref(m) for m in kw.get(key) or [] if isinstance(m, Mapping)]
        return cls(**kw)

    def summary_lines(self) -> list[str]:
        """The end-of-run summary: this card's counts, then the output folder's; detections per label, failed
        files (the first few and how many)."""
        c = self.counts
        lines = []
        several = bool(self.card_counts) and c.get("cards", 1) > 1
        if several:
            lines.append(f"this card ({self.card_name}): {counts_text(self.card_counts)}")
        total = counts_text(c)
        if several:
            total = (f"the output folder in all ({plural(c.get('cards', 1), 'card')}, "
                     f"{plural(c.get('deployments', 1), 'deployment')}): {total}")
        lines.append(total)
        per = c.get("detections_per_label") or {}
        shown = [(k, v) for k, v in per.items() if v] if len(per) > 12 else list(per.items())
        if per:
            lines.append("detections per label: " + (", ".join(f"{k} {v}" for k, v in shown) or "none")
                         + (f" ({len(per) - len(shown)} labels with none)" if len(shown) < len(per) else ""))
        failed = c.get("failed_files") or []
        if c.get("failed"):
            more = c["failed"] - len(failed)
            lines.append("failed: " + ", ".join(failed) + (f" and {more} more" if more > 0 else "")
                         + " (reasons in recordings.csv and the workbook's Skipped files sheet)")
        if self.screen.get("segments_screened"):
            sc = self.screen
            lines.append(f"screen {sc.get('name')}: {sc['segments_escalated']} of "
                         f"{plural(sc['segments_screened'], 'segment')} ({sc['escalated_fraction']:.1%}) went to the "
                         "model; only its scores make detections")
        if c.get("reviews"):
            lines.append(f"{plural(c['reviews'], 'reviewer verdict')} kept in the results store")
        lines += [f"warning: {w}" for w in self.warnings]
        if not self.completed:
            lines.append(self.status)
        return lines

    def model_name(self) -> str:
        """``name : version``; ensembles join their members with `` + ``."""
        models = self.models or [self.model]
        return " + ".join(f"{m.name} : {m.version}" for m in models)


def counts_text(c: Mapping[str, Any]) -> str:
    """``4 files: 3 ok, 1 skipped, 0 failed; 6 segments, 2 detections``."""
    return (f"{plural(c.get('found', 0), 'file')}: {c.get('ok', 0)} ok, {c.get('skipped', 0)} skipped, "
            f"{c.get('failed', 0)} failed"
            + (f", {c['missing']} missing from their card (results kept)" if c.get("missing") else "")
            + f"; {plural(c.get('segments', 0), 'segment')}, {plural(c.get('detections', 0), 'detection')}")


def _model_ref(d: Mapping[str, Any]) -> ModelRef:
    return ModelRef(**{k: str(d.get(k) or "") for k in ("name", "version", "sha256", "path")})


@dataclass
class Results:
    """Everything a report shows, loaded once.

    ``segments`` (n rows, one score column per label) and ``positives`` (n, labels) bool are aligned
    row for row; ``detections`` carries ``verified``/``notes``; ``other_reviews`` are the verdicts not
    on any detection row (below the threshold now, merged into a longer event, or file pruned), with
    a ``why`` column. Every review appears exactly once: on its detection row or in ``other_reviews``.
    """

    run: RunInfo
    labels: list[str]
    thresholds: dict[str, float]
    recordings: Any
    segments: Any
    positives: np.ndarray
    detections: Any
    reviews: Any
    other_reviews: Any
    review_dates: dict[tuple[str, str, str], str] = field(default_factory=dict)
    cards: list[Card] = field(default_factory=list)  # every card of the output folder (their link bases)

    @property
    def failed(self) -> list[str]:
        rec = self.recordings
        return [f"{d}/{f}" if d else f for d, f in zip(rec["deployment"][rec["status"] == "failed"],
                                                       rec["file"][rec["status"] == "failed"])]

    def detections_per_label(self) -> dict[str, int]:
        counts = self.detections["label"].value_counts().to_dict() if len(self.detections) else {}
        return {lab: int(counts.get(lab, 0)) for lab in self.labels}


def apply_thresholds(scores: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float],
                     screened: np.ndarray | None = None) -> np.ndarray:
    """The one place thresholds are applied: ``scores`` (n, labels) -> positives (n, labels) bool, ``score >= t``.

    ``screened`` (n,) bool: rows only a screen scored (``monitor run --screen``: the student's scores, the teacher
    never saw the segment); they are never positive, whatever the thresholds."""
    t = np.array([float(thresholds[lab]) for lab in labels], dtype=np.float64)
    pos = np.asarray(scores, dtype=np.float64) >= t[None, :] if len(labels) else np.zeros((len(scores), 0), bool)
    if screened is not None and len(pos):
        pos &= ~np.asarray(screened, dtype=bool)[:, None]
    return pos


def screened_rows(segments) -> np.ndarray | None:
    """(n,) bool: the segments table's rows that only a screen scored (None: the table has no ``scored_by``)."""
    if SCORED_BY not in getattr(segments, "columns", ()):
        return None
    return (segments[SCORED_BY].astype(str) != "").to_numpy()


def empty_recordings():
    import pandas as pd

    return pd.DataFrame(columns=RECORDINGS + RECORDING_EXTRAS)


def recordings_frame(rows: Sequence[Mapping[str, Any]]):
    """Recording rows (dicts) -> the typed recordings DataFrame (numbers numeric, text '' when unknown)."""
    import pandas as pd

    cols = RECORDINGS + RECORDING_EXTRAS
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
    for c in NUMERIC_RECORDING:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    for c in INT_RECORDING:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    df["segments"] = pd.to_numeric(df["segments"], errors="coerce").fillna(0).astype(int)
    text = [c for c in cols if c not in NUMERIC_RECORDING + INT_RECORDING + ("segments",)]
    df[text] = df[text].fillna("").astype(str)
    return df


def segments_frame(deployments: Sequence[str], files: Sequence[str], index, start_s, end_s, scores: np.ndarray,
                   labels: Sequence[str], starts: Mapping[tuple[str, str], Any],
                   scored_by: Sequence[str] | None = None):
    """Segments DataFrame; ``starts`` maps (deployment, file) -> the recording's aware start datetime or None;
    ``scored_by`` (per row: '' for the run's model, else the screen's name) adds that column."""
    import pandas as pd

    cols: dict[str, Any] = {"deployment": list(deployments), "file": list(files),
                            "segment": np.asarray(index, np.int64), "start_s": np.asarray(start_s, float),
                            "end_s": np.asarray(end_s, float)}
    cols["start_time"] = [iso(wall_clock(starts.get((d, f)), a)) for d, f, a in
                          zip(cols["deployment"], cols["file"], cols["start_s"])]
    scores = np.asarray(scores, dtype=np.float64).reshape(len(cols["file"]), len(labels))
    cols.update({lab: scores[:, j] for j, lab in enumerate(labels)})
    if scored_by is not None:
        cols[SCORED_BY] = [str(b) for b in scored_by]
    return pd.DataFrame(cols)


def reviews_frame(reviews: Sequence[Any]):
    import pandas as pd

    df = pd.DataFrame([{c: getattr(r, c) for c in REVIEWS} for r in reviews], columns=REVIEWS)
    df["start_s"] = df["start_s"].astype(float)
    df["end_s"] = df["end_s"].astype(float)
    return df


def build_results(recordings, segments, labels: Sequence[str], thresholds: Mapping[str, float], run: RunInfo,
                  reviews=None, review_dates: Mapping[tuple[str, str, str], str] | None = None) -> Results:
    """Positives, detection events and the reviews joined onto them, from recordings + segments."""


    labels = list(labels)
    thr = {lab: float(thresholds[lab]) for lab in labels}
    scores = segments[labels].to_numpy(dtype=np.float64) if len(segments) else np.zeros((0, len(labels)))
    positives = apply_thresholds(scores, labels, thr, screened_rows(segments))
    det = detections_table(segments, positives, recordings, labels)
    reviews = reviews if reviews is not None else reviews_frame([])
    by_key = {(d, f, lab, start_ms(a)): (v, n) for d, f, lab, a, v, n in
              zip(reviews["deployment"], reviews["file"], reviews["label"], reviews["start_s"], reviews["verified"],
                  reviews["notes"])}
    keys = [(d, f, lab, start_ms(a)) for d, f, lab, a in zip(det["deployment"], det["file"], det["label"],
                                                             det["start_s"])]
    det["verified"] = [by_key.get(k, ("", ""))[0] for k in keys]
    det["notes"] = [by_key.get(k, ("", ""))[1] for k in keys]
    on_rows = set(keys)
    off_rows = np.array([k not in on_rows for k in zip(reviews["deployment"], reviews["file"], reviews["label"],
                                                       (start_ms(a) for a in reviews["start_s"]))], dtype=bool)
    other = reviews.loc[off_rows].copy()
    other["why"] = [_why(r, det, segments, positives, labels, thr) for r in other.itertuples(index=False)]
    other = other.reset_index(drop=True)
    run = dataclasses.replace(run, labels=labels, thresholds=thr)
    return Results(run, labels, thr, recordings, segments, positives, det.reset_index(drop=True), reviews, other,
                   dict(review_dates or {}))


def _why(r, det, segments, positives, labels: Sequence[str], thr: Mapping[str, float]) -> str:
    """Why a review is not on a detection row, in words."""
    here = det[(det["deployment"] == r.deployment) & (det["file"] == r.file) & (det["label"] == r.label)
               & (det["start_s"] <= r.start_s + 1e-6) & (det["end_s"] > r.start_s + 1e-6)]
    if len(here):
        e = here.iloc[0]
        return f"now part of the detection at {hms(e.start_s)}-{hms(e.end_s)} (merged with its neighbours)"
    if not len(segments) or r.label not in labels:
        return "label not in this model" if r.label not in labels else "recording no longer in the results"
    m = ((segments["deployment"] == r.deployment) & (segments["file"] == r.file)
         & (segments["start_s"] >= r.start_s - 1e-6) & (segments["start_s"] < r.end_s - 1e-6)).to_numpy()
    if not m.any():
        return "recording no longer in the results (pruned)"
    screened = screened_rows(segments)
    if screened is not None and screened[m].all():
        return "only the screen scored it (monitor run --screen): the model never did; run without --screen"
    best = float(segments.loc[m, r.label].max())
    return f"below the threshold now (max score {best:.3f} < {thr[r.label]:g})"


def local_times(rows: list[dict[str, Any]], table) -> list[str]:
    """Recorder clocks -> each deployment's local time, in place on recording rows (``start_time``,
    ``utc_offset``, ``time_zone``; the recorder's own start kept in ``recorder_start_time``), and places from
    the deployments table where the files give none. Returns warnings for recorders left on UTC."""

    utc: dict[str, int] = {}
    for row in rows:
        dep = table.by_name.get(row["deployment"]) if table else None
        row["recorder_start_time"] = row.get("start_time") or ""
        row["time_zone"] = dep.time_zone if dep is not None and dep.time_zone else ""
        if dep is not None:
            for k in ("latitude", "longitude"):
                if row.get(k) in (None, "") and getattr(dep, k) is not None:
                    row[k] = getattr(dep, k)
        start = parse_iso(row.get("start_time"))
        if start is None:
            continue
        if row["time_zone"]:
            loc = to_local(start, dep.tz)
            row["start_time"], row["utc_offset"] = iso(loc), offset_text(loc)
        elif start.utcoffset() is not None and start.utcoffset().total_seconds() == 0 and row.get("status") == "ok":
            utc[row["deployment"]] = utc.get(row["deployment"], 0) + 1
    return [f"deployment {d}: the recorder's clock is UTC ({n} file{'s' if n > 1 else ''}), so its times and hours "
            "are UTC, not the site's local time; give the site's time_zone in a deployments table "
            "(--deployments; time_zone UTC if the site really is on UTC)" for d, n in sorted(utc.items())]


def load_results(store, thresholds: Mapping[str, float], run: RunInfo) -> Results:
    """Read the whole store once into a ``Results`` (the reports' only source): times in each deployment's
    local time, only the chosen labels (``--labels``), every review."""

    names = list(store.get_meta("labels") or run.labels)
    keep = store.get_meta("label_filter") or names
    cols = [names.index(lab) for lab in keep if lab in names]
    labels = [names[j] for j in cols]
    recordings, warnings = load_recordings(store)
    starts = {(d, f): parse_iso(t) for d, f, t in
              zip(recordings["deployment"], recordings["file"], recordings["start_time"])}
    deps, files, idx, s0, s1, scores = store.segments()
    segments = segments_frame(deps, files, idx, s0, s1, scores[:, cols] if len(scores) else scores[:, :0],
                              labels, starts, store.segment_scorers())
    run = dataclasses.replace(run, warnings=warnings)
    res = build_results(recordings, segments, labels, {lab: thresholds[lab] for lab in labels}, run,
                        reviews_frame(store.reviews()), store.review_dates())
    res.cards = store.cards()
    return res


def load_recordings(store) -> tuple[Any, list[str]]:
    """The recordings table of the store (times in each deployment's local time) and the warnings about clocks."""
    rows = []
    for f in store.files():
        row = dict(f["metadata"])
        row.update(deployment=f["deployment"], file=f["file"], status=f["status"], reason=f["reason"],
                   segments=f["segments"], input_dir=f["input_dir"], card=f["card"])
        if f["missing_since"]:
            row["status"] = "missing"
            row["reason"] = (f"not on its card when it was scanned again ({f['missing_since'][:10]}); its results "
                             "are kept (monitor run --prune archives them)")
        rows.append(row)
    warnings = local_times(rows, DeploymentTable.from_json(store.get_meta("deployments")))
    return recordings_frame(rows), warnings
