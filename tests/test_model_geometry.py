"""The typed model geometry: validated once, bundle.json's architecture layout, derived shapes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from monitor.errors import BundleError
from monitor.model.geometry import Geometry, expected_shapes

BASE = dict(model_size="base384", depth=12, fstride=10, tstride=10, input_fdim=128, input_tdim=1024, label_dim=527)


def test_fields_layout_and_derived_values(shared):
    g = Geometry(**BASE)
    assert [f.name for f in dataclasses.fields(Geometry)] == ["model_size", "depth", "fstride", "tstride", "input_fdim",
                                                             "input_tdim", "label_dim", "norm_eps", "head_norm_eps"]
    assert g.to_dict() == {**BASE, "norm_eps": 1e-6, "head_norm_eps": 1e-5}
    assert Geometry.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert g.grid == (12, 101) and g.n_patches == 1212 and g.embed_dim == 768
    assert g.describe() == "base384, depth 12, strides 10/10, input 1024 frames x 128 mel, 527 labels"
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.depth = 2
    assert g["depth"] == 12  # reads like the dict it replaced
    with pytest.raises(KeyError):
        g["label_dims"]
    # the tensor shapes it implies are exactly those of the official AudioSet checkpoint (less timm's heads)
    keys = json.loads((shared / "golden" / "ast_audioset_base384_keys.json").read_text())
    official = {k.removeprefix("module."): tuple(v) for k, v in keys.items() if ".head." not in k
                and ".head_dist." not in k}
    assert expected_shapes(g) == official == expected_shapes(g.to_dict())


def test_old_bundles_without_eps_and_int_eps_parse():
    g = Geometry.from_dict(BASE)
    assert (g.norm_eps, g.head_norm_eps) == (1e-6, 1e-5)
    h = Geometry.from_dict({**BASE, "norm_eps": 1e-12, "head_norm_eps": 1e-12})  # a Hugging Face import
    assert (h.norm_eps, h.head_norm_eps) == (1e-12, 1e-12) and h != g


@pytest.mark.parametrize("change,message", [
    (dict(model_size="huge"), "unknown model_size 'huge'; choose one of tiny224, small224, base224, base384"),
    (dict(depth=0), "depth and label_dim must be >= 1"),
    (dict(label_dim=0), "depth and label_dim must be >= 1"),
    (dict(fstride=17), "strides must be in 1..16, got 17/10"),
    (dict(tstride=0), "strides must be in 1..16, got 10/0"),
    (dict(input_tdim=8), "input (128 mel x 8 frames) is smaller than a 16x16 patch"),
    (dict(depth="12"), "'depth' must be int, got '12'"),
    (dict(depth=True), "'depth' must be int, got True"),
    (dict(norm_eps=0.0), "LayerNorm eps must be in (0, 1)"),
])
def test_impossible_geometries_are_one_line_errors(change, message):
    with pytest.raises(BundleError) as e:
        Geometry(**{**BASE, **change})
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BundleError):
        Geometry(**BASE).replace(**change)  # replace validates again


def test_from_dict_is_strict():
    with pytest.raises(BundleError, match="unknown architecture field 'detph'"):
        Geometry.from_dict({**BASE, "detph": 1})
    with pytest.raises(BundleError, match="architecture is missing 'label_dim'"):
        Geometry.from_dict({k: v for k, v in BASE.items() if k != "label_dim"})
    with pytest.raises(BundleError, match="'fstride' must be int, got 10.0"):
        Geometry.from_dict({**BASE, "fstride": 10.0})
    with pytest.raises(BundleError, match="must be a JSON object"):
        Geometry.from_dict([1, 2])
