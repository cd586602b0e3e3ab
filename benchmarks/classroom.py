"""A class of students against real app servers: 1 process vs N processes behind nginx (issue 15).

    python benchmarks/classroom.py [--students 30] [--seconds 60] [--processes 1 2] [--no-finetune]

For each process count, `deploy/serve_class.py` starts the app (nginx in front when it is
installed and more than one process runs). Simulated students are websocket clients, as a browser
is: each opens the Attention page, then asks for a rerun after a pause of 0.5 to 1.5 times ``--think``
seconds (as people pause; ``--fixed-think`` pauses exactly ``--think``, and then students who waited
together click together again: the class clicks in lockstep bursts) and records the server time
until the run finished (p50 / p95). Like a browser, a student sends back the URL the
app wrote and the hashes of the large messages it holds (Streamlit's message cache: the server
then sends a reference instead of the element again). The class starts clicking once the server's
start-up work (warm-up, default model, fast-path check) is done: latencies are those of a running
server. One more session opens the Fine-tune page and presses Start (the bundled micro model on
Shapes, the page's defaults: full, 60 s). Printed per process count: the students' latency alone
and while the fine-tune runs, the fine-tune's images/s in its first 15 s alone and then with the
students (from its job record in the data directory), and the ratio of N processes to 1.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_CACHED_AGE = 2  # Streamlit's global.maxCachedMessageAge: a browser forgets a message unused for 2 runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


class Session:
    """One browser tab: a websocket to the app (through nginx with its route cookie)."""

    def __init__(self, port: int, cookie: str, query: str = "") -> None:
        self.port, self.cookie, self.query = port, cookie, query
        self.ws = None
        self.widgets: dict[str, str] = {}  # user key -> widget id, from the elements the server sent
        self.cached: dict[str, int] = {}  # the browser's message cache: hash -> script runs since last seen

    async def open(self) -> None:
        import websockets

        self.ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/_stcore/stream", subprotocols=["streamlit"],
                                           additional_headers={"Cookie": f"vit_route={self.cookie}"},
                                           max_size=None, open_timeout=120)

    async def run(self, page: str, trigger: str | None = None) -> float:
        """Ask for a script run of ``page`` (pressing the button ``trigger``); seconds until it finished."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = BackMsg()
        msg.rerun_script.query_string = self.query
        msg.rerun_script.page_name = page
        msg.rerun_script.cached_message_hashes.extend(self.cached)  # as a browser does: these come as references
        if trigger is not None:
            state = msg.rerun_script.widget_states.widgets.add()
            state.id, state.trigger_value = self.widgets[trigger], True
        start = time.perf_counter()
        await self.ws.send(msg.SerializeToString())
        while True:
            reply = ForwardMsg.FromString(await asyncio.wait_for(self.ws.recv(), 600))
            kind = reply.WhichOneof("type")
            if kind == "page_info_changed":  # the app wrote the URL: the browser sends it with its next rerun
                self.query = reply.page_info_changed.query_string
            elif kind == "ref_hash":
                self.cached[reply.ref_hash] = 0
            elif reply.metadata.cacheable and reply.hash:
                self.cached[reply.hash] = 0
            if kind == "delta" and reply.delta.WhichOneof("type") == "new_element":
                element = reply.delta.new_element
                inner = getattr(element, element.WhichOneof("type") or "", None)
                widget_id = getattr(inner, "id", "")
                if isinstance(widget_id, str) and widget_id:
                    self.widgets[widget_id.rsplit("-", 1)[-1]] = widget_id
            # 0 FINISHED_SUCCESSFULLY, 1 compile error; 2 (a st.rerun follows) and 3 (a fragment) are not the end
            if kind == "script_finished" and reply.script_finished != 2:  # the browser ages its cache per run
                self.cached = {h: age + 1 for h, age in self.cached.items() if age + 1 <= MAX_CACHED_AGE}
            if kind == "script_finished" and reply.script_finished in (0, 1):
                return time.perf_counter() - start

    async def close(self) -> None:
        await self.ws.close()


FIXED_THINK = False  # --fixed-think: every pause exactly ``think`` (the class then clicks in lockstep bursts)


async def student(port: int, k: int, until: float, think: float, latencies: list[float]) -> None:
    session = Session(port, f"student{k}")
    await session.open()
    await session.run("attention")
    await asyncio.sleep(think * (k % 10) / 10)  # students do not click in step
    rng = random.Random(k)
    while time.monotonic() < until:
        latencies.append(await session.run("attention"))
        # people pause for 0.5-1.5 times the think time (as in classroom_browser.py): with one fixed pause,
        # students who waited together click together again, and the class marches in lockstep bursts
        await asyncio.sleep(think if FIXED_THINK else think * rng.uniform(0.5, 1.5))
    await session.close()


def job_rows(data_dir: Path) -> list[dict]:
    """The step rows of the newest job record in the data directory (thinned to about 200 when written)."""
    records = []
    for path in glob.glob(str(data_dir / "sessions" / "*" / "job.json")):
        try:
            records.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError):
            continue
    if not records:
        return []
    record = max(records, key=lambda r: r.get("written", 0))
    return [h for h in record.get("history", []) if h.get("kind") == "step"]


def rate(rows: list[dict], batch: int = 64) -> float:
    """Training images per second of wall time between the first and the last of ``rows``."""
    if len(rows) < 2 or rows[-1]["seconds"] <= rows[0]["seconds"]:
        return 0.0
    return batch * (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["seconds"] - rows[0]["seconds"])


