"""A RIFF/RF64 chunk walker that never reads audio data and never crashes on a lying header.

Reads ``fmt ``, ``LIST``/``INFO`` (``ICMT``, ``IART``, ...), ``guan`` and notes ``id3 `` chunks.
Handles pad bytes, an unpadded odd last chunk, ``LIST`` after ``data``, RF64 with ``ds64``, and
sizes that run past the end of the file (truncated and flagged).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from monitor.remote import open_input

log = logging.getLogger(__name__)

MAX_META_BYTES = 1 << 20  # never read more than this of any metadata chunk


@dataclass
class Chunk:
    id: str
    offset: int  # of the chunk's payload
    size: int  # as declared (or from ds64)
    truncated: bool = False


@dataclass
class RiffInfo:
    form: str = ""  # "RIFF", "RF64", "BW64" or "" when not a RIFF file
    chunks: list[Chunk] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)  # LIST/INFO entries, cut at the first NUL
    guan: bytes | None = None
    id3: bool = False
    fmt: dict[str, int] = field(default_factory=dict)
    data_offset: int | None = None
    data_size: int | None = None  # bytes of audio actually present
    warnings: list[str] = field(default_factory=list)

    @property
    def plain(self) -> bool:
        """PCM, float, A-law or mu-law: frames = data bytes / block_align (not so for ADPCM, MP3-in-WAV)."""
        return self.fmt.get("subformat_tag", self.fmt.get("format_tag")) in (1, 3, 6, 7)

    @property
    def duration_s(self) -> float | None:
        """Seconds of audio actually present (None when the header cannot say)."""
        f = self.fmt
        if self.data_size is None or not f.get("block_align") or not f.get("sample_rate") or not self.plain:
            return None
        return (self.data_size // f["block_align"]) / f["sample_rate"]


def decode_text(raw: bytes) -> str:
    """Cut at the first NUL (stale text after it must not leak in), decode UTF-8 or Latin-1, strip."""
    raw = raw.split(b"\x00", 1)[0]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return "".join(ch for ch in text if ch.isprintable() or ch in "\t").strip()


def _plausible_id(b: bytes) -> bool:
    return len(b) == 4 and all(32 <= c < 127 for c in b)


def _parse_fmt(payload: bytes, out: RiffInfo) -> None:
    if len(payload) < 16:
        out.warnings.append("fmt chunk too short")
        return
    tag, ch, sr, br, ba, bits = struct.unpack("<HHIIHH", payload[:16])
    out.fmt = {"format_tag": tag, "channels": ch, "sample_rate": sr, "byte_rate": br, "block_align": ba,
               "bits_per_sample": bits}
    if tag == 0xFFFE and len(payload) >= 40:
        out.fmt["subformat_tag"] = struct.unpack("<H", payload[24:26])[0]


def _parse_list(payload: bytes, out: RiffInfo) -> None:
    if payload[:4] != b"INFO":
        return
    pos = 4
    while pos + 8 <= len(payload):
        cid = payload[pos:pos + 4]
        (size,) = struct.unpack("<I", payload[pos + 4:pos + 8])
        body = payload[pos + 8:pos + 8 + size]
        if len(body) < size:
            out.warnings.append(f"LIST/INFO entry {cid!r} runs past its list (truncated)")
        if _plausible_id(cid):
            out.info[cid.decode("ascii")] = decode_text(body)
        else:
            out.warnings.append("unreadable LIST/INFO entry id")
            break
        pos += 8 + size + (size & 1)


def _unfinished(fh, payload_at: int, size: int, file_size: int) -> bool:
    """A placeholder data size (0 or 0xFFFFFFFF) followed by audio rather than by another chunk."""
    if file_size <= payload_at:
        return False
    if size == 0xFFFFFFFF:
        return True
    fh.seek(payload_at)
    nxt = fh.read(8)
    return not (len(nxt) == 8 and _plausible_id(nxt[:4])
                and payload_at + 8 + struct.unpack("<I", nxt[4:8])[0] <= file_size)


def walk_riff(path: str | Path) -> RiffInfo:
    """Walk the chunks of ``path``. Never raises for bad content; problems become ``warnings``."""
    out = RiffInfo()
    try:
        fh = open_input(path, 1 << 16)  # a local path, or an fsspec URL (small blocks: chunk headers)
    except OSError as exc:
        out.warnings.append(f"could not open file ({exc.strerror or exc})")
        return out
    with fh:
        fh.seek(0, 2)
        file_size = fh.tell()
        fh.seek(0)
        head = fh.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64", b"BW64") or head[8:12] != b"WAVE":
            return out
        out.form = head[:4].decode()
        (riff_size,) = struct.unpack("<I", head[4:8])
        if out.form == "RIFF" and riff_size + 8 != file_size:
            out.warnings.append(f"RIFF size says {riff_size + 8} bytes, file has {file_size}")
        ds64_data: int | None = None
        pos = 12
        while pos + 8 <= file_size and len(out.chunks) < 10_000:
            fh.seek(pos)
            hdr = fh.read(8)
            cid_b, (size,) = hdr[:4], struct.unpack("<I", hdr[4:8])
            if not _plausible_id(cid_b):
                # an odd-sized previous chunk written without its pad byte: try one byte back
                fh.seek(pos - 1)
                alt = fh.read(8)
                if pos > 12 and len(alt) == 8 and _plausible_id(alt[:4]) and out.chunks and out.chunks[-1].size & 1:
                    pos -= 1
                    cid_b, (size,) = alt[:4], struct.unpack("<I", alt[4:8])
                    out.warnings.append(f"chunk before {cid_b!r} has no pad byte")
                else:
                    out.warnings.append(f"unreadable chunk header at byte {pos}; stopped there")
                    break
            cid = cid_b.decode("ascii")
            payload_at = pos + 8
            if cid == "data" and size == 0xFFFFFFFF and ds64_data is not None:
                size = ds64_data
            elif cid == "data" and size in (0, 0xFFFFFFFF) and _unfinished(fh, payload_at, size, file_size):
                out.warnings.append(f"data size in the header is {size:#x} (recording not finalised?); "
                                    f"using the {file_size - payload_at} bytes to the end of the file")
                size = file_size - payload_at
            truncated = payload_at + size > file_size
            if truncated:
                out.warnings.append(f"chunk {cid!r} says {size} bytes but the file ends after "
                                    f"{file_size - payload_at} (truncated)")
            avail = min(size, file_size - payload_at)
            out.chunks.append(Chunk(cid, payload_at, size, truncated))
            if cid == "data":
                out.data_offset, out.data_size = payload_at, avail
            elif cid in ("fmt ", "LIST", "guan", "ds64"):
                fh.seek(payload_at)
                payload = fh.read(min(avail, MAX_META_BYTES))
                if cid == "fmt ":
                    _parse_fmt(payload, out)
                elif cid == "LIST":
                    _parse_list(payload, out)
                elif cid == "guan":
                    out.guan = payload
                elif cid == "ds64" and len(payload) >= 24:
                    _, ds64_data, _ = struct.unpack("<QQQ", payload[:24])
            elif cid.lower().strip() == "id3":
                out.id3 = True
            if truncated:
                break
            pos = payload_at + size + (size & 1)
    return out


def chunk(cid: str, payload: bytes) -> bytes:
    """One RIFF chunk with its pad byte (for writing test and example files)."""
    return cid.encode("ascii") + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) & 1 else b"")


def info_list(entries: dict[str, bytes]) -> bytes:
    """A ``LIST``/``INFO`` chunk from raw entry payloads (e.g. a fixed-size NUL-padded ICMT)."""
    return chunk("LIST", b"INFO" + b"".join(chunk(k, v) for k, v in entries.items()))


def write_wav_with_chunks(path: str | Path, samples_int16, sample_rate_hz: int,
                          chunks_before_data: Sequence[bytes] = (), chunks_after_data: Sequence[bytes] = (),
                          pad_last: bool = True, *, before_data: Sequence[bytes] | None = None,
                          after_data: Sequence[bytes] | None = None) -> Path:
    """Write a 16-bit PCM WAV with extra chunks placed as real recorders place them.

    ``samples_int16``: ``(frames,)`` or ``(frames, channels)``. ``chunks_before_data`` /
    ``chunks_after_data`` (aliases ``before_data`` / ``after_data``) are complete chunks (``chunk(...)``,
    ``info_list(...)``) written between ``fmt `` and ``data`` / after ``data``. ``pad_last=False`` drops
    the pad byte of an odd-sized last chunk, as AudioMoth does with ``guan``. The RIFF size is exact.
    """
    import numpy as np

    before = list(before_data if before_data is not None else chunks_before_data)
    after = list(after_data if after_data is not None else chunks_after_data)
    x = np.asarray(samples_int16, dtype="<i2")
    channels = 1 if x.ndim == 1 else x.shape[1]
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate_hz, sample_rate_hz * 2 * channels, 2 * channels, 16)
    body = chunk("fmt ", fmt) + b"".join(before) + chunk("data", x.tobytes()) + b"".join(after)
    last = after[-1] if after else None
    if not pad_last and last is not None and struct.unpack("<I", last[4:8])[0] & 1:
        body = body[:-1]
    data = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return Path(path)
