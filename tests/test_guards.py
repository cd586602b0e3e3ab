"""Every setting guarded: estimates match what a capture really holds, refusals say what to change,
and no widget or URL value makes any page raise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from grid_support import grids

from explorer import guard, registry
from explorer import state as S
from explorer.models import ModelSpec, seeded_model
from vitcore import ViTConfig

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
PAGES = [p.file for p in registry.PAGES]

EXTREME = {S.MODEL_KIND: "preset", S.PRESET_NAME: "base", S.PRESET_IMAGE: 384, S.PRESET_PATCH: 2,
           S.PRESET_DIM: 768, S.PRESET_HEADS: 16, S.PRESET_DEPTH: 12}


# --------------------------------------------------------------------------- the estimate
@pytest.mark.parametrize("patch, depth", [(16, 2), (8, 12)])  # P=8, 12 blocks: 89 MB of maps, packed to float16
def test_trace_estimate_matches_the_recorded_trace(patch, depth):
    from explorer.models import LoadedModel
    from explorer.traces import trace_image
    from vitcore.data.images import Preprocessing

    config = ViTConfig.preset("tiny", patch_size=patch, depth=depth)
    est = guard.estimate(config)
    loaded = LoadedModel(seeded_model(config), [], Preprocessing.for_model(config.image_size), "t")
    dtype = guard.attention_dtype(config)
    trace = trace_image(loaded, torch.randn(1, 3, 224, 224), qkv=guard.keeps_qkv(config), attention_dtype=dtype)
    assert (trace.q is not None) == (patch == 16)  # q/k/v of every layer only while the maps are float32
    assert trace.attention.dtype == dtype == (torch.float16 if patch == 8 else torch.float32)
    assert est.tokens == trace.attention.shape[-1]
    assert abs(est.trace_bytes - trace.nbytes()) / trace.nbytes() < 0.02
    assert est.peak_bytes >= est.trace_bytes


def test_large_maps_are_packed_to_float16():
    config = ViTConfig.preset("tiny", patch_size=4)  # 3,137 tokens: 1.4 GB of float32 maps
    assert guard.attention_dtype(config) == torch.float16
    assert guard.attention_dtype(ViTConfig.preset("tiny")) == torch.float32  # the page's exact arithmetic


def test_refusal_gives_the_numbers_and_what_to_change():
    config = ViTConfig.preset("base", image_size=384, patch_size=2, heads=16)
    with pytest.raises(ValueError) as info:
        guard.check(guard.estimate(config), 2 * 2**30, config=config)
    message = str(info.value)
    assert "P=2 at 384 px gives 36,865 tokens" in message
    assert "1.4e+09 attention entries per head" in message and "16 heads" in message
    assert "Nothing was run" in message and "larger patch size (P=" in message
    suggested = int(message.split("larger patch size (P=")[1].split(" ")[0])
    fits = guard.estimate(config.replace(patch_size=suggested))
    assert fits.peak_bytes <= 2 * 2**30  # the advice itself passes the guard


def test_a_small_setting_passes_and_time_is_estimated():
    est = guard.check(guard.estimate(ViTConfig.preset("tiny")))
    assert est.tokens == 197 and est.seconds > 0 and est.params > 5e6


def test_vit_h_states_its_memory_and_respects_the_budget(monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_MB", "2048")
    with pytest.raises(ValueError, match=r"632 M parameters need 2\.4 GB"):
        guard.estimate_spec(ModelSpec("torchvision", name="vit_h_14"))
    monkeypatch.setenv("EXPLORER_CACHE_MB", "4096")
    assert guard.estimate_spec(ModelSpec("torchvision", name="vit_h_14")).load_bytes > 6e9
    assert guard.estimate_spec(ModelSpec("checkpoint", digest="x")) is None  # known only once its file is read


# --------------------------------------------------------------------------- the app
def run(page: str | None = None, query: dict | None = None, **state):
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    config.set_option("client.showErrorDetails", "full")
    at = AppTest.from_file(APP, default_timeout=240)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, (page, [e.value for e in at.exception])
    return at


@pytest.mark.slow
def test_extreme_sidebar_preset_is_refused_on_every_page():
    at = run(**EXTREME)
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        if page.endswith(("1_patches.py", "2_embeddings.py", "3_attention.py", "5_predict.py", "7_trust.py")):
            errors = " ".join(e.value for e in at.error)
            assert "36,865 tokens" in errors and "Nothing was run" in errors, (page, errors)


def test_extreme_playground_settings_are_refused_before_any_work():
    state = {S.playground_key("a", "size"): 384, S.playground_key("a", "patch_384"): 4,
             S.playground_key("a", "dim"): 768, S.playground_key("a", "heads_768"): 16,
             S.playground_key("a", "depth"): 12}
    at = run("app_pages/playground.py", **state)
    errors = " ".join(e.value for e in at.error)
    assert "A: P=4 at 384 px gives 9,217 tokens" in errors
    assert [m.value for m in at.metric if m.label == "tokens"] == ["50"]  # B still works, A built nothing
    assert len([m for m in at.metric if m.label == "latency here"]) == 1


def test_smallest_playground_and_one_block_one_head_models_work():
    state = {S.playground_key("a", "size"): 32, S.playground_key("a", "patch_32"): 16,
             S.playground_key("a", "dim"): 64, S.playground_key("a", "heads_64"): 1,
             S.playground_key("a", "depth"): 1}
    at = run("app_pages/playground.py", **state)
    assert not at.error
    one = {S.MODEL_KIND: "preset", S.PRESET_NAME: "micro", S.PRESET_IMAGE: 32, S.PRESET_PATCH: 8,
           S.PRESET_DIM: 64, S.PRESET_HEADS: 1, S.PRESET_DEPTH: 1}
    at = run("app_pages/attention.py", **one)
    assert not at.error
    captions = " ".join(c.value for c in at.caption)
    assert "Layer: 0 (this model has only one)" in captions
    assert {payload.panels for _, payload in grids(at).values()} == {1}  # one head: one panel in every browser map
    assert len(at.dataframe) == 1  # the arithmetic still shows


@pytest.mark.slow
def test_any_url_value_leaves_every_page_working():
    query = {S.MODEL_KIND: "bundled", S.SAMPLE_NAME: "../../etc/passwd", S.LAYER: "100000", S.HEAD: "-5",
             S.QUERY: "99999", S.PATCH_SIZE: "100000"}
    at = run(query=query)
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])


@pytest.mark.parametrize("kind", ["giant", "preset"])
def test_unknown_model_or_preset_in_the_url(kind):
    query = {S.MODEL_KIND: kind, S.PRESET_NAME: "giant", S.SAMPLE_NAME: "shapes: star"}
    at = run("app_pages/attention.py", query=query,
             **{S.PRESET_DEPTH: 2})
    assert not at.error and len(at.dataframe) == 1


def test_vit_h_is_refused_on_the_page_before_loading():
    at = run("app_pages/attention.py", **{S.MODEL_KIND: "torchvision", S.TORCHVISION_NAME: "vit_h_14"})
    errors = " ".join(e.value for e in at.error)
    assert "632 M parameters" in errors and "EXPLORER_CACHE_MB" in errors
    from explorer.budget import shared_cache

    assert not any(k[0] == "model" and getattr(k[1], "name", "") == "vit_h_14" for k in shared_cache()._items)
