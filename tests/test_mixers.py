"""Token mixers: every exposed matrix reproduces its mixer's output, the fast paths equal the explicit ones."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch.utils.flop_counter import FlopCounterMode

import vitcore
from vitcore import VisionTransformer, ViTConfig
from vitcore.model import Record
from vitcore.model.config import TOKEN_MIXERS
from vitcore.model.mixers import (
    MIXER_LABELS,
    LinearAttention,
    PoolingMixer,
    Retention,
    TokenMixingMLP,
    build_mixer,
    mixer_cost,
    retention_decays,
)

MATRIX_MIXERS = ("linear", "retention", "pooling")


def config(mixer: str, **overrides) -> ViTConfig:
    return ViTConfig.preset("micro", token_mixer=mixer, **overrides)


def tokens(cfg: ViTConfig, batch: int = 2, grid: tuple[int, int] | None = None) -> torch.Tensor:
    gh, gw = grid or cfg.grid_size
    return torch.randn(batch, cfg.num_prefix_tokens + gh * gw, cfg.dim)  # (B, T, D)


def values(mixer, x: torch.Tensor) -> torch.Tensor:
    """What each mixer's matrix multiplies: v for the attention-like ones, the tokens for pooling."""
    if isinstance(mixer, PoolingMixer):
        return rearrange(x, "b t (h d) -> b h t d", h=mixer.heads)
    return mixer.split_heads(x)[2]


def apply_matrix(mixer, matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = matrix @ values(mixer, x)  # (B, H, T, d)
    if isinstance(mixer, PoolingMixer):
        return rearrange(out, "b h t d -> b t (h d)")
    return mixer.merge_heads(out)


def test_labels_cover_every_mixer_and_build_mixer_builds_each():
    assert tuple(MIXER_LABELS) == TOKEN_MIXERS
    kinds = {"linear": LinearAttention, "retention": Retention, "pooling": PoolingMixer, "mlp": TokenMixingMLP}
    for name, cls in kinds.items():
        assert isinstance(build_mixer(config(name)), cls)
        assert isinstance(VisionTransformer(config(name)).blocks[0].attn, cls)
    assert type(build_mixer(config("attention"))).__name__ == "Attention"


@pytest.mark.parametrize("name", MATRIX_MIXERS)
@pytest.mark.parametrize("registers", [0, 2])
def test_exposed_matrix_applied_to_values_reproduces_the_output(name, registers):
    cfg = config(name, num_registers=registers)
    mixer = build_mixer(cfg).eval()
    x = tokens(cfg)
    record = Record(attention=True, qkv=True)
    with torch.no_grad():
        out = mixer(x, cfg.grid_size, record)  # the explicit path: the record asks for the matrix
        fast = mixer(x, cfg.grid_size)
    matrix, T = record.matrix, x.shape[1]
    assert matrix.shape == (2, cfg.heads, T, T) and record.q is None  # q/k/v are attention's
    torch.testing.assert_close(apply_matrix(mixer, matrix, x), out, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast, out, atol=1e-5, rtol=0)


def test_linear_attention_quadratic_form_equals_linear_time_form_and_rows_sum_to_one():
    cfg = config("linear")
    mixer = build_mixer(cfg).eval()
    for grid in ((4, 4), (8, 6)):  # also a grid other than the config's
        x = tokens(cfg, 3, grid)
        record = Record(attention=True)
        with torch.no_grad():
            quadratic = mixer(x, grid, record)  # the quadratic form through the matrix
            linear = mixer(x, grid)  # fused_attention=True: the linear-time form
        matrix = record.matrix
        torch.testing.assert_close(linear, quadratic, atol=1e-5, rtol=0)
        assert (matrix > 0).all()
        torch.testing.assert_close(matrix.sum(-1), torch.ones(matrix.shape[:-1]), atol=1e-6, rtol=0)


def test_linear_attention_fast_path_never_forms_a_t_by_t_tensor():
    cfg = ViTConfig.preset("micro", image_size=256, token_mixer="linear")  # T = 1 + 1024
    mixer = build_mixer(cfg).eval()
    x = tokens(cfg, 1)
    T = x.shape[1]
    shapes = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if isinstance(result, torch.Tensor):
                shapes.append(tuple(result.shape))
            return result

    with torch.no_grad(), Spy():
        mixer(x)
    assert shapes and not any(s[-2:] == (T, T) for s in shapes)


@pytest.mark.parametrize("registers", [0, 1])
def test_retention_parallel_form_equals_recurrent_form_on_a_1d_ordering(registers):
    cfg = ViTConfig(image_size=(8, 96), patch_size=8, dim=32, heads=4, depth=1, num_classes=2,
                    token_mixer="retention", num_registers=registers)  # grid 1 x 12
    mixer = build_mixer(cfg).eval()
    x = tokens(cfg, 2)
    with torch.no_grad():
        parallel = mixer(x, (1, 12))
        recurrent = mixer.forward_recurrent(x)
    torch.testing.assert_close(recurrent, parallel, atol=1e-5, rtol=0)


def test_retention_decays_with_grid_distance_per_head():
    cfg = config("retention")
    mixer = build_mixer(cfg)
    decay = mixer.decay((4, 4), torch.device("cpu"), torch.float32)  # (H, T, T) normalised
    distance = mixer.distance((4, 4), torch.device("cpu"))
    p = cfg.num_prefix_tokens
    assert distance[p + 0, p + 5] == 2 and distance[p + 0, p + 15] == 6 and distance[0, p + 15] == 0
    raw = decay * decay.sum(-1, keepdim=True)  # rows of D / sqrt(sum D) sum to sqrt(sum D): undo it
    for h, gamma in enumerate(retention_decays(cfg.heads)):
        torch.testing.assert_close(raw[h], gamma ** distance.float(), atol=1e-6, rtol=1e-5)
    assert retention_decays(4) == [0.5, 0.75, 0.875, 0.9375]  # head 0 local, the last nearly global


def test_pooling_rows_sum_to_one_before_the_identity_is_subtracted():
    cfg = config("pooling", num_registers=1)
    mixer = build_mixer(cfg)
    x = tokens(cfg, 1)
    record = Record(attention=True)
    mixer(x, record=record)
    matrix, T = record.matrix, x.shape[1]
    pooling = matrix[0, 0] + torch.eye(T)
    torch.testing.assert_close(pooling.sum(-1), torch.ones(T), atol=1e-6, rtol=0)
    assert (pooling >= 0).all()
    p = cfg.num_prefix_tokens
    corner, middle = pooling[p + 0], pooling[p + 5]  # patch (0, 0) has 4 neighbours, (1, 1) has 9
    assert (corner > 0).sum() == 4 and (middle > 0).sum() == 9
    torch.testing.assert_close(pooling[0, p:], torch.full((16,), 1 / 16))  # CLS: global average
    assert torch.equal(matrix[0, 0], matrix[0, -1])  # every head mixes alike
    assert sum(q.numel() for q in mixer.parameters()) == 0


def test_mlp_mixer_is_tied_to_its_token_count():
    cfg = config("mlp")
    model = VisionTransformer(cfg).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
        record = Record(attention=True, qkv=True)
        model.blocks[0].attn(tokens(cfg, 1), record=record)
    assert record.matrix is None and record.q is None and not model.blocks[0].attn.has_matrix
    with pytest.raises(ValueError, match=r"tied to 17 tokens.*resize the input to 32x32"):
        model(torch.randn(1, 3, 48, 48))
    assert "fixed token count" in TokenMixingMLP.__doc__


@pytest.mark.parametrize("name", ["linear", "retention", "pooling"])
def test_grid_mixers_run_at_another_resolution(name):
    model = VisionTransformer(config(name)).eval()
    x = torch.randn(2, 3, 48, 64)  # grid 6 x 8 instead of 4 x 4
    with torch.no_grad():
        fused = model(x)
        explicit = model.with_config(fused_attention=False)(x)
    assert fused.shape == (2, 5)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TOKEN_MIXERS)
