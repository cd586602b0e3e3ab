"""timm ViTs -> vitcore, checked against timm itself on small random models (every parameter jittered)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitcore import VisionTransformer
from vitcore.pretrained import from_timm, verify

timm = pytest.importorskip("timm")

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
DINO = dict(img_size=28, embed_dim=32, depth=2, num_heads=2)  # patch 14: a 2x2 grid


def jitter(module: nn.Module, scale: float = 0.1) -> nn.Module:
    """Noise on every parameter: timm's near-zero CLS / register init and unit LayerScales hide mapping bugs."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module.eval()


def timm_model(name: str, **kwargs) -> nn.Module:
    return jitter(timm.create_model(name, pretrained=False, **kwargs))


def timm_internals(tm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list, list]:
    """(output, output of every block, attention matrix of every block) of a timm ViT, explicit attention path."""
    blocks, attentions = [], []
    hooks = [b.register_forward_hook(lambda _m, _i, out: blocks.append(out)) for b in tm.blocks]
    # timm's explicit path: attn = softmax(q k^T * scale); attn = attn_drop(attn); the dropout sees the matrix
    hooks += [b.attn.attn_drop.register_forward_hook(lambda _m, i, _o: attentions.append(i[0])) for b in tm.blocks]
    fused = [b.attn.fused_attn for b in tm.blocks]
    for b in tm.blocks:
        b.attn.fused_attn = False
    try:
        with torch.no_grad():
            out = tm(x)
    finally:
        for h in hooks:
            h.remove()
        for b, f in zip(tm.blocks, fused):
            b.attn.fused_attn = f
    return out, blocks, attentions


def assert_same(model: VisionTransformer, tm: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> None:
    """Logits (or pooled features), every block's tokens and every attention matrix within atol."""
    ref_out, ref_blocks, ref_attn = timm_internals(tm, x)
    with torch.no_grad():
        ours = model.forward_intermediates(x, attention=True)
        fused = model(x)
    torch.testing.assert_close(ours.logits, ref_out, atol=atol, rtol=0)
    torch.testing.assert_close(fused, ref_out, atol=atol, rtol=0)
    for mine, ref in zip(ours.tokens[1:], ref_blocks, strict=True):
        torch.testing.assert_close(mine, ref, atol=atol, rtol=0)
    for mine, ref in zip(ours.attention, ref_attn, strict=True):
        assert mine.shape == ref.shape
        torch.testing.assert_close(mine, ref, atol=atol, rtol=0)
    assert verify(model, tm, x) < atol


def test_plain_vit_matches_timm_and_carries_its_preprocessing():
    tm = timm_model("vit_small_patch16_224", **SMALL, num_classes=5)
    model, meta = from_timm(tm)
    c = model.config
    assert (c.image_size, c.patch_size, c.dim, c.depth, c.heads, c.mlp_dim, c.num_classes) == (
        (32, 32), 8, 32, 2, 2, 128, 5,
    )  # fmt: skip
    assert c.layer_norm_eps == 1e-6 and c.pool == "cls" and c.num_prefix_tokens == 1
    assert_same(model, tm, torch.randn(3, 3, 32, 32))
    assert meta["family"] == "timm" and meta["normalization"]["mean"] == (0.5, 0.5, 0.5)  # augreg ViT: 0.5
    assert meta["image_size"] == (32, 32) and meta["resize_size"] == (35, 35)  # crop_pct 0.9
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tm.parameters())


def test_name_builds_the_timm_model_with_random_weights():
    model, meta = from_timm("timm:deit_tiny_patch16_224", **SMALL, num_classes=3)
    assert meta["source"] == "timm:deit_tiny_patch16_224" and model.config.dim == 32
    assert meta["class_names"] == ["class_0", "class_1", "class_2"]


def test_distilled_deit_averages_both_heads():
    tm = timm_model("deit_tiny_distilled_patch16_224", **SMALL, num_classes=5, dynamic_img_size=True)
    model, _ = from_timm(tm)
    assert model.config.distilled and model.head_dist is not None and model.config.num_prefix_tokens == 2
    x = torch.randn(2, 3, 32, 32)
    assert_same(model, tm, x)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert (model.head(tokens[:, 0]) - model.head_dist(tokens[:, 1])).abs().max() > 0.1  # averaging matters
    assert_same(model, tm, torch.randn(2, 3, 16, 40))  # the 4x4 grid resampled to 2x5


@pytest.mark.parametrize("size", [(28, 28), (14, 42), (14, 14), (56, 56)])
def test_dinov2_with_registers_and_layerscale(size):
    tm = timm_model("vit_small_patch14_reg4_dinov2", **DINO, dynamic_img_size=True)
    with torch.no_grad():
        for b in tm.blocks:  # LayerScale of a trained DINOv2 is far from its 1e-5 init
            b.ls1.gamma.uniform_(0.2, 2.0)
            b.ls2.gamma.uniform_(0.2, 2.0)
    assert tm.no_embed_class and tm.num_reg_tokens == 4  # timm: no position embedding on CLS or registers
    model, meta = from_timm(tm)
    c = model.config
    assert c.num_registers == 4 and c.num_classes == 0 and c.pos_interpolation == "bicubic_antialias"
    torch.testing.assert_close(model.pos_embedding[:, 0], torch.zeros(1, 32))  # CLS row: nothing added
    assert_same(model, tm, torch.randn(2, 3, *size))  # CLS features (B, D)
    assert any("LayerScale" in n for n in meta["notes"])


