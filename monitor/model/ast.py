"""The Audio Spectrogram Transformer (Gong et al., 2021) on timm's distilled DeiT.

Built through ``timm.models.deit.VisionTransformerDistilled``'s constructor arguments: a one-channel
image of ``(mel_bins, frames)``, 16x16 patches taken with strides ``(fstride, tstride)`` by a strided
conv projection (``StridedPatchEmbed``, handed to timm as ``embed_layer``). The output head averages
the cls and distillation tokens, then LayerNorm + Linear, as the official ``ASTModel``. Parameter
names (``v.*``, ``mlp_head.*``) match the official checkpoints without the ``module.`` prefix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from monitor.errors import MonitorError

log = logging.getLogger(__name__)

PATCH = 16  # AST patches are 16x16 (mel bins x frames)


@dataclass(frozen=True)
class SizeSpec:
    """One DeiT-distilled size: width, depth, heads and the timm ImageNet weights it starts from."""

    embed_dim: int
    depth: int
    num_heads: int
    timm_name: str
    imagenet_grid: int  # side of the DeiT's square patch grid (224/16 or 384/16)

    def __getitem__(self, key: str) -> Any:  # MODEL_SIZES["tiny224"]["embed_dim"] works too
        return getattr(self, key)


MODEL_SIZES: dict[str, SizeSpec] = {
    "tiny224": SizeSpec(192, 12, 3, "deit_tiny_distilled_patch16_224.fb_in1k", 14),
    "small224": SizeSpec(384, 12, 6, "deit_small_distilled_patch16_224.fb_in1k", 14),
    "base224": SizeSpec(768, 12, 12, "deit_base_distilled_patch16_224.fb_in1k", 14),
    "base384": SizeSpec(768, 12, 12, "deit_base_distilled_patch16_384.fb_in1k", 24),
}


def patch_grid(fstride: int, tstride: int, input_fdim: int, input_tdim: int, patch: int = PATCH) -> tuple[int, int]:
    """(f_dim, t_dim): patches along frequency and time for a strided 16x16 projection."""
    if input_fdim < patch or input_tdim < patch:
        raise ValueError(f"input ({input_fdim} mel x {input_tdim} frames) is smaller than a {patch}x{patch} patch")
    return (input_fdim - patch) // fstride + 1, (input_tdim - patch) // tstride + 1


def expected_shapes(arch: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of ``AST(**arch).state_dict()``, computed without torch modules.

    ``arch`` needs model_size, depth, fstride, tstride, input_fdim, input_tdim, label_dim.
    """
    d = MODEL_SIZES[arch["model_size"]].embed_dim
    f, t = patch_grid(arch["fstride"], arch["tstride"], arch["input_fdim"], arch["input_tdim"])
    out: dict[str, tuple[int, ...]] = {
        "v.cls_token": (1, 1, d), "v.dist_token": (1, 1, d), "v.pos_embed": (1, f * t + 2, d),
        "v.patch_embed.proj.weight": (d, 1, PATCH, PATCH), "v.patch_embed.proj.bias": (d,),
        "v.norm.weight": (d,), "v.norm.bias": (d,),
        "mlp_head.0.weight": (d,), "mlp_head.0.bias": (d,),
        "mlp_head.1.weight": (arch["label_dim"], d), "mlp_head.1.bias": (arch["label_dim"],),
    }
    for i in range(arch["depth"]):
        b = f"v.blocks.{i}."
        out.update({
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "mlp.fc1.weight": (4 * d, d), b + "mlp.fc1.bias": (4 * d,),
            b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,),
        })
    return out


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

    ``norm_eps`` is the transformer's LayerNorm epsilon (timm/official 1e-6, Hugging Face 1e-12);
    ``head_norm_eps`` the output head's (official 1e-5). ``pretrained_file`` points timm at a local
    copy of the ImageNet weights for ``imagenet_pretrain``.
    """

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
            norm_eps=float(norm_eps), head_norm_eps=float(head_norm_eps), imagenet_pretrain=bool(imagenet_pretrain),
            drop_path_rate=float(drop_path_rate),
            pretrained_file=None if pretrained_file is None else str(pretrained_file),
        )
        self.label_dim = int(label_dim)
        self.f_dim, self.t_dim = patch_grid(fstride, tstride, input_fdim, input_tdim)
        self.v = VisionTransformerDistilled(
            img_size=(input_fdim, input_tdim), patch_size=PATCH, in_chans=1, num_classes=0,
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
        is then adapted from the DeiT grid by the official AST rule.
        """
        import timm

        spec = MODEL_SIZES[self.config["model_size"]]
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
