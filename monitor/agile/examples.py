"""Search examples: ``AUDIO[@START_S]`` -> the window a run would score there -> its float16 embedding, computed
exactly as ``monitor run --embeddings`` computes a stored one (the same decode and front end, ``decode_task``;
the same scorer and batch size), so a stored segment given as an example finds itself with similarity 1."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from monitor.audio import AudioError, plan_segments, probe
from monitor.errors import MonitorError


@dataclass(frozen=True)
class Example:
    path: Path
    start_s: float = 0.0

    @property
    def text(self) -> str:
        return f"{self.path.name}@{self.start_s:g}"


def parse_example(text: str) -> Example:
    """``clip.wav`` (its first window) or ``recording.wav@125.5`` (the window starting 125.5 s in)."""
    head, sep, tail = str(text).rpartition("@")
    start = 0.0
    path = str(text)
    if sep and head:
        try:
            start = float(tail)
            path = head
        except ValueError:
            pass  # an @ inside the file name
    p = Path(path).expanduser()
    if not p.is_file():
        raise MonitorError(f"--example {text}: no such audio file {p}")
    if start < 0:
        raise MonitorError(f"--example {text}: the start must be >= 0 s")
    return Example(p, start)


def window(example: Example, pre) -> tuple[int, int, int, int, int]:
    """(sample rate, channels, frames, start frame, end frame) of the example's window: a planned segment of the
    file when the start is one (the very bounds a run uses), else ``window_s`` from the start."""
    try:
        info = probe(example.path)
    except AudioError as exc:
        raise MonitorError(f"--example {example.path}: {exc}") from None
    sr = int(info.sample_rate_hz)
    a = int(round(example.start_s * sr))
    for _, s0, s1 in plan_segments(int(info.frames), sr, pre.segment):
        if int(s0) == a:
            return sr, int(info.channels), int(info.frames), int(s0), int(s1)
    b = min(int(info.frames), a + int(round(pre.segment.window_s * sr)))
    if (b - a) / sr < pre.segment.min_segment_s:
        raise MonitorError(f"--example {example.text}: less than {pre.segment.min_segment_s:g} s of audio there "
                           f"(the file lasts {info.frames / sr:.1f} s)")
    return sr, int(info.channels), int(info.frames), a, b


def example_embeddings(bundle, examples: Sequence[Example], batch_size: int = 16, device: str = "cpu") -> np.ndarray:
    """(k, width) float16 embeddings of ``examples`` with ``bundle``'s backbone."""
    from monitor.decode import decode_task
    from monitor.device import resolve_precision
    from monitor.infer import Scorer, prepare_models
    from monitor.plan import DecodeTask, Rows, Span

    pre = bundle.preprocessing
    feats = []
    for i, ex in enumerate(examples):
        sr, _, _, a, b = window(ex, pre)
        task = DecodeTask(0, 0, 1, (Span(0, 0, ((0, a, b),), str(ex.path), ex.path.name, sr),))
        rows = decode_task(task, pre, "features")
        if rows.errors[0]:
            raise MonitorError(f"--example {ex.text}: {rows.errors[0]}")
        feats.append(rows.data[0])
    precision = resolve_precision("auto", device)
    models, precision = prepare_models([bundle], device, precision)
    scorer = Scorer([bundle], models, device, precision, max(1, int(batch_size)), embeddings=True)
    out = []
    for k in range(0, len(feats), scorer.batch_size):
        x = np.stack(feats[k:k + scorer.batch_size])
        out.append(scorer.collect_embeddings(scorer.submit(Rows(0, x, np.zeros(len(x), np.int64), ("",) * len(x)))))
    return np.concatenate(out)
