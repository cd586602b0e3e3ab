"""The playground offers the token mixers: costs change with the mixer, and each shows what it mixes."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from grid_support import grids
from streamlit.testing.v1 import AppTest

from explorer import specs
from explorer import state as S
from explorer.pipeline import cost_summary
from vitcore import ViTConfig

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


def test_each_side_can_swap_attention_for_another_mixer():
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state[S.playground_key("a", "mixer")] = "pooling"
    at.session_state[S.playground_key("b", "mixer")] = "mlp"
    at.run()
    at.switch_page("app_pages/playground.py").run()
    assert not at.exception, [e.value for e in at.exception]
    params = [m.value for m in at.metric if m.label == "parameters"]
    base = dict(image_size=224, patch_size=16, dim=192, heads=3, depth=4, num_classes=10)
    pooling = cost_summary(ViTConfig(**base, token_mixer="pooling"))["params"] / 1e6
    assert params[0] == f"{pooling:.2f} M"  # no q/k/v projections: fewer parameters than attention
    assert pooling < cost_summary(ViTConfig(**base))["params"] / 1e6
    assert any("no token-to-token matrix" in i.value for i in at.info)  # the MLP mixer side
    assert len(at.get("plotly_chart")) == 1  # only the pooling side has a mixing map


@pytest.mark.parametrize("mixer", ["linear", "retention", "pooling", "mlp"])
def test_attention_page_shows_what_each_mixer_mixes(mixer):
    at = AppTest.from_file(APP, default_timeout=300)
    state = {S.MODEL_KIND: "preset", S.PRESET_NAME: "micro", S.PRESET_MIXER: mixer, S.SAMPLE_NAME: "shapes: star",
             **specs.preset_values("micro")}
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page("app_pages/attention.py").run()
    assert not at.exception, [e.value for e in at.exception]
    infos = " ".join(i.value for i in at.info)
    if mixer == "mlp":
        assert "no token-to-token matrix" in infos
        return
    assert at.slider(key=S.LAYER).value == 3  # the last of the micro preset's 4 blocks by default
    titles = [s.value for s in at.subheader]
    args, payload = grids(at)[S.ATTN_GRID]  # the maps, drawn in the browser
    assert payload.grid == (4, 4) and not payload.fallback
    assert "What the CLS token attends to" in [s["title"] for s in args["sections"]]
    assert ("Attention rollout (Abnar & Zuidema 2020)" in titles) == (mixer == "linear")
    assert not any(t.startswith("The arithmetic") for t in titles)  # no q·k/√d outside softmax attention
