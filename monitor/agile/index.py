"""Nearest segments by cosine similarity over stored float16 embeddings, by brute force.

The stored float16 matrix is used as it is, divided by the stored row lengths; a query is one matrix-vector product
(torch's float16 kernel: p50 0.75 s wall, 0.37 s CPU, over 1 M x 768 on 2 busy cores, ``benchmarks/agile.py``), then the best
candidates are re-ranked exactly in float64, so ties and float16 rounding never change the order that
matters. Several examples: the mean of their cosine similarities (the product with the mean of the
normalised examples). Brute force is exact, needs no build step and no extra package; at the sizes a
season holds (up to about a million segments) it beats building a graph index for each search: at 50,000
vectors usearch, faiss HNSW and hnswlib answer in 0.5-2 ms but take 90-285 s to build on 2 cores, and the build
grows with every card (``benchmarks/agile.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

CHUNK = 1 << 16  # rows normalised at once (float32 scratch: 200 MB at width 768)
SHORTLIST = 64  # re-ranked exactly beyond ``top``


def unit_rows(vectors: np.ndarray) -> Any:
    """float16 (n, width) -> a torch float16 tensor of the rows scaled to unit length (zero rows stay zero)."""
    import torch

    v = np.asarray(vectors)
    out = torch.empty(v.shape, dtype=torch.float16)
    for a in range(0, len(v), CHUNK):
        x = torch.from_numpy(np.ascontiguousarray(v[a:a + CHUNK], dtype=np.float32))
        out[a:a + CHUNK] = (x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)).half()
    return out


class SegmentIndex:
    """Brute-force cosine search over ``vectors`` (n, width) float16. ``norms``: each row's length (the store keeps
    them): the rows are then used as they are and the products divided by the lengths, with no pass over the
    matrix; without them the rows are unit-normalised once (``unit_rows``)."""

    def __init__(self, vectors: np.ndarray, norms: np.ndarray | None = None):
        import torch

        self.vectors = np.asarray(vectors)
        if norms is not None and self.vectors.flags.writeable and self.vectors.dtype == np.float16:
            self.matrix = torch.from_numpy(self.vectors)
            self.scale = torch.from_numpy(1.0 / np.maximum(np.asarray(norms, np.float32), 1e-12))
        else:
            self.matrix = unit_rows(self.vectors)
            self.scale = None

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def similarity(self, queries: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Exact mean cosine similarity (float64) of ``rows`` (default: all) to ``queries`` (k, width)."""
        q = np.asarray(queries, np.float64)
        q = q / np.maximum(np.sqrt((q * q).sum(axis=1, keepdims=True)), 1e-12)
        v = np.asarray(self.vectors if rows is None else self.vectors[rows], np.float64)
        v = v / np.maximum(np.sqrt((v * v).sum(axis=1, keepdims=True)), 1e-12)
        # row by row (no matrix product, whose sums depend on the shape): a row's similarity never depends on
        # which other rows are scored with it
        return np.mean([(v * qj).sum(axis=1) for qj in q], axis=0)

    def search(self, queries: np.ndarray, top: int, skip: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``top`` rows most similar to ``queries``: (row numbers, exact similarity), best first.
        ``skip``: a boolean mask of rows never returned."""
        import torch

        n = len(self)
        if n == 0 or top <= 0:
            return np.zeros(0, np.int64), np.zeros(0)
        q = torch.from_numpy(np.asarray(queries, np.float32))
        q = (q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)).mean(0)
        approx = (self.matrix @ q.half()).float()
        if self.scale is not None:
            approx *= self.scale
        if skip is not None and skip.any():
            approx[torch.from_numpy(np.asarray(skip, bool))] = -float("inf")
        k = min(n, top + SHORTLIST)
        cand = torch.topk(approx, k).indices.numpy()
        cand = cand[np.isfinite(approx.numpy()[cand])]
        exact = self.similarity(queries, cand)
        order = np.lexsort((cand, -exact))[:top]  # best first; ties by row (a stable order)
        return cand[order].astype(np.int64), exact[order]
