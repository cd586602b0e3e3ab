"""AppTest of the Teach page: collect two classes of photos, train on DINOv2 features, predict a new photo."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from explorer import fewshot as T
from explorer import specs
from explorer import state as S
from explorer.jobs import default_manager
from explorer.models import build_model

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PAGE = "app_pages/teach.py"


def png(colour, seed: int, size=(64, 48)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def run(at: AppTest) -> AppTest:
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def start_page() -> AppTest:
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    return run(at)


def test_bad_collections_get_messages_and_the_page_keeps_working():
    at = start_page()
    assert [t.value for t in at.title] == ["7 · Teach it your classes"]
    assert any("Collect at least 5 photos" in i.value for i in at.info)
    collection = at.session_state[S.TEACH_COLLECTION]
    first, second = (c.uid for c in collection.classes)
    at.text_input(key=S.teach_key("name", first)).set_value("<b>cat</b>")
    at.file_uploader(key=S.teach_key("files", first)).set_value(
        [("a.png", png((200, 40, 40), 1), "image/png"), ("notes.png", b"not an image at all", "image/png")])
    run(at)
    assert any("notes.png" in w.value for w in at.warning)  # the bad file is named, the good one kept
    assert collection.counts()[0] == 1
    assert any("1 photo(s) · 4 more needed" in c.value for c in at.caption)
    with pytest.raises(ValueError, match="at least 2 classes"):
        collection.check()
    at.text_input(key=S.teach_key("name", second)).set_value("<B>CAT</B>")
    run(at)
    with pytest.raises(ValueError, match="are the same"):
        collection.check()


@pytest.mark.slow
def test_collect_train_predict_and_use_the_model_everywhere():
    at = start_page()
    collection = at.session_state[S.TEACH_COLLECTION]
    for cls, (name, colour) in zip(collection.classes, (("tomato", (210, 40, 30)), ("lime", (60, 200, 40)))):
        at.text_input(key=S.teach_key("name", cls.uid)).set_value(name)
        at.file_uploader(key=S.teach_key("files", cls.uid)).set_value(
            [(f"{name}{k}.png", png(colour, 10 * len(name) + k), "image/png") for k in range(6)])
    run(at)
    assert collection.counts() == [6, 6] and collection.check() == ["tomato", "lime"]
    thumbs = [b for b in at.button if b.key and b.key.startswith("teach_del_")]
    assert len(thumbs) == 12  # one delete button per photo

    # Start: what the button does (AppTest does not deliver clicks on st.navigation pages; the browser test clicks)
    at.button(key="teach_start").click()
    run(at)
    job_id = at.session_state.get(S.TEACH_JOB)
    if job_id is not None:
        job = default_manager().get(job_id)
    else:
        names, images = collection.request_data()
        loaded = build_model(specs.spec_from_state({S.MODEL_KIND: "dinov2"})[0])
        job = T.submit_teach(default_manager(), "apptest", T.TeachRequest(
            backbone=loaded.model, preprocessing=loaded.preprocessing, class_names=names, images=images))
        at.session_state[S.TEACH_JOB] = job.id
    deadline = time.monotonic() + 600
    while S.TEACH_RESULT not in at.session_state:
        assert time.monotonic() < deadline, job.snapshot()["message"]
        assert job.status not in ("failed", "stopped"), job.message
        time.sleep(1.0)
        run(at)  # the fragment polls; each poll keeps the job's heartbeat alive
    run(at)
    accuracy = [m.value for m in at.metric if m.label == "validation accuracy"]
    assert accuracy == ["100%"], accuracy
    assert [m.value for m in at.metric if m.label == "photos (train / validation)"] == ["10 / 2"]

    at.file_uploader(key=S.TEACH_PREDICT_UPLOAD).set_value(("new.png", png((205, 45, 35), 999), "image/png"))
    run(at)
    assert any(t.value.startswith("Prediction: tomato") for t in at.text), [t.value for t in at.text]
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("gradient rollout for tomato" in t for t in titles)
    assert any("DINOv2 CLS attention" in t for t in titles)

    # "Use this model": the sidebar then selects it and it carries the class names
    at.button(key="teach_use").click()
    run(at)
    if at.session_state[S.MODEL_KIND] != "session":  # the click did not arrive: do what its callback does
        result = at.session_state[S.TEACH_RESULT]
        data = T.checkpoint_bytes(result["model"], ["tomato", "lime"], build_model(
            specs.spec_from_state({S.MODEL_KIND: "dinov2"})[0]).preprocessing)
        at.session_state[S.SESSION_MODELS] = {"taught": data}
        at.session_state[S.SESSION_MODEL_NAME] = "taught"
        at.session_state[S.MODEL_KIND] = "session"
    state = {k: at.session_state[k] for k in (S.MODEL_KIND, S.SESSION_MODEL_NAME, S.SESSION_MODELS)}
    spec, data = specs.spec_from_state(state)
    assert spec.kind == "session"
    assert build_model(spec, data).class_names == ["tomato", "lime"]
