"""The companion ``.CSV`` that AudioMoth GPS-Sync firmware writes next to each WAV (pulse timing, fixes).

Header: ``,PPS_NUMBER,AUDIOMOTH_TIME,...,STATUS,LAT_DEG,LAT_MIN,LAT_DIR,LONG_DEG,LONG_MIN,LONG_DIR``.
Only the first valid fix (``STATUS`` ``A``) is read, from the first ``MAX_BYTES`` of the file.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_BYTES = 64 * 1024
SIGNATURE = ("PPS_NUMBER", "AUDIOMOTH_TIME")


def companion_csv(wav: Path) -> Path | None:
    """The sibling ``<stem>.CSV`` / ``.csv`` of ``wav``, if there is one."""
    for suffix in (".CSV", ".csv"):
        p = wav.with_suffix(suffix)
        if p.is_file():
            return p
    return None


def _degrees(deg: str, minutes: str, hemi: str) -> float | None:
    try:
        value = float(deg) + float(minutes) / 60.0
    except ValueError:
        return None
    return round(-value if hemi.strip().upper() in ("S", "W") else value, 6)


def parse_gps_csv(text: str) -> dict[str, Any]:
    """``{"firmware": "GPS-Sync", "latitude", "longitude"}`` from GPS-Sync CSV text; ``{}`` if it is not one."""
    try:
        return _parse(csv.reader(io.StringIO(text, newline="")))
    except csv.Error:
        return {}


def _parse(rows: Any) -> dict[str, Any]:
    header = next(rows, [])
    if not all(k in header for k in SIGNATURE):
        return {}
    out: dict[str, Any] = {"firmware": "GPS-Sync"}
    col = {name: i for i, name in enumerate(header)}
    need = ["STATUS", "LAT_DEG", "LAT_MIN", "LAT_DIR", "LONG_DEG", "LONG_MIN", "LONG_DIR"]
    if not all(k in col for k in need):
        return out
    for row in rows:
        if len(row) < len(header) or row[col["STATUS"]].strip() != "A":
            continue
        lat = _degrees(row[col["LAT_DEG"]], row[col["LAT_MIN"]], row[col["LAT_DIR"]])
        lon = _degrees(row[col["LONG_DEG"]], row[col["LONG_MIN"]], row[col["LONG_DIR"]])
        if lat is not None and lon is not None and abs(lat) <= 90 and abs(lon) <= 180:
            out["latitude"], out["longitude"] = lat, lon
            break
    return out


def read_gps_csv(wav: Path) -> dict[str, Any]:
    """What the GPS-Sync companion CSV of ``wav`` says; ``{}`` when there is none. Never raises."""
    p = companion_csv(wav)
    if p is None:
        return {}
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_BYTES)
    except OSError:
        return {}
    text = raw.decode("utf-8", errors="replace")
    if len(raw) == MAX_BYTES:
        text = text.rsplit("\n", 1)[0]  # drop a line cut in half
    return parse_gps_csv(text)
