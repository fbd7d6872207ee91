"""Reports people review, from plain DataFrames: CSVs, ``report.xlsx``, Raven tables, PNG plots.

``write_reports`` is called at the end of every run and by ``monitor report OUT_DIR``. Every file
is written to a temp file in OUT_DIR and renamed, so an interrupted write leaves the previous
report intact. Heavy imports (pandas, openpyxl, matplotlib) happen inside the functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)


def raven_band_hz(run_info: Mapping[str, Any]) -> tuple[float, float]:
    """(low, high) for Raven selections: the model's band; no edge -> 0 / Nyquist after resampling."""
    pre = run_info.get("preprocessing") or {}
    band = pre.get("band") or {}
    sr_hz = float((pre.get("resample") or {}).get("sample_rate_hz") or 16000)
    low = band.get("low_hz")
    high = band.get("high_hz")
    return float(low or 0.0), float(min(high, sr_hz / 2) if high else sr_hz / 2)


def write_reports(out_dir: Path, *, recordings: Any, segments: Any, detections: Any, run_info: dict[str, Any],
                  input_dir: Path) -> dict[str, Path]:
    """Write recordings/segments/detections CSVs, report.xlsx, raven/ and (with matplotlib) plots/.

    The DataFrames are as ``monitor.pipeline.load_tables`` builds them (columns per
    ``../shared/spec/interface.md``); ``run_info`` is the run.json content. Returns name -> path.
    """
    from monitor.report.presence import presence
    from monitor.report.raven import write_raven
    from monitor.report.tables import write_tables
    from monitor.report.workbook import Files, write_workbook

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = list(run_info.get("labels") or [])
    thresholds = dict(run_info.get("thresholds") or {})
    paths = write_tables(out_dir, recordings, segments, detections, labels)
    files = Files.from_recordings(recordings)
    tables = presence(segments, detections, recordings, labels, thresholds, files.start)
    paths["report.xlsx"] = write_workbook(out_dir / "report.xlsx", recordings, segments, detections, run_info,
                                          Path(input_dir), presence_tables=tables)
    low_hz, high_hz = raven_band_hz(run_info)
    paths["raven"] = out_dir / "raven"
    for p in write_raven(out_dir, detections, low_hz, high_hz):
        paths[f"raven/{p.name}"] = p
    try:
        from monitor.report.plots import write_plots
    except ImportError:
        log.warning("matplotlib is not installed: no PNG plots in plots/ (pip install 'monitor[plots]')")
    else:
        paths.update(write_plots(out_dir, tables))
    return paths


def report_command(out_dir: Path, thresholds: Mapping[str, float]) -> int:
    """``monitor report OUT_DIR``: rebuild every report from the results store with (new) thresholds."""
    from monitor.pipeline import rebuild_reports

    info = rebuild_reports(Path(out_dir), dict(thresholds)) or {}
    counts = info.get("counts") or {}
    thr = info.get("thresholds") or {}
    print(f"monitor: reports rebuilt in {out_dir}: {counts.get('detections', '?')} detections"
          + (f" (thresholds {', '.join(f'{k}={v:g}' for k, v in thr.items())})" if thr else ""))
    return 0
