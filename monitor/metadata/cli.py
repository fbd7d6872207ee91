"""``monitor metadata [--json] PATH...``: what each file's header, comment, GUANO and name say."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from monitor.errors import MonitorError
from monitor.metadata.record import read_metadata
from monitor.discover import discover

log = logging.getLogger(__name__)

TABLE = ["file", "recorder", "device_id", "firmware", "start_time", "temperature_c", "battery_v", "gain",
         "sample_rate_hz", "duration_s", "stop_reason"]


def _files(paths: list[Path]) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    files, skipped = [], []
    for p in paths:
        if p.is_dir():
            d = discover(p)
            files += [(f.path, f.rel) for f in d.recordings]
            skipped += [(s.rel, s.reason) for s in d.skipped]
        elif p.is_file():
            files.append((p, p.name))
        else:
            raise MonitorError(f"no such file or folder: {p}")
    return files, skipped


def _cell(v: object) -> str:
    return "" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def metadata_command(paths: list[Path], as_json: bool = False) -> int:
    """Print one record per file (``--json``: one JSON object a line); skipped files with reasons."""
    files, skipped = _files(paths)
    rows = []
    for path, rel in files:
        rec = read_metadata(path, rel)
        row = {"file": rel, **rec.to_row()}
        row["warnings"] = rec.warnings
        if not as_json:
            row["battery_bound"] = rec.battery_bound
        if as_json:
            print(json.dumps(row, ensure_ascii=False, default=str))
        else:
            rows.append(row)
    if as_json:
        for rel, reason in skipped:
            print(f"skipped: {rel}: {reason}", file=sys.stderr)
        return 0
    cells = [[_cell(r.get(c)) for c in TABLE] for r in rows]
    for r, row in zip(rows, cells):  # show a battery bound as "<3.6"
        row[TABLE.index("battery_v")] = r["battery_bound"] + row[TABLE.index("battery_v")]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(TABLE)]
    print("  ".join(c.ljust(w) for c, w in zip(TABLE, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    for r in rows:
        for w in r["warnings"]:
            print(f"warning: {r['file']}: {w}")
    for rel, reason in skipped:
        print(f"skipped: {rel}: {reason}")
    return 0
