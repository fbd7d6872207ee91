"""The Audio Spectrogram Transformer (Gong et al., 2021) on timm's distilled DeiT.

Built through ``timm.models.deit.VisionTransformerDistilled``'s constructor arguments: a one-channel
image of ``(mel_bins, frames)``, 16x16 patches taken with strides ``(fstride, tstride)`` by a strided
conv projection (``StridedPatchEmbed``, handed to timm as ``embed_layer``). The output head averages
the cls and distillation tokens, then LayerNorm + Linear, as the official ``ASTModel``. Parameter
names (``v.*``, ``mlp_head.*``) match the official checkpoints without the ``module.`` prefix.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SizeSpec:
    embed_dim: int
    depth: int
    num_heads: int
    timm_name: str  # the ImageNet DeiT-distilled weights this size starts from
    imagenet_grid: int  # the DeiT's patch grid side (224/16 or 384/16)


MODEL_SIZES: dict[str, SizeSpec] = {
    "tiny224": SizeSpec(192, 12, 3, "deit_tiny_distilled_patch16_224.fb_in1k", 14),
    "small224": SizeSpec(384, 12, 6, "deit_small_distilled_patch16_224.fb_in1k", 14),
    "base224": SizeSpec(768, 12, 12, "deit_base_distilled_patch16_224.fb_in1k", 14),
    "base384": SizeSpec(768, 12, 12, "deit_base_distilled_patch16_384.fb_in1k", 24),
}


def patch_grid(fstride: int, tstride: int, input_fdim: int, input_tdim: int, patch: int = 16) -> tuple[int, int]:
    """(f_dim, t_dim): patches along frequency and time for a strided 16x16 projection."""
    if input_fdim < patch or input_tdim < patch:
        raise ValueError(f"input ({input_fdim} mel x {input_tdim} frames) is smaller than a {patch}x{patch} patch")
    return (input_fdim - patch) // fstride + 1, (input_tdim - patch) // tstride + 1


def _patch_embed_class():
    from timm.layers import PatchEmbed

    class StridedPatchEmbed(PatchEmbed):
        """timm's PatchEmbed with an overlapping (strided) 16x16 projection, as in AST."""

        def __init__(self, *args: Any, stride: tuple[int, int] = (16, 16), **kwargs: Any):
            super().__init__(*args, **kwargs)
            old = self.proj
            self.proj = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=self.patch_size, stride=stride,
                                  bias=old.bias is not None)
            h, w = self.img_size
            self.grid_size = ((h - self.patch_size[0]) // stride[0] + 1, (w - self.patch_size[1]) // stride[1] + 1)
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
    """AST: ``forward(x)`` with x (batch, frames, mel_bins) normalised fbank -> logits (batch, label_dim)."""

    def __init__(self, label_dim: int, fstride: int = 10, tstride: int = 10, input_fdim: int = 128,
                 input_tdim: int = 1024, model_size: str = "base384", depth: int | None = None,
                 imagenet_pretrain: bool = False, drop_path_rate: float = 0.0, norm_eps: float = 1e-6,
                 head_norm_eps: float = 1e-5, pretrained_file: str | None = None):
        super().__init__()
        from timm.models.deit import VisionTransformerDistilled

        if model_size not in MODEL_SIZES:
            raise ValueError(f"unknown model_size {model_size!r}; choose one of {', '.join(MODEL_SIZES)}")
        spec = MODEL_SIZES[model_size]
        self.config: dict[str, Any] = dict(
            label_dim=int(label_dim), fstride=int(fstride), tstride=int(tstride), input_fdim=int(input_fdim),
            input_tdim=int(input_tdim), model_size=model_size, depth=int(depth or spec.depth),
            norm_eps=float(norm_eps), head_norm_eps=float(head_norm_eps),
        )
        self.label_dim = int(label_dim)
        self.f_dim, self.t_dim = patch_grid(fstride, tstride, input_fdim, input_tdim)
        self.v = VisionTransformerDistilled(
            img_size=(input_fdim, input_tdim), patch_size=16, in_chans=1, num_classes=0,
            embed_dim=spec.embed_dim, depth=self.config["depth"], num_heads=spec.num_heads,
            drop_path_rate=drop_path_rate, norm_layer=partial(nn.LayerNorm, eps=norm_eps),
            embed_layer=partial(_patch_embed_class(), stride=(fstride, tstride)),
        )
        self.mlp_head = nn.Sequential(nn.LayerNorm(spec.embed_dim, eps=head_norm_eps),
                                      nn.Linear(spec.embed_dim, label_dim))
        if imagenet_pretrain:
            self.load_imagenet(pretrained_file)

    def load_imagenet(self, pretrained_file: str | None = None) -> None:
        """Start from timm's ImageNet DeiT-distilled weights (timm's own pretrained loading).

        timm sums the RGB patch filters into one channel (``in_chans=1``); the positional embedding
        is then adapted from the DeiT grid by the official AST rule. ``pretrained_file`` points timm at
        a local copy of the weights instead of the hub.
        """
        import timm

        spec = MODEL_SIZES[self.config["model_size"]]
        kw: dict[str, Any] = dict(pretrained=True, num_classes=0, in_chans=1)
        if pretrained_file:
            kw["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
        src = timm.create_model(spec.timm_name, **kw)
        sd = src.state_dict()
        sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], (spec.imagenet_grid,) * 2, (self.f_dim, self.t_dim))
        sd = {k: v for k, v in sd.items() if not k.startswith(("head", "head_dist"))
              and not (k.startswith("blocks.") and int(k.split(".")[1]) >= self.config["depth"])}
        missing, unexpected = self.v.load_state_dict(sd, strict=False)
        if unexpected or [m for m in missing if not m.startswith("head")]:
            raise RuntimeError(f"ImageNet weights did not fit: missing {missing}, unexpected {unexpected}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1).transpose(2, 3)  # (B, T, F) -> (B, 1, F, T)
        x = self.v.forward_features(x)
        x = (x[:, 0] + x[:, 1]) / 2
        return self.mlp_head(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check() -> None:  # pragma: no cover - manual smoke
    m = AST(3, 10, 10, 128, 100, "tiny224", depth=2)
    print(m(torch.randn(2, 100, 128)).shape, count_parameters(m), math.prod((m.f_dim, m.t_dim)))
