"""The DINO views page on the default model (DINOv2 ViT-S/14) and its Streamlit-free logic."""

from __future__ import annotations

import os

import numpy as np
import pytest

from explorer import dino
from explorer.models import ModelSpec, build_model
from explorer.samples import gallery
from vitcore import capture

pytestmark = pytest.mark.slow  # converts / loads the real DINOv2 once


@pytest.fixture(scope="module")
def real():
    loaded = build_model(ModelSpec("dinov2"))
    photos = gallery()
    traces = {name: capture(loaded.model, loaded.preprocessing(photos[name].image)[None], qkv=False)
              for name in ("chelsea", "astronaut")}
    return loaded, traces


def test_dino_masks_keep_sixty_percent_with_few_patches(real):
    _, traces = real
    attention, masks, kept = dino.attention_mask_maps(traces["chelsea"])
    assert attention.shape == masks.shape == (6, 16, 16)
    assert np.all(kept >= 0.6) and np.all(kept < 0.75)
    assert masks.reshape(6, -1).mean(1).max() < 0.6  # 60 % of the mass in well under 60 % of the patches


def test_pca_pair_finds_a_foreground_and_the_artifact_summary_is_measured(real):
    loaded, traces = real
    a, b = dino.pca_pair(loaded.model, traces["chelsea"], traces["astronaut"])
    assert 0.2 < float(a.foreground.float().mean()) < 0.8  # the cat, not the whole photo
    for view in (a, b):
        assert 0.05 < float(view.foreground.float().mean()) < 1.0
        assert float(view.rgb[~view.foreground].abs().sum()) == 0.0  # colour only on the foreground
    summary = dino.artifact_summary(traces["chelsea"])
    assert summary.per_layer_max_ratio.shape == (13,) and np.all(summary.per_layer_max_ratio >= 1.0)
    assert summary.count == int(summary.outliers.sum())
    assert "outlier" in summary.verdict or "high-norm" in summary.verdict
    # the page reads the model: no hook left, so no block forms its matrix on a plain call
    assert not any(block.attn.explicit(None) for block in loaded.model.blocks)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in loaded.model.modules())


def test_dino_page_runs_on_the_default_photo():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file("../streamlit_app.py", default_timeout=600)
    at.run()
    at.switch_page("app_pages/dino.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value.startswith("4 · DINO views")
    assert any("high-norm" in i.value or "outlier" in i.value for i in at.info)
    assert at.selectbox(key="dino_other").value == "astronaut"  # skimage's "cat" is chelsea again: another photo
