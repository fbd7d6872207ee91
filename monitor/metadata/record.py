"""One typed metadata record per file, merged with precedence GUANO > GPS-Sync CSV > comment > IART > file name.

Every value remembers its source (``sources[field]``: ``guano``, ``gps_csv``, ``comment``, ``iart``,
``filename``, ``header``). Unknown stays empty; parsing never raises on junk.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from monitor.metadata.audiomoth import parse_audiomoth_comment
from monitor.metadata.filenames import parse_filename
from monitor.metadata.gpscsv import read_gps_csv
from monitor.metadata.guano import parse_guano
from monitor.metadata.riff import RiffInfo, walk_riff
from monitor.remote import is_url, open_input

log = logging.getLogger(__name__)

MERGED = ["recorder", "device_id", "deployment_id", "firmware", "start_time", "utc_offset", "temperature_c",
          "battery_v", "gain", "latitude", "longitude", "filter", "trigger", "stop_reason"]


@dataclass
class RecordingMetadata:
    """What one file says about itself. ``start_time`` is aware when the offset is known, else naive local
    time; ``firmware_source`` is ``guano`` or ``inferred``; ``battery_bound`` ``<``/``>`` marks a clamped reading."""

    file: str = ""
    recorder: str = ""
    device_id: str = ""
    device_id_valid: bool | None = None
    deployment_id: str = ""
    firmware: str = ""
    firmware_source: str = ""
    start_time: datetime | None = None  # aware when the offset is known, naive (local) otherwise
    utc_offset: str = ""
    temperature_c: float | None = None
    battery_v: float | None = None
    battery_bound: str = ""
    gain: str = ""
    sample_rate_hz: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    latitude: float | None = None
    longitude: float | None = None
    external_mic: bool | None = None
    filter: str = ""
    trigger: str = ""
    stop_reason: str = ""
    comment: str = ""
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """The recordings.csv metadata columns (ISO times; empty for unknown)."""
        st = ""
        if self.start_time is not None:
            st = self.start_time.isoformat(timespec="milliseconds" if self.start_time.microsecond else "seconds")
        return {
            "recorder": self.recorder, "device_id": self.device_id, "deployment_id": self.deployment_id,
            "firmware": self.firmware + (" (inferred)" if self.firmware and self.firmware_source == "inferred" else ""),
            "start_time": st, "utc_offset": self.utc_offset, "temperature_c": self.temperature_c,
            "battery_v": self.battery_v, "gain": self.gain, "sample_rate_hz": self.sample_rate_hz,
            "channels": self.channels, "duration_s": self.duration_s, "latitude": self.latitude,
            "longitude": self.longitude, "filter": self.filter, "trigger": self.trigger,
            "stop_reason": self.stop_reason, "comment": self.comment, "warnings": "; ".join(self.warnings),
        }


def _header(path: Path, riff: RiffInfo, rec: RecordingMetadata) -> None:
    """Sample rate, channels and duration from ``fmt ``/``data`` (PCM-like) or else ``soundfile.info``."""
    f = riff.fmt
    if f.get("sample_rate") and f.get("channels") and riff.plain:
        rec.sample_rate_hz, rec.channels = int(f["sample_rate"]), int(f["channels"])
        d = riff.duration_s
        rec.duration_s = round(d, 6) if d is not None else None
        rec.sources.update(sample_rate_hz="header", channels="header", duration_s="header")
        return
    try:
        import soundfile as sf

        if is_url(path):
            with open_input(path) as fh, sf.SoundFile(fh) as info:
                rate, channels, frames = info.samplerate, info.channels, info.frames
        else:
            info = sf.info(str(path))
            rate, channels, frames = info.samplerate, info.channels, info.frames
        rec.sample_rate_hz, rec.channels = int(rate), int(channels)
        rec.duration_s = round(frames / rate, 6) if rate else None
        rec.sources.update(sample_rate_hz="header", channels="header", duration_s="header")
    except Exception as exc:  # noqa: BLE001
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if text.startswith("Error opening ") and ": " in text:  # soundfile names the path (or file object)
            text = text.rsplit(": ", 1)[1]
        rec.warnings.append(f"no audio header ({text[:80]})")


def _vorbis_comment(path: Path, rec: RecordingMetadata) -> dict[str, str]:
    """FLAC/Ogg tags via soundfile (mutagen adds nothing we need here); a file whose tags cannot be read gets
    a warning saying why."""
    import soundfile as sf

    try:
        with open_input(path) as fh, sf.SoundFile(fh) as f:
            return {k: v for k, v in f.copy_metadata().items() if v}
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        text = (str(exc).splitlines() or [type(exc).__name__])[0]
        rec.warnings.append(f"tags could not be read ({text[-80:]})")
        return {}


def read_metadata(path: Path | str, rel: str | None = None) -> RecordingMetadata:
    """Everything the file's header, comment, GUANO and name say. Never raises. ``path``: a local path or an
    fsspec URL (``monitor.remote``)."""
    path = path if is_url(path) else Path(path)  # type: ignore[assignment]
    rec = RecordingMetadata(file=rel if rel is not None else _name(path))
    try:
        _read(path, rec)
    except Exception as exc:  # noqa: BLE001 - parsing junk must not raise
        log.debug("metadata of %s", path, exc_info=True)
        rec.warnings.append(f"metadata could not be fully read ({type(exc).__name__})")
    return rec


def _name(path: Path | str) -> str:
    return path.name if isinstance(path, Path) else str(path).rstrip("/").rsplit("/", 1)[-1]


def _read(path: Path | str, rec: RecordingMetadata) -> None:
    riff = walk_riff(path)
    rec.warnings += riff.warnings
    _header(path, riff, rec)
    sources: list[tuple[str, dict[str, Any]]] = []
    if riff.guan:
        g = parse_guano(riff.guan)
        rec.warnings += g.pop("warnings", [])
        sources.append(("guano", g))
    gps = read_gps_csv(path) if riff.form and isinstance(path, Path) else {}  # companion CSVs: local cards
    if gps:
        sources.append(("gps_csv", gps))
    comment = riff.info.get("ICMT", "")
    if not riff.form:
        tags = _vorbis_comment(path, rec)
        comment = tags.get("comment", "")
        if tags.get("artist", "").startswith("AudioMoth "):
            riff.info["IART"] = tags["artist"]
    rec.comment = comment
    c: dict[str, Any] = {}
    if comment:
        c = parse_audiomoth_comment(comment)
        rec.warnings += c.pop("warnings", [])
        if c.get("device_id") or c.get("start_time") or c.get("gain") or c.get("split_from"):
            c.setdefault("recorder", "AudioMoth")
        if c.get("device_id_valid") is False:
            c.pop("device_id")
            rec.device_id_valid = False
        sources.append(("comment", c))
    iart = riff.info.get("IART", "")
    if iart.startswith("AudioMoth ") and re.fullmatch(r"[0-9A-Fa-f]{16}", iart.split()[-1]):
        sources.append(("iart", {"device_id": iart.split()[-1].upper(), "recorder": "AudioMoth"}))
    parent = path.parent.name if isinstance(path, Path) else _name(str(path).rstrip("/").rsplit("/", 1)[0])
    n = parse_filename(_name(path), parent)
    rec.warnings += n.pop("warnings", [])
    if n.get("device_id") and n["device_id"].upper() in {str(d.get("deployment_id", "")).upper() for _, d in sources}:
        n.pop("device_id")  # AudioMoth 1.11 names may carry the deployment ID, not the device ID
    sources.append(("filename", n))
    for key in MERGED:
        for src, d in sources:
            v = d.get(key)
            if v not in (None, ""):
                setattr(rec, key, v)
                rec.sources[key] = src
                if key == "firmware":
                    rec.firmware_source = "guano" if src == "guano" else "inferred"
                break
    _settle_time(rec, sources)
    for src, d in sources:
        if d.get("battery_bound") and rec.sources.get("battery_v") == src:
            rec.battery_bound = d["battery_bound"]
            word = "less" if rec.battery_bound == "<" else "more"
            rec.warnings.append(f"battery was {word} than {rec.battery_v:g} V (battery_v is a bound)")
        if d.get("external_mic"):
            rec.external_mic = True
    if rec.device_id and rec.device_id_valid is None and rec.sources.get("device_id") in ("comment", "iart", "guano"):
        rec.device_id_valid = True


def _wall(t: datetime) -> datetime:
    return t.replace(tzinfo=None)


def _settle_time(rec: RecordingMetadata, sources: list[tuple[str, dict[str, Any]]]) -> None:
    """Attach the offset that belongs to the chosen start time; borrow one from a source that agrees;
    warn when sources disagree about the start."""
    if rec.start_time is None:
        rec.utc_offset = ""
        rec.sources.pop("utc_offset", None)
        return
    chosen_src = rec.sources["start_time"]
    chosen = dict(sources)[chosen_src]
    rec.utc_offset = chosen.get("utc_offset", "") or ""
    if rec.utc_offset:
        rec.sources["utc_offset"] = chosen_src
    else:
        rec.sources.pop("utc_offset", None)
    for src, d in sources:
        t = d.get("start_time")
        if src == chosen_src or not isinstance(t, datetime):
            continue
        both_aware = rec.start_time.tzinfo is not None and t.tzinfo is not None
        if both_aware:
            same = abs((t - rec.start_time).total_seconds()) <= 1
        elif rec.start_time.tzinfo is None and t.tzinfo is not None and d.get("utc_offset") and src != "filename":
            same = abs((_wall(t) - rec.start_time).total_seconds()) <= 1
            if same:  # a local time without offset, confirmed by a source that knows the offset
                rec.start_time = rec.start_time.replace(tzinfo=t.tzinfo)
                rec.utc_offset = d["utc_offset"]
                rec.sources["utc_offset"] = src
        elif rec.start_time.tzinfo is not None and t.tzinfo is None:
            same = abs((_wall(rec.start_time) - t).total_seconds()) <= 1
        else:
            same = abs((_wall(t) - _wall(rec.start_time)).total_seconds()) <= 1
        if not same:
            rec.warnings.append(f"start time from {src} ({t.isoformat()}) differs from {chosen_src} "
                                f"({rec.start_time.isoformat()}); using {chosen_src}")
