"""The playground offers the token mixers: costs change with the mixer, and each shows what it mixes."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from explorer import state as S
from explorer.pipeline import cost_summary
from vitcore import ViTConfig

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


def test_each_side_can_swap_attention_for_another_mixer():
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state[S.playground_key("a", "mixer")] = "pooling"
    at.session_state[S.playground_key("b", "mixer")] = "mlp"
    at.run()
    at.switch_page("pages/4_playground.py").run()
    assert not at.exception, [e.value for e in at.exception]
    params = [m.value for m in at.metric if m.label == "parameters"]
    base = dict(image_size=224, patch_size=16, dim=192, heads=3, depth=4, num_classes=10)
    pooling = cost_summary(ViTConfig(**base, token_mixer="pooling"))["params"] / 1e6
    assert params[0] == f"{pooling:.2f} M"  # no q/k/v projections: fewer parameters than attention
    assert pooling < cost_summary(ViTConfig(**base))["params"] / 1e6
    assert any("no token-to-token matrix" in i.value for i in at.info)  # the MLP mixer side
    assert len(at.get("plotly_chart")) == 1  # only the pooling side has a mixing map
