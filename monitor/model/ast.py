"""The Audio Spectrogram Transformer (Gong et al., 2021) on timm's distilled DeiT.

Built through ``timm.models.deit.VisionTransformerDistilled``'s constructor arguments: a one-channel
image of ``(mel_bins, frames)``, 16x16 patches taken with strides ``(fstride, tstride)`` by a strided
conv projection (``StridedPatchEmbed``, handed to timm as ``embed_layer``). The output head averages
the cls and distillation tokens, then LayerNorm + Linear, as the official ``ASTModel``. Parameter
names (``v.*``, ``mlp_head.*``) match the official checkpoints without the ``module.`` prefix. As in
timm's ``vision_transformer.py``: ``forward(x) = forward_head(forward_features(x))``, and
``forward_head(tokens, pre_logits=True)`` is the pooled embedding the head sees.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from torch import nn

from monitor.errors import MonitorError
from monitor.model.geometry import (DEFAULT_HEAD_NORM_EPS, DEFAULT_NORM_EPS, MODEL_SIZES, PATCH, Geometry, SizeSpec,
                                    expected_shapes, patch_grid)

log = logging.getLogger(__name__)

# The sizes, the patch grid and the tensor shapes live in the torch-free ``geometry`` module; re-exported here.
__all__ = ["AST", "MODEL_SIZES", "PATCH", "Geometry", "SizeSpec", "adapt_pos_embed", "count_parameters",
           "expected_shapes", "patch_grid", "resize_pos_embed"]


def _patch_embed_class():
    from timm.layers import PatchEmbed

    class StridedPatchEmbed(PatchEmbed):
        """timm's PatchEmbed with an overlapping (strided) 16x16 projection, as in AST."""

        def __init__(self, *args: Any, stride: tuple[int, int] = (PATCH, PATCH), **kwargs: Any):
            super().__init__(*args, **kwargs)
            old = self.proj
            self.proj = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=self.patch_size, stride=stride,
                                  bias=old.bias is not None)
            self.grid_size = patch_grid(stride[0], stride[1], *self.img_size, patch=self.patch_size[0])
            self.num_patches = self.grid_size[0] * self.grid_size[1]

    return StridedPatchEmbed


def adapt_pos_embed(grid: torch.Tensor, f_dim: int, t_dim: int) -> torch.Tensor:
    """The official AST rule: ``grid`` (1, C, H, W) -> (1, C, f_dim, t_dim).

    Time first: crop the centre when the new width is not larger, else bilinear-interpolate; then the
    same for frequency. (From ImageNet's 14x14 / 24x24 grid, or AudioSet's 12x101 grid.)
    """
    _, _, h, w = grid.shape
    if t_dim <= w:
        s = w // 2 - t_dim // 2
        grid = grid[:, :, :, s:s + t_dim]
    else:
        grid = nn.functional.interpolate(grid, size=(h, t_dim), mode="bilinear")
    if f_dim <= h:
        s = h // 2 - f_dim // 2
        grid = grid[:, :, s:s + f_dim, :]
    else:
        grid = nn.functional.interpolate(grid, size=(f_dim, t_dim), mode="bilinear")
    return grid


