"""The "Beyond the CLS token" page: its logic on the bundled model, its figures, and the page itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer import beyond as B
from explorer.models import ModelSpec, build_model
from vitcore import ViTConfig

pytest.importorskip("streamlit")
from grid_support import grids
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PAGE = "app_pages/beyond.py"


@pytest.fixture(scope="module")
def report():
    loaded = build_model(ModelSpec("bundled"))
    before = [p.detach().clone() for p in loaded.model.parameters()]
    steps = []
    out = B.dense_report(loaded.model, loaded.preprocessing.normalization, tuple(loaded.preprocessing.crop_size),
                         sizes=(300, 60), progress=lambda f, text: steps.append(f))
    assert all(torch.equal(a, b) for a, b in zip(before, loaded.model.parameters()))  # only read
    assert steps[0] == 0.0 and steps[-1] == 1.0 and steps == sorted(steps)
    return out


def test_report_scores_all_three_masks_and_the_boxes(report):
    assert [row["method"] for row in report.mask_rows] == list(B.METHODS)
    probe = report.mask_rows[0]
    assert probe["mIoU"] >= 0.6 and probe["mIoU"] <= report.grid_ceiling + 0.02
    for row in report.mask_rows:
        assert 0.0 <= row["object IoU"] <= 1.0 and 0.0 <= row["background IoU"] <= 1.0
        assert row["mIoU"] == pytest.approx((row["object IoU"] + row["background IoU"]) / 2, abs=1e-3)
    for mask in report.masks.values():
        assert mask.shape == report.val.masks.shape and mask.shape[0] == 60
    sources = [row["box from"] for row in report.box_rows]
    assert sources == [*B.BOX_SOURCES, "the average training box (baseline)"]
    assert all(0.0 <= row["mean IoU"] <= 1.0 for row in report.box_rows)
    jaccard = report.image_jaccard(0)
    assert set(jaccard) == set(B.METHODS)


def test_masks_and_boxes_figures(report):
    fig = B.masks_figure(report, 3)
    assert len(fig.data) == 2 + len(B.METHODS)  # input, ground truth, one panel per method
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:2] == ["input", "ground truth"] and all("J = " in t for t in titles[2:])
    boxes = B.boxes_figure(report, 3)
    assert [t.name.split(" (")[0] for t in boxes.data[1:]] == ["truth", *B.BOX_SOURCES]
    cx, _, w, _ = report.boxes["truth"][3].tolist()
    truth = boxes.data[1]
    width = boxes.layout.xaxis.range[1]
    assert min(truth.x) == pytest.approx((cx - w / 2) * width) and max(truth.x) == pytest.approx((cx + w / 2) * width)


def test_image_masks_on_any_image(report):
    loaded = build_model(ModelSpec("bundled"))
    size = tuple(loaded.preprocessing.crop_size)
    masks = B.image_masks(report, loaded.model, torch.randn(1, 3, *size))
    assert set(masks) == set(B.METHODS) and all(m.shape == size for m in masks.values())
    fig = B.image_masks_figure(np.zeros((*size, 3), np.uint8), masks)
    assert len(fig.data) == 1 + len(B.METHODS)


def test_split_sizes_shrink_for_big_models():
    assert B.split_sizes(ViTConfig.preset("micro")) == (1000, 200)
    n_train, n_val = B.split_sizes(ViTConfig.preset("small"))
    assert 64 <= n_train < 200 and n_val >= 32


def test_the_readme_table_compares_every_mixer_at_the_same_steps_with_latency_ratios():
    rows = B.mixer_table()
    assert [row["mixer"] for row in rows] == list(B.TOKEN_MIXERS)
    steps = [key for key in rows[0] if key.startswith("val acc")]
    assert len(steps) == 1 and "steps" in steps[0]  # a fixed number of steps, not seconds under some load
    attention = rows[0]
    assert attention["latency 224 (× attention)"] == attention["latency 448 (× attention)"] == "1.00"
    assert B.mixer_note().startswith("Measured on ") and "load average" in B.mixer_note()
    text = "<!-- mixers:start -->\n| a |\n| --- |\n| 1 |\n\nMeasured here.\n<!-- mixers:end -->"
    assert B.mixer_note(text) == "Measured here." and B.mixer_note("none") == ""


def test_mixer_table_reads_the_readme_block():
    text = ("intro\n<!-- mixers:start -->\n| mixer | val acc |\n| --- | ---: |\n| attention | 90.0% |\n"
            "| pooling | 85.0% |\n<!-- mixers:end -->\nmore")
    assert B.mixer_table(text) == [{"mixer": "attention", "val acc": "90.0%"}, {"mixer": "pooling", "val acc": "85.0%"}]
    assert B.mixer_table("no table here") == []


def test_mixing_maps_show_each_mixers_structure():
    image = B.micro_image(2)
    assert image.shape == (1, 3, 32, 32)
    pooling = B.mixing_maps("pooling", image, query=5)  # patch (1, 1): a full 3x3 window, minus itself
    assert pooling.shape == (4, 4, 4)
    window = np.zeros((4, 4))
    window[0:3, 0:3] = 1 / 9
    window[1, 1] -= 1
    np.testing.assert_allclose(pooling[0], window, atol=1e-6)
    linear = B.mixing_maps("linear", image, query=5)
    assert (linear > 0).all() and (linear.sum(axis=(1, 2)) <= 1 + 1e-5).all()  # CLS column left out
    retention = B.mixing_maps("retention", image, query=5)
    assert retention.shape == (4, 4, 4)
    assert B.mixing_maps("mlp", image, query=5) is None
    with pytest.raises(ValueError, match="unknown"):
        B.mixing_maps("conv", image, 0)
    fig = B.mixing_figure(pooling, 5)
    assert len(fig.data) == 4 and fig.data[0].colorscale[0][1] != fig.data[0].colorscale[-1][1]


# --------------------------------------------------------------------------- the page
def page(**state) -> AppTest:
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")
    at = AppTest.from_file(APP, default_timeout=300)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.slow
def test_beyond_page_shows_masks_scores_boxes_and_the_mixer_choice():
    at = page()
    assert at.title[0].value == "9 · Beyond the CLS token"
    miou = float(next(m.value for m in at.metric if m.label.startswith("Linear probe mIoU")))
    assert miou >= 0.6
    table = at.dataframe[0].value  # the Jaccard table, then the box table
    assert list(table["method"]) == list(B.METHODS)
    assert float(table["mIoU"][0]) == pytest.approx(miou, abs=1e-3)
    boxes = at.dataframe[1].value
    assert list(boxes["box from"])[:2] == ["CLS token", "mean patch token"]
    charts = {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    assert len(charts) >= 3
    # the mixer choice: pooling shows its fixed 3x3 window for every query patch, drawn in the browser
    at.selectbox(key=B.MIXER).set_value("pooling")
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key=B.MIXER).value == "pooling"
    caption = next(c.value for c in at.caption if c.value.startswith("Row q of each head"))
    assert "every row's patch weights sum to 0.000" in caption  # P - I: the window's weights minus the query
    args, payload = grids(at)[B.MIXER_GRID]
    assert args["colour"] == {"map": "rdbu", "shared": True} and args["report"] is False
    window = payload.decode()[0, payload.row(5)]  # patch (1, 1): a full 3x3 window, minus itself
    assert np.allclose(window[:3, :3], [[1 / 9] * 3, [1 / 9, 1 / 9 - 1, 1 / 9], [1 / 9] * 3], atol=1 / 255)
    assert np.abs(window[3]).max() <= 1 / 255 and np.abs(window[:, 3]).max() <= 1 / 255
    at.selectbox(key=B.MIXER).set_value("mlp")
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("no mixing matrix" in i.value for i in at.info)
