"""The model against the paper's equations and against torchvision."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vitcore import VisionTransformer, ViTConfig, conv_as_linear, interpolate_pos_embedding, patchify, unpatchify


def small(**kw) -> ViTConfig:
    base = dict(image_size=32, patch_size=8, dim=48, depth=2, heads=3, num_classes=7)
    return ViTConfig(**{**base, **kw})


# ---------------------------------------------------------------- config
def test_config_normalises_square_size_and_derives_grid():
    c = small(image_size=(32, 48))
    assert c.image_size == (32, 48)
    assert c.grid_size == (4, 6) and c.num_patches == 24 and c.head_dim == 16
    assert small().image_size == (32, 32)


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(heads=5), "try heads in [1, 2, 3, 4, 6, 8, 12, 16, 24, 48]"),
        (dict(patch_size=5), "patch sizes that fit are [1, 2, 4, 8, 16, 32]"),
        (dict(image_size=(32, 0)), "positive integers"),
        (dict(image_size="big"), "int or a (height, width) pair"),
        (dict(pool="max"), "'cls' or 'mean'"),
        (dict(dropout=1.5), "dropout=1.5 must be in [0, 1)"),
        (dict(depth=0), "depth=0 must be an integer >= 1"),
        (dict(num_classes=-1), "num_classes=-1 must be an integer >= 0"),
        (dict(mlp_ratio=0), "mlp_ratio=0 must be a positive number"),
        (dict(layer_norm_eps=0), "layer_norm_eps=0"),
        (dict(qkv_bias="yes"), "qkv_bias='yes' must be True or False"),
    ],
)
def test_config_validation_messages(kw, fragment):
    with pytest.raises(ValueError) as err:
        small(**kw)
    assert fragment in str(err.value)


def test_config_is_frozen_and_presets():
    c = ViTConfig.preset("tiny")
    assert (c.dim, c.depth, c.heads) == (192, 12, 3)
    assert (ViTConfig.preset("small").dim, ViTConfig.preset("small").heads) == (384, 6)
    assert (ViTConfig.preset("large").dim, ViTConfig.preset("large").depth) == (1024, 24)
    assert ViTConfig.preset("tiny", patch_size=8).patch_size == 8
    with pytest.raises(AttributeError):
        c.dim = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ViTConfig.preset("huge")


def test_config_json_round_trip():
    c = small(image_size=(32, 64), pool="mean", distilled=True)
    again = ViTConfig.from_json(json.dumps(json.loads(c.to_json())))
    assert again == c
    with pytest.raises(ValueError, match="unknown ViTConfig fields \\['colour'\\]"):
        ViTConfig.from_dict({**c.to_dict(), "colour": 1})


# ---------------------------------------------------------------- patches
def test_patchify_unpatchify_round_trip_is_exact():
    x = torch.randn(2, 3, 24, 40)
    p = patchify(x, 8)
    assert p.shape == (2, 15, 192)
    assert torch.equal(unpatchify(p, 8, (3, 5)), x)
    # first patch = top-left 8x8 block, channel-major
    assert torch.equal(p[0, 0], x[0, :, :8, :8].reshape(-1))
    # second patch is to its right (row-major grid)
    assert torch.equal(p[0, 1], x[0, :, :8, 8:16].reshape(-1))


def test_conv_embedding_equals_patchify_plus_linear():
    # float64 so the comparison measures the algebra, not float32 summation order
    model = VisionTransformer(small(image_size=(32, 48))).double()
    x = torch.randn(3, 3, 32, 48, dtype=torch.float64)
    conv_out = model.patch_embed(x)
    linear_out = conv_as_linear(model.patch_embed.proj)(patchify(x, 8))
    assert conv_out.shape == (3, 24, 48)
    assert (conv_out - linear_out).abs().max().item() < 1e-6
    # and in float32 the two differ only by rounding
    x32 = x.float()
    model32 = model.float()
    diff32 = (model32.patch_embed(x32) - conv_as_linear(model32.patch_embed.proj)(patchify(x32, 8))).abs().max()
    assert diff32.item() < 1e-5


@pytest.mark.parametrize(
    "images, fragment",
    [
        (torch.randn(3, 32, 32), "4-D image batch"),
        (torch.randn(1, 1, 32, 32), "expects 3 channels but the images have 1"),
        (torch.randn(1, 3, 30, 32), "30x32 is not a multiple of patch size 8; resize or crop to 24x32"),
    ],
)
def test_shape_errors_at_the_boundary(images, fragment):
    with pytest.raises(ValueError) as err:
        VisionTransformer(small())(images)
    assert fragment in str(err.value)


# ---------------------------------------------------------------- attention
@pytest.mark.parametrize(
    "kw",
    [dict(), dict(image_size=(32, 48)), dict(pool="mean"), dict(distilled=True), dict(qkv_bias=False, heads=1)],
)
def test_fused_equals_explicit(kw):
    model = VisionTransformer(small(**kw)).eval()
    x = torch.randn(2, 3, *model.config.image_size)
    explicit_model = model.with_config(fused_attention=False)
    fused = model(x)
    explicit = explicit_model(x)
    assert model.config.fused_attention and not explicit_model.config.fused_attention
    assert (fused - explicit).abs().max().item() < 1e-5


def test_attention_rows_sum_to_one_through_the_probe():
    model = VisionTransformer(small(fused_attention=False)).eval()
    seen = []
    handle = model.blocks[1].attn.probe.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        model(torch.randn(2, 3, 32, 32))
    finally:
        handle.remove()
    (attn,) = seen
    assert attn.shape == (2, 3, 17, 17)  # (B, H, T, T)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 3, 17), atol=1e-6)


def test_attention_matches_torch_multihead_attention():
    """Our qkv layout (q, k, v stacked) is nn.MultiheadAttention's in_proj layout."""
    cfg = small()
    model = VisionTransformer(cfg).eval()
    attn = model.blocks[0].attn
    mha = torch.nn.MultiheadAttention(cfg.dim, cfg.heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(2, 17, cfg.dim)
    ref, _ = mha(x, x, x, need_weights=False)
    for fused in (True, False):
        mixer = model.with_config(fused_attention=fused).blocks[0].attn
        assert mixer.qkv.weight is attn.qkv.weight  # the same parameters on either path
        assert (mixer(x) - ref).abs().max().item() < 1e-5


def test_a_hook_on_the_probe_makes_the_fused_model_form_the_matrix_without_any_flag():
    model = VisionTransformer(small()).eval()  # fused_attention=True
    x = torch.randn(2, 3, 32, 32)
    seen = []
    attn = model.blocks[1].attn
    assert not attn.explicit(None)
    handle = attn.probe.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        assert attn.explicit(None) and not model.blocks[0].attn.explicit(None)
        with torch.no_grad():
            hooked = model(x)
    finally:
        handle.remove()
    assert not attn.explicit(None) and len(seen) == 1 and seen[0].shape == (2, 3, 17, 17)
    with torch.no_grad():
        torch.testing.assert_close(hooked, model(x), atol=1e-5, rtol=0)


def test_one_forward_per_module_and_no_path_state():
    model = VisionTransformer(small())
    for module in model.modules():
        assert not hasattr(module, "forward_explicit") and "fused" not in vars(module), type(module).__name__
    assert VisionTransformer(small(token_mixer="pooling")).blocks[0].attn.config.fused_attention


def test_with_config_shares_the_parameters_and_leaves_the_model_alone():
    model = VisionTransformer(small(dropout=0.1)).train()
    model.blocks[1].eval()
    explicit = model.with_config(fused_attention=False)
    assert model.config.fused_attention and not explicit.config.fused_attention
    assert not any(b.attn.config.fused_attention for b in explicit.blocks)
    assert all(a is b for a, b in zip(model.parameters(), explicit.parameters()))  # the same Parameter objects
    assert [m.training for m in explicit.modules()] == [m.training for m in model.modules()]
    with torch.no_grad():
        model.head.bias.add_(1.0)  # one parameter, seen by both
    assert torch.equal(explicit.head.bias, model.head.bias)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), explicit.eval()
    with torch.no_grad():
        assert (model(x) - explicit(x)).abs().max().item() < 1e-5
    with pytest.raises(AttributeError, match=r"model.with_config\(fused_attention=False\)"):
        model.fused_attention = False
    with pytest.raises(ValueError, match="would change the parameters"):
        model.with_config(dim=96)
    with pytest.raises(ValueError, match="would change the parameters"):
        model.with_config(num_classes=3)


