"""A fresh server, several students arriving at once on a deep link: every one gets the page with its sidebar."""

from __future__ import annotations

import pytest
from browser_support import CHROMIUM, FLAGS, app_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_concurrent_first_visits_on_a_deep_link_all_render_the_page():
    from playwright.sync_api import sync_playwright

    with app_server("deep_links_server.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            pages = [browser.new_page(viewport={"width": 1200, "height": 900}) for _ in range(3)]
            for page in pages:  # no visit to Home first: the server is fresh
                page.goto(f"{url}/attention?sample_name=shapes%3A+star", wait_until="commit")
            for page in pages:
                page.get_by_text("Inside a block: LayerNorm and the MLP").wait_for(timeout=240_000)
                sidebar = page.locator('[data-testid="stSidebar"]')
                sidebar.get_by_text("bundled Shapes micro ViT").first.wait_for(timeout=60_000)
                assert page.locator('[data-testid="stSidebarNav"]').get_by_text("3 · Attention").count() == 1
        finally:
            browser.close()