def resize_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                     prefix: int = 2) -> torch.Tensor:
    """(1, prefix + H*W, C) -> (1, prefix + f*t, C) by ``adapt_pos_embed``; prefix tokens kept."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    c = pos_embed.shape[-1]
    h, w = old_grid
    body = pos_embed[:, prefix:, :].reshape(1, h, w, c).permute(0, 3, 1, 2)
    body = adapt_pos_embed(body, *new_grid)
    body = body.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], c)
    return torch.cat([pos_embed[:, :prefix, :], body], dim=1)


class AST(nn.Module):
    """AST: ``forward(x)`` with x (batch, frames, mel_bins) normalised fbank -> logits (batch, label_dim).

    Its shape is ``self.geometry`` (a validated ``Geometry``); ``num_features`` is the embedding width
    (timm's name). ``norm_eps`` is the transformer's LayerNorm epsilon (timm/official 1e-6,
    Hugging Face 1e-12); ``head_norm_eps`` the output head's (official 1e-5). ``pretrained_file`` points
    timm at a local copy of the ImageNet weights for ``imagenet_pretrain``. ``depth=None``: the size's own.
    """

    def __init__(self, label_dim: int, fstride: int = 10, tstride: int = 10, input_fdim: int = 128,
                 input_tdim: int = 1024, model_size: str = "base384", depth: int | None = None,
                 imagenet_pretrain: bool = False, drop_path_rate: float = 0.0, norm_eps: float = DEFAULT_NORM_EPS,
                 head_norm_eps: float = DEFAULT_HEAD_NORM_EPS, pretrained_file: str | None = None):
        super().__init__()
        from timm.models.deit import VisionTransformerDistilled

        if model_size not in MODEL_SIZES:
            raise ValueError(f"unknown model_size {model_size!r}; choose one of {', '.join(MODEL_SIZES)}")
        spec = MODEL_SIZES[model_size]
        g = Geometry(model_size=model_size, depth=int(depth or spec.depth), fstride=int(fstride),
                     tstride=int(tstride), input_fdim=int(input_fdim), input_tdim=int(input_tdim),
                     label_dim=int(label_dim), norm_eps=float(norm_eps), head_norm_eps=float(head_norm_eps))
        self.geometry = g
        self.drop_path_rate = float(drop_path_rate)  # stochastic depth (training only; not part of the geometry)
        self.label_dim = g.label_dim
        self.num_features = spec.embed_dim  # width of forward_head(..., pre_logits=True)
        self.f_dim, self.t_dim = g.grid
        self.v = VisionTransformerDistilled(
            img_size=(g.input_fdim, g.input_tdim), patch_size=PATCH, in_chans=1, num_classes=0,
            embed_dim=spec.embed_dim, depth=g.depth, num_heads=spec.num_heads,
            drop_path_rate=drop_path_rate, norm_layer=partial(nn.LayerNorm, eps=g.norm_eps),
            embed_layer=partial(_patch_embed_class(), stride=(g.fstride, g.tstride)),
        )
        self.mlp_head = nn.Sequential(nn.LayerNorm(spec.embed_dim, eps=g.head_norm_eps),
                                      nn.Linear(spec.embed_dim, g.label_dim))
        if imagenet_pretrain:
            self.load_imagenet(pretrained_file)

    @classmethod
    def from_geometry(cls, geometry: Geometry, **options: Any) -> "AST":
        """The AST of ``geometry``; ``options``: imagenet_pretrain, drop_path_rate, pretrained_file."""
        g = geometry
        return cls(g.label_dim, g.fstride, g.tstride, g.input_fdim, g.input_tdim, g.model_size, depth=g.depth,
                   norm_eps=g.norm_eps, head_norm_eps=g.head_norm_eps, **options)

    def load_imagenet(self, pretrained_file: str | None = None) -> None:
        """Start from timm's ImageNet DeiT-distilled weights (timm's own pretrained loading).

        timm sums the RGB patch filters into one channel (``in_chans=1``); the positional embedding
        is then adapted from the DeiT grid by the official AST rule.
        """
        import timm

        spec = MODEL_SIZES[self.geometry.model_size]
        kw: dict[str, Any] = dict(pretrained=True, num_classes=0, in_chans=1)
        if pretrained_file:
            kw["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
        try:
            src = timm.create_model(spec.timm_name, **kw)
        except (OSError, RuntimeError) as exc:  # hub unreachable, or a bad local file
            if pretrained_file:
                why = (str(exc).splitlines() or [""])[0]
                raise MonitorError(f"could not read ImageNet weights {spec.timm_name} from {pretrained_file} "
                                   f"({type(exc).__name__}: {why}); check the file") from None
            raise MonitorError(
                f"could not download ImageNet weights timm/{spec.timm_name} ({type(exc).__name__}); no network? "
                "Download them by hand and pass the file (model.checkpoint in a training config)"
            ) from None
        sd = src.state_dict()
        sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], (spec.imagenet_grid,) * 2, (self.f_dim, self.t_dim))
        sd = {k: v for k, v in sd.items() if not k.startswith(("head", "head_dist"))
              and not (k.startswith("blocks.") and int(k.split(".")[1]) >= self.geometry.depth)}
        missing, unexpected = self.v.load_state_dict(sd, strict=False)
        if unexpected or [m for m in missing if not m.startswith("head")]:
            raise RuntimeError(f"ImageNet weights did not fit: missing {missing}, unexpected {unexpected}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, F) normalised fbank -> tokens (B, 2 + patches, C) after the final norm (cls, dist, patches)."""
        x = x.unsqueeze(1).transpose(2, 3)  # (B, T, F) -> (B, 1, F, T)
        return self.v.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, C) -> logits (B, label_dim); ``pre_logits``: the pooled embedding (B, C), the
        mean of the cls and distillation tokens, before ``mlp_head`` (LayerNorm + Linear)."""
        x = (x[:, 0] + x[:, 1]) / 2
        return x if pre_logits else self.mlp_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, F) normalised fbank -> logits (B, label_dim)."""
        return self.forward_head(self.forward_features(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
