"""AppTest smoke tests: every page runs on a sample image and shows the right numbers."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from grid_support import grids
from streamlit.testing.v1 import AppTest

from explorer import registry
from explorer import state as S
from explorer.pipeline import param_count
from vitcore import ViTConfig

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


def app(page: str | None = None, **state) -> AppTest:
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")  # failures show their cause, not a redaction
    at = AppTest.from_file(APP, default_timeout=180)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def rerun(at: AppTest, page: str) -> AppTest:
    """Run again on the same page (AppTest returns to the entry page on a plain run)."""
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def array(value) -> np.ndarray:
    """A plotly JSON array: a plain list, or plotly's typed form {"dtype", "bdata", "shape"}."""
    if isinstance(value, dict) and "bdata" in value:
        data = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(s) for s in shape.split(",")]
        return data.reshape(shape) if shape else data
    return np.asarray(value, dtype=float)


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return values[0]


TINY = {S.MODEL_KIND: "preset", S.PRESET_NAME: "tiny", S.PRESET_DEPTH: 2, S.SAMPLE_NAME: "chelsea"}


def test_home_shows_live_shapes_for_tiny():
    at = app(**TINY)
    flow = at.dataframe[0].value
    shapes = dict(zip(flow["stage"], flow["this run"]))
    assert shapes["image"] == "[1, 3, 224, 224]"
    assert shapes["patches"] == "[1, 196, 768]"
    assert shapes["patch embeddings"] == "[1, 196, 192]"
    assert shapes["+ CLS"] == shapes["+ position"] == shapes["blocks"] == "[1, 197, 192]"
    assert shapes["CLS"] == "[1, 192]" and shapes["logits"] == "[1, 1000]"
    # the guided tour links every page
    links = [link.proto.page for link in at.get("page_link")]
    assert len(links) == len(registry.tour()) == 10


def test_home_uses_dinov2_for_photos_and_the_shapes_model_for_shapes_by_default():
    at = app()
    shapes = dict(zip(at.dataframe[0].value["stage"], at.dataframe[0].value["this run"]))
    assert shapes["image"] == "[1, 3, 224, 224]" and shapes["features"] == "[1, 384]"  # DINOv2, no head
    at = app(**{S.SAMPLE_NAME: "shapes: star"})
    shapes = dict(zip(at.dataframe[0].value["stage"], at.dataframe[0].value["this run"]))
    assert shapes["image"] == "[1, 3, 64, 64]" and shapes["logits"] == "[1, 5]"


def test_patches_page_counts_tokens_and_proves_conv_is_linear():
    at = app("app_pages/patches.py", **TINY)
    assert metric(at, "tokens N") == "196"
    assert metric(at, "sequence length T = N + 1") == "197"
    assert float(metric(at, "max |conv(x) − linear(flatten(x))|")) < 1e-5
    at.select_slider(key=S.PATCH_SIZE).set_value(32)
    rerun(at, "app_pages/patches.py")
    assert metric(at, "tokens N") == "49"
    assert float(metric(at, "max |conv(x) − linear(flatten(x))|")) < 1e-5
    table = at.dataframe[0].value
    assert dict(zip(table["patch size"], table["tokens N+1"]))[16] == 197


def test_embeddings_page_position_similarity_is_one_on_itself():
    at = app("app_pages/embeddings.py", **TINY)
    args, payload = grids(at)[S.EMB_GRID]
    assert not payload.fallback and payload.grid == (14, 14) and payload.rows == tuple(range(196))
    assert args["report"] is False  # hovering and clicking stay in the browser
    sim = payload.decode()[0]  # (196, 14, 14): every patch's cosine map
    for q in (0, 97, 195):
        r, c = divmod(q, 14)
        assert abs(sim[q, r, c] - 1) <= 2 / 255 and sim[q].max() <= 1 + 1e-5


