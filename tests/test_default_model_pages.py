"""Every page on what a student sees first: DINOv2 ViT-S/14 on the cat photo, and the Shapes model on Shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from explorer import state as S

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
pytestmark = pytest.mark.slow  # the real DINOv2 on every page

PAGES = ["pages/0_home.py", "pages/1_patches.py", "pages/2_embeddings.py", "pages/3_attention.py",
         "pages/9_dino.py", "pages/4_playground.py", "pages/5_predict.py", "pages/6_teach.py", "pages/7_trust.py",
         "pages/8_beyond.py", "pages/6_finetune.py"]


def run(page: str, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=600)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(page).run()
    assert not at.exception, (page, [e.value for e in at.exception])
    return at


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_on_the_default_photo_and_model(page):
    at = run(page)
    assert at.session_state[S.MODEL_KIND] == "auto" and at.session_state[S.SAMPLE_NAME] == "chelsea"
    captions = " ".join(c.value for c in at.sidebar.caption)
    if page not in ("pages/4_playground.py", "pages/6_teach.py"):  # these build or pick their own models
        assert "DINOv2 ViT-S/14 at 224 px" in captions and "Apache-2.0" in captions
    if page == "pages/0_home.py":
        flow = dict(zip(at.dataframe[0].value["stage"], at.dataframe[0].value["this run"]))
        assert flow["patches"] == "[1, 256, 588]" and flow["blocks"] == "[1, 257, 384]"
        assert flow["features"] == "[1, 384]"  # no classifier head
    if page == "pages/5_predict.py":
        assert any("no classifier head" in i.value for i in at.info)


def test_the_larger_input_is_one_click_away():
    at = run("pages/0_home.py", **{S.DINO_SIZE: 448})
    flow = dict(zip(at.dataframe[0].value["stage"], at.dataframe[0].value["this run"]))
    assert flow["image"] == "[1, 3, 448, 448]" and flow["patches"] == "[1, 1024, 588]"


def test_shapes_samples_get_the_shapes_model():
    at = run("pages/3_attention.py", **{S.SAMPLE_NAME: "shapes: star"})
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "bundled Shapes micro ViT" in captions
    assert any("inside the object" in i.value for i in at.info)  # the mask share needs the Shapes mask
