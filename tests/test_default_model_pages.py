"""Every page on what a student sees first: DINOv2 ViT-S/14 on the cat photo, and the Shapes model on Shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from explorer import registry
from explorer import state as S

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
pytestmark = pytest.mark.slow  # the real DINOv2 on every page

PAGES = [p.file for p in registry.PAGES]  # every registered page


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
    if page not in ("app_pages/playground.py", "app_pages/teach.py"):  # these build or pick their own models
        assert "DINOv2 ViT-S/14 at 224 px" in captions and "Apache-2.0" in captions
    if page == "app_pages/home.py":
        flow = dict(zip(at.dataframe[0].value["stage"], at.dataframe[0].value["this run"]))
        assert flow["patches"] == "[1, 256, 588]" and flow["blocks"] == "[1, 257, 384]"
        assert flow["features"] == "[1, 384]"  # no classifier head
    if page == "app_pages/predict.py":
        assert any("no classifier head" in i.value for i in at.info)


def test_the_larger_input_is_one_click_away():
    at = run("app_pages/home.py", **{S.DINO_SIZE: 448})
    flow = dict(zip(at.dataframe[0].value["stage"], at.dataframe[0].value["this run"]))
    assert flow["image"] == "[1, 3, 448, 448]" and flow["patches"] == "[1, 1024, 588]"


def test_shapes_samples_get_the_shapes_model():
    at = run("app_pages/attention.py", **{S.SAMPLE_NAME: "shapes: star"})
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "bundled Shapes micro ViT" in captions
    assert any("inside the object" in i.value for i in at.info)  # the mask share needs the Shapes mask
