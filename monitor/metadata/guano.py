"""GUANO (``guan`` chunk) parsing: ``Key: Value`` lines, namespaced keys, loose timestamps."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from monitor.metadata.audiomoth import format_offset

log = logging.getLogger(__name__)

MAX_OFFSET = timedelta(hours=14)  # UTC-12 .. UTC+14 exist on Earth

_TS = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(\.\d+)?\s*(Z|[+-]\d{1,2}(?::?\d{2})?)?$")


def parse_guano_text(raw: bytes | str) -> dict[str, str]:
    """Raw ``Key:Value`` pairs (stray spaces after the colon tolerated; NUL padding ignored)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text.replace("\x00", "")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key:
            out[key] = value
    return out


def parse_timestamp(text: str) -> tuple[datetime | None, str]:
    """GUANO ``Timestamp`` -> (datetime, offset text). Offsets ``Z``, ``+01:00``, ``+0100``, ``+1:00``, none.

    ``(None, "")`` when unreadable (impossible date, offset beyond +-14 h).
    """
    m = _TS.match(text.strip())
    if not m:
        return None, ""
    y, mo, d, h, mi, s, frac, zone = m.groups()
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int(round(float(frac or 0) * 1e6)))
    except ValueError:
        return None, ""
    if zone is None:
        return dt, ""
    if zone == "Z":
        off = timedelta(0)
    else:
        sign = -1 if zone[0] == "-" else 1
        body = zone[1:]
        if ":" in body:
            hh, mm = body.split(":", 1)
        else:
            hh, mm = (body[:-2], body[-2:]) if len(body) > 2 else (body, "0")
        off = sign * timedelta(hours=int(hh), minutes=int(mm))
        if abs(off) > MAX_OFFSET:
            return None, ""
    return dt.replace(tzinfo=timezone(off)), format_offset(off)


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def parse_guano(raw: bytes | str) -> dict[str, Any]:
    """Interpret the useful GUANO keys into record fields (plus ``guano`` with every raw key)."""
    kv = parse_guano_text(raw)
    out: dict[str, Any] = {"guano": kv, "warnings": []}
    make, model = kv.get("Make", ""), kv.get("Model", "")
    if make or model:
        out["recorder"] = " ".join(x for x in (make, model) if x)
    if kv.get("Serial"):
        out["device_id"] = kv["Serial"]
    if kv.get("Firmware Version"):
        out["firmware"] = kv["Firmware Version"]
    if kv.get("Timestamp"):
        dt, off = parse_timestamp(kv["Timestamp"])
        if dt is None:
            out["warnings"].append(f"unreadable GUANO Timestamp {kv['Timestamp']!r}")
        else:
            out["start_time"], out["utc_offset"] = dt, off
    pos = kv.get("Loc Position", "").replace(",", " ").split()
    if len(pos) == 2 and _float(pos[0]) is not None and _float(pos[1]) is not None:
        out["latitude"], out["longitude"] = float(pos[0]), float(pos[1])
    for key in ("Temperature Int", "Temperature Ext"):
        if _float(kv.get(key)) is not None:
            out.setdefault("temperature_c", _float(kv[key]))
    if kv.get("OAD|Deployment ID"):
        out["deployment_id"] = kv["OAD|Deployment ID"]
    if _float(kv.get("OAD|Battery Voltage")) is not None:
        out["battery_v"] = _float(kv["OAD|Battery Voltage"])
    if kv.get("Original Filename"):
        out["original_filename"] = kv["Original Filename"]
    return out
