"""Write WAVs laid out byte for byte like an AudioMoth's: for tests and the example SD card.

Layout (firmware 1.10): ``RIFF/WAVE``, ``fmt `` (16 bytes), ``LIST``/``INFO`` holding a fixed-size
NUL-padded ``ICMT`` and a 32-byte ``IART``, ``data``, then a ``guan`` chunk written last and, when its
size is odd, without a pad byte.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from monitor.metadata.riff import chunk, info_list, write_wav_with_chunks

log = logging.getLogger(__name__)

ICMT_BYTES = 384  # 128 in 1.0-1.1, 256 in 1.2-1.3, 384 from 1.4
IART_BYTES = 32


def fixed_text(text: str, size: int, stale: str = "") -> bytes:
    """``text`` (cut to ``size - 1`` bytes) + NUL in a ``size``-byte buffer, NUL-padded; ``stale`` is
    text left after the NUL by an uncleared buffer (firmware before 1.11)."""
    raw = text.encode("utf-8")[:size - 1] + b"\x00" + stale.encode("utf-8")
    return raw[:size].ljust(size, b"\x00")


def format_guano(start: datetime, device_id: str, *, firmware: str = "1.10.1", temperature_c: float | None = None,
                 battery_v: float | None = None, latitude: float | None = None, longitude: float | None = None,
                 deployment_id: str | None = None, original_filename: str | None = None) -> str:
    """AudioMoth-style GUANO text (``Key:Value`` lines); ``start`` timezone-aware."""
    lines = ["GUANO|Version:1.0", "Make:Open Acoustic Devices", "Model:AudioMoth", f"Serial:{device_id}",
             f"Firmware Version:{firmware}", f"Timestamp:{start.isoformat()}"]
    if latitude is not None and longitude is not None:
        lines.append(f"Loc Position:{latitude:.6f} {longitude:.6f}")
    if temperature_c is not None:
        lines.append(f"Temperature Int:{temperature_c:.1f}")
    if battery_v is not None:
        lines.append(f"OAD|Battery Voltage:{min(5.0, max(2.4, battery_v)):.1f}")
    if deployment_id:
        lines.append(f"OAD|Deployment ID:{deployment_id}")
    if original_filename:
        lines.append(f"Original Filename:{original_filename}")
    return "\n".join(lines) + "\n"


def write_audiomoth_wav(path: str | Path, samples_int16, sample_rate_hz: int, comment: str,
                        device_id: str | None = None, guano: str | None = None, icmt_bytes: int = ICMT_BYTES,
                        stale: str = "", info_after_data: bool = False) -> Path:
    """Write ``samples_int16`` (``(frames,)`` or ``(frames, channels)``) with an AudioMoth header.

    ``comment`` goes in a fixed ``icmt_bytes`` ICMT (cut to fit, NUL kept), ``device_id``
    in ``IART`` as ``AudioMoth <ID>``, ``guano`` in a ``guan`` chunk after ``data`` (odd: no pad byte).
    ``info_after_data`` moves ``LIST`` after ``data`` as audio editors do when they re-save a file.
    """
    entries = {"ICMT": fixed_text(comment, icmt_bytes, stale)}
    if device_id:
        entries["IART"] = fixed_text(f"AudioMoth {device_id}", IART_BYTES)
    info = [info_list(entries)]
    after = [chunk("guan", guano.encode("utf-8"))] if guano else []
    before, after = ([], info + after) if info_after_data else (info, after)
    return write_wav_with_chunks(path, samples_int16, sample_rate_hz, before, after, pad_last=not guano)