def test_attention_page_arithmetic_matches_the_probe_and_query_moves():
    from explorer.traces import query_maps

    at = app("app_pages/attention.py", **TINY)
    caption = next(c.value for c in at.caption if "max difference to the model's own weights" in c.value)
    assert float(caption.rsplit(" ", 1)[-1]) < 1e-6
    weights = at.dataframe[0].value["softmax weight"]
    assert (np.diff(weights.to_numpy()) <= 0).all()  # sorted, largest first
    args, payload = grids(at)[S.ATTN_GRID]
    assert args["report"] is True and [s["kind"] for s in args["sections"]] == ["query", "cls"]
    assert not payload.fallback and payload.panels == 3 and payload.rows[0] == -1 and len(payload.rows) == 197
    # the browser's maps are the model's: every query's row of every head, within 1/255 of its maximum
    from explorer.budget import shared_cache

    trace = next(v for (k, (v, _)) in list(shared_cache()._items.items())
                 if k[0] == "trace" and k[2] == "sample:chelsea" and tuple(v.attention.shape) == (2, 1, 3, 197, 197))
    for q in (None, 0, 100):
        want = query_maps(trace, 1, q)
        got = payload.decode()[:, payload.row(q)]
        assert (np.abs(got - want).max(axis=(1, 2)) <= want.max(axis=(1, 2)) / 255).all()
    first = args["selection"]
    at.number_input(key=S.QUERY).set_value(100)
    rerun(at, "app_pages/attention.py")
    args2, payload2 = grids(at)[S.ATTN_GRID]
    assert args2["selection"]["query"] == 100 and args2["selection"]["nonce"] > first["nonce"]
    assert payload2.id == payload.id  # the same layer's maps: nothing new to pack
    assert any(s.value.startswith("The arithmetic for query patch 100") for s in at.subheader)
    assert at.query_params[S.QUERY] == ["100"] or at.query_params[S.QUERY] == "100"


def test_attention_page_over_the_budget_sends_one_query_and_says_so():
    at = app("app_pages/attention.py", **TINY, **{S.PRESET_PATCH: 8})  # 28x28 patches: 1.9 MB for all queries
    args, payload = grids(at)[S.ATTN_GRID]
    assert payload.fallback and payload.rows == (-1, 0) and payload.full_bytes > 1_000_000 >= payload.nbytes
    assert "over the 1.0 MB budget" in args["notice"] and args["report"] is True
    at.number_input(key=S.QUERY).set_value(500)
    rerun(at, "app_pages/attention.py")
    args, payload = grids(at)[S.ATTN_GRID]
    assert payload.rows == (-1, 500) and args["selection"]["query"] == 500


def test_attention_page_reports_mask_share_on_shapes():
    at = app("app_pages/attention.py", **{S.SAMPLE_NAME: "shapes: star"})
    info = " ".join(i.value for i in at.info)
    assert "inside the object" in info


def test_playground_parameter_count_is_exact():
    at = app("app_pages/playground.py", **TINY)
    expected = param_count(ViTConfig(image_size=224, patch_size=16, dim=192, heads=3, depth=4, num_classes=10))
    assert metric(at, "parameters") == f"{expected / 1e6:.2f} M"
    assert [m.value for m in at.metric if m.label == "tokens"] == ["197", "50"]


def test_predict_page_topk_and_masking():
    at = app("app_pages/predict.py", **{S.SAMPLE_NAME: "shapes: circle"})
    bars = charts(at)[1]["data"][0]
    probs = array(bars["x"])
    assert len(probs) == 5 and probs.sum() == pytest.approx(1.0, abs=1e-6)
    assert bars["y"][-1] == "circle"  # the bundled model recognises its own data
    at.session_state[S.MASKED_PATCHES] = [0, 1, 2]
    rerun(at, "app_pages/predict.py")
    table = at.dataframe[0].value
    assert len(table) == 5 and np.isfinite(table["logit change"]).all()


