"""The "Beyond the CLS token" page's first visit in a fresh process, on the default model and photo (AppTest).

    python benchmarks/beyond_first_visit.py [--compute]

Times (a) the Home page's first run (it loads DINOv2 into the shared cache) and (b) the Beyond
page's first run after it: with the precomputed report (assets/beyond, written by
``python -m explorer.beyond_assets``) the page reads a file and renders 32 Shapes images instead
of reading 96 images' tokens through ViT-S and fitting the heads. ``--compute`` also times
``explorer.beyond.dense_report`` itself for the same model, in the same run, for the ratio.
Issue 18 target: the first visit <= 5 s. The load average is printed with the numbers.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compute", action="store_true", help="also time computing the report without the file")
    args = parser.parse_args()
    from streamlit.testing.v1 import AppTest

    load = os.getloadavg()[0]
    at = AppTest.from_file(APP, default_timeout=600)
    start = time.perf_counter()
    at.run()
    home = time.perf_counter() - start
    start = time.perf_counter()
    at.switch_page("app_pages/beyond.py").run()
    beyond = time.perf_counter() - start
    assert not at.exception, [e.value for e in at.exception]
    miou = next(m.value for m in at.metric if m.label.startswith("Linear probe mIoU"))
    print(f"Home first run {home:.1f} s; Beyond first visit {beyond:.1f} s (probe mIoU {miou}); "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    if args.compute:
        from explorer import beyond as B
        from explorer.models import ModelSpec, build_model

        loaded = build_model(ModelSpec("dinov2"))
        pre = loaded.preprocessing
        start = time.perf_counter()
        B.dense_report(loaded.model, pre.normalization, tuple(pre.crop_size))
        computed = time.perf_counter() - start
        print(f"computing the report instead: {computed:.1f} s ({computed / beyond:.0f}x the first visit); "
              f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
