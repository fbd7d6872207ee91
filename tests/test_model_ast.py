"""The AST on timm: sizes, geometry, the official positional-embedding rule, ImageNet init via timm."""

from __future__ import annotations

import pytest
import torch

from monitor.errors import MonitorError
from monitor.model.ast import AST, MODEL_SIZES, adapt_pos_embed, expected_shapes, patch_grid, resize_pos_embed

torch.set_num_threads(1)


def _official_rule(grid: torch.Tensor, f_dim: int, t_dim: int) -> torch.Tensor:
    """The official ASTModel's ImageNet branch, written out as in ast_models.py (square grid)."""
    hw = grid.shape[-1]
    if t_dim <= hw:
        grid = grid[:, :, :, int(hw / 2) - int(t_dim / 2): int(hw / 2) - int(t_dim / 2) + t_dim]
    else:
        grid = torch.nn.functional.interpolate(grid, size=(hw, t_dim), mode="bilinear")
    if f_dim <= hw:
        grid = grid[:, :, int(hw / 2) - int(f_dim / 2): int(hw / 2) - int(f_dim / 2) + f_dim, :]
    else:
        grid = torch.nn.functional.interpolate(grid, size=(f_dim, t_dim), mode="bilinear")
    return grid


def test_model_sizes_match_timm_deit_definitions():
    import timm

    with torch.device("meta"):  # shapes only, no memory
        for name, spec in MODEL_SIZES.items():
            ref = timm.create_model(spec.timm_name.split(".")[0], pretrained=False)
            assert (spec.embed_dim, spec.depth, spec.num_heads) == (ref.embed_dim, len(ref.blocks),
                                                                    ref.blocks[0].attn.num_heads), name
            assert ref.patch_embed.grid_size == (spec.imagenet_grid,) * 2
            assert spec["embed_dim"] == spec.embed_dim
    assert MODEL_SIZES["base384"].timm_name == "deit_base_distilled_patch16_384.fb_in1k"