def test_bad_upload_shows_a_message_and_the_page_keeps_working():
    at = app(**{S.IMAGE_SOURCE: "upload"})
    assert any("Upload an image" in i.value for i in at.info)
    at.file_uploader(key=S.UPLOAD).set_value(("photo.png", b"definitely not a png", "image/png"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("not an image we can read" in e.value for e in at.error)
    assert [t.value for t in at.title] == ["ViT Explorer"]  # the page still renders


def test_a_real_upload_flows_through_the_model():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (20, 200, 40)).save(buf, format="JPEG")
    at = app(**{S.IMAGE_SOURCE: "upload"})
    at.file_uploader(key=S.UPLOAD).set_value(("green.jpg", buf.getvalue(), "image/jpeg"))
    at.run()
    assert not at.exception and not at.error
    shapes = dict(zip(at.dataframe[0].value["stage"], at.dataframe[0].value["this run"]))
    assert shapes["image"] == "[1, 3, 224, 224]" and shapes["features"] == "[1, 384]"  # a photo: DINOv2


def test_shared_link_opens_exactly_that_view():
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")
    at = AppTest.from_file(APP, default_timeout=180)
    for key, value in {S.MODEL_KIND: "preset", S.PRESET_NAME: "tiny", S.SAMPLE_NAME: "astronaut",
                       S.LAYER: "2", S.HEAD: "1", S.QUERY: "5"}.items():
        at.query_params[key] = value
    at.run()
    assert at.selectbox(key=S.SAMPLE_NAME).value == "astronaut"
    assert at.selectbox(key=S.MODEL_KIND).value == "preset"
    at.switch_page("app_pages/attention.py").run()
    assert not at.exception, [e.value for e in at.exception]
    args, _ = grids(at)[S.ATTN_GRID]
    assert args["labels"]["big_title"].startswith("layer 2, ")
    assert (args["selection"]["query"], args["selection"]["head"]) == (5, 1)


def test_finetune_page_follows_a_short_job_to_a_usable_model():
    """The page polls a running job and ends with results, a loadable checkpoint and 'use this model'.

    (AppTest does not deliver button clicks on st.navigation pages, so the job is started the way
    the Start button starts it; the real click is covered by the browser test.)
    """
    import time

    from explorer.jobs import default_manager
    from explorer.models import ModelSpec, build_model
    from explorer.training import FinetuneRequest, run_finetune
    from vitcore.io.checkpoint import load_checkpoint

    page = "app_pages/finetune.py"
    at = app(page)
    assert any("press **Start fine-tuning**" in i.value for i in at.info)
    request = FinetuneRequest(loaded=build_model(ModelSpec("bundled")), strategy="last_k", last_k=1,
                              shapes_per_class=40, epochs=2, max_seconds=600)  # seed 0; ends by epochs, not time
    job = default_manager().submit("apptest", lambda j: run_finetune(j, request))
    at.session_state[S.TRAIN_JOB] = job.id
    deadline = time.monotonic() + 240
    while job.status not in ("done", "stopped", "failed"):
        assert time.monotonic() < deadline, job.snapshot()["message"]
        time.sleep(1.0)
        rerun(at, page)  # the page polls; each poll keeps the job's heartbeat alive
    rerun(at, page)
    assert job.status == "done", job.message
    results = " ".join(m.value for m in at.markdown if "Best validation accuracy" in m.value)
    accuracy = float(results.split("**")[1].rstrip("%")) / 100
    assert accuracy >= 0.8  # five classes: chance is 0.2; measured 1.00 (the bundled model was trained on Shapes)
    assert [m.value for m in at.metric if m.label == "val accuracy"]
    model, meta = load_checkpoint(job.snapshot()["artifacts"]["best_checkpoint"])
    assert meta["class_names"] == ["circle", "square", "triangle", "cross", "star"]
    assert model.config.image_size == (64, 64) and model.config.num_classes == 5
    assert [b.label for b in at.button if b.key == "ft_use"] == ["Use this model on every page"]


def test_attention_sessions_share_one_trace_and_its_figures_within_the_budget():
    from explorer.budget import shared_cache

    def traces() -> int:
        return sum(1 for k in list(shared_cache()._items) if k[0] == "trace")

    first = app("app_pages/attention.py", **TINY)
    before, count = shared_cache().stats(), traces()
    second = app("app_pages/attention.py", **TINY)  # another student, same image and model
    after = shared_cache().stats()
    assert traces() == count >= 1  # no second trace was recorded
    assert after.hits > before.hits and after.bytes <= after.max_bytes
    assert charts(first)[0] == charts(second)[0]  # the same cached figure, sent as the same JSON