def test_capture_works_for_every_mixer(name):
    model = VisionTransformer(config(name, num_registers=1)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    trace = vitcore.capture(model, x)
    torch.testing.assert_close(trace.logits, logits, atol=1e-5, rtol=0)
    assert len(trace.tokens) == model.config.depth + 1
    T = model.config.num_prefix_tokens + 16
    if name == "mlp":
        assert trace.attention is None
    else:
        assert trace.attention.shape == (4, 2, 4, T, T)
    assert not any(block.attn.explicit(None) for block in model.blocks)  # capture switched nothing
    with vitcore.capturing(model, layers=[1]) as rec, torch.no_grad():  # hooks: the probe sees the matrices
        hooked = model(x)
    assert not any(m._forward_hooks for m in model.modules())
    assert not any(block.attn.explicit(None) for block in model.blocks)
    torch.testing.assert_close(hooked, logits, atol=1e-5, rtol=0)
    if name != "mlp":
        torch.testing.assert_close(rec.result.attention[0], trace.attention[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", TOKEN_MIXERS)
def test_mixer_cost_counts_parameters_and_matrix_products(name):
    cfg = config(name, fused_attention=name != "attention")  # count attention's explicit products
    mixer = build_mixer(cfg).eval()
    cost = mixer_cost(cfg)
    assert cost["params"] == sum(p.numel() for p in mixer.parameters())
    x = tokens(cfg, 1)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        mixer(x) if name != "attention" else mixer(x, cfg.grid_size)
    if name == "pooling":  # pooling adds, no matrix products
        assert counter.get_total_flops() == 0 and cost["macs"] > 0
    else:
        assert counter.get_total_flops() == 2 * cost["macs"]


def test_mixer_cost_grows_linearly_or_quadratically_with_tokens():
    def mixing(name: str, T: int) -> int:
        return mixer_cost(ViTConfig.preset("tiny", token_mixer=name), T)["mixing_macs"]

    for name in ("attention", "retention"):
        assert mixing(name, 2 * 785) / mixing(name, 785) == pytest.approx(4.0)
    assert mixing("linear", 2 * 785) / mixing("linear", 785) == pytest.approx(2.0)
    assert mixing("mlp", 785) == mixing("mlp", 197)  # tied to its own T


@pytest.mark.parametrize("name", TOKEN_MIXERS)
def test_every_parameter_gets_a_gradient(name):
    model = VisionTransformer(config(name, dropout=0.1)).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", ["linear", "retention", "pooling", "mlp"])
def test_checkpoint_round_trip_keeps_the_mixer(name, tmp_path):
    from vitcore.io.checkpoint import load_checkpoint, save_checkpoint

    model = VisionTransformer(config(name)).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", class_names=list("abcde"),
                           normalization=((0.5,) * 3, (0.5,) * 3))
    loaded, _ = load_checkpoint(path)
    assert loaded.config.token_mixer == name and type(loaded.blocks[0].attn) is type(model.blocks[0].attn)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", TOKEN_MIXERS)
def test_a_micro_vit_with_each_mixer_overfits_one_batch(name):
    model = VisionTransformer(config(name)).train()
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 5
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
