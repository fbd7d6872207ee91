"""AudioMoth comment parsing, clause by clause, for firmware 1.0 to 1.11.1, GPS-Sync and AudioMoth-Utils.

Each clause is matched on its own (their order changed between versions). Dates are DD/MM/YYYY.
Unknown stays ``None``; nothing is guessed.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from typing import Any

log = logging.getLogger(__name__)

BOGUS_ID = "0FE081F80FE081F0"  # printed by firmware 1.0-1.1 on every device

_TIME = re.compile(r"Recorded at (\d{1,2}):(\d{2}):(\d{2}) (\d{1,2})/(\d{1,2})/(\d{4})"
                   r"(?: \(UTC(?:([+-])?(\d{1,2})?(?::(\d{2}))?)\))?")
_DEVICE = re.compile(r"by AudioMoth ([0-9A-Fa-f]{16})")
_DEPLOY = re.compile(r"during deployment ([0-9A-Fa-f]{16})")
_GAIN = re.compile(r"at gain setting (\d)|at (low-medium|medium-high|low|medium|high) gain(?: setting)?")
_BATTERY = re.compile(r"battery (?:state )?was (less than |greater than )?(\d+(?:\.\d+)?)V")
_TEMP = re.compile(r"temperature was (-?\d+(?:\.\d+)?)C")
_FILTER = re.compile(r"(Low|High|Band)-pass filter (?:applied with cut-off |with )frequenc(?:y|ies) of "
                     r"([\d.]+)kHz(?: and ([\d.]+)kHz)?")
_AMP = re.compile(r"Amplitude threshold was (.+?)(?: with (\d+)s minimum trigger duration)?\.(?=\s|$)")
_FREQ = re.compile(r"Frequency trigger \(([\d.]+)kHz and window length of (\d+) samples\) threshold was "
                   r"([\d.]+%)(?: with (\d+)s minimum trigger duration)?")
_STOP = re.compile(r"Recording (?:cancelled before completion|stopped) (?:due to|by) ([^.]+)\.")
_SPLIT = re.compile(r"^(Split|Expanded) from (.+?)(?: as file (\d+) of (\d+))?\.?$")

_STOP_NAMES = {
    "low battery voltage": "low voltage", "low voltage": "low voltage",
    "change of switch position": "switch position change", "switch position change": "switch position change",
    "file size limit": "file size limit", "microphone change": "microphone change",
    "magnetic switch": "magnetic switch", "sd card write error": "SD card write error",
}


def _offset(sign: str | None, hours: str | None, minutes: str | None) -> tuple[timedelta | None, str | None]:
    """(offset, warning). ``(UTC:30)``: the firmware lost the sign of a 0-hour offset: unknown."""
    if hours is None and minutes is None:
        return timedelta(0), None
    if hours is None and minutes is not None:
        return None, f"UTC offset ±0:{minutes} printed without its sign (firmware 1.2.2-1.3.0); offset left unknown"
    delta = timedelta(hours=int(hours or 0), minutes=int(minutes or 0))
    if delta > timedelta(hours=14) or int(minutes or 0) >= 60:
        return None, f"impossible UTC offset {sign or ''}{hours}:{minutes or '00'}; offset left unknown"
    return (-delta if sign == "-" else delta), None


def format_offset(delta: timedelta) -> str:
    """timedelta -> ``+05:30`` / ``-08:00``."""
    total = int(delta.total_seconds() // 60)
    sign = "-" if total < 0 else "+"
    total = abs(total)
    return f"{sign}{total // 60:02d}:{total % 60:02d}"


def infer_firmware(text: str) -> str:
    """A firmware range from the comment's wording (reported as inferred); "" when it says nothing."""
    if _SPLIT.match(text):
        return ""
    if "Recording stopped due to SD card write error" in text:
        return "1.11.0-1.11.1"
    if "Recording stopped due to magnetic switch" in text:
        return "GPS-Sync"
    if "Frequency trigger" in text:
        return "1.8.0-1.11.1"
    if re.search(r"at [a-z-]+ gain while battery was", text):
        amp, filt = text.find("Amplitude threshold"), re.search(r"(Low|High|Band)-pass filter", text)
        if amp >= 0 and filt:  # 1.8.0 moved the filter clause before the threshold clause
            return "1.8.0-1.11.1" if filt.start() < amp else ("1.7.x" if "stopped by magnetic switch" in text
                                                              else "1.6.0-1.7.x")
        return "1.7.0-1.11.1" if "stopped by magnetic switch" in text else "1.6.0-1.11.1"
    if re.search(r"during deployment|using external microphone", text) or "due to microphone change" in text:
        return "1.5.0"
    if re.search(r"at [a-z-]+ gain setting while battery state was", text):
        return "1.4.0-1.4.4"
    if BOGUS_ID in text.upper():
        return "1.0.1-1.1.0" if "(UTC" in text else "1.0"
    if re.search(r"\(UTC[+-]?\d*:\d{2}\)", text):
        return "1.2.2-1.3.0"
    if re.search(r"at gain setting \d", text):
        if re.search(r"battery state was (less|greater) than|Recording cancelled before completion", text):
            return "1.2.1-1.3.0"
        return "1.2.0-1.3.0"
    return ""