def test_a_record_keeps_what_it_asks_for_and_the_block_output_is_unchanged():
    from vitcore.model import Record

    model = VisionTransformer(small()).eval()
    block, explicit_block = model.blocks[0], model.with_config(fused_attention=False).blocks[0]
    z = torch.randn(2, 17, 48)
    with torch.no_grad():
        plain, explicit = block(z), explicit_block(z)
        nothing = Record()  # asks for nothing: the config's (fused) path
        assert torch.equal(block(z, None, nothing), plain) and nothing.matrix is None and nothing.hidden is None
        record = Record(attention=True, qkv=True, mlp=True, heads=(2,))
        out = block(z, None, record)
        full = Record(attention=True)
        block(z, None, full)
    assert torch.equal(out, explicit)  # asking for the matrix takes the explicit path for this call only
    assert record.matrix.shape == (2, 1, 17, 17) and record.q.shape == (2, 1, 17, 16)
    assert record.hidden.shape == (2, 17, 192)
    assert torch.equal(record.matrix[:, 0], full.matrix[:, 2])
    torch.testing.assert_close(record.matrix.sum(-1), torch.ones(2, 1, 17), atol=1e-6, rtol=0)


def test_forward_intermediates_without_dropout_is_deterministic_in_training_mode():
    model = VisionTransformer(small(dropout=0.5, attention_dropout=0.5)).train()
    x = torch.randn(2, 3, 32, 32)
    a = model.forward_intermediates(x, layers=[0], attention=True)  # block 1 keeps nothing, and no dropout either
    b = model.forward_intermediates(x, layers=[0], attention=True)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.attention[0], b.attention[0])
    c = model.forward_intermediates(x, layers=[0], attention=True, dropout=True)
    assert not torch.equal(a.logits, c.logits)


