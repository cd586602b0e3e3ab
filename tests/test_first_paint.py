"""The first page after a server start is drawn before PyTorch is imported; the warm-up fills it in after.

The AppTest runs in a fresh interpreter (``torch`` must not be imported yet), with the warm-up
held at its first step: what the entry, the sidebar and the Home page draw before they wait for
it is the first paint. Timings are in ``benchmarks/first_paint.py`` (Chromium on a fresh server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from explorer import registry
from explorer.warmup import Warmup

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, sys, threading
sys.path.insert(0, ROOT)
import streamlit as st
from streamlit.testing.v1 import AppTest

from app_pages import _startup
from explorer.warmup import Warmup

real_warmup, real_wait_for = _startup.WARMUP, _startup.wait_for
release = threading.Event()
_startup.WARMUP = Warmup([("imports", release.wait)])  # the warm-up held at its first step
waits = []


def held(step, message):  # where a page waits for the warm-up: record what is imported, end the run there
    waits.append({"step": step, "message": message, "torch": "torch" in sys.modules,
                  "vitcore": "vitcore" in sys.modules})
    st.stop()


_startup.wait_for = held
out = {}
at = AppTest.from_file(ROOT + "/streamlit_app.py", default_timeout=60).run()
out["home"] = {
    "exceptions": [e.value for e in at.exception],
    "titles": [t.value for t in at.title],
    "markdown": [m.value for m in at.markdown],
    "links": [link.proto.page for link in at.get("page_link")],
    "sidebar": {s.label: {"options": list(s.options), "value": s.value} for s in at.sidebar.selectbox},
    "dataframes": len(at.dataframe),
    "waits": list(waits),
    "torch_after": "torch" in sys.modules,
}
waits.clear()
at.switch_page("app_pages/attention.py").run()  # a deep link: the sidebar first, then the page after the imports
out["attention"] = {"exceptions": [e.value for e in at.exception], "titles": [t.value for t in at.title],
                    "sidebar": [s.label for s in at.sidebar.selectbox], "waits": list(waits),
                    "torch_after": "torch" in sys.modules}

# the warm-up done: the same Home page now shows the data flow of the default photo through DINOv2
release.set()
_startup.WARMUP, _startup.wait_for = real_warmup, real_wait_for
at.switch_page("app_pages/home.py").run(timeout=600)
flow = at.dataframe[0].value if len(at.dataframe) else None
_startup.WARMUP.wait("fast path", timeout=600)
from explorer import fastpath
from vitcore.model.optimize import bf16_native
out["full"] = {"exceptions": [e.value for e in at.exception], "fast": fastpath.status_line(), "bf16": bf16_native(),
               "flow": dict(zip(flow["stage"], flow["this run"])) if flow is not None else {},
               "steps": [(r.name, r.state) for r in _startup.WARMUP.report()], "torch_after": "torch" in sys.modules}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def first_visit() -> dict:
    proc = subprocess.run([sys.executable, "-c", f"ROOT = {str(ROOT)!r}\n" + SCRIPT], capture_output=True, text=True,
                          cwd=ROOT, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                                "EXPLORER_FAST_PATH": "auto"})  # the app's default
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_home_draws_title_text_tour_and_sidebar_before_pytorch_is_imported(first_visit):
    home = first_visit["home"]
    assert home["exceptions"] == []
    assert home["titles"] == ["ViT Explorer"]
    assert any(m.startswith("Follow one image through a **Vision Transformer**") for m in home["markdown"])
    assert len(home["links"]) == len(registry.tour()) == 10  # the tour, every step a link
    sample = home["sidebar"]["Sample"]
    assert sample["value"] == "chelsea" and "shapes: star" in sample["options"]
    assert home["sidebar"]["Model"]["value"] == "auto"
    # the page got as far as waiting for the warm-up's imports, and nothing had imported PyTorch or vitcore
    assert [(w["step"], w["torch"], w["vitcore"]) for w in home["waits"]] == [("imports", False, False)]
    assert home["dataframes"] == 0 and home["torch_after"] is False  # the warm-up is held: no data flow yet


def test_a_deep_link_draws_the_sidebar_before_pytorch_and_waits_for_the_imports(first_visit):
    page = first_visit["attention"]
    assert page["exceptions"] == [] and page["titles"] == []  # the page itself has not run
    assert page["sidebar"] == ["Sample", "Model"]
    assert [(w["step"], w["torch"]) for w in page["waits"]] == [("imports", False)]
    assert page["torch_after"] is False


def test_once_the_warmup_is_done_home_shows_the_default_data_flow(first_visit):
    full = first_visit["full"]
    assert full["exceptions"] == []
    assert full["flow"]["patches"] == "[1, 256, 588]" and full["flow"]["features"] == "[1, 384]"  # DINOv2 at 224
    assert dict(full["steps"]) == {"imports": "done", "gallery": "done", "model": "done", "home": "done",
                                   "fast path": "done"}
    if full["bf16"]:  # auto: traces of the default photo run on bf16 once it passed the fidelity check
        assert full["fast"].startswith("Traces of DINOv2 ViT-S/14 at 224 px run on bf16: bf16 inference path"), full[
            "fast"]  # the size named once
    else:  # a CPU without native bf16: the app stays on fp32
        assert full["fast"] == "Traces run on fp32.", full["fast"]
    assert full["torch_after"] is True


# --------------------------------------------------------------------------- explorer.warmup and the gallery names
def test_warmup_runs_steps_in_order_once_and_records_failures():
    order: list[str] = []

    def fail() -> None:
        order.append("b")
        raise RuntimeError("no weights")

    warm = Warmup([("a", lambda: order.append("a")), ("b", fail), ("c", lambda: order.append("c"))])
    assert [r.state for r in warm.report()] == ["waiting"] * 3 and not warm.started
    assert warm.start() is True and warm.start() is False
    assert warm.wait("c", timeout=30)
    assert order == ["a", "b", "c"]  # a failed step does not stop the next
    assert warm.error("a") is None and str(warm.error("b")) == "no weights"
    assert [(r.name, r.state) for r in warm.report()] == [("a", "done"), ("b", "failed"), ("c", "done")]
    assert warm.report()[1].error == "RuntimeError: no weights"


def test_warmup_wait_times_out_on_a_held_step_and_later_steps_still_run():
    release = threading.Event()
    warm = Warmup([("held", release.wait)])
    assert warm.wait("held", timeout=0.05) is False  # waiting starts it; the step is still held
    assert [r.state for r in warm.report()] == ["running"]
    release.set()
    assert warm.wait("held", timeout=30)
    warm.add("late", lambda: None)  # after the thread finished: it starts again for the new step
    assert warm.wait("late", timeout=30) and warm.done("late")
    with pytest.raises(ValueError, match="exists already"):
        warm.add("late", lambda: None)
    with pytest.raises(ValueError, match="no warm-up step named 'nope'"):
        warm.wait("nope")


def test_sidebar_names_are_the_gallery_names_without_making_an_image():
    from explorer.samples import SHAPES_SHOWN, gallery, sample_names
    from vitcore.data.shapes import SHAPE_CLASSES

    assert SHAPES_SHOWN == SHAPE_CLASSES  # one Shapes sample per class of the Shapes set
    assert sample_names() == list(gallery())