def test_registers_with_position_embedding_are_folded_into_the_tokens():
    # no_embed_class=False: timm adds pos_embed rows to the registers too; they are constants
    tm = timm_model("vit_small_patch16_224", **SMALL, num_classes=4, reg_tokens=2, dynamic_img_size=True)
    assert not tm.no_embed_class and tm.pos_embed.shape[1] == 1 + 2 + 16
    model, _ = from_timm(tm)
    torch.testing.assert_close(model.register_tokens, tm.reg_token + tm.pos_embed[:, 1:3])
    for size in [(32, 32), (16, 48)]:
        assert_same(model, tm, torch.randn(2, 3, *size))


def test_dynamic_image_size_uses_timms_antialiased_resampling():
    from timm.layers import resample_abs_pos_embed

    tm = timm_model("vit_small_patch16_224", **SMALL, num_classes=5, dynamic_img_size=True)
    model, _ = from_timm(tm)
    for grid in [(2, 2), (6, 3), (8, 8)]:
        ref = resample_abs_pos_embed(tm.pos_embed, new_size=grid, old_size=(4, 4), num_prefix_tokens=1)
        torch.testing.assert_close(model.pos_embedding_for(grid), ref, atol=1e-6, rtol=0)
        assert_same(model, tm, torch.randn(2, 3, grid[0] * 8, grid[1] * 8))
    plain = VisionTransformer(model.config.replace(pos_interpolation="bicubic"))  # no antialias: differs shrinking
    plain.load_state_dict(model.state_dict())
    assert verify(plain.eval(), tm, torch.randn(1, 3, 16, 16)) > 1e-3


def test_deit3_no_embed_class_and_mean_pooling():
    tm = timm_model("deit3_small_patch16_224", **SMALL, num_classes=5, dynamic_img_size=True)
    model, _ = from_timm(tm)
    assert_same(model, tm, torch.randn(2, 3, 32, 32))
    assert_same(model, tm, torch.randn(2, 3, 24, 16))
    avg = timm_model("vit_small_patch16_224", **SMALL, num_classes=5, global_pool="avg", fc_norm=False)
    model, _ = from_timm(avg)
    assert model.config.pool == "mean"
    assert_same(model, avg, torch.randn(2, 3, 32, 32))


def test_converted_model_owns_its_weights():
    tm = timm_model("vit_small_patch14_dinov2", **DINO)
    model, _ = from_timm(tm)
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.add_(0.5)
    assert verify(model, tm, x) > 1e-3
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.sub_(0.5)
    assert verify(model, tm, x) < 1e-5


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("vit_small_patch16_224", dict(qk_norm=True), r"qk-norm \(qk_norm=True"),
        ("vit_small_patch16_224", dict(global_pool="avg"), r"fc_norm"),
        ("vit_small_patch16_224", dict(class_token=False, global_pool="avg", fc_norm=False), r"no class token"),
        ("vit_small_patch16_224", dict(global_pool="map"), r"attention pooling \(global_pool='map'\)"),
        ("vit_small_patch16_224", dict(global_pool="max", fc_norm=False), r"global_pool='max'"),
        ("vit_small_patch16_224", dict(pre_norm=True), r"pre_norm=True"),
        ("vit_small_patch16_224", dict(final_norm=False), r"final_norm=False"),
        ("vit_small_patch16_224", dict(act_layer="gelu_tanh"), r"exact nn.GELU"),
        ("vit_giant_patch14_dinov2", dict(img_size=28, embed_dim=48, depth=1, num_heads=2), r"SwiGLU MLP"),
        ("deit_tiny_distilled_patch16_224", dict(num_classes=0), r"num_classes=0 with a distillation token"),
        ("vit_tiny_r_s16_p8_224", dict(img_size=32, depth=1), r"patch embedding HybridEmbed"),
    ],
)
def test_unsupported_options_are_refused_by_name(name, kwargs, message):
    args = {**SMALL, **kwargs} if "patch14" not in name and "_r_" not in name else kwargs
    with pytest.raises(ValueError, match=message):
        from_timm(name, **args)


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match=r"names must match \['vit_\*'"):
        from_timm("resnet50")
    with pytest.raises(ValueError, match="timm has no model 'vit_nonexistent_1'"):
        from_timm("vit_nonexistent_1")
    with pytest.raises(ValueError, match="random weights"):
        from_timm("vit_small_patch16_224", pretrained=True)
    with pytest.raises(ValueError, match="apply to a timm model name"):
        from_timm(timm_model("vit_small_patch16_224", **SMALL), num_classes=3)
    with pytest.raises(ValueError, match="expected one of timm's"):
        from_timm(nn.Linear(2, 2))
    tm = timm_model("vit_small_patch16_224", **SMALL)
    with pytest.raises(ValueError, match=r"accepts only 32x32 inputs.*dynamic_img_size=True"):
        verify(from_timm(tm)[0], tm, torch.randn(1, 3, 48, 48))
