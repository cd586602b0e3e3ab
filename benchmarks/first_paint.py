"""Time to the first page in a real browser after a fresh server start (Chromium + Playwright).

    python benchmarks/first_paint.py [--runs 2] [--new-user] [--verbose]

For each run: start ``streamlit run streamlit_app.py`` on 127.0.0.1, wait for its health check,
open the app and report, in the page's own clock (``performance.now()`` from the navigation
start, recorded by a MutationObserver installed before the page loads):

- ``any``: the first Streamlit element (a spinner counts),
- ``first paint``: the page with real content: the title, the Home text, the sidebar's model
  picker and the tour all visible (issue 19 target: <= 3 s),
- ``full Home``: the data-flow table of the default photo through DINOv2.

``--new-user`` gives the server empty cache folders (``XDG_CACHE_HOME`` and
``EXPLORER_DATA_DIR`` in a temporary folder): the DINOv2 weights are then converted from the
ONNX file again, as on a machine that never ran the app. Run it from a fresh clone
(``git clone -q <repo> /tmp/fresh``) to include compiling the ``.pyc`` files. The load average
is printed with each run: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]

# name -> JavaScript test on the document; the first time each holds is recorded
MARKERS = {
    "any": "document.querySelector('[data-testid=\"stSpinner\"], [data-testid=\"stHeading\"], "
           "[data-testid=\"stSidebar\"]') !== null",
    "title": "[...document.querySelectorAll('h1')].some(h => h.textContent.includes('ViT Explorer'))",
    "text": "document.body.innerText.includes('Follow one image through')",
    "sidebar": "(document.querySelector('[data-testid=\"stSidebar\"]') || {innerText: ''}).innerText"
               ".includes('DINOv2 input size')",
    "tour": "document.querySelectorAll('[data-testid=\"stPageLink\"]').length >= 10",
    "table": "document.body.innerText.includes('The data flow, with the shapes of this run') && "
             "document.querySelector('[data-testid=\"stDataFrame\"]') !== null",
}
INIT_SCRIPT = """
(() => {
  const markers = {MARKERS};
  window.__seen = {};
  const check = () => {
    for (const [name, test] of Object.entries(markers)) {
      if (!(name in window.__seen)) { try { if (test()) window.__seen[name] = performance.now(); } catch (e) {} }
    }
  };
  new MutationObserver(check).observe(document, {childList: true, subtree: true, characterData: true});
  setInterval(check, 20);
})();
""".replace("MARKERS", ", ".join(f"{name}: () => ({test})" for name, test in MARKERS.items()))


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(chromium: str, env: dict[str, str]) -> dict[str, float]:
    """Seconds from the request to each marker (and the server's start-up) for one fresh server."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    launched = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
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
        out = {"server up": time.monotonic() - launched}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(INIT_SCRIPT)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="commit")
            every = " && ".join(f"'{name}' in window.__seen" for name in MARKERS)
            page.wait_for_function(every, timeout=180_000, polling=100)
            seen = page.evaluate("window.__seen")
            browser.close()
        out.update({name: ms / 1000 for name, ms in seen.items()})
        out["first paint"] = max(out[name] for name in ("title", "text", "sidebar", "tour"))
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    """Print one line per run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--new-user", action="store_true", help="empty cache folders: convert DINOv2 again")
    parser.add_argument("--verbose", action="store_true", help="also print when each marker appeared")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        sys.exit("chromium is not installed (apt-get install -y chromium)")
    for i in range(args.runs):
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with tempfile.TemporaryDirectory(prefix="first-paint-") as tmp:
            if args.new_user:
                env.update(XDG_CACHE_HOME=str(Path(tmp) / "cache"), EXPLORER_DATA_DIR=str(Path(tmp) / "data"))
            load = os.getloadavg()[0]
            t = one_run(chromium, env)
        print(f"run {i + 1}{' (new user)' if args.new_user else ''}: server up {t['server up']:.2f} s after launch; "
              f"after the request: first element {t['any']:.2f} s, first paint (title, text, sidebar, tour) "
              f"{t['first paint']:.2f} s, full Home (data flow) {t['table']:.2f} s "
              f"(target: first page <= 3 s); load average {load:.1f} on {os.cpu_count()} cores", flush=True)
        if args.verbose:
            print("    " + ", ".join(f"{name} {t[name]:.2f} s" for name in MARKERS), flush=True)


if __name__ == "__main__":
    main()
