"""The AST's split into a backbone and a head, as the agile loop uses it.

The *backbone* is every tensor but ``mlp_head.*``: it turns a segment into its pooled embedding
(``AST.forward_head(tokens, pre_logits=True)``). The *head* is ``mlp_head`` (LayerNorm + Linear): it turns an
embedding into logits. ``backbone_sha256`` names a backbone together with the front end that feeds it
(architecture without ``label_dim``, preprocessing), so a bundle that only changes the head keeps it, and an
embedding is only ever compared with embeddings of the same backbone.

``Head`` is the one way scores come from a stored embedding: the float16 embedding (as stored), LayerNorm,
Linear and the sigmoid/softmax all in float64, the scores rounded to float32 at the end. ``monitor run
--embeddings`` scores every segment this way from the float16 embedding it stores, and ``monitor report
--rescore`` does the same from the store, so both give the same scores for the same segment whatever the
batch (float64 sums differ by ~1e-16 between batch shapes; the float32 rounding hides that).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

HEAD_PREFIX = "mlp_head."


def is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIX)


def backbone_identity(architecture: Mapping[str, Any], preprocessing: Mapping[str, Any]) -> bytes:
    """The non-tensor part of a backbone's identity: its geometry (without ``label_dim``) and the front end."""
    arch = {k: v for k, v in dict(architecture).items() if k != "label_dim"}
    return json.dumps({"architecture": arch, "preprocessing": dict(preprocessing)}, sort_keys=True,
                      separators=(",", ":")).encode()


def backbone_sha256(tensors: Iterable[tuple[str, Any]], architecture: Mapping[str, Any],
                    preprocessing: Mapping[str, Any]) -> str:
    """sha256 over the backbone: its tensors (name order, each as float32 little-endian with its shape) and
    ``backbone_identity``. ``tensors``: (name, torch tensor) pairs; head tensors are skipped."""
    import torch

    h = hashlib.sha256(backbone_identity(architecture, preprocessing))
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        if is_head(name):
            continue
        a = t.detach().to("cpu", torch.float32).contiguous().numpy()
        h.update(name.encode() + b"\0" + json.dumps(list(a.shape)).encode() + b"\0")
        h.update(a.astype("<f4", copy=False).tobytes())
    return h.hexdigest()


@dataclass
class Head:
    """``mlp_head`` in float64: LayerNorm (``ln_weight``, ``ln_bias``, ``eps``) then Linear (``weight``, ``bias``)."""

    ln_weight: Any
    ln_bias: Any
    eps: float
    weight: Any
    bias: Any

    @classmethod
    def from_module(cls, mlp_head, device: Any = None) -> "Head":
        import torch

        ln, lin = mlp_head[0], mlp_head[1]
        dev = device if device is not None else lin.weight.device

        def f64(t):
            return t.detach().to(dev, torch.float64).clone()

        return cls(f64(ln.weight), f64(ln.bias), float(ln.eps), f64(lin.weight), f64(lin.bias))

    @classmethod
    def from_tensors(cls, sd: Mapping[str, Any], eps: float) -> "Head":
        import torch

        def f64(k):
            return sd[HEAD_PREFIX + k].detach().to("cpu", torch.float64).clone()

        return cls(f64("0.weight"), f64("0.bias"), float(eps), f64("1.weight"), f64("1.bias"))

    @property
    def n_labels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def width(self) -> int:
        return int(self.weight.shape[1])

    def logits(self, emb16):
        """float16 embeddings (n, width) (a tensor) -> float64 logits (n, labels)."""
        import torch.nn.functional as F

        x = emb16.to(self.weight.device).double()
        x = F.layer_norm(x, (x.shape[-1],), self.ln_weight, self.ln_bias, self.eps)
        return F.linear(x, self.weight, self.bias)

    def scores(self, emb16, task: str):
        """float16 embeddings -> float32 probabilities (sigmoid, or softmax over labels), computed in float64."""
        import torch

        z = self.logits(emb16)
        p = torch.sigmoid(z) if task == "multilabel" else torch.softmax(z, dim=-1)
        return p.float()


def head_tensors(path, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Only the ``mlp_head.*`` tensors of a safetensors file (the backbone is not read)."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as fh:
        for k in fh.keys():
            if is_head(k) and (names is None or k in names):
                out[k] = fh.get_tensor(k)
    return out
