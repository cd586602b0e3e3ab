"""Time to the first page in a real browser after a fresh server start (Chromium + Playwright).

    python benchmarks/first_paint.py [--runs 2]

For each run: start ``streamlit run streamlit_app.py`` on 127.0.0.1, wait for its health check,
open the app and report (a) when the server answered, (b) the first content on the page, and
(c) the full Home page (its data-flow table). Issue 5 target: first page <= 3 s after server start.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(chromium: str) -> tuple[float, float, float]:
    """(server up, first content, full Home) in seconds for one fresh server."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    launched = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                if time.monotonic() - launched > 60:
                    raise RuntimeError("the server did not start within 60 s") from None
                time.sleep(0.05)
        up = time.monotonic() - launched
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
            page = browser.new_page()
            start = time.monotonic()
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_text("Starting up").or_(page.get_by_text("ViT Explorer").first).first.wait_for(timeout=60_000)
            first = time.monotonic() - start
            page.get_by_text("The data flow, with the shapes of this run").wait_for(timeout=60_000)
            full = time.monotonic() - start
            browser.close()
        return up, first, full
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    """Print one line per run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        sys.exit("chromium is not installed (apt-get install -y chromium)")
    for i in range(args.runs):
        up, first, full = one_run(chromium)
        print(f"run {i + 1}: server up {up:.2f} s after launch; first content {first:.2f} s after the request; "
              f"full Home {full:.2f} s (target: first page <= 3 s)")


if __name__ == "__main__":
    main()
