"""Real-browser test of the Teach page: upload photos for two classes, press Start, see a prediction.

Debian Chromium driven by Playwright against the app on 127.0.0.1 (the same set-up as
tests/test_browser.py); skipped where Chromium is not installed.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from browser_support import ARTIFACTS, CHROMIUM, FLAGS, app_server, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server():
    with app_server("teach_server.log") as url:
        yield url


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(120_000)
        yield page
        browser.close()


def photos(folder: Path, name: str, colour, count: int) -> list[str]:
    from PIL import Image

    paths = []
    for k in range(count):
        rng = np.random.default_rng(zlib.crc32(f"{name}{k}".encode()))
        arr = np.clip(np.array(colour) + rng.integers(-30, 30, (120, 160, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{name}{k}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    return paths


def uploader(page, label: str):
    return page.locator('[data-testid="stFileUploader"]').filter(has_text=label).locator('input[type="file"]')


@pytest.fixture
def shoot_on_failure(page):
    """A screenshot of the page when the test fails (tests/artifacts/teach_failure.png)."""
    ARTIFACTS.mkdir(exist_ok=True)
    failed = True
    try:
        yield
        failed = False
    finally:
        if failed:
            page.screenshot(path=str(ARTIFACTS / "teach_failure.png"), full_page=True)


def test_upload_two_classes_train_and_predict(server, page, tmp_path, shoot_on_failure):
    page.goto(f"{server}/teach")
    page.get_by_text("Teach it your classes").first.wait_for()
    wait_idle(page, 180_000)
    for i, (name, colour) in enumerate((("tomato", (210, 40, 30)), ("lime", (60, 200, 40))), start=1):
        box = page.get_by_label(f"Class {i} name")
        box.fill(name)
        box.press("Enter")
        wait_idle(page, 180_000)
        uploader(page, f"Photos of class {i}").set_input_files(photos(tmp_path, name, colour, 6))
        wait_idle(page, 180_000)
    page.get_by_text("6 photo(s) · ready").nth(1).wait_for(timeout=300_000)
    page.get_by_role("button", name="Start", exact=True).click()
    page.get_by_text("validation accuracy", exact=True).wait_for(timeout=600_000)  # DINOv2 features on a busy CPU
    wait_idle(page, 180_000)
    page.screenshot(path=str(ARTIFACTS / "teach_trained.png"), full_page=True)

    new = photos(tmp_path, "new", (205, 45, 35), 1)
    uploader(page, "A new photo").set_input_files(new)
    page.get_by_text("Prediction: tomato").wait_for(timeout=300_000)
    page.get_by_text("gradient rollout for tomato").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "teach_prediction.png"), full_page=True)
