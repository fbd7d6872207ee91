"""Loading AST checkpoints safely: the official format, Hugging Face's, and published downloads.

Every file is read with safetensors or ``torch.load(weights_only=True)``: a pickle that would run
code is refused. ``pull`` fetches the published AudioSet checkpoints into a cache, resumably, with a
checksum.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from monitor.errors import BundleError, MonitorError
from monitor.model.ast import AST, MODEL_SIZES, patch_grid, resize_pos_embed

log = logging.getLogger(__name__)

AUDIOSET_GRID = (12, 101)  # patch grid of the official AudioSet checkpoints (strides 10/10, 1024 frames)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights safely: ``.safetensors`` via safetensors, anything else ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-executing pickles, and any corrupt file
        raise BundleError(
            f"{path.name} is not a plain weights file ({type(exc).__name__}); refusing to unpickle it. "
            "Re-save it as a state dict or safetensors"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BundleError(f"{path.name} does not hold a state dict of tensors")
    return obj


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def _infer_grid(n_patches: int, f_dim: int) -> tuple[int, int]:
    if n_patches == AUDIOSET_GRID[0] * AUDIOSET_GRID[1]:
        return AUDIOSET_GRID
    if n_patches % f_dim == 0:
        return f_dim, n_patches // f_dim
    raise BundleError(f"cannot tell the patch grid of a checkpoint with {n_patches} patches")


def _load_into(model: AST, sd: dict[str, torch.Tensor], label_dim: int) -> AST:
    """Fit ``sd`` (keys ``v.*``, ``mlp_head.*``) into ``model``: adapt pos embed, new head if labels differ."""
    sd = {k: v for k, v in sd.items() if not k.startswith(("v.head.", "v.head_dist."))}
    depth = model.config["depth"]
    sd = {k: v for k, v in sd.items() if not (k.startswith("v.blocks.") and int(k.split(".")[2]) >= depth)}
    pe = sd.get("v.pos_embed")
    if pe is None:
        raise BundleError("checkpoint has no v.pos_embed: not an AST checkpoint")
    n = pe.shape[1] - 2
    if n != model.f_dim * model.t_dim:
        sd["v.pos_embed"] = resize_pos_embed(pe, _infer_grid(n, model.f_dim), (model.f_dim, model.t_dim))
    head_w = sd.get("mlp_head.1.weight")
    if head_w is None or head_w.shape[0] != label_dim:
        sd = {k: v for k, v in sd.items() if not k.startswith("mlp_head.")}
        log.info("new output head for %d labels (re-initialised)", label_dim)
    ours = model.state_dict()
    for k, v in sd.items():
        if k in ours and ours[k].shape != v.shape:
            raise BundleError(f"checkpoint tensor {k} has shape {tuple(v.shape)}, the model needs {tuple(ours[k].shape)}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.startswith("mlp_head.")]
    if missing or unexpected:
        raise BundleError(f"checkpoint does not fit the AST: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def from_official_checkpoint(state_dict_or_path: Mapping[str, torch.Tensor] | str | Path, *, label_dim: int,
                             fstride: int, tstride: int, input_fdim: int, input_tdim: int, model_size: str,
                             depth: int | None = None) -> AST:
    """An AST from the official code's format (keys ``module.v.*``, ``module.mlp_head.*``).

    The positional embedding is adapted to the requested geometry by the official rule (AudioSet's
    12x101 grid: time cut or interpolated); with a different ``label_dim`` the head is re-initialised.
    """
    sd = load_state_dict_file(state_dict_or_path) if isinstance(state_dict_or_path, (str, Path)) else dict(state_dict_or_path)
    sd = _strip(sd, "module.")
    model = AST(label_dim, fstride, tstride, input_fdim, input_tdim, model_size, depth=depth)
    return _load_into(model, sd, label_dim)


_HF_LAYER = [
    (r"attention\.(?:attention\.)?(query|q_proj)\.", "q"), (r"attention\.(?:attention\.)?(key|k_proj)\.", "k"),
    (r"attention\.(?:attention\.)?(value|v_proj)\.", "v"), (r"attention\.(?:output\.dense|o_proj)\.", "attn.proj."),
    (r"layernorm_before\.", "norm1."), (r"layernorm_after\.", "norm2."),
    (r"(?:intermediate\.dense|mlp\.fc1)\.", "mlp.fc1."), (r"(?:output\.dense|mlp\.fc2)\.", "mlp.fc2."),
]


def hf_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers ``ASTForAudioClassification`` state dict (4.x or 5.x names) to ``v.*``/``mlp_head.*``."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    base = "audio_spectrogram_transformer."
    for k, v in sd.items():
        k2 = k[len(base):] if k.startswith(base) else k
        simple = {
            "embeddings.cls_token": "v.cls_token", "embeddings.distillation_token": "v.dist_token",
            "embeddings.position_embeddings": "v.pos_embed",
            "embeddings.patch_embeddings.projection.weight": "v.patch_embed.proj.weight",
            "embeddings.patch_embeddings.projection.bias": "v.patch_embed.proj.bias",
            "layernorm.weight": "v.norm.weight", "layernorm.bias": "v.norm.bias",
            "classifier.layernorm.weight": "mlp_head.0.weight", "classifier.layernorm.bias": "mlp_head.0.bias",
            "classifier.dense.weight": "mlp_head.1.weight", "classifier.dense.bias": "mlp_head.1.bias",
        }
        if k2 in simple:
            out[simple[k2]] = v
            continue
        m = re.match(r"(?:encoder\.layer|layers)\.(\d+)\.(.*)$", k2)
        if not m:
            continue
        i, rest = int(m.group(1)), m.group(2)
        for pat, repl in _HF_LAYER:
            mm = re.match(pat + r"(weight|bias)$", rest)
            if mm:
                kind = mm.groups()[-1]
                if repl in ("q", "k", "v"):
                    qkv.setdefault((i, kind), {})[repl] = v
                else:
                    out[f"v.blocks.{i}.{repl}{kind}"] = v
                break
    for (i, kind), parts in qkv.items():
        out[f"v.blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _size_for_dim(dim: int) -> str:
    for name in ("tiny224", "small224", "base384"):
        if MODEL_SIZES[name].embed_dim == dim:
            return name
    raise BundleError(f"no AST size with hidden size {dim}")


def from_hf_checkpoint(src: Any, *, label_dim: int | None = None, config: Mapping[str, Any] | None = None) -> AST:
    """An AST from transformers' ``ASTForAudioClassification``: a model object, a saved folder
    (config.json + model.safetensors), or a state dict with its ``config`` mapping."""
    if isinstance(src, torch.nn.Module):
        cfg, sd = src.config.to_dict(), src.state_dict()
    elif isinstance(src, (str, Path)):
        folder = Path(src)
        cfg = json.loads((folder / "config.json").read_text())
        weights = folder / "model.safetensors"
        sd = load_state_dict_file(weights if weights.is_file() else folder / "pytorch_model.bin")
    else:
        if config is None:
            raise BundleError("a Hugging Face state dict needs its config")
        cfg, sd = dict(config), dict(src)
    n_labels = label_dim or int(cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 527)
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    model = AST(n_labels, int(cfg.get("frequency_stride", 10)), int(cfg.get("time_stride", 10)),
                int(cfg.get("num_mel_bins", 128)), int(cfg.get("max_length", 1024)),
                _size_for_dim(int(cfg.get("hidden_size", 768))), depth=int(cfg.get("num_hidden_layers", 12)),
                norm_eps=eps, head_norm_eps=eps)
    return _load_into(model, hf_to_official(sd), n_labels)


# --- published checkpoints -------------------------------------------------------------------------

@dataclass(frozen=True)
class Pretrained:
    url: str
    filename: str
    fstride: int
    tstride: int
    input_tdim: int
    model_size: str
    label_dim: int
    sha256: str | None  # None: not published; the first download's digest is recorded next to the file
    note: str


# The official AST README's AudioSet models (Gong et al. 2021), mAP on AudioSet eval in the note.
PRETRAINED: dict[str, Pretrained] = {
    "audioset-10-10": Pretrained("https://www.dropbox.com/s/cv4knew8mvbrnvq/audioset_0.4593.pth?dl=1",
                                 "audioset_10_10_0.4593.pth", 10, 10, 1024, "base384", 527, None,
                                 "full AudioSet, strides 10/10, mAP 0.4593 (the recommended start)"),
    "audioset-10-10-0.4495": Pretrained("https://www.dropbox.com/s/1tv0hovue1bxupk/audioset_0.4495.pth?dl=1",
                                        "audioset_10_10_0.4495.pth", 10, 10, 1024, "base384", 527, None,
                                        "full AudioSet, strides 10/10, mAP 0.4495"),
    "audioset-12-12": Pretrained("https://www.dropbox.com/s/6u5rt8aoqp1qm3s/audioset_0.4483.pth?dl=1",
                                 "audioset_12_12_0.4483.pth", 12, 12, 1024, "base384", 527, None,
                                 "full AudioSet, strides 12/12, mAP 0.4483"),
    "audioset-14-14": Pretrained("https://www.dropbox.com/s/kt6i0v9fvfm1mbq/audioset_0.4475.pth?dl=1",
                                 "audioset_14_14_0.4475.pth", 14, 14, 1024, "base384", 527, None,
                                 "full AudioSet, strides 14/14, mAP 0.4475"),
    "audioset-16-16": Pretrained("https://www.dropbox.com/s/ehkb3bwq4fbjtgq/audioset_0.4431.pth?dl=1",
                                 "audioset_16_16_0.4431.pth", 16, 16, 1024, "base384", 527, None,
                                 "full AudioSet, strides 16/16, mAP 0.4431"),
}


def cache_dir() -> Path:
    """``$MONITOR_CACHE`` or ``~/.cache/monitor``."""
    return Path(os.environ.get("MONITOR_CACHE") or Path.home() / ".cache" / "monitor")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def pull(name: str, *, url: str | None = None, cache: Path | None = None, sha256: str | None = None,
         progress: bool = True) -> Path:
    """Download a published checkpoint into ``<cache>/checkpoints/`` (resumable, checksummed); returns its path."""
    if name not in PRETRAINED:
        raise MonitorError(f"unknown pretrained model {name!r}; available: {', '.join(PRETRAINED)}")
    spec = PRETRAINED[name]
    url = url or spec.url
    expected = sha256 or spec.sha256
    folder = (cache or cache_dir()) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / spec.filename
    digest_file = dest.with_suffix(dest.suffix + ".sha256")
    if dest.is_file():
        have = sha256_file(dest)
        if expected is None or have == expected:
            return dest
        dest.unlink()
    part = dest.with_suffix(dest.suffix + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except (urllib.error.URLError, OSError) as exc:
        raise MonitorError(
            f"could not download {name} from {url} ({getattr(exc, 'reason', exc)}); no network? "
            f"Download it by hand and save it as {dest}"
        ) from None
    with resp:
        if offset and url.startswith("file:"):
            resp.read(offset)  # file:// ignores Range: skip what we already have
        elif offset and getattr(resp, "status", 200) != 206:
            offset = 0  # server ignored Range: start over
        total = resp.headers.get("Content-Length")
        from tqdm import tqdm

        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=(int(total) + (0 if url.startswith("file:") else offset)) if total else None, initial=offset,
            unit="B", unit_scale=True, desc=spec.filename, disable=not progress,
        ) as bar:
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))
    have = sha256_file(part)
    if expected is not None and have != expected:
        part.unlink()
        raise MonitorError(f"checksum mismatch for {name}: got {have[:12]}…, expected {expected[:12]}…; download again")
    os.replace(part, dest)
    digest_file.write_text(have + "\n")
    return dest


def check_geometry(model_size: str, fstride: int, tstride: int, input_fdim: int, input_tdim: int) -> None:
    """Raise a one-line ``BundleError`` for an impossible geometry."""
    if model_size not in MODEL_SIZES:
        raise BundleError(f"unknown model_size {model_size!r}; choose one of {', '.join(MODEL_SIZES)}")
    if not (1 <= fstride <= 16 and 1 <= tstride <= 16):
        raise BundleError(f"strides must be in 1..16, got {fstride}/{tstride}")
    try:
        patch_grid(fstride, tstride, input_fdim, input_tdim)
    except ValueError as exc:
        raise BundleError(str(exc)) from None
