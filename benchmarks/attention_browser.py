"""Hover over the Attention page's maps in real Chromium: how fast every head is redrawn, and what the server does.

    python benchmarks/attention_browser.py [--model dinov2|tiny] [--hovers 60] [--clicks 5]

Starts ``streamlit run streamlit_app.py`` on 127.0.0.1, opens the Attention page in headless
Chromium (Home first, then the navigation, as a student would) and moves the mouse over random
patches of the big map. The page measures each hover itself with ``performance.now()``: from the
pointer event to the next animation frame after every head's map, the query outline and the
numbers were redrawn (``window.__attentionGrid.hovers`` in components/attention_grid). The server
counts its script runs (``explorer.runs`` on ``/_stcore/metrics``); the page's websocket is
watched for rerun requests and for the bytes each layer change brings.

Targets (issue 19): hover -> all head maps redrawn <= 50 ms; 0 server script runs per hover;
one layer's maps for DINOv2 at 224 px about 0.4 MB, under the 1 MB budget.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classroom_browser import CHROMIUM, FLAGS, Server  # noqa: E402  (benchmarks/ is on sys.path)

from explorer.runs import FAMILY, parse_metrics  # noqa: E402

MODELS = {"dinov2": "model_kind=dinov2&sample_name=chelsea", "tiny": "model_kind=preset&preset_name=tiny"}
GRID = 'iframe[src*="attention_grid"]'
BIG = 'section[data-kind="query"] figure.big canvas'


def runs(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/_stcore/metrics?families={FAMILY}", timeout=10) as r:
        return parse_metrics(r.read().decode())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_idle(page, timeout_ms: int = 300_000) -> None:
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="dinov2")
    parser.add_argument("--hovers", type=int, default=60)
    parser.add_argument("--clicks", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    from streamlit.proto.BackMsg_pb2 import BackMsg

    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} cores)")
    server = Server(log=ROOT / "tests" / "artifacts" / "attention_browser_server.log")  # git-ignored
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(300_000)
            sent: list[int] = []
            received: list[int] = []

            def on_sent(payload) -> None:
                msg = BackMsg()
                with contextlib.suppress(Exception):
                    msg.ParseFromString(bytes(payload))
                    if msg.WhichOneof("type") == "rerun_script":
                        sent.append(1)

            def on_socket(ws) -> None:
                ws.on("framesent", on_sent)
                ws.on("framereceived", lambda payload: received.append(len(payload)))

            page.on("websocket", on_socket)
            page.goto(f"{server.url}/?{MODELS[args.model]}")
            wait_idle(page)
            page.locator('[data-testid="stSidebarNav"]').get_by_text("3 · Attention").click()
            page.locator(GRID).first.wait_for()
            frame = page.locator(GRID).first.element_handle().content_frame()
            frame.wait_for_function("() => window.__attentionGrid && window.__attentionGrid.ready")
            wait_idle(page)
            frame.wait_for_function("() => window.__attentionGrid.draws >= 2")
            page.wait_for_timeout(1000)
            probe = frame.evaluate("() => window.__attentionGrid")
            box = page.frame_locator(GRID).first.locator(BIG).bounding_box()
            gh, gw = probe["grid"]
            rng = random.Random(0)

            # ---- hovers: nothing should reach the server
            before_runs, before_sent = runs(server.url), len(sent)
            frame.evaluate("() => { window.__attentionGrid.hovers.length = 0; }")
            last = frame.evaluate("() => window.__attentionGrid.query")
            for count in range(1, args.hovers + 1):
                patch = rng.choice([q for q in range(gh * gw) if q != last])
                r, c = divmod(patch, gw)
                page.mouse.move(box["x"] + box["width"] * (c + 0.5) / gw, box["y"] + box["height"] * (r + 0.5) / gh)
                frame.wait_for_function("(n) => window.__attentionGrid.hovers.length >= n", arg=count)
                last = patch
            page.wait_for_timeout(1500)
            hovers = frame.evaluate("() => window.__attentionGrid.hovers")
            after_runs, after_sent = runs(server.url), len(sent)
            frames = [h["event_to_frame_ms"] for h in hovers]
            draws = [h["draw_ms"] for h in hovers]
            n_runs = sum(after_runs.values()) - sum(before_runs.values())

            # ---- clicks: each reruns the page's fragment once (the arithmetic panel), debounced
            click_ms, click_runs = [], []
            for _ in range(args.clicks):
                r0 = runs(server.url)
                before = page.locator("h3", has_text="The arithmetic for query patch").first.text_content()
                x = box["x"] + box["width"] * rng.uniform(0.05, 0.95)
                y = box["y"] + box["height"] * rng.uniform(0.05, 0.95)
                start = time.perf_counter()
                page.mouse.click(x, y)
                page.wait_for_function(
                    "(b) => [...document.querySelectorAll('h3')].some(h => h.textContent.startsWith("
                    "'The arithmetic for query patch') && h.textContent !== b)", arg=before)
                click_ms.append((time.perf_counter() - start) * 1e3)
                wait_idle(page)
                page.wait_for_timeout(500)
                r1 = runs(server.url)
                click_runs.append(sum(r1.values()) - sum(r0.values()))

            # ---- layer changes: a new layer brings its maps; going back reuses Streamlit's message cache
            thumb = page.locator('[data-testid="stMain"]').get_by_role("slider").first  # the Layer slider
            layer_bytes = []
            for key in ("ArrowLeft", "ArrowRight", "ArrowLeft"):
                wait_idle(page)
                page.wait_for_timeout(500)
                start_bytes = sum(received)
                views = frame.evaluate("() => window.__attentionGrid.views")
                thumb.focus()
                page.keyboard.press(key)
                frame.wait_for_function("(v) => window.__attentionGrid.views > v", arg=views, timeout=300_000)
                wait_idle(page)
                page.wait_for_timeout(500)
                layer_bytes.append(sum(received) - start_bytes)
            browser.close()
    finally:
        server.stop()

    panels = probe["panels"]
    print(f"model: {args.model}; {panels} heads; one layer's maps sent once: {probe['nbytes'] / 1e6:.3f} MB "
          f"(budget 1 MB; fallback: {probe['fallback']})")
    print(f"hover -> all {panels} head maps redrawn: median {statistics.median(frames):.1f} ms, "
          f"p95 {percentile(frames, 0.95):.1f} ms, max {max(frames):.1f} ms over {len(frames)} hovers "
          f"(pointer event to the next frame, performance.now() in the page; target <= 50 ms); "
          f"drawing alone median {statistics.median(draws):.2f} ms")
    print(f"server script runs per hover: {n_runs / max(1, len(frames)):.3f} ({n_runs} runs for {len(frames)} hovers; "
          f"target 0); rerun requests sent by the page while hovering: {after_sent - before_sent}")
    if click_ms:
        print(f"click (pin a patch): {statistics.mean(click_runs):.2f} script runs per click (the fragment, for the "
              f"arithmetic); click -> arithmetic shown median {statistics.median(click_ms):.0f} ms")
    print(f"layer change -> websocket bytes received: new layer {layer_bytes[0] / 1e6:.3f} MB, back to a layer "
          f"already sent {layer_bytes[1] / 1e6:.3f} MB, again {layer_bytes[2] / 1e6:.3f} MB")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(json.dumps({"model": args.model, "hover_ms_median": statistics.median(frames),
                      "hover_ms_p95": percentile(frames, 0.95), "runs_per_hover": n_runs / max(1, len(frames)),
                      "payload_mb": probe["nbytes"] / 1e6, "layer_mb": [b / 1e6 for b in layer_bytes]}))


if __name__ == "__main__":
    main()
