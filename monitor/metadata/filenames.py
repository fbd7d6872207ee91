"""Start times and IDs from recorder file names. A name gives local time with an unknown offset,
except AudioMoth 1.0-1.1 hex names, which are Unix time (UTC)."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any

log = logging.getLogger(__name__)

_HEX = re.compile(r"^([0-9A-Fa-f]{8})$")
_STAMP = re.compile(r"^(?:(?P<prefix>.+?)_)?(?:(?P<ch>0\+1|0|1)_)?(?P<date>\d{8})(?P<sep>[_$])(?P<time>\d{6})"
                    r"(?:_(?P<ms>\d{3}))?(?P<trig>T)?$")
_TIME_ONLY = re.compile(r"^(?P<time>\d{6})(?P<trig>T)?$")
_SONG_METER = re.compile(r"^(S4A|SMM|SMA|SMU|SM3|SM4|SM2|SMZ|S2A|S3A|SM5)", re.I)


def _stamp(date: str, time: str, ms: str | None = None) -> datetime | None:
    try:
        return datetime.strptime(date + time, "%Y%m%d%H%M%S").replace(microsecond=int(ms or 0) * 1000)
    except ValueError:
        return None


def parse_filename(name: str, parent_dir_name: str | None = None) -> dict[str, Any]:
    """Fields from a file name (and its folder, for AudioMoth daily folders). Never raises."""
    stem = PurePath(name).stem
    out: dict[str, Any] = {"warnings": []}
    m = _HEX.match(stem)
    if m and PurePath(name).suffix.upper() == ".WAV":
        t = int(m.group(1), 16)
        if 1_400_000_000 <= t <= 2_200_000_000:  # 2014..2039: a plausible AudioMoth clock
            out.update(start_time=datetime.fromtimestamp(t, tz=timezone.utc), utc_offset="+00:00",
                       recorder="AudioMoth", name_format="AudioMoth 1.0-1.1 (hex Unix time, UTC)")
            return out
    m = _STAMP.match(stem)
    if m:
        dt = _stamp(m["date"], m["time"], m["ms"])
        if dt is None:
            out["warnings"].append(f"file name {name!r} has an impossible date/time")
            return out
        out["start_time"] = dt
        out["utc_offset"] = ""
        prefix = m["prefix"]
        if m["sep"] == "$":
            out["gps_synced"] = True
        if m["trig"]:
            out["triggered"] = True
        if prefix:
            out["device_id"] = prefix
            if _SONG_METER.match(prefix) or m["ch"] or m["sep"] == "$" or m["ms"]:
                out["recorder"] = "Wildlife Acoustics Song Meter"
                out["name_format"] = "Song Meter PREFIX_YYYYMMDD_HHMMSS"
            elif re.fullmatch(r"[0-9A-Fa-f]{16}", prefix):
                out["recorder"] = "AudioMoth"
                out["name_format"] = "AudioMoth 1.11+ ID_YYYYMMDD_HHMMSS"
            else:
                out["name_format"] = "PREFIX_YYYYMMDD_HHMMSS"
        else:
            out["name_format"] = "YYYYMMDD_HHMMSS" + ("T" if m["trig"] else "")
        if parent_dir_name and re.fullmatch(r"\d{8}", parent_dir_name) and parent_dir_name != m["date"]:
            out["warnings"].append(f"file date {m['date']} differs from its daily folder {parent_dir_name}")
        return out
    m = _TIME_ONLY.match(stem)
    if m and parent_dir_name and re.fullmatch(r"\d{8}", parent_dir_name):
        dt = _stamp(parent_dir_name, m["time"])
        if dt is not None:
            out.update(start_time=dt, utc_offset="", name_format="daily folder YYYYMMDD/HHMMSS")
            if m["trig"]:
                out["triggered"] = True
    return out
