"""The Trust view: its Streamlit-free logic on the bundled model, and an AppTest of the page."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from explorer import state as S
from explorer import trust as T
from explorer.images import to_tensor
from explorer.models import ModelSpec, build_model
from explorer.samples import shapes_samples

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PAGE = "app_pages/trust.py"
STAR = "shapes: star"


@pytest.fixture(scope="module")
def bundled():
    loaded = build_model(ModelSpec("bundled"))
    sample = shapes_samples()[STAR]
    x = to_tensor(sample.image, loaded.image_size, loaded.mean, loaded.std)
    return loaded, x, sample


def test_rows_and_figures_cover_every_method_and_the_baselines(bundled):
    loaded, x, sample = bundled
    target = loaded.class_names.index("star")
    maps = {m: T.method_map(loaded, x, target, m) for m in T.METHODS}
    curves = {m: T.method_curves(loaded, x, target, m, maps[m], 10, "blur") for m in T.METHODS}
    rows = T.area_rows(curves, "blur")
    assert [r["method"] for r in rows] == list(T.METHODS) and {r["fill"] for r in rows} == {"blur"}
    rnd = curves["random"]
    for row in rows:
        if row["method"] not in ("random", "centre-bias"):
            mine = curves[row["method"]]
            beats = mine["deletion"].auc < rnd["deletion"].auc and mine["insertion"].auc > rnd["insertion"].auc
            assert row["beats random on both"] == ("yes" if beats else "no")
    fig = T.curves_figure(curves)
    assert len(fig.data) == 2 * len(T.METHODS)
    deletion = next(t for t in fig.data if t.name == "random" and t.xaxis == "x")
    assert len(deletion.x) == 11 and deletion.line.dash == "dash"
    assert deletion.y[0] == pytest.approx(curves["random"]["deletion"].probabilities[0].item())
    tiles = T.maps_figure(maps)
    z = np.asarray(tiles.data[0].z, dtype=float)
    assert np.nanmax(z) == pytest.approx(1.0) and np.nanmin(z) == pytest.approx(0.0)
    local = T.localisation_rows(maps, sample.mask)
    assert len(local) == len(T.METHODS) and all(0 <= r["share of the map inside the object"] <= 1 for r in local)


def test_randomization_rows_and_strip(bundled):
    loaded, x, _ = bundled
    seen = []
    checks = {m: T.method_randomization(loaded, x, 4, m, lambda share, stage: seen.append(stage))
              for m in ("rollout", "random")}
    rows = T.randomization_rows(checks)
    assert rows[0]["ρ trained"] == 1.0 and rows[0]["ρ head"] == 1.0  # rollout never reads the head
    assert "class-agnostic" in rows[0]["verdict"] and rows[1]["verdict"].startswith("fails")
    assert seen[:2] == ["trained", "head"] and seen[-1] == "embedding"
    strip = T.randomization_figure(checks["rollout"], "rollout")
    titles = [a.text for a in strip.layout.annotations]
    assert titles[0] == "trained: ρ=1.00" and len(titles) == len(checks["rollout"].stages)


def test_a_feature_backbone_is_explained_by_its_similarity():
    backbone = build_model(ModelSpec("preset", preset="micro", overrides=(("num_classes", 0),)))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    relevance = T.method_map(backbone, x, T.make_target(T.SIMILARITY), "occlusion")
    curves = T.method_curves(backbone, x, T.SIMILARITY, "occlusion", relevance, 4, "mean")
    assert relevance.shape == (4, 4) and curves["deletion"].probabilities[0] == pytest.approx(1.0, abs=1e-6)
    methods, unavailable = T.available_methods(backbone)
    assert methods == list(T.METHODS) and unavailable == {}
    pooling = build_model(ModelSpec("preset", preset="micro", overrides=(("token_mixer", "pooling"),)))
    methods, unavailable = T.available_methods(pooling)
    assert "occlusion" in methods and "'pooling'" in unavailable["chefer-lrp"]
    assert T.taught_model_name({"uploaded": b"", "taught #3 (2 classes)": b""}) == "taught #3 (2 classes)"
    assert T.taught_model_name({}) is None


def test_trust_page_shows_maps_curves_areas_and_the_randomisation_strip():
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state[S.SAMPLE_NAME] = STAR
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("press the button" in i.value for i in at.info)
    target = at.selectbox(key="trust_class").value
    assert at.selectbox(key="trust_class").format_func(target).startswith("class star")
    # AppTest does not deliver clicks on st.navigation pages: set what the buttons set
    at.session_state[T.RUN_KEY] = (ModelSpec("bundled"), f"sample:{STAR}", target, "", "mean", T.STEPS)
    at.session_state[T.RANDOMIZE_KEY] = (ModelSpec("bundled"), f"sample:{STAR}", target, "")
    at.switch_page(PAGE).run()
    tables = wait_for_tables(at, {"deletion AUC ↓", "ρ trained"})  # the jobs run in a worker process
    areas = tables["deletion AUC ↓"]
    assert list(areas["method"]) == list(T.METHODS) and set(areas["fill"]) == {"mean"}
    assert ((areas["deletion AUC ↓"] >= 0) & (areas["insertion AUC ↑"] <= 1)).all()
    local = tables["pointing game (max on the object)"]
    assert set(local["pointing game (max on the object)"]) <= {"hit", "miss"}
    specs = {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    curves = next(s for s in specs.values() if "deletion: lower is better" in json.dumps(s["layout"]))
    assert len(curves["data"]) == 2 * len(T.METHODS)
    checks = tables["ρ trained"]
    assert list(checks["method"]) == list(T.METHODS) and (checks["ρ trained"] == 1.0).all()
    assert checks.set_index("method").loc["random", "verdict"].startswith("fails")
    # the jobs' results live in the server's byte cache (EXPLORER_CACHE_MB), counted by their arrays
    from explorer.budget import deep_nbytes, shared_cache

    cache = shared_cache()
    where = (ModelSpec("bundled"), f"sample:{STAR}", target, "")  # "": compared with nothing (a class)
    result = cache.get(("trust_result", "maps", *where, "mean", T.STEPS))
    assert list(result["maps"]) == list(T.METHODS) and list(result["curves"]) == list(T.METHODS)
    checks = cache.get(("trust_result", "randomization", *where))
    assert list(checks) == list(T.METHODS)
    assert deep_nbytes(checks) >= sum(m.numel() * m.element_size() for c in checks.values()
                                      for ms in c.maps.values() for m in ms)


def wait_for_tables(at, columns: set[str], limit: float = 900.0) -> dict:
    """Rerun the page (as the page's 1 s fragment would) until tables with these second columns show."""
    deadline = time.monotonic() + limit
    while True:
        assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
        tables = {tuple(d.value.columns)[1]: d.value for d in at.dataframe}  # keyed by their second column
        if columns <= set(tables) or time.monotonic() > deadline:
            assert columns <= set(tables), f"no {columns - set(tables)} after {limit:.0f} s: {list(tables)}"
            return tables
        time.sleep(1.0)
        at.run()


@pytest.mark.slow  # loads the real DINOv2 (in the page and in the worker)
def test_trust_page_on_the_default_model_explains_the_similarity_without_an_error():
    at = AppTest.from_file(APP, default_timeout=600)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    assert at.session_state[S.MODEL_KIND] == "auto" and at.session_state[S.SAMPLE_NAME] == "chelsea"
    assert any("No class to explain" in m.value for m in at.markdown)
    reference = at.selectbox(key=S.TRUST_REFERENCE)
    assert reference.value == "" and "chelsea" not in reference.options and len(reference.options) > 1
    assert any("press the button" in i.value for i in at.info)
    spec = ModelSpec("dinov2", overrides=(("input_size", 224),))
    at.session_state[T.RUN_KEY] = (spec, "sample:chelsea", T.SIMILARITY, "", "mean", T.STEPS)
    at.switch_page(PAGE).run()
    areas = wait_for_tables(at, {"deletion AUC ↓"})["deletion AUC ↓"]  # every method, no error box meanwhile
    assert list(areas["method"]) == list(T.METHODS)
    assert (areas["deletion AUC ↓"] < areas["insertion AUC ↑"]).sum() >= 1
