"""The model geometry: one typed, validated object for an AST's shape (no torch needed).

``Geometry`` is what ``bundle.json``'s ``architecture`` holds, what ``AST`` is built from (``model.geometry``),
what the weights' tensor shapes follow from (``expected_shapes``) and what checkpoint loaders and
``monitor models info`` describe. It is checked once, when it is made: an impossible geometry is a
one-line ``BundleError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from monitor.errors import BundleError

PATCH = 16  # AST patches are 16x16 (mel bins x frames)
DEFAULT_NORM_EPS = 1e-6  # timm / the official AST's transformer LayerNorm
DEFAULT_HEAD_NORM_EPS = 1e-5  # the official AST's output-head LayerNorm (torch's default)
_OPTIONAL = {"norm_eps": DEFAULT_NORM_EPS, "head_norm_eps": DEFAULT_HEAD_NORM_EPS}


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


@dataclass(frozen=True)
class Geometry:
    """An AST's shape: size, depth, patch strides, input (mel bins x frames), outputs and LayerNorm eps.

    ``model_size`` is a key of ``monitor.model.ast.MODEL_SIZES`` (tiny224, small224, base224, base384);
    ``input_fdim`` mel bins x ``input_tdim`` frames is the fbank the model takes; ``label_dim`` its outputs;
    ``norm_eps`` the transformer's LayerNorm epsilon (official/timm 1e-6, Hugging Face 1e-12) and
    ``head_norm_eps`` the output head's (official 1e-5).
    """

    model_size: str
    depth: int
    fstride: int
    tstride: int
    input_fdim: int
    input_tdim: int
    label_dim: int
    norm_eps: float = DEFAULT_NORM_EPS
    head_norm_eps: float = DEFAULT_HEAD_NORM_EPS

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            want = {"str": str, "int": int, "float": float}[f.type]
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))
            elif isinstance(v, bool) or not isinstance(v, want):
                raise BundleError(f"model geometry: '{f.name}' must be {'a string' if want is str else want.__name__}, "
                                  f"got {v!r}")
        if self.model_size not in MODEL_SIZES:
            raise BundleError(f"unknown model_size {self.model_size!r}; choose one of {', '.join(MODEL_SIZES)}")
        if self.depth < 1 or self.label_dim < 1:
            raise BundleError(f"model geometry: depth and label_dim must be >= 1, got {self.depth} and "
                              f"{self.label_dim}")
        if not (1 <= self.fstride <= PATCH and 1 <= self.tstride <= PATCH):
            raise BundleError(f"strides must be in 1..{PATCH}, got {self.fstride}/{self.tstride}")
        try:
            patch_grid(self.fstride, self.tstride, self.input_fdim, self.input_tdim)
        except ValueError as exc:
            raise BundleError(str(exc)) from None
        if not (0 < self.norm_eps < 1 and 0 < self.head_norm_eps < 1):
            raise BundleError(f"model geometry: LayerNorm eps must be in (0, 1), got {self.norm_eps}/"
                              f"{self.head_norm_eps}")

    # --- derived ---------------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        """(f_dim, t_dim): the patch grid."""
        return patch_grid(self.fstride, self.tstride, self.input_fdim, self.input_tdim)

    @property
    def n_patches(self) -> int:
        f, t = self.grid
        return f * t

    @property
    def embed_dim(self) -> int:
        return MODEL_SIZES[self.model_size].embed_dim

    def replace(self, **changes: Any) -> "Geometry":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for people: ``base384, depth 12, strides 10/10, input 1024 frames x 128 mel, 527 labels``."""
        return (f"{self.model_size}, depth {self.depth}, strides {self.fstride}/{self.tstride}, "
                f"input {self.input_tdim} frames x {self.input_fdim} mel, {self.label_dim} labels")

    # --- bundle.json's "architecture" ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``architecture`` object of ``bundle.json`` (format_version 1), fields in declaration order."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "bundle.json architecture") -> "Geometry":
        """Parse an ``architecture`` mapping strictly: unknown or missing fields and wrong types are errors.

        ``norm_eps`` and ``head_norm_eps`` may be absent (bundles before they were recorded): 1e-6 and 1e-5.
        """
        if not isinstance(data, Mapping):
            raise BundleError(f"{where} must be a JSON object; re-export the bundle")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise BundleError(f"bundle.json: unknown architecture field '{unknown[0]}' (allowed: {', '.join(names)})")
        full = {**_OPTIONAL, **data}
        missing = [k for k in names if k not in full]
        if missing:
            raise BundleError(f"{where} is missing '{missing[0]}'; re-export the bundle or add the field")
        for f in dataclasses.fields(cls):
            v, want = full[f.name], {"str": str, "int": int, "float": float}[f.type]
            ok = isinstance(v, want) or (want is float and isinstance(v, int))
            if isinstance(v, bool) or not ok:
                kind = "a string" if want is str else want.__name__
                raise BundleError(f"{where}: '{f.name}' must be {kind}, got {v!r}")
        return cls(**{k: full[k] for k in names})

    def __getitem__(self, key: str) -> Any:
        """``geometry["depth"]`` reads like the dict it replaces (for code not yet moved to attributes)."""
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)


_FIELDS = tuple(f.name for f in dataclasses.fields(Geometry))


def expected_shapes(geometry: Geometry | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of ``AST.from_geometry(geometry).state_dict()``, without torch.

    A mapping (an ``architecture`` object of bundle.json) is parsed with ``Geometry.from_dict`` first.
    """
    g = geometry if isinstance(geometry, Geometry) else Geometry.from_dict(geometry)
    d, (f, t) = g.embed_dim, g.grid
    out: dict[str, tuple[int, ...]] = {
        "v.cls_token": (1, 1, d), "v.dist_token": (1, 1, d), "v.pos_embed": (1, f * t + 2, d),
        "v.patch_embed.proj.weight": (d, 1, PATCH, PATCH), "v.patch_embed.proj.bias": (d,),
        "v.norm.weight": (d,), "v.norm.bias": (d,),
        "mlp_head.0.weight": (d,), "mlp_head.0.bias": (d,),
        "mlp_head.1.weight": (g.label_dim, d), "mlp_head.1.bias": (g.label_dim,),
    }
    for i in range(g.depth):
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
