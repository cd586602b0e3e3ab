"""Restarts and reloads: a real `streamlit run` ended by SIGTERM (exit 0, checkpoint written), a crash
reported as interrupted with its last checkpoint, and a reload that finds its job through the session code."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from browser_support import free_port, wait_healthy

from explorer import jobs
from explorer import state as S
from explorer.jobs import JobManager, JobStore

ROOT = Path(__file__).resolve().parent.parent
CODE = "TESTJOB2"

DRIVER = f'''
import sys, threading, time
sys.path.insert(0, {str(ROOT)!r})
import streamlit as st
from explorer.jobs import default_manager
from explorer.models import ModelSpec, build_model
from explorer.training import FinetuneRequest, submit_finetune

manager = default_manager()
if not manager.jobs_of({CODE!r}):
    request = FinetuneRequest(loaded=build_model(ModelSpec("preset", preset="micro")), shapes_per_class=40,
                              epochs=1000, max_seconds=600, batch_size=50)
    job = submit_finetune(manager, {CODE!r}, request, code={CODE!r})  # trains in a worker process

    def watch():  # the page's polling, without a browser
        while True:
            job.touch()
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
st.write(manager.find({CODE!r}).status)
'''


def open_session(port: int) -> None:
    """Connect one websocket session and ask for a script run (what a browser does on page load)."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg

    async def run() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"]) as ws:
            msg = BackMsg()
            msg.rerun_script.query_string = ""
            await ws.send(msg.SerializeToString())
            for _ in range(3):
                await asyncio.wait_for(ws.recv(), 120)

    asyncio.run(run())


def start_server(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    data = tmp_path / "data"
    port = free_port()
    env = {**os.environ, "EXPLORER_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"],
                            cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    if not wait_healthy(f"http://127.0.0.1:{port}", 120, proc):
        proc.kill()
        pytest.fail(f"the server did not start: {log.read_text()[-2000:]}")
    threading.Thread(target=open_session, args=(port,), daemon=True).start()
    return proc, data


def wait_for_checkpoint(proc: subprocess.Popen, folder: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not (folder / "checkpoint.safetensors").exists():
        assert proc.poll() is None, "the server ended early"
        assert time.monotonic() < deadline, "no checkpoint was written in time"
        time.sleep(0.3)


@pytest.mark.slow
def test_sigterm_stops_jobs_writes_the_checkpoint_and_exits_0(tmp_path):
    from vitcore.io.checkpoint import load_checkpoint

    proc, data = start_server(tmp_path)
    folder = data / "sessions" / CODE
    try:
        wait_for_checkpoint(proc, folder)
        first = (folder / "checkpoint.safetensors").stat().st_mtime_ns
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "server.log").read_text()
    assert code == 0, log[-3000:]
    assert "terminate called" not in log
    record = JobStore(data).record(CODE)
    assert record["status"] == "stopped" and record["message"] == jobs.SHUTDOWN_REASON
    assert record["checkpoint"] is True
    assert (folder / "checkpoint.safetensors").stat().st_mtime_ns >= first  # the final one, written on the way out
    model, meta = load_checkpoint((folder / "checkpoint.safetensors").read_bytes())
    assert model.config.num_classes == 5 and meta["class_names"][0] == "circle"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.safetensors", "job.json"]  # no temp files


@pytest.mark.slow
def test_a_crash_is_reported_as_interrupted_with_its_last_checkpoint(tmp_path, monkeypatch):
    proc, data = start_server(tmp_path)
    folder = data / "sessions" / CODE
    try:
        wait_for_checkpoint(proc, folder)
        time.sleep(2.5)  # one more status write
        proc.kill()  # no clean shutdown: power cut, OOM killer
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 120  # the orphaned worker notices, writes its checkpoint and clears its files
    while list(folder.glob("worker-*")):
        assert time.monotonic() < deadline, sorted(p.name for p in folder.iterdir())
        time.sleep(0.3)
    store = JobStore(data)
    assert store.record(CODE)["status"] == "running"  # so recent that its server may still be alive
    monkeypatch.setattr(jobs, "STALE_AFTER", 0.0)
    record = store.record(CODE)
    assert record["status"] == jobs.INTERRUPTED and "last checkpoint is kept" in record["message"]
    assert record["settings"]["source"] == "shapes" and record["settings"]["options"]["epochs"] == 1000
    assert store.read_bytes(CODE, "checkpoint.safetensors")[:8]  # offered on the page


def test_the_page_after_a_restart_offers_the_interrupted_jobs_checkpoint(tmp_path, monkeypatch):
    """AppTest: a new server process (empty job manager) and a URL with the session code."""
    from streamlit.testing.v1 import AppTest

    from explorer.jobs import default_manager
    from explorer.models import ModelSpec, build_model
    from explorer.training import checkpoint_bytes

    store = JobStore(tmp_path)
    monkeypatch.setattr(default_manager(), "store", store)
    loaded = build_model(ModelSpec("bundled"))
    store.write_bytes(CODE, "checkpoint.safetensors", checkpoint_bytes(loaded.model, loaded.class_names,
                                                                       (loaded.mean, loaded.std)))
    store.write_json(CODE, "job.json", {"id": 1, "status": "running", "message": "training…", "server": "gone",
                                        "written": time.time() - 3600, "checkpoint": True,
                                        "history": [{"kind": "epoch", "epoch": 1, "val_accuracy": 0.625}],
                                        "settings": {"source": "shapes"}})
    store.add_model(CODE, "fine-tune #1 (done)", checkpoint_bytes(loaded.model, loaded.class_names,
                                                                  (loaded.mean, loaded.std)))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=180)
    at.query_params["code"] = CODE.lower()  # typed by hand: codes are case-insensitive
    at.run()
    at.switch_page("app_pages/finetune.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("server restarted while your job ran" in w.value for w in at.warning)
    assert [m.value for m in at.metric if m.label == "last val accuracy"] == ["62.5%"]
    assert "ft_use" in [b.key for b in at.button] and "ft_resume" in [b.key for b in at.button]
    assert at.session_state[S.SESSION_CODE] == CODE
    assert list(at.session_state[S.SESSION_MODELS]) == ["fine-tune #1 (done)"]  # the session's models are back


def test_a_reload_finds_the_running_job_through_the_code(tmp_path):
    from explorer.training import session_code

    manager = JobManager(store=JobStore(tmp_path))
    gate = threading.Event()
    job = manager.submit(CODE, lambda j: gate.wait(10), code=CODE)
    fresh: dict = {}  # a reload is a new session: empty state, the same URL
    assert session_code(fresh, {"code": CODE}) == CODE and fresh[S.SESSION_CODE] == CODE
    assert manager.find(session_code(fresh, {"code": CODE})) is job
    for bad in ("../../etc", "TESTJOB", "TESTJOB22", "TESTJOB1", "", None, ["x"]):
        assert session_code({}, {"code": bad}) is None
    gate.set()
