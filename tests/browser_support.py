"""What the real-browser tests share: Debian Chromium's path and flags, and the app served on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, seconds: float, proc: subprocess.Popen | None = None) -> bool:
    """Poll ``url``/_stcore/health until it answers 200 (True), the time runs out or ``proc`` exits (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


@contextlib.contextmanager
def app_server(log_name: str, startup_seconds: float = 60.0, script: Path = ROOT / "streamlit_app.py") -> Iterator[str]:
    """``streamlit run <script>`` (the app by default) on a free loopback port; yields its URL, stops it on exit.

    Skips the test where Chromium or Playwright is missing (``.ci/run`` installs Chromium).
    """
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (.ci/run installs it with apt-get)")
    pytest.importorskip("playwright")
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EXPLORER_MAX_TRAINING_JOBS": "1"}
    with open(ARTIFACTS / log_name, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--client.showErrorDetails", "full"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            if not wait_healthy(url, startup_seconds, proc):
                pytest.fail(f"the app did not start within {startup_seconds:.0f} s")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Wait until Streamlit has finished the current script run of a Playwright page."""
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)


# ------------------------------------------------------------------ the browser maps (components/attention_grid)
GRID = 'iframe[src*="attention_grid"]'  # the component's frame (one per page that shows maps)
GRID_TITLE_JS = ("() => { const f = document.querySelector('iframe[src*=\"attention_grid\"]');"
                 " const t = f && f.contentDocument && f.contentDocument.querySelector('figure.big .title');"
                 " return t ? t.textContent : ''; }")


def grid_frame(page, timeout_ms: int = 120_000):
    """The attention grid's frame once it has drawn its first view (``window.__attentionGrid.ready``)."""
    page.locator(GRID).first.wait_for(timeout=timeout_ms)
    frame = page.locator(GRID).first.element_handle().content_frame()
    frame.wait_for_function("() => window.__attentionGrid && window.__attentionGrid.ready", timeout=timeout_ms)
    return frame


def grid_point(page, fx: float, fy: float, which: str = 'section[data-kind="query"] figure.big canvas') -> tuple:
    """Page coordinates of the point at fractions (fx, fy) of a canvas in the grid (the big query map by default)."""
    box = page.frame_locator(GRID).first.locator(which).first.bounding_box()
    return box["x"] + box["width"] * fx, box["y"] + box["height"] * fy


def canvas_digests(frame, selector: str = 'section[data-kind="query"] canvas') -> list[int]:
    """One number per canvas of the grid, from all its pixels: equal digests, (almost surely) equal pixels."""
    return frame.evaluate(
        """(sel) => [...document.querySelectorAll(sel)].map(c => {
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let h = 2166136261 >>> 0;
             for (let i = 0; i < d.length; i++) { h ^= d[i]; h = Math.imul(h, 16777619) >>> 0; }
             return h; })""",
        selector,
    )


def script_runs(url: str) -> dict[str, int]:
    """The server's script runs so far by kind (``explorer.runs``, from ``/_stcore/metrics``)."""
    from explorer.runs import FAMILY, parse_metrics

    with urllib.request.urlopen(f"{url}/_stcore/metrics?families={FAMILY}", timeout=10) as r:
        return parse_metrics(r.read().decode())
