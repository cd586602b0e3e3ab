"""Training in its own process (explorer.worker): files instead of shared objects, no backward pass in the
web process, stop and kill, the worker's threads."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from explorer.jobs import JobManager, JobStore
from explorer.models import ModelSpec, build_model
from explorer.training import FinetuneRequest, run_finetune
from explorer.worker import (
    ENV_NICE,
    ENV_THREADS,
    ProcessWork,
    read_artifact,
    training_niceness,
    training_threads,
    write_artifact,
)
from vitcore import load_checkpoint

CODE = "WORKER22"


def wait(job, until=("done", "stopped", "failed"), timeout: float = 240.0, what=None) -> None:
    """Poll like the page does (each poll is the owner's heartbeat) until the job ends or ``what()``."""
    end = time.monotonic() + timeout
    while not (what() if what else job.status in until):
        job.touch()
        assert time.monotonic() < end, f"job still {job.status}: {job.snapshot()['message']}"
        time.sleep(0.1)


def micro_request(**overrides) -> FinetuneRequest:
    settings = {"shapes_per_class": 40, "epochs": 2, "max_seconds": 60, "batch_size": 40} | overrides
    return FinetuneRequest(loaded=build_model(ModelSpec("preset", preset="micro")), **settings)


def submit(manager: JobManager, request: FinetuneRequest, code: str | None = CODE):
    work = ProcessWork("explorer.training:run_finetune", request, manager.store)
    return manager.submit("owner", work, code=code, settings=request.settings())


def test_artifacts_round_trip_through_files_without_pickle(tmp_path):
    value = {"confusion": np.arange(6, dtype=np.int64).reshape(2, 3), "head": torch.randn(3, 4),
             "grid": [{"image": np.zeros((4, 4, 3), np.uint8), "true": 1, "pred": np.int64(2)}],
             "ckpt": b"\x00\x01bytes", ("rollout", 3): 0.5, "__array__": "a key that looks like a marker",
             "nested": (1, None, "<b>x</b>", float("inf"))}
    write_artifact(tmp_path / "a.npz", value)
    back = read_artifact(tmp_path / "a.npz")
    assert np.array_equal(back["confusion"], value["confusion"]) and back["confusion"].dtype == np.int64
    assert isinstance(back["head"], torch.Tensor) and torch.equal(back["head"], value["head"])
    assert back["grid"][0]["pred"] == 2 and back["grid"][0]["image"].shape == (4, 4, 3)
    assert back["ckpt"] == value["ckpt"] and back[("rollout", 3)] == 0.5
    assert back["__array__"] == value["__array__"] and back["nested"] == [1, None, "<b>x</b>", float("inf")]
    with np.load(tmp_path / "a.npz", allow_pickle=False) as data:  # plain arrays only: nothing executes on load
        assert all(data[k].dtype != object for k in data.files)
    with pytest.raises(TypeError, match="cannot publish a Linear"):
        write_artifact(tmp_path / "b.npz", {"head": torch.nn.Linear(2, 2)})


def test_worker_threads_are_the_cores_minus_one_unless_set(monkeypatch):
    monkeypatch.delenv(ENV_THREADS, raising=False)
    cores = len(os.sched_getaffinity(0))
    assert training_threads() == max(1, cores - 1)
    monkeypatch.setenv(ENV_THREADS, "3")
    assert training_threads() == 3
    for bad in ("0", "-2", "many", "1.5"):
        monkeypatch.setenv(ENV_THREADS, bad)
        with pytest.raises(ValueError, match=ENV_THREADS):
            training_threads()


def test_worker_niceness_is_ten_unless_set(monkeypatch):
    monkeypatch.delenv(ENV_NICE, raising=False)
    assert training_niceness() == 10
    for good, expected in (("0", 0), (" 19 ", 19), ("5", 5)):
        monkeypatch.setenv(ENV_NICE, good)
        assert training_niceness() == expected
    for bad in ("-1", "20", "low", "2.5"):
        monkeypatch.setenv(ENV_NICE, bad)
        with pytest.raises(ValueError, match=ENV_NICE):
            training_niceness()


@pytest.mark.slow
def test_the_web_process_runs_no_backward_pass_and_a_stop_reaches_the_worker(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("a backward pass ran in the web process")

    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    # the patch catches training in this process: the same fine-tune in a thread fails on it
    in_thread = JobManager(max_running=1).submit("t", lambda j: run_finetune(j, micro_request(epochs=1)))
    wait(in_thread)
    assert in_thread.status == "failed" and "backward pass ran in the web process" in in_thread.message

    manager = JobManager(max_running=1, store=JobStore(tmp_path))
    job = submit(manager, micro_request(epochs=500, max_seconds=300))
    wait(job, what=lambda: job.snapshot()["artifacts"].get("best_checkpoint"))
    snap = job.snapshot()
    assert snap["artifacts"]["worker_pid"] != os.getpid()
    if hasattr(os, "getpriority"):  # the worker yields the CPU to the web process: 10 nicer by default
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, snap["artifacts"]["worker_pid"]) == min(19, base + 10)
    assert snap["artifacts"]["class_names"] == ["circle", "square", "triangle", "cross", "star"]
    assert len(snap["artifacts"]["timeline"]) >= 2  # before training + each epoch so far, read from files
    assert snap["artifacts"]["timeline"][0]["rollout"].shape == (4, 4)  # micro: 32 px, P=8
    job.stop()
    wait(job)
    snap = job.snapshot()
    assert snap["status"] == "stopped" and snap["message"].startswith("stopped by the user")
    epochs = [h for h in snap["history"] if h["kind"] == "epoch"]
    steps = [h for h in snap["history"] if h["kind"] == "step"]
    assert epochs and len(steps) >= len(epochs)
    assert job.result["stop_reason"] == "stopped" and job.result["confusion"].sum() == 5 * 10
    folder = tmp_path / "sessions" / CODE
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.safetensors", "job.json"]  # worker files gone
    model, meta = load_checkpoint((folder / "checkpoint.safetensors").read_bytes())
    assert meta["class_names"][0] == "circle" and model.config.num_classes == 5
    assert (folder / "checkpoint.safetensors").read_bytes() == snap["artifacts"]["best_checkpoint"]


@pytest.mark.slow
def test_a_killed_worker_fails_the_job_and_its_last_checkpoint_is_kept(tmp_path):
    manager = JobManager(max_running=1, store=JobStore(tmp_path))
    job = submit(manager, micro_request(epochs=500, max_seconds=300))
    wait(job, what=lambda: job.snapshot()["artifacts"].get("best_checkpoint"))
    os.kill(job.snapshot()["artifacts"]["worker_pid"], signal.SIGKILL)  # the OOM killer, a crash in native code
    wait(job)
    snap = job.snapshot()
    assert snap["status"] == "failed"
    assert "was killed (signal 9)" in snap["message"] and "last checkpoint is kept" in snap["message"]
    record = manager.store.record(CODE)
    assert record["status"] == "failed" and record["checkpoint"] is True
    model, _ = load_checkpoint(manager.store.read_bytes(CODE, "checkpoint.safetensors"))
    assert model.config.num_classes == 5
    # the queue goes on: the next job of the manager runs and finishes
    done = threading.Event()
    after = manager.submit("next", lambda j: done.set())
    wait(after)
    assert after.status == "done" and done.is_set()


def test_bad_data_fails_in_the_worker_with_its_message(tmp_path):
    manager = JobManager(max_running=1, store=JobStore(tmp_path))
    job = submit(manager, micro_request(source="zip", zip_bytes=b"not a zip at all"), code=None)
    wait(job)
    assert job.status == "failed" and "zip" in job.message.lower() and "Traceback" not in job.message
    assert "Traceback" in job.snapshot()["artifacts"]["traceback"]
    assert list((tmp_path / "work").iterdir()) == []  # a job without a session code leaves nothing behind


@pytest.mark.slow
def test_the_page_shows_a_killed_worker_as_failed_and_keeps_working(tmp_path, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from explorer import state as S
    from explorer.jobs import default_manager
    from explorer.training import submit_finetune

    manager = default_manager()
    monkeypatch.setattr(manager, "store", JobStore(tmp_path))
    code = "KILLED22"
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "streamlit_app.py"), default_timeout=180)
    at.query_params["code"] = code  # the page finds its session's job through the code, as after a reload
    at.run()
    page = "app_pages/finetune.py"
    at.switch_page(page).run()  # the first run loads models: longer than a job's heartbeat
    job = submit_finetune(manager, code, micro_request(epochs=500, max_seconds=300), code=code)
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.button(key=S.FT_START).disabled  # this session's job runs
    wait(job, what=lambda: job.snapshot()["artifacts"].get("best_checkpoint"))
    os.kill(job.snapshot()["artifacts"]["worker_pid"], signal.SIGKILL)
    wait(job)
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any(e.startswith("Training failed: the training process was killed") for e in errors), errors
    assert len(at.get("download_button")) == 1  # its last checkpoint is offered
    assert S.FT_USE in [b.key for b in at.button]
    at.switch_page(page).run()  # the next run: Start is enabled again
    assert not at.exception and not at.button(key=S.FT_START).disabled
