"""explorer.fastpath: the app's traces run on the optimised model only once it is warm and faithful."""

from __future__ import annotations

import importlib

import pytest
import torch

from explorer import fastpath, traces
from explorer.models import LoadedModel
from vitcore import VisionTransformer, ViTConfig
from vitcore.data.images import Preprocessing

opt = importlib.import_module("vitcore.model.optimize")


def _loaded() -> LoadedModel:
    config = ViTConfig.preset("micro")
    model = VisionTransformer(config).eval()
    return LoadedModel(model, [], Preprocessing.for_model(config.image_size), "micro")


@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_traces_use_the_fast_path_once_warm_and_faithful(mode, monkeypatch):
    monkeypatch.setattr(opt, "bf16_native", lambda: True)  # no emulation warning on any CPU
    loaded = _loaded()
    size = loaded.model.config.image_size[0]
    x = torch.randn(1, 3, size, size)
    before = traces.trace_image(loaded, x)  # no fast path yet: the shared model
    path = fastpath.fast_path(loaded, mode=mode)
    path.shape = tuple(x.shape)
    assert fastpath.fast_path(loaded) is path and path.label() == "fp32"
    path.start(photos=torch.randn(3, 3, size, size), wait=True)
    assert path.state == "ready", path.detail
    assert path.label() == mode and path.detail.startswith(f"{mode} inference path")
    assert path.model_for(x) is path.model and path.model is not loaded.model
    assert path.model_for(torch.randn(2, 3, size, size)) is loaded.model  # a shape not warmed up
    after = traces.trace_image(loaded, x)
    assert after.q is not None and after.attention.shape == before.attention.shape
    torch.testing.assert_close(after.attention.sum(-1), torch.ones(after.attention.shape[:-1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(after.attention, before.attention, atol=2e-3 if mode == "int8" else 2e-2, rtol=0)
    assert after.tokens[-1].dtype == torch.float32
    assert not torch.equal(after.tokens[-1], before.tokens[-1])  # it really ran the optimised model


def test_an_unfaithful_path_is_refused(monkeypatch):
    loaded = _loaded()
    size = loaded.model.config.image_size[0]
    bad = opt.Fidelity(images=3, cls_cosine=0.95, attention_pearson=0.999, max_row_sum_error=0.0)
    monkeypatch.setattr(opt, "fidelity", lambda *args, **kwargs: bad)
    path = fastpath.FastPath(loaded, mode="int8", size=size)
    path.start(photos=torch.randn(3, 3, size, size), wait=True)
    assert path.state == "refused" and "0.9500" in path.detail
    assert path.model_for(torch.randn(1, 3, size, size)) is loaded.model
    assert path.label() == "fp32 (fast path not used)"


def test_env_mode_and_status_line(monkeypatch):
    monkeypatch.delenv(fastpath.ENV, raising=False)
    monkeypatch.setattr(opt, "bf16_native", lambda: True)
    assert fastpath.env_mode() == "bf16"  # auto: bf16 where the CPU runs it natively
    monkeypatch.setattr(opt, "bf16_native", lambda: False)
    assert fastpath.env_mode() is None  # and off where it would be emulated
    monkeypatch.setenv(fastpath.ENV, "off")
    assert fastpath.env_mode() is None
    monkeypatch.setenv(fastpath.ENV, "int8")
    assert fastpath.env_mode() == "int8"
    monkeypatch.setenv(fastpath.ENV, "int8+compile")
    assert fastpath.env_mode() == "int8+compile"
    monkeypatch.setenv(fastpath.ENV, "int4")
    with pytest.raises(ValueError, match="EXPLORER_FAST_PATH='int4' is not one of auto, off, compile, int8"):
        fastpath.env_mode()
    loaded = _loaded()
    size = loaded.model.config.image_size[0]
    path = fastpath.FastPath(loaded, mode="int8", size=size)
    path.start(photos=torch.randn(2, 3, size, size), wait=True)
    line = fastpath.status_line()
    assert line.startswith(f"Traces of micro at {size} px run on int8: int8 inference path"), line
