"""Figures: clickable patches, hover with index and value, small payloads, CSV export."""

from __future__ import annotations

import numpy as np
import pytest

from explorer import figures as F


def test_patch_markers_carry_row_major_indices_at_patch_centres():
    fig = F.image_with_grid(np.zeros((64, 96, 3), dtype=np.uint8), patch_size=32)
    markers = fig.data[-1]
    assert list(markers.customdata) == list(range(6))  # a 2×3 grid; the image is upscaled ×4
    cell = 32 * 4
    assert markers.x[4] == pytest.approx(1.5 * cell) and markers.y[4] == pytest.approx(1.5 * cell)
    assert "patch %{customdata}" in markers.hovertemplate


def test_heatmap_hover_shows_value_and_figure_is_small():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)  # noise compresses worst
    heat = rng.random((14, 14))
    fig = F.heatmap_over_image(image, heat, highlight=20, name="attention")
    markers = fig.data[-1]
    assert markers.text[20] == f"attention: {heat[1, 6]:.4g}"
    assert len(fig.to_json().encode()) < 2_000_000
    assert fig.layout.shapes[-1].x0 == pytest.approx(6 * 16)  # the highlighted patch (row 1, col 6)


@pytest.mark.parametrize(
    "event, expected",
    [
        ({"selection": {"points": [{"customdata": 17, "x": 1.0}]}}, 17),
        ({"selection": {"points": [{"customdata": [5]}]}}, 5),
        ({"selection": {"points": []}}, None),
        ({}, None),
        (None, None),
    ],
)
def test_selected_patch_from_streamlit_events(event, expected):
    assert F.selected_patch(event) == expected


def test_head_maps_and_topk():
    maps = np.stack([np.eye(3), np.ones((3, 3)) / 9])
    fig = F.head_maps(maps, ["head 0", "head 1"])
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (3, 7)  # two 3×3 tiles side by side with a one-cell gap
    assert np.array_equal(z[:, :3], np.eye(3)) and np.isnan(z[:, 3]).all() and np.allclose(z[:, 4:], 1 / 9)
    assert [a.text for a in fig.layout.annotations] == ["head 0", "head 1"]
    assert int(fig.data[0].customdata[2][5][0]) == 7  # patch (row 2, col 1) of the second head
    bars = F.topk_bars(np.array([0.1, 0.6, 0.3]), ["a", "b", "c"], k=2)
    assert list(bars.data[0].y) == ["c", "b"]  # largest at the top of a horizontal bar chart


def test_csv_export_round_trips():
    arr = np.arange(6, dtype=float).reshape(2, 3) / 7
    text = F.to_csv(arr).decode()
    back = np.loadtxt(text.splitlines(), delimiter=",")
    assert np.allclose(back, arr, atol=1e-6)


def test_activation_curves_gelu_relu_elu():
    fig = F.activation_curves()
    names = [t.name for t in fig.data]
    assert names == ["GELU", "ReLU", "ELU"]
    x = np.asarray(fig.data[0].x)
    i = int(np.argmin(np.abs(x - 1.0)))
    assert fig.data[0].y[i] == pytest.approx(0.8413, abs=1e-3)  # GELU(1) = Φ(1)
    assert fig.data[2].y[0] == pytest.approx(np.expm1(-4.0))


def test_class_names_with_markup_are_shown_as_typed():
    from explorer.figures import confusion_figure, topk_bars

    names = ["<b>bold</b>", "a & b"]
    bars = topk_bars(np.array([0.3, 0.7]), names, k=2)
    assert list(bars.data[0].y) == ["&lt;b&gt;bold&lt;/b&gt;", "a &amp; b"]  # least probable first (bottom)
    conf = confusion_figure(np.eye(2, dtype=int), names)
    assert list(conf.data[0].x) == ["&lt;b&gt;bold&lt;/b&gt;", "a &amp; b"]


def test_frozen_figure_serialises_to_the_same_json_as_the_figure():
    import json

    import plotly.io
    import plotly.tools

    rng = np.random.default_rng(1)
    fig = F.heatmap_over_image(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), rng.random((4, 4)), title="<b>t</b>")
    frozen = F.freeze(fig)
    text = plotly.io.to_json(fig, validate=False)
    # what st.plotly_chart does with a figure: to_dict, then plotly.io.to_json of that dict
    again = plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(frozen, validate_figure=True),
                              validate=False)
    assert again == text
    assert frozen.to_dict() == json.loads(text)
    assert frozen.json_bytes == len(text)
    assert frozen.data[-1].text[5] == fig.data[-1].text[5]  # still a figure to read
    assert F.freeze(frozen) is frozen
    with pytest.raises(ValueError, match=r"go\.Figure"):
        F.freeze({"data": []})