@pytest.mark.parametrize("fstride,tstride,tdim", [(10, 10, 100), (16, 16, 200), (12, 8, 150)])
def test_forward_geometry_and_state_dict_shapes(fstride, tstride, tdim):
    torch.manual_seed(0)
    m = AST(4, fstride, tstride, 128, tdim, "tiny224", depth=2).eval()
    f, t = patch_grid(fstride, tstride, 128, tdim)
    assert (m.f_dim, m.t_dim) == (f, t) == ((128 - 16) // fstride + 1, (tdim - 16) // tstride + 1)
    assert m.v.patch_embed.proj.stride == (fstride, tstride) and m.v.patch_embed.proj.kernel_size == (16, 16)
    assert m.v.pos_embed.shape == (1, f * t + 2, 192)
    assert m.v.blocks[0].attn.fused_attn  # SDPA attention
    assert m.geometry.depth == 2 and m.geometry.model_size == "tiny224" and m.label_dim == 4
    assert m.geometry["depth"] == 2  # dict-style reads still work
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected_shapes(m.geometry) == expected_shapes(m.geometry.to_dict())
    x = torch.randn(3, tdim, 128)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (3, 4)
        # batch items are independent, and the head is LayerNorm + Linear of the mean of cls and dist tokens
        assert torch.allclose(m(x[1:2]), out[1:2], atol=1e-5)
        feats = m.v.forward_features(x.unsqueeze(1).transpose(2, 3))
        assert torch.allclose(m.mlp_head((feats[:, 0] + feats[:, 1]) / 2), out, atol=1e-6)
    with pytest.raises(Exception):
        m(torch.randn(1, tdim + 16, 128))  # a model has one input size


def _head_inputs(m, run) -> list:
    """What ``mlp_head`` is handed while ``run()`` runs (a forward hook, the reference for the embeddings)."""
    seen = []
    hook = m.mlp_head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    try:
        run()
    finally:
        hook.remove()
    return seen


def test_forward_is_forward_head_of_forward_features_and_the_embedding_is_the_head_input():
    """timm's split (vision_transformer.py): forward = forward_head(forward_features), bit for bit;
    ``pre_logits=True`` gives the pooled (B, C) embedding that ``mlp_head`` sees, also through
    ``Scorer.embed`` (the scorer of ``monitor run``: zero-padded batches)."""
    from monitor.infer import Scorer

    torch.manual_seed(0)
    m = AST(3, 16, 16, 128, 200, "tiny224", depth=2).eval()
    x = torch.randn(5, 200, 128)
    out = []
    with torch.no_grad():
        seen = _head_inputs(m, lambda: out.append(m(x)))
        tokens = m.forward_features(x)
        assert tokens.shape == (5, 2 + m.f_dim * m.t_dim, 192) and m.num_features == 192
        assert torch.equal(m.forward_head(tokens), out[0])
        emb = m.forward_head(tokens, pre_logits=True)
    assert emb.shape == (5, 192) and torch.equal(emb, seen[0])
    scorer = Scorer.for_model(m, "multilabel", "cpu", "fp32", 4)
    seen = _head_inputs(m, lambda: [scorer.logits(x[k:k + 4].numpy()) for k in (0, 4)])  # 4 rows, then 1 padded
    (got,) = scorer.embed(x.numpy())
    assert got.dtype == torch.float32 and torch.equal(got, torch.cat([seen[0][:4], seen[1][:1]]))
    assert scorer.embed(x[:0].numpy())[0].shape == (0, 192)


def test_pos_embed_rule_crop_and_interpolate():
    g = torch.arange(2 * 14 * 14, dtype=torch.float32).reshape(1, 2, 14, 14)
    for f, t in [(12, 9), (12, 101), (8, 14), (24, 6), (14, 14), (20, 30)]:
        assert torch.equal(adapt_pos_embed(g, f, t), _official_rule(g, f, t)), (f, t)
    crop = adapt_pos_embed(g, 12, 9)  # smaller on both axes: the centre, untouched values
    assert torch.equal(crop, g[:, :, 1:13, 3:12])
    up = adapt_pos_embed(g, 20, 30)  # larger on both axes: bilinear (time, then frequency; separable)
    assert torch.allclose(up, torch.nn.functional.interpolate(g, size=(20, 30), mode="bilinear"), atol=1e-4)
    # AudioSet's 12x101 grid: time cut from the centre (as ast_models.py: 50 - t//2), or interpolated
    a = torch.randn(1, 3, 12, 101)
    assert torch.equal(adapt_pos_embed(a, 12, 49), a[:, :, :, 50 - 24:50 - 24 + 49])
    assert torch.equal(adapt_pos_embed(a, 12, 101), a)
    assert torch.equal(adapt_pos_embed(a, 12, 200), torch.nn.functional.interpolate(a, size=(12, 200), mode="bilinear"))
    # flattened (1, 2 + H*W, C) form keeps the cls/dist tokens
    pe = torch.randn(1, 2 + 12 * 101, 5)
    out = resize_pos_embed(pe, (12, 101), (12, 99))
    assert torch.equal(out[:, :2], pe[:, :2])
    assert torch.equal(out[:, 2:].reshape(12, 99, 5), pe[0, 2:].reshape(12, 101, 5)[:, 1:100])


def test_imagenet_init_goes_through_timm_pretrained_loading(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    w = tmp_path / "deit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(w))
    m = AST(2, 16, 16, 128, 256, "tiny224", depth=2, imagenet_pretrain=True, pretrained_file=str(w))
    # timm's in_chans=1 adaptation sums the RGB filters, as the official code does
    assert torch.allclose(m.v.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(dim=1, keepdim=True))
    assert torch.equal(m.v.patch_embed.proj.bias, src.patch_embed.proj.bias)
    assert torch.equal(m.v.blocks[1].mlp.fc1.weight, src.blocks[1].mlp.fc1.weight)
    assert torch.equal(m.v.dist_token, src.dist_token) and torch.equal(m.v.norm.weight, src.norm.weight)
    grid = src.pos_embed[:, 2:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    want = _official_rule(grid, 8, 16).permute(0, 2, 3, 1).reshape(1, 128, 192)
    assert torch.allclose(m.v.pos_embed[:, 2:], want)
    assert torch.equal(m.v.pos_embed[:, :2], src.pos_embed[:, :2])
    with pytest.raises(MonitorError, match="could not read ImageNet weights"):
        AST(2, 16, 16, 128, 256, "tiny224", depth=1, imagenet_pretrain=True, pretrained_file=str(tmp_path / "no"))


def test_bad_size_and_geometry():
    with pytest.raises(ValueError, match="unknown model_size"):
        AST(2, model_size="huge")
    with pytest.raises(ValueError, match="smaller than a 16x16 patch"):
        patch_grid(10, 10, 128, 8)