# ---------------------------------------------------------------- whole model
def test_shapes_of_every_stage():
    model = VisionTransformer(small(image_size=(32, 48)))
    x = torch.randn(2, 3, 32, 48)
    assert model.embed(x).shape == (2, 25, 48)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 25, 48)
    assert model.forward_head(tokens).shape == (2, 7)


def test_no_head_returns_features():
    model = VisionTransformer(small(num_classes=0))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 48)


def test_every_parameter_exists_after_init():
    model = VisionTransformer(small())
    assert not any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters())
    assert model.pos_embedding.shape == (1, 17, 48)
    assert 0.005 < model.pos_embedding.std().item() < 0.03
    assert model.pos_embedding.abs().max().item() <= 2 * 0.02 + 1e-6  # truncated at 2 std


def test_base_parameter_count_equals_torchvision_vit_b_16():
    from torchvision.models import vit_b_16

    ours = sum(p.numel() for p in VisionTransformer(ViTConfig.preset("base")).parameters())
    theirs = sum(p.numel() for p in vit_b_16().parameters())
    assert ours == theirs == 86_567_656


def test_position_interpolation_identity_on_same_grid_and_shape_otherwise():
    pos = torch.randn(1, 1 + 12, 8)
    assert interpolate_pos_embedding(pos, (3, 4), (3, 4)) is pos
    # resampling to the same size through the bicubic kernel is numerically the identity
    same = F.interpolate(pos[:, 1:].reshape(1, 3, 4, 8).permute(0, 3, 1, 2), size=(3, 4), mode="bicubic")
    assert torch.allclose(same.permute(0, 2, 3, 1).reshape(1, 12, 8), pos[:, 1:], atol=1e-6)
    out = interpolate_pos_embedding(pos, (3, 4), (6, 2))
    assert out.shape == (1, 13, 8)
    assert torch.equal(out[:, :1], pos[:, :1])  # CLS kept


def test_non_square_input_on_square_model():
    model = VisionTransformer(ViTConfig.preset("tiny", depth=1)).eval()
    assert model(torch.randn(1, 3, 160, 224)).shape == (1, 1000)


def test_micro_model_overfits_one_batch():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig.preset("micro"))
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16) % 5
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_distilled_heads():
    both = VisionTransformer(small(distilled=True)).eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = both.forward_features(x)
    assert tokens.shape == (2, 18, 48)  # CLS + distillation token + 16 patches
    expected = (both.head(tokens[:, 0]) + both.head_dist(tokens[:, 1])) / 2
    assert torch.allclose(both.forward_head(tokens), expected)
    cls_only = VisionTransformer(small(distilled=True, distilled_head=False)).eval()
    assert cls_only.head_dist is None
    tokens = cls_only.forward_features(x)
    assert torch.equal(cls_only.forward_head(tokens), cls_only.head(tokens[:, 0]))
