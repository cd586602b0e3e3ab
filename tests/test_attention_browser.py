"""The attention maps drawn in the browser (components/attention_grid) in real Chromium.

Hovering redraws every head with no script run on the server (counted server-side by
``explorer.runs`` and client-side as rerun requests on the websocket); a click runs the page's
fragment once; text from the page (class names, labels) shows as text, never as HTML.
"""

from __future__ import annotations

import contextlib

import pytest
from browser_support import (
    ARTIFACTS,
    CHROMIUM,
    FLAGS,
    GRID,
    ROOT,
    app_server,
    canvas_digests,
    grid_frame,
    grid_point,
    script_runs,
    wait_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HOSTILE = '<img src=x onerror="window.__pwned=1;window.parent.__pwned=1">'  # tests/apps/attention_grid_app.py


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def rerun_requests(page) -> list[int]:
    """A list that grows by one for each rerun request (BackMsg.rerun_script) the page sends to the server."""
    from streamlit.proto.BackMsg_pb2 import BackMsg

    sent: list[int] = []

    def on_frame(payload) -> None:
        if isinstance(payload, (bytes, bytearray)):
            msg = BackMsg()
            with contextlib.suppress(Exception):
                msg.ParseFromString(bytes(payload))
                if msg.WhichOneof("type") == "rerun_script":
                    sent.append(1)

    page.on("websocket", lambda ws: ws.on("framesent", on_frame))
    return sent


def hover(page, frame, fx: float, fy: float) -> int:
    """Move the pointer over the big map at (fx, fy); wait until the browser shows that patch; its index."""
    x, y = grid_point(page, fx, fy)
    page.mouse.move(x, y)
    frame.wait_for_function("() => window.__attentionGrid.hovers.length > 0")
    return int(frame.evaluate("() => window.__attentionGrid.query"))


def test_hovering_two_patches_redraws_every_head_with_no_script_run(browser):
    with app_server("attention_browser_server.log") as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(120_000)
        reruns = rerun_requests(page)
        page.goto(f"{url}/?model_kind=preset&preset_name=tiny")  # Home, then the navigation, as a student would
        wait_idle(page)
        page.locator('[data-testid="stSidebarNav"]').get_by_text("3 · Attention").click()
        frame = grid_frame(page)
        wait_idle(page)
        frame.wait_for_function("() => window.__attentionGrid.draws >= 2")  # the photo arrived and was drawn
        page.wait_for_timeout(500)
        heads = len(frame.query_selector_all('section[data-kind="query"] .grid canvas'))
        assert heads == 3  # the tiny preset: every head of the layer has its map
        runs_before, requests_before = script_runs(url), len(reruns)
        start = canvas_digests(frame)

        first = hover(page, frame, 0.15, 0.2)  # the 14x14 grid: row 2, column 2
        assert first == 2 * 14 + 2
        after_first = canvas_digests(frame)
        page.mouse.move(*grid_point(page, 0.85, 0.75))  # row 10, column 11
        frame.wait_for_function("(q) => window.__attentionGrid.query !== q", arg=first)
        second = int(frame.evaluate("() => window.__attentionGrid.query"))
        assert second == 10 * 14 + 11
        after_second = canvas_digests(frame)
        # every canvas (the big map and each head's map) was redrawn for each patch
        assert all(a != b for a, b in zip(start, after_first))
        assert all(a != b for a, b in zip(after_first, after_second))
        status = frame.locator(".status").text_content()
        assert f"query patch {second}" in status and "previewing" in status
        page.wait_for_timeout(1500)  # what a hover might have sent would have been answered by now
        assert script_runs(url) == runs_before and len(reruns) == requests_before
        page.screenshot(path=str(ARTIFACTS / "attention_grid_hover.png"), full_page=True)

        # a click pins the patch and, debounced, runs the page's fragment once for the arithmetic
        page.mouse.click(*grid_point(page, 0.85, 0.75))
        page.get_by_text(f"The arithmetic for query patch {second},").wait_for(timeout=60_000)
        wait_idle(page)
        runs = script_runs(url)
        assert runs["fragment"] == runs_before["fragment"] + 1 and runs["full"] == runs_before["full"]
        assert len(reruns) == requests_before + 1
        # clicking head 2's small map shows that head large, and the arithmetic follows it
        page.mouse.click(*grid_point(page, 0.54, 0.54, 'section[data-kind="query"] .grid figure:nth-child(3) canvas'))
        page.get_by_text(f"The arithmetic for query patch {7 * 14 + 7}, layer 11, head 2").wait_for(timeout=60_000)
        assert "head 2" in frame.locator("figure.big .title").text_content()


def grid_app(log_name: str):
    """``streamlit run tests/apps/attention_grid_app.py``: the component alone, synthetic maps, no PyTorch model."""
    return app_server(log_name, script=ROOT / "tests" / "apps" / "attention_grid_app.py")


def test_class_names_and_labels_show_as_text_not_html(browser):
    ARTIFACTS.mkdir(exist_ok=True)
    with grid_app("attention_grid_app.log") as url:
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{url}/?hostile=1")
        frame = grid_frame(page)
        frame.wait_for_function("() => window.__attentionGrid.draws >= 2")
        page.mouse.move(*grid_point(page, 0.9, 0.9))  # redraws titles and numbers from the same labels
        frame.wait_for_function("() => window.__attentionGrid.query === 35")
        page.wait_for_timeout(500)  # an onerror handler would have run by now
        assert frame.evaluate("() => document.querySelectorAll('img').length") == 0
        assert frame.evaluate("() => window.__pwned") is None and page.evaluate("() => window.__pwned") is None
        texts = frame.evaluate("() => document.body.innerText")
        assert f"class {HOSTILE}" in texts  # the caption, character for character
        assert f"{HOSTILE} head 2" in texts and f"what CLS of {HOSTILE} attends to" in texts
        assert f"{HOSTILE}: {HOSTILE} head 0 where patch 35 looks" in texts
        page.screenshot(path=str(ARTIFACTS / "attention_grid_escaped.png"), full_page=True)


def test_over_the_budget_a_click_fetches_that_query_from_the_server_and_says_so(browser):
    with grid_app("attention_grid_fallback.log") as url:
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{url}/?fallback=1")
        frame = grid_frame(page)
        notice = frame.locator(".notice").text_content()
        assert "over the 5 kB budget" in notice and "come from the server" in notice
        page.get_by_text("runs: 1").wait_for()
        before = canvas_digests(frame, 'section[data-kind="query"] .grid canvas')
        page.mouse.move(*grid_point(page, 0.9, 0.1))  # hovering only outlines the patch: nothing to draw it with
        page.wait_for_timeout(800)
        assert page.get_by_text("runs: 1").count() == 1
        page.mouse.click(*grid_point(page, 0.9, 0.1))  # row 0, column 5
        page.get_by_text("runs: 2").wait_for()
        frame.wait_for_function("() => !document.querySelector('.status').textContent.includes('fetching')")
        assert frame.evaluate("() => window.__attentionGrid.query") == 5
        assert "where patch 5 looks" in frame.locator("figure.big .title").text_content()
        assert "waiting" not in frame.locator("figure.big .numbers").text_content()
        assert canvas_digests(frame, 'section[data-kind="query"] .grid canvas') != before
        assert page.locator(GRID).count() == 1
