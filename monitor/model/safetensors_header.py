"""The header of a safetensors file, read and checked against the file's size without loading any tensor."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from monitor.errors import BundleError


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names -> dtype, shape, offsets), checked against its size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            if n > min(100_000_000, size - 8):
                raise ValueError("bad header length")
            header = json.loads(fh.read(n))
        header.pop("__metadata__", None)
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except Exception:
        raise BundleError(f"{path} is not a safetensors file; bundles hold weights only as safetensors") from None
    if 8 + n + end != size:
        raise BundleError(f"{path} is truncated or damaged ({size} bytes, the header needs {8 + n + end}); "
                          "copy the bundle again")
    return header