def _unwrap(text: str, out: dict[str, Any]) -> str:
    """Comments re-written by other tools, e.g. OpenSoundscape's ``opso_metadata{json}``."""
    if text.startswith("opso_metadata{"):
        import json

        try:
            inner = json.loads(text[len("opso_metadata"):]).get("comment")
        except ValueError:
            inner = None
        if isinstance(inner, str):
            out["warnings"].append("comment wrapped by OpenSoundscape; the original AudioMoth comment was used")
            return inner.strip()
    return text


def parse_audiomoth_comment(text: str) -> dict[str, Any]:
    """Parse one AudioMoth ``ICMT`` comment (already cut at its first NUL). Never raises."""
    out: dict[str, Any] = {"warnings": []}
    text = (text or "").split("\x00", 1)[0].strip()
    if not text:
        return out
    text = _unwrap(text, out)
    fw = infer_firmware(text)
    if fw:
        out["firmware"] = fw
    m = _SPLIT.match(text)
    if m:
        out["split_from"] = m.group(2)
        out["warnings"].append(f"comment replaced by AudioMoth-Utils ({m.group(1).lower()} from {m.group(2)})")
        return out
    m = _TIME.search(text)
    if m:
        hh, mi, ss, dd, mo, yy, sign, zh, zm = m.groups()
        try:
            local = datetime(int(yy), int(mo), int(dd), int(hh), int(mi), int(ss))
        except ValueError:
            out["warnings"].append(f"impossible date/time in comment: {m.group(0)!r}")
            local = None
        if local is not None:
            if "(UTC" not in m.group(0) and text[m.end():].lstrip().startswith("("):
                off, warn = None, f"unreadable time zone after {m.group(0)!r}; offset left unknown"
            elif "(UTC" not in m.group(0):
                # firmware 1.0 printed no zone: its clock ran in UTC
                off, warn = timedelta(0), None
                out["warnings"].append("no time zone in comment (firmware 1.0 clocks run in UTC)")
            else:
                off, warn = _offset(sign, zh, zm)
            if warn:
                out["warnings"].append(warn)
            if off is None:
                out["start_time"] = local
                out["utc_offset"] = ""
            else:
                out["start_time"] = local.replace(tzinfo=timezone(off))
                out["utc_offset"] = format_offset(off)
    m = _DEVICE.search(text)
    if m:
        dev = m.group(1).upper()
        out["device_id"] = dev
        out["device_id_valid"] = dev != BOGUS_ID
        if dev == BOGUS_ID:
            out["warnings"].append(f"device ID {BOGUS_ID} is the firmware 1.0-1.1 placeholder, not a real ID")
    m = _DEPLOY.search(text)
    if m:
        out["deployment_id"] = m.group(1).upper()
    if "using external microphone" in text:
        out["external_mic"] = True
    m = _GAIN.search(text)
    if m:
        out["gain"] = m.group(1) if m.group(1) is not None else m.group(2)
    m = _BATTERY.search(text)
    if m:
        bound, value = m.group(1), m.group(2)
        volts = float(value)
        legacy = re.fullmatch(r"(\d)\.0(\d)", value)
        if fw == "1.0" and legacy:  # 1.0 printed 4.3 V as "4.03V"
            volts = int(legacy.group(1)) + int(legacy.group(2)) / 10
        out["battery_v"] = volts
        out["battery_bound"] = "<" if bound and bound.startswith("less") else ">" if bound else ""
    m = _TEMP.search(text)
    if m:
        out["temperature_c"] = float(m.group(1))
    m = _FILTER.search(text)
    if m:
        kind, a, b = m.groups()
        out["filter"] = f"{kind.lower()}-pass {a} kHz" + (f" - {b} kHz" if b else "")
    trig = []
    m = _AMP.search(text)
    if m:
        trig.append(f"amplitude threshold {m.group(1)}" + (f", {m.group(2)} s minimum" if m.group(2) else ""))
    m = _FREQ.search(text)
    if m:
        trig.append(f"frequency trigger {m.group(1)} kHz, window {m.group(2)} samples, threshold {m.group(3)}"
                    + (f", {m.group(4)} s minimum" if m.group(4) else ""))
    if trig:
        out["trigger"] = "; ".join(trig)
    m = _STOP.search(text)
    if m:
        reason = m.group(1).strip()
        out["stop_reason"] = _STOP_NAMES.get(reason.lower(), reason)
    if "start_time" not in out and "Recorded at" in text and not _TIME.search(text):
        out["warnings"].append("comment has 'Recorded at' but no readable time")
    return out


