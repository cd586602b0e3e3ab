"""A class on one laptop: N students in real Chromium pages clicking patches on the Attention page.

    python benchmarks/classroom_browser.py [--students 1,10,30] [--think 0,5] [--seconds 30] [--models shapes,dinov2]

(``benchmarks/classroom.py`` drives websocket sessions against 1 vs N server processes with a
fine-tune running; this script measures what a student sees in a real browser.)

Starts ``streamlit run streamlit_app.py`` on 127.0.0.1 (a free port), opens one headless Chromium
with one browser context (= one Streamlit session) per student, and lets every student pick a new
query patch (typed into the query box, the same rerun as a click on the map) as fast as the page
answers (think 0) or after a think time (5 s: a real class). Latency is from the key press to the
page's first figure showing that student's own patch; a figure showing any other patch counts as
leaked state. The server's share of it ("server" columns) is timed in the server process
(``benchmarks/server_timing.py``): from a rerun request arriving to its run's "finished" message
being queued, i.e. what goes to the server, without the browser's own drawing (30 Chromium pages
on a 2-core box draw far slower than the server answers).
Everything is bounded: students, seconds per cell, 90 s per answer, loopback only.
Prints one row per (model, think time, students): p50 / p95 latency, share over 1 s, the server's
p50 / p95, errors, leaks, server CPU (cores) and peak RSS.

Issue 15 targets: 10 students with no pause p95 <= 1 s; 30 with no pause p95 <= 2 s; 30 with 5 s
think time p95 <= 1 s (issue 19: for what goes to the server, the "server" columns). The browsers
run niced (``--browser-nice``, 10 by default: in a class they are the students' laptops), but on
the same machine, so they still compete with the server for the same cores (pessimistic on a 2-core
box).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from server_timing import read_times  # benchmarks/ is on sys.path (this script's folder, or the tests' insert)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
MODELS = {  # URL settings of each model: the Shapes micro model on a Shapes sample, DINOv2 on a photo
    "shapes": {"model_kind": "auto", "sample_name": "shapes: star"},
    "dinov2": {"model_kind": "dinov2", "sample_name": "chelsea"},
}
ANSWER_TIMEOUT_MS = 90_000
TITLE_JS = ("() => { const f = document.querySelector('iframe[src*=\"attention_grid\"]');"  # the browser maps
            " const t = f && f.contentDocument && f.contentDocument.querySelector('figure.big .title');"
            " return t ? t.textContent : ''; }")


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run`` on 127.0.0.1 with a sampler of its CPU time and RSS."""

    def __init__(self, env: dict[str, str] | None = None, log: Path | None = None,
                 timing_log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.timing_log = timing_log  # each rerun's server seconds (benchmarks/server_timing.py), when given
        if log:
            log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        start = ([sys.executable, str(ROOT / "benchmarks" / "server_timing.py"), str(timing_log)] if timing_log
                 else [sys.executable, "-m", "streamlit"])
        self.proc = subprocess.Popen(
            [*start, "run", str(ROOT / "streamlit_app.py"), "--server.port",
             str(self.port), "--server.address", "127.0.0.1", "--server.headless", "true",
             "--browser.gatherUsageStats", "false", "--client.showErrorDetails", "full"],
            cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the app did not start within 90 s") from None
                time.sleep(0.3)
        import psutil

        self.ps = psutil.Process(self.proc.pid)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.peak_rss = max(self.peak_rss, self.ps.memory_info().rss)
            except Exception:  # the process ended
                return

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server so far."""
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        """Terminate the server (killed after 10 s)."""
        if hasattr(self, "_stop"):
            self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self._log is not subprocess.DEVNULL:
            self._log.close()


@dataclass
class Cell:
    """The result of one (model, think time, students) run."""

    model: str
    think: float
    students: int
    latencies: list[float] = field(default_factory=list)
    server_latencies: list[float] = field(default_factory=list)  # rerun request sent -> run finished received
    errors: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    cpu_cores: float = 0.0
    peak_rss_gb: float = 0.0

    def row(self) -> str:
        """One line of the table."""
        lat = sorted(self.latencies)
        if lat:
            p50 = statistics.median(lat)
            p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
            over = sum(v > 1.0 for v in lat) / len(lat)
            timing = f"{p50:6.2f} {p95:6.2f} {over:7.0%}"
        else:
            timing = f"{'-':>6} {'-':>6} {'-':>7}"
        server = sorted(self.server_latencies)
        if server:
            p95 = server[min(len(server) - 1, round(0.95 * (len(server) - 1)))]
            served = f"{statistics.median(server):10.2f} {p95:10.2f}"
        else:
            served = f"{'-':>10} {'-':>10}"
        return (f"{self.model:<7} {self.think:5.0f} s {self.students:4d} {len(lat):6d} {timing} {served} "
                f"{len(self.errors):6d} {len(self.leaks):5d} {self.cpu_cores:6.2f} {self.peak_rss_gb:7.2f}")


HEADER = (f"{'model':<7} {'think':>7} {'N':>4} {'clicks':>6} {'p50 s':>6} {'p95 s':>6} {'>1 s':>7} "
          f"{'server p50':>10} {'server p95':>10} {'errors':>6} {'leaks':>5} {'cores':>6} {'RSS GB':>7}")



@dataclass
class _Clock:
    """When the clicking ends: set once every student has opened the page."""

    until: float = float("inf")
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    opened: int = 0  # students whose page is up (or who gave up)


async def _student(browser, url: str, settings: dict[str, str], think: float, clock: _Clock, seed: int,
                   cell: Cell) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(ANSWER_TIMEOUT_MS)
    rng = random.Random(seed)
    try:
        query = "&".join(f"{k}={v}" for k, v in settings.items())
        try:
            await page.goto(f"{url}/attention?{query}")
            await page.wait_for_function(f"() => ({TITLE_JS})().includes('where patch')", timeout=600_000)
            box = page.get_by_label("Query patch (or click the image)")
            limit = int(await box.get_attribute("max") or 0) or 1
        finally:
            clock.opened += 1
        await clock.ready.wait()
        while time.monotonic() < clock.until:
            patch = rng.randrange(limit + 1)
            current = await page.evaluate(TITLE_JS)
            if f"where patch {patch} looks" in current:
                continue
            await box.fill(str(patch))
            start = time.monotonic()
            await box.press("Enter")
            await page.wait_for_function(
                f"() => {{ const t = ({TITLE_JS})(); return t.includes('where patch') && t !== {current!r}; }}",
            )
            cell.latencies.append(time.monotonic() - start)
            shown = await page.evaluate(TITLE_JS)
            if f"where patch {patch} looks" not in shown:
                cell.leaks.append(f"student {seed} asked for patch {patch}, the page shows {shown!r}")
            exceptions = page.locator('[data-testid="stException"]')
            if await exceptions.count():
                cell.errors.append(f"student {seed}: {(await exceptions.first.text_content() or '')[:300]}")
                break
            if think:
                await asyncio.sleep(think * rng.uniform(0.5, 1.5))
    except Exception as exc:  # a timeout or a broken page is a result, not a crash
        cell.errors.append(f"student {seed}: {type(exc).__name__}: {str(exc)[:300]}")
    finally:
        await context.close()


def _niced_chromium(folder: Path, niceness: int) -> str:
    """A launcher that starts Chromium ``niceness`` lower in CPU priority (its pages inherit it)."""
    launcher = folder / "chromium"
    launcher.write_text(f'#!/bin/sh\nexec nice -n {int(niceness)} {shlex.quote(CHROMIUM)} "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


async def _run_cell(server: Server, model: str, think: float, students: int, seconds: float,
                    open_seconds: float, browser_nice: int = 0) -> Cell:
    cell = Cell(model, think, students)
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="classroom-browser-") as tmp:
        executable = _niced_chromium(Path(tmp), browser_nice) if browser_nice > 0 else CHROMIUM
        return await _run_browsers(server, model, think, students, seconds, open_seconds, executable, cell, clock)


async def _run_browsers(server: Server, model: str, think: float, students: int, seconds: float,
                        open_seconds: float, executable: str, cell: Cell, clock: _Clock) -> Cell:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=FLAGS)
        warm = await browser.new_page()  # the server's first visit (Streamlit settles its page mode then)
        await warm.goto(server.url)
        await warm.get_by_text("The data flow, with the shapes of this run").wait_for(timeout=600_000)
        await warm.close()
        tasks = []
        for i in range(students):  # everyone opens the page first (not timed), a little apart, as a class does
            tasks.append(asyncio.create_task(_student(browser, server.url, MODELS[model], think, clock, i, cell)))
            await asyncio.sleep(open_seconds / students)
        while clock.opened < students:  # the clicking starts together, once every page is up
            await asyncio.sleep(0.2)
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        server.peak_rss = 0
        logged = read_times(str(server.timing_log))[1] if server.timing_log else 0
        clock.until = time.monotonic() + seconds
        clock.ready.set()
        await asyncio.gather(*tasks)
        if server.timing_log:  # the clicks' reruns, as the server timed them
            cell.server_latencies = read_times(str(server.timing_log), logged)[0]
        cell.cpu_cores = (server.cpu_seconds() - cpu0) / max(time.monotonic() - t0, 1e-9)
        cell.peak_rss_gb = server.peak_rss / 2**30
        await browser.close()
    return cell


def run_classroom(server: Server, model: str, think: float, students: int, seconds: float,
                  open_seconds: float | None = None, browser_nice: int = 0) -> Cell:
    """One cell of the table against a running server (students open their pages over ``open_seconds``).

    ``browser_nice``: how much lower the browsers' CPU priority is than the server's (0: the same).
    """
    wait = min(students, 30) if open_seconds is None else open_seconds
    return asyncio.run(_run_cell(server, model, think, students, seconds, wait, browser_nice))


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", default="1,10,30", help="comma-separated student counts")
    parser.add_argument("--think", default="0,5", help="comma-separated think times in seconds")
    parser.add_argument("--seconds", type=float, default=30, help="clicking time per cell")
    parser.add_argument("--models", default="shapes,dinov2", help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--browser-nice", type=int, default=10, choices=range(20), metavar="0-19",
                        help="run the browsers this much lower in CPU priority than the server: in a class they run "
                             "on the students' laptops, not on the server's cores (0: compete as equals)")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit("chromium is not installed (apt-get install -y chromium)")
    print(f"{os.cpu_count()} CPU cores here; load average {os.getloadavg()[0]:.1f} at the start")
    print(HEADER)
    timing = tempfile.TemporaryDirectory(prefix="classroom-timing-")
    for model in args.models.split(","):
        server = Server(timing_log=Path(timing.name) / f"{model}.log")
        try:
            for think in (float(t) for t in args.think.split(",")):
                for students in (int(n) for n in args.students.split(",")):
                    cell = run_classroom(server, model, think, students, args.seconds,
                                         browser_nice=args.browser_nice)
                    print(cell.row(), flush=True)
                    for line in (cell.errors + cell.leaks)[:3]:
                        print(f"    {line[:200]}", flush=True)
        finally:
            server.stop()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
