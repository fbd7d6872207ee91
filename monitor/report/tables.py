"""The CSV outputs, exactly as ``../shared/spec/interface.md`` names their columns.

Scores are written with 6 decimals, times and durations with 3 (milliseconds); unknown values are
empty cells. Formula-like text is neutralised with ``safe_text``; ``read_csv`` undoes that.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monitor.fileio import atomic_path
from monitor.report.safe import safe_text, unquote
from monitor.results import DETECTIONS, RECORDING_EXTRAS, RECORDINGS, SEGMENTS  # noqa: F401  (the one column list)
from monitor.results import SCORED_BY, screened_rows

log = logging.getLogger(__name__)

# decimals per float column; columns not named here keep full precision
_DECIMALS = {"start_s": 3, "end_s": 3, "duration_s": 3, "temperature_c": 2, "battery_v": 3, "score_max": 6,
             "score_mean": 6, "latitude": 7, "longitude": 7}


def _prepare(df: Any, score_columns: Sequence[str] = ()) -> Any:
    """Copy of ``df`` with floats rounded and every text column neutralised (numbers untouched)."""
    from pandas.api.types import is_float_dtype, is_numeric_dtype

    out = df.copy()
    for c in out.columns:
        s = out[c]
        if is_numeric_dtype(s.dtype) and not s.dtype == bool:
            if is_float_dtype(s.dtype):
                decimals = 6 if c in score_columns else _DECIMALS.get(c)
                if decimals is not None:
                    out[c] = s.round(decimals)
        else:
            out[c] = s.map(safe_text, na_action="ignore").astype(object)
    return out


def write_csv(df: Any, path: Path, columns: Sequence[str], score_columns: Sequence[str] = ()) -> Path:
    """Write ``df`` with ``columns`` first (then any others), text neutralised, atomically.

    Raises ``ValueError`` naming the missing columns when ``df`` lacks one of ``columns``.
    """
    columns = list(columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path.name}: missing columns {missing}")
    ordered = df[columns + [c for c in df.columns if c not in columns]]
    with atomic_path(path) as tmp:
        _prepare(ordered, score_columns).to_csv(tmp, index=False, lineterminator="\n", encoding="utf-8")
    return path


def write_tables(out_dir: Path, results: Any) -> dict[str, Path]:
    """``recordings.csv``, ``segments.csv`` (one score column per label) and ``detections.csv`` (with the
    reviewers' ``verified`` and ``notes``)."""
    labels = list(results.labels)
    seg_cols = SEGMENTS + labels
    segments = results.segments
    screened = screened_rows(segments)
    if screened is not None and screened.any():  # a screen scored some rows: say which model scored each
        segments = segments.assign(**{SCORED_BY: np.where(screened, segments[SCORED_BY].astype(str),
                                                          results.run.model.name or "model")})
        seg_cols = seg_cols + [SCORED_BY]
    return {
        "recordings.csv": write_csv(results.recordings, out_dir / "recordings.csv", RECORDINGS),
        "segments.csv": write_csv(segments[seg_cols], out_dir / "segments.csv", seg_cols,
                                  score_columns=labels),
        "detections.csv": write_csv(results.detections, out_dir / "detections.csv", DETECTIONS),
    }


def read_csv(path: Path) -> Any:
    """Read one of the CSVs back as written: empty cells stay '', neutralised text is restored."""
    import pandas as pd
    from pandas.api.types import is_numeric_dtype

    df = pd.read_csv(path, keep_default_na=False)
    for c in df.columns:
        if not is_numeric_dtype(df[c].dtype):
            df[c] = df[c].map(unquote)
    return df
