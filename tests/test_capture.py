"""capture / capturing: every stage exported, nothing changed, nothing left behind."""

from __future__ import annotations

import pytest
import torch

import vitcore
from vitcore import VisionTransformer, ViTConfig, capture, capturing, patchify


def small(**kw) -> ViTConfig:
    base = dict(image_size=(16, 24), patch_size=4, dim=32, depth=3, heads=4, mlp_ratio=2.0, num_classes=5)
    return ViTConfig(**{**base, **kw})


def hook_count(model: torch.nn.Module) -> int:
    """Hooks of every kind on every submodule (forward, pre, with kwargs, backward)."""
    names = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_pre_hooks_with_kwargs",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks_always_called",
    )
    return sum(len(getattr(m, n, {})) for m in model.modules() for n in names)


@pytest.fixture
def model() -> VisionTransformer:
    return VisionTransformer(small()).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 24)


def test_importing_the_capture_module_leaves_vitcore_capture_the_function():
    """In a fresh process, importing the submodules (``vitcore.inspect.capture`` first) must not
    shadow the top-level function ``vitcore.capture`` with a module."""
    import subprocess
    import sys

    script = """
import types
import vitcore.inspect.capture as module
import vitcore.inspect
import vitcore.inspect.analysis, vitcore.inspect.views, vitcore.inspect.dense
import vitcore
import torch
assert not isinstance(vitcore.capture, types.ModuleType), vitcore.capture
assert vitcore.capture is module.capture and vitcore.capturing is module.capturing
assert vitcore.Trace is module.Trace
model = vitcore.VisionTransformer(vitcore.ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2))
trace = vitcore.capture(model, torch.zeros(1, 3, 8, 8))
print(type(trace).__name__, tuple(trace.attention[0].shape))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Trace", "(1,", "2,", "5,", "5)"]


def test_logits_bit_identical_to_explicit_path_and_close_to_fused(model, images):
    assert model.config.fused_attention
    with torch.no_grad():
        fused = model(images)
        trace = capture(model, images)
        explicit = model.with_config(fused_attention=False)(images)
        with capturing(model) as rec:  # hooks on every probe: every block forms its matrix
            hooked = model(images)
    assert torch.equal(trace.logits, explicit) and torch.equal(hooked, explicit)
    assert torch.equal(rec.result.attention, trace.attention)
    assert torch.allclose(trace.logits, fused, atol=1e-5)
    assert trace.logits.shape == (2, 5)


def test_fields_shapes_and_values(model, images):
    trace = capture(model, images)
    B, (gh, gw), N, D, T = 2, (4, 6), 24, 32, 25
    assert trace.grid == (gh, gw) and trace.patch_size == 4 and trace.num_prefix_tokens == 1
    assert torch.equal(trace.patches, patchify(images, 4))  # the pixels each token saw
    assert trace.patch_embeddings.shape == (B, N, D)
    model = model.with_config(fused_attention=False)  # recompute on the path the capture ran on
    with torch.no_grad():
        assert torch.equal(trace.patch_embeddings, model.patch_embed(images))
        assert torch.equal(trace.pos_embedding, model.pos_embedding[0])
        assert len(trace.tokens) == model.config.depth + 1
        assert torch.equal(trace.tokens[0], model.embed(images))  # z_0, eq. (1)
        z = trace.tokens[0]
        for i, block in enumerate(model.blocks):
            z = block(z)
            assert torch.equal(trace.tokens[i + 1], z)
        assert torch.equal(model.forward_head(model.norm(trace.tokens[-1])), trace.logits)
    assert trace.attention.shape == (3, B, 4, T, T) and trace.attention.dtype == torch.float32
    assert torch.allclose(trace.attention.sum(-1), torch.ones(3, B, 4, T), atol=1e-6)
    assert trace.layers == (0, 1, 2) and trace.heads == (0, 1, 2, 3)
    assert trace.q is None and trace.mlp is None
    for t in [trace.logits, trace.patches, trace.attention, *trace.tokens]:
        assert t.device.type == "cpu" and not t.requires_grad


def test_attention_matches_a_recomputation_from_tokens(model, images):
    trace = capture(model, images, qkv=True, mlp=True)
    model = model.with_config(fused_attention=False)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            qkv = block.attn.qkv(block.norm1(trace.tokens[i]))  # (B, T, 3D)
            q, k, v = qkv.reshape(2, 25, 3, 4, 8).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, d)
            attn = (q @ k.transpose(-2, -1) * 8**-0.5).softmax(-1)
            assert torch.allclose(trace.attention[i], attn, atol=1e-6)
            assert torch.equal(trace.q[i], q) and torch.equal(trace.k[i], k) and torch.equal(trace.v[i], v)
            x = trace.tokens[i] + block.attn(block.norm1(trace.tokens[i]))
            hidden = block.mlp.act(block.mlp.fc1(block.norm2(x)))  # (B, T, mlp_dim)
            assert torch.equal(trace.mlp[i], hidden)
    assert trace.mlp.shape == (3, 2, 25, 64)


def test_selection_stores_only_selected_layers_and_heads(model, images):
    full = capture(model, images, qkv=True)
    part = capture(model, images, layers=[-1, 0], heads=[3, 1], qkv=True)
    assert part.layers == (0, 2) and part.heads == (1, 3)
    assert part.attention.shape == (2, 2, 2, 25, 25)
    # block 1 runs its fused path in the partial capture: equal up to float rounding
    assert torch.allclose(part.attention, full.attention[[0, 2]][:, :, [1, 3]], atol=1e-6)
    assert torch.equal(part.attention[0], full.attention[0][:, [1, 3]])  # block 0 saw identical input
    assert torch.allclose(part.k, full.k[[0, 2]][:, :, [1, 3]], atol=1e-5)
    assert part.layer_slot(2) == 1
    with pytest.raises(ValueError, match="holds layers"):
        part.layer_slot(1)
    assert part.nbytes() < full.nbytes()
    assert full.nbytes() - part.nbytes() == 4 * (full.attention.numel() - part.attention.numel()) + 3 * 4 * (
        full.q.numel() - part.q.numel()
    )
    one = capture(model, images, layers=1, heads=2)
    assert one.attention.shape == (1, 2, 1, 25, 25)
    assert torch.allclose(one.attention[0], full.attention[1][:, [2]], atol=1e-6)
    none = capture(model, images, layers=[])
    assert none.attention is None and len(none.tokens) == 4


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(layers=[3]), "valid layers are 0..2"),
        (dict(layers=-4), "valid layers are 0..2"),
        (dict(heads=[0, 4]), "valid heads are 0..3"),
        (dict(heads=[]), "at least one head"),
        (dict(layers=[1.5]), "must be integers"),
        (dict(attention_dtype=torch.int8), "attention_dtype"),
    ],
)
def test_selection_errors_name_the_valid_range(model, images, kw, fragment):
    with pytest.raises(ValueError, match=fragment):
        capture(model, images, **kw)
    assert hook_count(model) == 0


def test_the_slab_belongs_to_capture_each_record_holds_its_slice(model, images):
    from vitcore.model import Record

    slab = torch.empty(3, 2, 4, 25, 25)  # (L, B, H, T, T), as capture allocates it
    records = {i: Record(attention=True, out=slab[i]) for i in range(3)}
    with torch.no_grad():
        out = model.forward_intermediates(images, records=records)
    assert all(a.data_ptr() == slab[i].data_ptr() for i, a in enumerate(out.attention))  # the softmax wrote there
    full = capture(model, images)
    assert torch.equal(slab, full.attention) and torch.equal(out.logits, full.logits)
    half = torch.empty(2, 2, 2, 25, 25, dtype=torch.float16)  # two layers, two heads, packed per layer
    kept = (1, 3)
    records = {0: Record(attention=True, heads=kept, out=half[0]), -1: Record(attention=True, heads=kept, out=half[1])}
    with torch.no_grad():
        out = model.forward_intermediates(images, records=records)
    assert out.layers == (0, 2) and out.heads == (1, 3)
    torch.testing.assert_close(half.float(), full.attention[[0, 2]][:, :, [1, 3]], atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="either records or"):
        model.forward_intermediates(images, records=records, attention=True)
    mixed = {0: Record(attention=True, heads=(1,)), 1: Record(attention=True)}
    with pytest.raises(ValueError, match="same heads"):
        model.forward_intermediates(images, records=mixed)


def test_float16_attention(model, images):
    full = capture(model, images)
    half = capture(model, images, attention_dtype=torch.float16)
    assert half.attention.dtype == torch.float16
    assert half.attention.nbytes == full.attention.nbytes // 2
    assert torch.allclose(half.attention.float(), full.attention, atol=1e-3)
    assert torch.equal(half.logits, full.logits)


def forms_matrix(model: VisionTransformer) -> list[bool]:
    """Per block: whether a plain call forms the attention matrix (explicit path) right now."""
    return [block.attn.explicit(None) for block in model.blocks]


def test_hooks_removed_after_exception_and_the_fused_path_comes_back(model, images):
    before = hook_count(model)
    assert forms_matrix(model) == [False] * 3
    with pytest.raises(ValueError, match="not a multiple of patch size"), capturing(model) as rec:
        assert hook_count(model) > before
        assert forms_matrix(model) == [True] * 3  # a hooked probe is seen: no flag was switched
        model(torch.randn(1, 3, 17, 24))
    assert hook_count(model) == before == 0
    assert forms_matrix(model) == [False] * 3
    with pytest.raises(RuntimeError, match="no complete forward"):
        _ = rec.result


def test_hooks_removed_after_success_and_only_hooked_blocks_form_the_matrix(model, images):
    model.train()
    with torch.no_grad(), capturing(model, layers=[1]) as rec:
        assert forms_matrix(model) == [False, True, False]
        model(images)
    assert hook_count(model) == 0 and forms_matrix(model) == [False] * 3 and model.training
    assert rec.result.attention.shape == (1, 2, 4, 25, 25)
    capture(model, images)
    assert hook_count(model) == 0 and forms_matrix(model) == [False] * 3
    assert all(m.training for m in model.modules())  # capture() changed no mode


def test_capture_does_not_change_training_state_or_grads():
    model = VisionTransformer(small(dropout=0.5, attention_dropout=0.5))
    model.train()
    x = torch.randn(2, 3, 16, 24)
    a = capture(model, x)
    b = capture(model, x)
    assert torch.equal(a.logits, b.logits)  # eval mode inside: dropout off, deterministic
    assert model.training and all(p.grad is None for p in model.parameters())


def test_capturing_keeps_the_last_forward_and_accepts_one_image(model):
    x1, x2 = torch.randn(1, 3, 16, 24), torch.randn(3, 3, 16, 24)
    with torch.no_grad(), capturing(model) as rec:
        model(x1)
        model(x2)
    assert rec.result.logits.shape == (3, 5) and torch.equal(rec.result.patches, patchify(x2, 4))
    single = capture(model, x1[0])
    assert single.patches.shape == (1, 24, 48)
    with torch.no_grad(), capturing(model) as rec:
        tokens = model.forward_features(x1)
    assert rec.result.logits is None and torch.equal(model.norm(rec.result.tokens[-1]), tokens)


def test_other_image_size_interpolates_pos_embedding_and_distilled_prefix():
    model = VisionTransformer(small(distilled=True)).eval()
    x = torch.randn(1, 3, 24, 32)  # grid 6x8 instead of 4x6
    trace = capture(model, x)
    assert trace.grid == (6, 8) and trace.num_prefix_tokens == 2
    with torch.no_grad():
        assert torch.equal(trace.pos_embedding, model.pos_embedding_for((6, 8))[0])
    assert trace.pos_embedding.shape == (2 + 48, 32) and trace.attention.shape == (3, 1, 4, 50, 50)


def test_trace_is_independent_of_later_parameter_updates(model, images):
    trace = capture(model, images)
    pos = trace.pos_embedding.clone()
    with torch.no_grad():
        model.pos_embedding.add_(1.0)
    assert torch.equal(trace.pos_embedding, pos)


def test_non_vitcore_model_is_refused():
    with pytest.raises(ValueError, match=r"vitcore\.VisionTransformer"):
        capture(torch.nn.Linear(3, 3), torch.randn(1, 3, 16, 16))


def test_huge_page_advice_keeps_the_data():
    from vitcore.inspect.capture import _advise_huge_pages

    slab = torch.empty(4 << 20)  # 16 MiB, large enough to be advised
    _advise_huge_pages(slab)
    slab.copy_(torch.arange(slab.numel(), dtype=torch.float32))
    assert slab[-1] == slab.numel() - 1 and slab[12345] == 12345


# --------------------------------------------------------------------------- shared-model reading
def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_eight_threads_capturing_one_shared_model_match_sequential_traces():
    from concurrent.futures import ThreadPoolExecutor

    from vitcore.inspect.analysis import gradient_rollout

    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(image_size=32, patch_size=8, dim=48, depth=3, heads=4, num_classes=5)).eval()
    before = _state(model)
    images = [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    sequential = [capture(model, x, qkv=True) for x in images]
    relevance = [gradient_rollout(model, x, 2) for x in images]

    def work(i: int):
        return capture(model, images[i], qkv=True), gradient_rollout(model, images[i], 2)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for (trace, rel), ref, ref_rel in zip(results, sequential, relevance):
        assert torch.equal(trace.attention, ref.attention) and torch.equal(trace.logits, ref.logits)
        assert torch.equal(trace.q, ref.q) and all(torch.equal(a, b) for a, b in zip(trace.tokens, ref.tokens))
        assert torch.equal(rel, ref_rel)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert forms_matrix(model) == [False] * 3
    assert hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())
    assert not any(m.training for m in model.modules())


def test_capture_of_a_training_mode_model_leaves_it_in_training_mode_and_skips_dropout():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(image_size=32, patch_size=8, dim=48, depth=2, heads=4, num_classes=5,
                                        dropout=0.5, attention_dropout=0.5))
    x = torch.randn(2, 3, 32, 32)
    model.train()
    a, b = capture(model, x), capture(model, x)
    assert model.training and torch.equal(a.logits, b.logits)  # no dropout: deterministic
    model.eval()
    with torch.no_grad():
        assert torch.allclose(a.logits, model.with_config(fused_attention=False)(x), atol=1e-6)


def test_registers_are_prefix_tokens_without_position_embedding():
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, dim=48, depth=2, heads=4, num_classes=3, num_registers=4)
    model = VisionTransformer(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    trace = capture(model, x)
    assert trace.num_prefix_tokens == 5 and trace.attention.shape[-1] == 5 + 16
    assert model.pos_embedding.shape == (1, 1 + 16, 48)
    assert torch.equal(trace.pos_embedding[1:5], torch.zeros(4, 48))  # registers get no position
    z0 = trace.tokens[0]
    assert torch.allclose(z0[:, 1:5], model.register_tokens.expand(2, -1, -1).detach())
    assert torch.allclose(z0[:, 5:], trace.patch_embeddings + trace.pos_embedding[5:], atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(trace.logits, model(x), atol=1e-5)


@pytest.mark.slow
def test_twenty_base_traces_grow_peak_memory_by_less_than_one_model_copy():
    import subprocess
    import sys

    script = """
import resource, torch, vitcore
torch.manual_seed(0)
torch.set_num_threads(2)
model = vitcore.VisionTransformer(vitcore.ViTConfig.preset("base")).eval()
x = torch.randn(1, 3, 224, 224)
trace = vitcore.capture(model, x)
del trace
one = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
for i in range(20):
    trace = vitcore.capture(model, x + i)
    del trace
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
print(peak - one, model_bytes)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1200, check=True)
    growth, model_bytes = (int(v) for v in out.stdout.split())
    mib = 2**20
    assert growth < model_bytes, f"20 traces grew peak RSS by {growth / mib:.0f} MiB (model {model_bytes / mib:.0f})"


def test_capture_is_the_function_whatever_was_imported_first():
    import importlib

    importlib.import_module("vitcore.inspect.capture")  # importing the submodule must not shadow the function
    assert callable(vitcore.capture) and vitcore.capture.__name__ == "capture"
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig.preset("micro", token_mixer="pooling")).eval()
    with pytest.raises(ValueError, match="has no q/k/v; capture with qkv=False"), capturing(model, qkv=True):
        pass
    trace = vitcore.capture(model, torch.randn(1, 3, 32, 32))
    assert trace.attention.shape == (4, 1, 4, 17, 17) and trace.q is None