def _volts(v: float) -> str:
    """Battery as the firmware prints it: clamped to ``less than 2.5V`` / ``greater than 4.9V``."""
    if v < 2.5:
        return "less than 2.5V"
    if v > 4.9:
        return "greater than 4.9V"
    return f"{v:.1f}V"


def format_comment(start: datetime, device_id: str, *, gain: str = "medium", battery_v: float = 4.2,
                   temperature_c: float = 18.0, high_pass_khz: float | None = None,
                   low_pass_khz: float | None = None, amplitude_threshold: str | None = None,
                   min_trigger_s: int = 1, external_mic: bool = False, deployment_id: str | None = None,
                   stop_reason: str | None = None) -> str:
    """A firmware-1.10-style ``ICMT`` comment, clause for clause, for writing example files.

    ``start`` must be timezone-aware (its offset is printed as ``(UTC+1)``, ``(UTC-3:30)``, ``(UTC)``).
    Both ``high_pass_khz`` and ``low_pass_khz`` give a band-pass clause. ``stop_reason``: e.g.
    ``"low voltage"``, ``"file size limit"``, ``"magnetic switch"`` (printed as ``Recording stopped ...``).
    """
    off = start.utcoffset() or timedelta(0)
    minutes = int(off.total_seconds() // 60)
    zone = "UTC" if minutes == 0 else f"UTC{'+' if minutes > 0 else '-'}{abs(minutes) // 60}" + (
        f":{abs(minutes) % 60:02d}" if abs(minutes) % 60 else "")
    who = f"during deployment {deployment_id}" if deployment_id else f"by AudioMoth {device_id}"
    mic = " using external microphone" if external_mic else ""
    text = (f"Recorded at {start:%H:%M:%S %d/%m/%Y} ({zone}) {who}{mic} at {gain} gain while "
            f"battery was {_volts(battery_v)} and temperature was {temperature_c:.1f}C.")
    if high_pass_khz is not None and low_pass_khz is not None:
        text += (f" Band-pass filter with frequencies of {high_pass_khz:.1f}kHz and {low_pass_khz:.1f}kHz"
                 " applied.")
    elif high_pass_khz is not None:
        text += f" High-pass filter with frequency of {high_pass_khz:.1f}kHz applied."
    elif low_pass_khz is not None:
        text += f" Low-pass filter with frequency of {low_pass_khz:.1f}kHz applied."
    if amplitude_threshold is not None:
        text += f" Amplitude threshold was {amplitude_threshold} with {min_trigger_s}s minimum trigger duration."
    if stop_reason:
        text += f" Recording stopped {'by' if stop_reason == 'magnetic switch' else 'due to'} {stop_reason}."
    return text
