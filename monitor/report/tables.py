"""The CSV outputs, exactly as ``../shared/spec/interface.md`` names their columns."""

from __future__ import annotations

from pathlib import Path

from monitor.report.safe import atomic_path, safe_text

RECORDINGS = ["file", "status", "reason", "recorder", "device_id", "deployment_id", "firmware", "start_time",
              "utc_offset", "temperature_c", "battery_v", "gain", "sample_rate_hz", "channels", "duration_s",
              "segments"]
SEGMENTS = ["file", "segment", "start_s", "end_s", "start_time"]
DETECTIONS = ["file", "label", "start_s", "end_s", "start_time", "end_time", "score_max", "score_mean",
              "segments", "device_id"]


def _neutralise(df):
    """Apply ``safe_text`` to every text column (object or pandas string dtype), never to numbers."""
    from pandas.api.types import is_numeric_dtype

    df = df.copy()
    for c in df.columns:
        if not is_numeric_dtype(df[c]):
            df[c] = df[c].map(safe_text).astype(object)
    return df


def write_csv(df, path: Path, columns: list[str]) -> Path:
    """Write ``df`` with ``columns`` first (then any others), text neutralised, atomically."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path.name}: missing columns {missing}")
    ordered = df[columns + [c for c in df.columns if c not in columns]]
    with atomic_path(path) as tmp:
        _neutralise(ordered).to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
    return path


def write_tables(out_dir: Path, recordings, segments, detections, labels: list[str]) -> dict[str, Path]:
    return {
        "recordings.csv": write_csv(recordings, out_dir / "recordings.csv", RECORDINGS),
        "segments.csv": write_csv(segments[SEGMENTS + list(labels)], out_dir / "segments.csv", SEGMENTS + list(labels)),
        "detections.csv": write_csv(detections, out_dir / "detections.csv", DETECTIONS),
    }