async def students_only(port: int, students: int, seconds: float, think: float) -> list[float]:
    latencies: list[float] = []
    until = time.monotonic() + seconds
    await asyncio.gather(*(student(port, k, until, think, latencies) for k in range(students)))
    return latencies


async def with_finetune(port: int, data_dir: Path, students: int, alone: float, together: float,
                        think: float) -> tuple[list[float], float, float]:
    """Press Start in a teacher's tab (the page's defaults: 60 s); the job trains ``alone`` seconds,
    then the students click for ``together`` seconds. Returns their latencies and both speeds."""
    trainer = Session(port, "teacher", query="model_kind=bundled")  # the micro model trained on Shapes
    await trainer.open()
    await trainer.run("finetune")
    await trainer.run("finetune", trigger="ft_start")
    deadline = time.monotonic() + 900
    while len(job_rows(data_dir)) < 2:  # the Shapes set may still be rendering
        if time.monotonic() > deadline:
            raise SystemExit("the fine-tune did not start within 15 minutes")
        await trainer.run("finetune")  # the tab's polling keeps the job's heartbeat
        await asyncio.sleep(1.0)

    async def keep_polling(until: float) -> None:
        while time.monotonic() < until:
            await trainer.run("finetune")
            await asyncio.sleep(1.0)

    await keep_polling(time.monotonic() + alone)
    boundary = job_rows(data_dir)[-1]["seconds"]
    latencies: list[float] = []
    until = time.monotonic() + together
    await asyncio.gather(keep_polling(until), *(student(port, k, until, think, latencies) for k in range(students)))
    rows = job_rows(data_dir)
    speed_alone = rate([r for r in rows if r["seconds"] <= boundary])
    speed_busy = rate([r for r in rows if r["seconds"] >= boundary])
    await trainer.close()
    return latencies, speed_alone, speed_busy


def serve(processes: int, data_dir: Path) -> tuple[subprocess.Popen, int]:
    port, base = free_port(), free_port()
    cmd = [sys.executable, str(ROOT / "deploy" / "serve_class.py"), "--processes", str(processes), "--port",
           str(port), "--base-port", str(base), "--run-dir", str(data_dir / "serve")]
    if processes == 1:  # one process needs no proxy: students reach it directly
        cmd.append("--no-proxy")
        port = base
    env = {**os.environ, "EXPLORER_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=3) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"the app with {processes} process(es) did not start")
        time.sleep(0.5)


def wait_until_idle(pid: int, limit: float = 240.0) -> float:
    """Wait until the app's processes use under 10 % of a core for a second: its start-up work is done
    (the warm-up's imports, gallery, default model and fast-path check), so the class meets a started
    server. Returns the seconds waited (``limit`` at most)."""
    import psutil

    def cpu_seconds() -> float:
        total = 0.0
        try:
            processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:  # ended meanwhile
                pass
        return total

    start = time.monotonic()
    while time.monotonic() - start < limit:
        before = cpu_seconds()
        time.sleep(1.0)
        if cpu_seconds() - before < 0.1:
            break
    return time.monotonic() - start


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # run the clean-up (stop the servers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--think", type=float, default=2.0,
                        help="seconds between a student's clicks, on average (each pause 0.5-1.5 times it)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-finetune", action="store_true")
    parser.add_argument("--fixed-think", action="store_true",
                        help="pause exactly --think seconds (before issue 19's measurements: students who waited "
                             "together click together again, so the class clicks in bursts)")
    args = parser.parse_args()
    global FIXED_THINK
    FIXED_THINK = args.fixed_think
    signal.signal(signal.SIGTERM, _interrupt)
    results = {}
    for n in args.processes:
        with tempfile.TemporaryDirectory(prefix="vit-classroom-") as tmp:
            data = Path(tmp)
            proc, port = serve(n, data)
            try:
                asyncio.run(students_only(port, n, 5.0, args.think))  # every process loads its model once
                waited = wait_until_idle(proc.pid)
                print(f"(the server's start-up work ended {waited:.0f} s after the first pages)", file=sys.stderr,
                      flush=True)
                quiet = asyncio.run(students_only(port, args.students, args.seconds, args.think))
                busy, alone, speed = [], 0.0, 0.0
                if not args.no_finetune:
                    busy, alone, speed = asyncio.run(with_finetune(port, data, args.students, 15.0,
                                                                   min(args.seconds, 40.0), args.think))
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=180)
            results[n] = (quiet, busy, speed, alone)
            line = (f"{n} process(es), {args.students} students: p50 {statistics.median(quiet):.2f} s, "
                    f"p95 {pct(quiet, 0.95):.2f} s ({len(quiet)} runs)")
            if busy:
                line += (f"; while a fine-tune runs p50 {statistics.median(busy):.2f} s, p95 {pct(busy, 0.95):.2f} s; "
                         f"fine-tune {speed:.0f} images/s with the class vs {alone:.0f} alone "
                         f"({speed / max(alone, 1e-9):.0%})")
            print(line + f"; server exit code {code}", flush=True)
    if 1 in results and len(results) > 1:
        for n, (quiet, busy, speed, _) in results.items():
            if n == 1:
                continue
            q1, b1 = results[1][0], results[1][1]
            line = f"{n} processes vs 1: p95 {pct(quiet, 0.95) / pct(q1, 0.95):.2f}x"
            if busy and b1:
                line += (f", p95 while training {pct(busy, 0.95) / pct(b1, 0.95):.2f}x, fine-tune speed "
                         f"{speed / max(results[1][2], 1e-9):.2f}x")
            print(line + " (targets: p95 <= 2 s, fine-tune >= 50 % of its speed alone)")


if __name__ == "__main__":
    main()
