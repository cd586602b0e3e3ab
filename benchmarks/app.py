"""Server-side speed of the explorer pages, measured with Streamlit's AppTest in one run.

    python benchmarks/app.py [--reps 5]

Reports (issue 5 targets):
- first page: in a fresh Python process with Streamlit loaded (the server is up), the first run
  of the Home page: the app's imports (torch, vitcore), the bundled model and the sample
  gallery included; torchvision and transformers must not be imported. Target <= 3 s;
- interaction: the Attention page rerun after changing layer, head or query on the tiny preset,
  with the trace already cached, target <= 200 ms (median);
- data per figure: the largest plotly figure spec a page sends, target <= 2 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
PAGES = ["app_pages/home.py", "app_pages/patches.py", "app_pages/embeddings.py", "app_pages/attention.py",
         "app_pages/playground.py", "app_pages/predict.py"]

FIRST_PAGE = f"""
import sys, time
from streamlit.testing.v1 import AppTest  # the server's own start-up, before the app is asked for
start = time.perf_counter()
at = AppTest.from_file({APP!r}, default_timeout=120)
at.run()
assert not at.exception, at.exception
heavy = sorted(m for m in ("torchvision", "transformers") if m in sys.modules)
print(time.perf_counter() - start, ",".join(heavy) or "-")
"""


def first_page_seconds() -> tuple[float, str]:
    """Seconds for a fresh process to render Home, and which heavy libraries it imported."""
    out = subprocess.run([sys.executable, "-c", FIRST_PAGE], capture_output=True, text=True, cwd=ROOT, check=True)
    seconds, heavy = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), heavy


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    from explorer import state as S

    cold = [first_page_seconds() for _ in range(2)]
    print(f"first page after server start (fresh process, Home, bundled model): {min(c[0] for c in cold):.2f} s "
          f"(target <= 3 s); heavy imports: {cold[0][1]}")

    config.set_option("client.showErrorDetails", "full")
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state[S.MODEL_KIND] = "preset"
    at.session_state[S.PRESET_NAME] = "tiny"
    at.run()
    page = "app_pages/attention.py"
    at.switch_page(page).run()  # computes and caches the trace
    timings: dict[str, list[float]] = {"layer": [], "head": [], "query": []}
    for i in range(args.reps):
        for what, key, value in (("layer", S.LAYER, (i * 5 + 3) % 12), ("head", S.HEAD, (i + 1) % 3),
                                 ("query", S.QUERY, (i * 37 + 11) % 196)):
            if what == "head":  # a click on a head's map in the browser maps sets it (app_pages/attention.py pin)
                at.session_state[key] = value
            else:
                (at.slider(key=key) if what == "layer" else at.number_input(key=key)).set_value(value)
            start = time.perf_counter()
            at.switch_page(page).run()
            timings[what].append(time.perf_counter() - start)
            assert not at.exception, at.exception
    for what, values in timings.items():
        print(f"attention page, change {what:<5}: median {statistics.median(values) * 1e3:6.0f} ms, "
              f"max {max(values) * 1e3:6.0f} ms (target <= 200 ms)")

    largest = []
    for p in PAGES:
        at.switch_page(p).run()
        sizes = [len(c.proto.spec.encode()) for c in at.get("plotly_chart")]
        largest.append((max(sizes) if sizes else 0, p))
    for size, p in largest:
        print(f"{p:<24} largest figure {size / 1e6:6.3f} MB (target <= 2 MB)")
    print(json.dumps({"first_page_s": min(c[0] for c in cold),
                      "interaction_ms": {k: statistics.median(v) * 1e3 for k, v in timings.items()},
                      "largest_figure_mb": max(s for s, _ in largest) / 1e6}))


if __name__ == "__main__":
    main()
