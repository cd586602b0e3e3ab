"""Real-browser test: Debian Chromium driven by Playwright against the app on 127.0.0.1."""

from __future__ import annotations

import pytest
from browser_support import ARTIFACTS, CHROMIUM, FLAGS, GRID_TITLE_JS, app_server, grid_frame, grid_point, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server():
    with app_server("server.log") as url:
        yield url


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(90_000)
        yield page
        browser.close()


def attention_title(page) -> str:
    return page.evaluate(GRID_TITLE_JS)


def click_patch(page, fx: float, fy: float) -> int:
    """Click the big map of the browser maps at (fx, fy) of its size; wait for the server's arithmetic to follow."""
    before = page.get_by_text("The arithmetic for query patch").first.text_content()
    x, y = grid_point(page, fx, fy)
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    page.wait_for_function(
        "(before) => [...document.querySelectorAll('h3')].some(h => h.textContent.startsWith('The arithmetic for "
        "query patch') && h.textContent !== before)",
        arg=before,
        timeout=60_000,
    )
    wait_idle(page)
    after = attention_title(page)
    assert "where patch" in after
    patch = int(after.split("where patch ")[1].split()[0])
    assert page.get_by_text(f"The arithmetic for query patch {patch},").count() == 1  # the server followed
    return patch


def test_upload_open_attention_click_a_patch(server, page, tmp_path):
    from PIL import Image
    from skimage import data

    photo = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(photo)

    page.goto(f"{server}/?model_kind=preset&preset_name=tiny")
    page.get_by_text("The data flow, with the shapes of this run").wait_for()
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Upload", exact=True).click()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(photo))
    wait_idle(page)
    page.get_by_text("coffee.png").wait_for()

    page.locator('[data-testid="stSidebarNav"]').get_by_text("3 · Attention").click()
    grid_frame(page)
    wait_idle(page)
    assert "where patch 0 looks" in attention_title(page)
    patch = click_patch(page, 0.72, 0.72)  # tiny sees a 14×14 grid; click inside the lower-right quarter
    assert patch >= 98 and patch % 14 >= 7
    page.screenshot(path=str(ARTIFACTS / "attention_after_click.png"), full_page=True)


def test_attention_on_the_cat_with_dinov2_click_a_patch(server, page):
    page.goto(f"{server}/attention")  # the defaults: the cat photo through DINOv2 ViT-S/14 at 224 px (16x16)
    grid_frame(page, timeout_ms=180_000)
    wait_idle(page)
    assert page.locator('[data-testid="stSidebar"]').get_by_text("DINOv2 ViT-S/14 at 224 px").count() >= 1
    patch = click_patch(page, 0.3, 0.3)
    assert patch < 128 and patch % 16 < 8  # upper-left quarter of the 16x16 grid
    page.screenshot(path=str(ARTIFACTS / "attention_dinov2_cat.png"), full_page=True)


def test_finetune_start_curve_grows_stop(server, page):
    page.goto(f"{server}/finetune")
    page.get_by_text("Starting model:").wait_for()
    wait_idle(page)
    page.get_by_role("button", name="Start fine-tuning").click()
    # the live fragment polls every second: the step curve appears and grows
    page.get_by_text("training loss per step").first.wait_for(timeout=60_000)

    def points() -> int:
        return page.evaluate(
            "() => { const g = [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .js-plotly-plot')]"
            ".find(d => d.layout && d.layout.title && String(d.layout.title.text).includes('loss per step'));"
            " return g && g.data[0] ? g.data[0].x.length : 0; }"
        )

    page.wait_for_function("() => true")
    first = points()
    page.wait_for_timeout(3000)
    assert points() > first >= 1
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("stopped by the user").first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "finetune_stopping.png"), full_page=True)
    page.get_by_role("button", name="Download the best checkpoint (.safetensors)").wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "finetune_stopped.png"), full_page=True)
