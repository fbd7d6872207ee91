"""One typed metadata record per file, merged with precedence GUANO > comment > file name.

Every value remembers its source. Unknown stays empty; parsing never raises on junk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from monitor.metadata.audiomoth import parse_audiomoth_comment
from monitor.metadata.filenames import parse_filename
from monitor.metadata.guano import parse_guano
from monitor.metadata.riff import walk_riff

log = logging.getLogger(__name__)

MERGED = ["recorder", "device_id", "deployment_id", "firmware", "start_time", "utc_offset", "temperature_c",
          "battery_v", "gain", "latitude", "longitude", "filter", "trigger", "stop_reason"]


@dataclass
class RecordingMetadata:
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
        battery = self.battery_v
        return {
            "recorder": self.recorder, "device_id": self.device_id, "deployment_id": self.deployment_id,
            "firmware": self.firmware + (" (inferred)" if self.firmware and self.firmware_source == "inferred" else ""),
            "start_time": st, "utc_offset": self.utc_offset, "temperature_c": self.temperature_c,
            "battery_v": battery, "gain": self.gain, "sample_rate_hz": self.sample_rate_hz,
            "channels": self.channels, "duration_s": self.duration_s, "latitude": self.latitude,
            "longitude": self.longitude, "filter": self.filter, "trigger": self.trigger,
            "stop_reason": self.stop_reason, "comment": self.comment, "warnings": "; ".join(self.warnings),
        }


def _header(path: Path, riff, rec: RecordingMetadata) -> None:
    f = riff.fmt
    if f.get("sample_rate") and f.get("channels"):
        rec.sample_rate_hz, rec.channels = int(f["sample_rate"]), int(f["channels"])
        d = riff.duration_s
        rec.duration_s = round(d, 6) if d is not None else None
        rec.sources.update(sample_rate_hz="header", channels="header", duration_s="header")
        return
    try:
        import soundfile as sf

        info = sf.info(str(path))
        rec.sample_rate_hz, rec.channels = int(info.samplerate), int(info.channels)
        rec.duration_s = round(info.frames / info.samplerate, 6) if info.samplerate else None
        rec.sources.update(sample_rate_hz="header", channels="header", duration_s="header")
    except Exception as exc:  # noqa: BLE001
        rec.warnings.append(f"no audio header ({str(exc).splitlines()[0][:80]})")


def _vorbis_comment(path: Path) -> dict[str, str]:
    """FLAC/Ogg tags via soundfile (mutagen adds nothing we need here)."""
    try:
        import soundfile as sf

        with sf.SoundFile(str(path)) as f:
            return {k: v for k, v in f.copy_metadata().items() if v}
    except Exception:  # noqa: BLE001
        return {}


def read_metadata(path: Path | str, rel: str | None = None) -> RecordingMetadata:
    """Everything the file's header, comment, GUANO and name say. Never raises."""
    path = Path(path)
    rec = RecordingMetadata(file=rel if rel is not None else path.name)
    try:
        _read(path, rec)
    except Exception as exc:  # noqa: BLE001 - parsing junk must not raise
        log.debug("metadata of %s", path, exc_info=True)
        rec.warnings.append(f"metadata could not be fully read ({type(exc).__name__})")
    return rec


def _read(path: Path, rec: RecordingMetadata) -> None:
    riff = walk_riff(path)
    rec.warnings += riff.warnings
    _header(path, riff, rec)
    sources: list[tuple[str, dict[str, Any]]] = []
    if riff.guan:
        g = parse_guano(riff.guan)
        rec.warnings += g.pop("warnings", [])
        sources.append(("guano", g))
    comment = riff.info.get("ICMT", "")
    if not riff.form:
        tags = _vorbis_comment(path)
        comment = tags.get("comment", "")
        if tags.get("artist", "").startswith("AudioMoth "):
            riff.info["IART"] = tags["artist"]
    rec.comment = comment
    if comment:
        c = parse_audiomoth_comment(comment)
        rec.warnings += c.pop("warnings", [])
        if c.get("device_id") or c.get("start_time") or c.get("gain") or c.get("split_from"):
            c.setdefault("recorder", "AudioMoth")
        if c.get("firmware"):
            rec.firmware_source = "inferred"
        if c.get("device_id_valid") is False:
            c.pop("device_id")
            rec.device_id_valid = False
        sources.append(("comment", c))
    iart = riff.info.get("IART", "")
    if iart.startswith("AudioMoth "):
        dev = iart.split()[-1].upper()
        sources.append(("iart", {"device_id": dev, "recorder": "AudioMoth"}))
    parent = path.parent.name
    n = parse_filename(path.name, parent)
    rec.warnings += n.pop("warnings", [])
    sources.append(("filename", n))
    for key in MERGED:
        for src, d in sources:
            v = d.get(key)
            if v not in (None, ""):
                setattr(rec, key, v)
                rec.sources[key] = src
                if key == "firmware":
                    rec.firmware_source = "inferred" if src == "comment" else src
                break
    # the offset travels with the start time it belongs to
    if rec.start_time is not None:
        src = rec.sources.get("start_time")
        off = next((d.get("utc_offset", "") for s, d in sources if s == src), "")
        rec.utc_offset = off or ""
        rec.sources["utc_offset"] = src if off else ""
    for src, d in sources:
        if d.get("battery_bound"):
            rec.battery_bound = d["battery_bound"]
        if d.get("external_mic"):
            rec.external_mic = True
    if rec.device_id and rec.device_id_valid is None and rec.sources.get("device_id") in ("comment", "iart", "guano"):
        rec.device_id_valid = True
