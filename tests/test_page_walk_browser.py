"""A Chromium walk of every registered page on the defaults (DINOv2 on the cat photo): each page
shows its registered heading and no error box or exception, and leaves a screenshot to look at."""

from __future__ import annotations

import pytest
from browser_support import ARTIFACTS, CHROMIUM, FLAGS, app_server, wait_idle

from explorer import registry

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


def test_every_page_is_clean_on_the_defaults_in_chromium():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with app_server("page_walk.log", startup_seconds=90) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(240_000)
        seen = {}
        for info in registry.PAGES:
            page.goto(f"{url}/{info.slug}")
            title = info.label if info.numbered else "ViT Explorer"  # Home carries the app's name
            page.get_by_role("heading", name=title).first.wait_for()
            wait_idle(page, timeout_ms=240_000)
            page.screenshot(path=str(ARTIFACTS / f"walk_{info.slug}.png"), full_page=True)
            seen[info.slug] = [e.inner_text()[:200] for e in page.locator(ERRORS).all()]
        browser.close()
    assert seen == {info.slug: [] for info in registry.PAGES}
