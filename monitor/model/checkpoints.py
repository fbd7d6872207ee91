"""Loading AST checkpoints safely: the official format, Hugging Face's, and published downloads.

Every file is read with safetensors or ``torch.load(weights_only=True)``: a pickle that would run
code is refused. ``pull`` fetches the published AudioSet checkpoints into a cache, resumably, with a
checksum.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from monitor.errors import BundleError, MonitorError
from monitor.resources import monitor_cache
from monitor.fileio import sha256_file
from monitor.model.ast import AST, MODEL_SIZES, patch_grid, resize_pos_embed
from monitor.model.geometry import Geometry

log = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights safely: ``.safetensors`` via safetensors, anything else ``torch.load(weights_only=True)``.

    A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped. Pickles that would import or
    call anything (code execution) are refused with a ``BundleError``.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError, truncated file
            raise BundleError(f"{path.name} is not a readable safetensors file ({exc}); download it again") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-executing pickles, and any corrupt file
        raise BundleError(
            f"{path.name} is not a plain weights file ({type(exc).__name__}); refusing to unpickle it. "
            "Re-save it as a state dict or safetensors"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BundleError(f"{path.name} does not hold a state dict of tensors")
    return obj


def _as_state_dict(src: StateDict | str | Path) -> dict[str, torch.Tensor]:
    return load_state_dict_file(src) if isinstance(src, (str, Path)) else dict(src)


def _strip(sd: StateDict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def _n_blocks(sd: StateDict, prefix: str = "v.blocks.") -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def _infer_grid(n_patches: int, f_dim: int) -> tuple[int, int]:
    """The (f, t) patch grid a checkpoint's positional embedding was trained on, from its patch count.

    The published AudioSet grids first (12x101, 10x85, 9x73, 8x64: strides 10-16 at 1024 frames); then
    the requested model's own frequency rows (a fine-tuned checkpoint of the same strides); then any
    equal-stride grid of 128 mel bins. Ambiguous counts need ``source_grid``.
    """
    known = {f * t: (f, t) for f, t in (patch_grid(s, s, 128, 1024) for s in (10, 12, 14, 16))}
    if n_patches in known:
        return known[n_patches]
    if n_patches % f_dim == 0:
        return f_dim, n_patches // f_dim
    for stride in range(1, 17):
        f = (128 - 16) // stride + 1
        if n_patches % f == 0:
            return f, n_patches // f
    raise BundleError(f"cannot tell the patch grid of a checkpoint with {n_patches} patches; pass source_grid")


def _load_into(model: AST, sd: dict[str, torch.Tensor], source_grid: tuple[int, int] | None = None) -> AST:
    """Fit ``sd`` (keys ``v.*``, ``mlp_head.*``) into ``model``: adapt pos embed, new head if labels differ."""
    sd = {k: v for k, v in sd.items() if not k.startswith(("v.head.", "v.head_dist."))}
    depth, have = model.geometry.depth, _n_blocks(sd)
    if have < depth:
        raise BundleError(f"checkpoint has {have} transformer blocks, the model asks for {depth}; "
                          f"pass depth={have} (or leave depth unset)")
    if have > depth:
        log.info("keeping the first %d of the checkpoint's %d blocks", depth, have)
        sd = {k: v for k, v in sd.items() if not (k.startswith("v.blocks.") and int(k.split(".")[2]) >= depth)}
    pe = sd.get("v.pos_embed")
    if pe is None or pe.ndim != 3:
        raise BundleError("checkpoint has no v.pos_embed: not an AST checkpoint")
    n = pe.shape[1] - 2
    if n != model.f_dim * model.t_dim or source_grid is not None:
        old = tuple(source_grid) if source_grid else _infer_grid(n, model.f_dim)
        if old[0] * old[1] != n:
            raise BundleError(f"source_grid {old} does not match the checkpoint's {n} patches")
        log.info("positional embedding adapted from a %dx%d to a %dx%d patch grid", *old, model.f_dim, model.t_dim)
        sd["v.pos_embed"] = resize_pos_embed(pe, old, (model.f_dim, model.t_dim))
    head_w = sd.get("mlp_head.1.weight")
    if head_w is None or head_w.shape[0] != model.label_dim:
        sd = {k: v for k, v in sd.items() if not k.startswith("mlp_head.")}
        log.info("new output head for %d labels (re-initialised)", model.label_dim)
    ours = model.state_dict()
    for k, v in sd.items():
        if k in ours and ours[k].shape != v.shape:
            raise BundleError(f"checkpoint tensor {k} has shape {tuple(v.shape)}, the model needs "
                              f"{tuple(ours[k].shape)}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.startswith("mlp_head.")]
    if missing or unexpected:
        raise BundleError(f"checkpoint does not fit the AST: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def _check_width(sd: StateDict, model_size: str) -> None:
    cls = sd.get("v.cls_token")
    if cls is None:
        raise BundleError("checkpoint has no v.cls_token: not an AST checkpoint (keys module.v.*, module.mlp_head.*)")
    want = MODEL_SIZES[model_size].embed_dim if model_size in MODEL_SIZES else None
    if want is None:
        raise BundleError(f"unknown model_size {model_size!r}; choose one of {', '.join(MODEL_SIZES)}")
    got = int(cls.shape[-1])
    if got != want:
        fits = [k for k, s in MODEL_SIZES.items() if s.embed_dim == got]
        raise BundleError(f"checkpoint has width {got}, {model_size} has {want}; use model size "
                          f"{' or '.join(fits) or '(none fits)'} (--model-size)")


def from_official_checkpoint(state_dict_or_path: StateDict | str | Path, *, label_dim: int, fstride: int,
                             tstride: int, input_fdim: int, input_tdim: int, model_size: str,
                             depth: int | None = None, source_grid: tuple[int, int] | None = None) -> AST:
    """An AST from the official code's format (keys ``module.v.*``, ``module.mlp_head.*``), in eval mode.

    The positional embedding is adapted to the requested geometry by the official rule (AudioSet's
    12x101 grid: time cut or interpolated); with a different ``label_dim`` the head is re-initialised.
    ``depth=None`` takes as many blocks as the checkpoint holds; ``source_grid`` (f, t) names the
    checkpoint's patch grid when it cannot be inferred.
    """
    sd = _strip(_as_state_dict(state_dict_or_path), "module.")
    _check_width(sd, model_size)
    depth = depth or _n_blocks(sd) or None
    model = AST(label_dim, fstride, tstride, input_fdim, input_tdim, model_size, depth=depth)
    return _load_into(model, sd, source_grid)


_HF_LAYER = [
    (r"attention\.(?:attention\.)?(query|q_proj)\.", "q"), (r"attention\.(?:attention\.)?(key|k_proj)\.", "k"),
    (r"attention\.(?:attention\.)?(value|v_proj)\.", "v"), (r"attention\.(?:output\.dense|o_proj)\.", "attn.proj."),
    (r"layernorm_before\.", "norm1."), (r"layernorm_after\.", "norm2."),
    (r"(?:intermediate\.dense|mlp\.fc1)\.", "mlp.fc1."), (r"(?:output\.dense|mlp\.fc2)\.", "mlp.fc2."),
]
_HF_SIMPLE = {
    "embeddings.cls_token": "v.cls_token", "embeddings.distillation_token": "v.dist_token",
    "embeddings.position_embeddings": "v.pos_embed",
    "embeddings.patch_embeddings.projection.weight": "v.patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "v.patch_embed.proj.bias",
    "layernorm.weight": "v.norm.weight", "layernorm.bias": "v.norm.bias",
    "classifier.layernorm.weight": "mlp_head.0.weight", "classifier.layernorm.bias": "mlp_head.0.bias",
    "classifier.dense.weight": "mlp_head.1.weight", "classifier.dense.bias": "mlp_head.1.bias",
}


def hf_to_official(sd: StateDict) -> dict[str, torch.Tensor]:
    """Rename a transformers ``ASTForAudioClassification`` state dict (4.x or 5.x names) to ``v.*``/``mlp_head.*``."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    base = "audio_spectrogram_transformer."
    for k, v in sd.items():
        k2 = k[len(base):] if k.startswith(base) else k
        if k2 in _HF_SIMPLE:
            out[_HF_SIMPLE[k2]] = v
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
        if set(parts) != {"q", "k", "v"}:
            raise BundleError(f"Hugging Face checkpoint layer {i} lacks part of its attention {kind}")
        out[f"v.blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _size_for(hidden: int, heads: int) -> str:
    for name in ("tiny224", "small224", "base384"):
        if MODEL_SIZES[name].embed_dim == hidden and MODEL_SIZES[name].num_heads == heads:
            return name
    raise BundleError(f"no AST size with hidden size {hidden} and {heads} heads "
                      f"(known: {', '.join(f'{k} {s.embed_dim}/{s.num_heads}' for k, s in MODEL_SIZES.items())})")


def _read_hf(src: Any, config: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if isinstance(src, torch.nn.Module):
        return src.config.to_dict(), dict(src.state_dict())
    if isinstance(src, (str, Path)) and Path(src).is_dir():
        folder = Path(src)
        if not (folder / "config.json").is_file():
            raise BundleError(f"{folder} has no config.json: not a saved Hugging Face model")
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        weights = folder / "model.safetensors"
        return cfg, load_state_dict_file(weights if weights.is_file() else folder / "pytorch_model.bin")
    return dict(config or {}), _as_state_dict(src)


def from_hf_checkpoint(src: Any, *, label_dim: int | None = None, config: Mapping[str, Any] | None = None,
                       input_tdim: int | None = None) -> AST:
    """An AST from transformers' ``ASTForAudioClassification``, in eval mode.

    ``src``: a model object, a saved folder (config.json + model.safetensors / pytorch_model.bin), or a
    state dict / weights file with its ``config`` mapping (missing keys take the HF defaults; width and
    depth are read from the weights). LayerNorm eps comes from the config (HF: 1e-12). ``input_tdim``
    adapts the positional embedding to another number of frames; a new ``label_dim`` re-initialises the head.
    """
    cfg, raw = _read_hf(src, config)
    sd = hf_to_official(raw)
    if "v.cls_token" not in sd or "v.pos_embed" not in sd:
        raise BundleError("not a Hugging Face ASTForAudioClassification checkpoint (no embeddings found)")
    hidden = int(sd["v.cls_token"].shape[-1])
    if int(cfg.get("hidden_size", hidden)) != hidden:
        raise BundleError(f"config hidden_size {cfg['hidden_size']} != the weights' {hidden}")
    heads = int(cfg.get("num_attention_heads", {192: 3, 384: 6, 768: 12}.get(hidden, 0)))
    size = _size_for(hidden, heads)
    if int(cfg.get("patch_size", 16)) != 16 or int(cfg.get("intermediate_size", 4 * hidden)) != 4 * hidden:
        raise BundleError("only 16x16 patches and an MLP 4x the hidden size are supported")
    if cfg.get("hidden_act", "gelu") != "gelu" or not cfg.get("qkv_bias", True):
        raise BundleError("only GELU activations with query/key/value biases are supported")
    fstride, tstride = int(cfg.get("frequency_stride", 10)), int(cfg.get("time_stride", 10))
    fdim, tdim = int(cfg.get("num_mel_bins", 128)), int(cfg.get("max_length", 1024))
    grid = patch_grid(fstride, tstride, fdim, tdim)
    if grid[0] * grid[1] + 2 != sd["v.pos_embed"].shape[1]:
        raise BundleError(f"the weights have {sd['v.pos_embed'].shape[1] - 2} patches, but strides {fstride}/{tstride} "
                          f"and {tdim} frames x {fdim} mel give {grid[0] * grid[1]}; give the checkpoint's config")
    n_labels = int(label_dim or cfg.get("num_labels") or len(cfg.get("id2label") or {})
                   or sd.get("mlp_head.1.weight", torch.empty(527)).shape[0])
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    model = AST(n_labels, fstride, tstride, fdim, input_tdim or tdim, size, depth=_n_blocks(sd),
                norm_eps=eps, head_norm_eps=eps)
    return _load_into(model, sd, source_grid=grid)


# --- published checkpoints -------------------------------------------------------------------------

@dataclass(frozen=True)
class Pretrained:
    """A published AudioSet AST checkpoint (official format) and the geometry it was trained with."""

    urls: tuple[str, ...]  # first the official README's link, then mirrors
    filename: str
    fstride: int
    tstride: int
    map: float  # mAP on the AudioSet evaluation set, from the official README
    note: str
    input_tdim: int = 1024
    model_size: str = "base384"
    label_dim: int = 527
    sha256: str | None = None  # not published: the first download's digest is recorded beside the file

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def geometry(self) -> Geometry:
        """The checkpoint's geometry as published (all 12 blocks, 128 mel bins, the official LayerNorm eps)."""
        return Geometry(self.model_size, MODEL_SIZES[self.model_size].depth, self.fstride, self.tstride, 128,
                        self.input_tdim, self.label_dim)


_DBX = "https://www.dropbox.com/s/"
# The official AST README's "Pretrained Models" (github.com/YuanGongND/ast); the 0.4593 model is also
# linked from ast_models.py under another name. No checksums are published for any of them.
PRETRAINED: dict[str, Pretrained] = {
    "audioset-10-10": Pretrained(
        (_DBX + "ca0b1v2nlxzyeb4/audioset_10_10_0.4593.pth?dl=1", _DBX + "cv4knew8mvbrnvq/audioset_0.4593.pth?dl=1"),
        "audioset_10_10_0.4593.pth", 10, 10, 0.4593, "strides 10/10, weight averaging (the recommended start)"),
    "audioset-10-10-0.4495": Pretrained((_DBX + "1tv0hovue1bxupk/audioset_10_10_0.4495.pth?dl=1",),
                                        "audioset_10_10_0.4495.pth", 10, 10, 0.4495, "strides 10/10, model 1"),
    "audioset-10-10-0.4483": Pretrained((_DBX + "6u5sikl4b9wo4u5/audioset_10_10_0.4483.pth?dl=1",),
                                        "audioset_10_10_0.4483.pth", 10, 10, 0.4483, "strides 10/10, model 2"),
    "audioset-10-10-0.4475": Pretrained((_DBX + "kt6i0v9fvfm1mbq/audioset_10_10_0.4475.pth?dl=1",),
                                        "audioset_10_10_0.4475.pth", 10, 10, 0.4475, "strides 10/10, model 3"),
    "audioset-12-12": Pretrained((_DBX + "snfhx3tizr4nuc8/audioset_12_12_0.4467.pth?dl=1",),
                                 "audioset_12_12_0.4467.pth", 12, 12, 0.4467, "strides 12/12"),
    "audioset-14-14": Pretrained((_DBX + "z18s6pemtnxm4k7/audioset_14_14_0.4431.pth?dl=1",),
                                 "audioset_14_14_0.4431.pth", 14, 14, 0.4431, "strides 14/14"),
    "audioset-16-16": Pretrained((_DBX + "mdsa4t1xmcimia6/audioset_16_16_0.4422.pth?dl=1",),
                                 "audioset_16_16_0.4422.pth", 16, 16, 0.4422, "strides 16/16"),
}


def checkpoint_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where ``pull(name)`` keeps a published checkpoint (whether or not it is there yet)."""
    return Path(cache_dir or monitor_cache()) / "checkpoints" / PRETRAINED[name].filename


class _DownloadError(Exception):
    pass


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Append ``url``'s bytes after what ``part`` already holds (HTTP Range; file:// by seeking)."""
    from tqdm import tqdm

    offset = part.stat().st_size if part.is_file() else 0
    if urllib.parse.urlparse(url).scheme == "file":
        src = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        try:
            fh, total = open(src, "rb"), src.stat().st_size
        except OSError as exc:
            raise _DownloadError(exc.strerror or str(exc)) from None
        if offset > total:
            offset = 0
        fh.seek(offset)
    else:
        req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            fh = urllib.request.urlopen(req, timeout=60)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # nothing left to fetch: the partial file is complete
                return
            raise _DownloadError(f"the server answered {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise _DownloadError(str(getattr(exc, "reason", exc))) from None
        if offset and getattr(fh, "status", 200) != 206:
            offset = 0  # the server ignored Range: start over
        length = fh.headers.get("Content-Length")
        total = offset + int(length) if length else None
    with fh, open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress) as bar:
        try:
            for block in iter(lambda: fh.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))
        except (OSError, urllib.error.URLError, ValueError) as exc:  # includes http.client.IncompleteRead
            raise _DownloadError(f"interrupted after {out.tell()} bytes ({exc}); run again to resume") from None
        if total is not None and out.tell() < total:
            raise _DownloadError(f"interrupted after {out.tell()} of {total} bytes; run again to resume")


def pull(name: str, *, url: str | None = None, cache_dir: str | Path | None = None, sha256: str | None = None,
         progress: bool = True) -> Path:
    """Download a published checkpoint into ``<cache_dir>/checkpoints/`` and return its path.

    Resumable (a ``.part`` file continued with HTTP Range), checked against ``sha256`` (or the published
    digest, or the digest recorded at the first download), tried against the mirrors in order. A
    cached file that checks out is returned without touching the network.
    """
    if name not in PRETRAINED:
        raise MonitorError(f"unknown pretrained model {name!r}; available: {', '.join(PRETRAINED)}")
    spec = PRETRAINED[name]
    dest = checkpoint_path(name, cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest_file = dest.with_name(dest.name + ".sha256")
    part = dest.with_name(dest.name + ".part")
    expected = (sha256 or spec.sha256 or "").lower() or None
    if dest.is_file():
        known = expected or (digest_file.read_text().split()[0] if digest_file.is_file() else None)
        if known is None or sha256_file(dest) == known:
            return dest
        log.warning("%s does not match its checksum; downloading it again", dest)
        dest.unlink()
    errors = []
    for u in [url] if url else list(spec.urls):
        try:
            _fetch(u, part, progress)
            break
        except _DownloadError as exc:
            errors.append(f"{u}: {exc}")
    else:
        raise MonitorError(f"could not download {name} ({'; '.join(errors)}): no network? Download it by hand "
                           f"from {url or spec.url} and save it as {dest}")
    have = sha256_file(part)
    if expected is not None and have != expected:
        part.unlink()
        raise MonitorError(f"checksum mismatch for {name}: got sha256 {have[:12]}..., expected {expected[:12]}...; "
                           "the download is damaged or the file changed: run the command again")
    os.replace(part, dest)
    digest_file.write_text(f"{have}  {dest.name}\n")
    if expected is None:
        log.info("no published checksum for %s; recorded sha256 %s in %s", name, have, digest_file)
    return dest
