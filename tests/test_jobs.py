"""The background job queue: order, cap, stop, time limit, abandoned owners, failures."""

from __future__ import annotations

import threading
import time

import pytest

from explorer.jobs import JobManager, JobStopped


def wait_for(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def test_jobs_run_one_at_a_time_in_submission_order():
    manager = JobManager(max_running=1)
    order, gate = [], threading.Event()

    def work(tag):
        def run(job):
            order.append(("start", tag))
            gate.wait(2)
            order.append(("end", tag))
            return tag
        return run

    jobs = [manager.submit(f"s{i}", work(i)) for i in range(3)]
    wait_for(lambda: jobs[0].status == "running")
    assert [manager.position(j) for j in jobs] == [0, 1, 2]
    assert jobs[1].status == jobs[2].status == "queued"
    assert manager.running() == 1
    gate.set()
    wait_for(lambda: all(j.status == "done" for j in jobs))
    assert order == [("start", 0), ("end", 0), ("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    assert [j.result for j in jobs] == [0, 1, 2]


def test_cap_of_two_runs_two_at_once():
    manager = JobManager(max_running=2)
    gate = threading.Event()
    jobs = [manager.submit("s", lambda job: gate.wait(2)) for _ in range(3)]
    wait_for(lambda: manager.running() == 2)
    assert [j.status for j in jobs] == ["running", "running", "queued"]
    gate.set()
    wait_for(lambda: all(j.status == "done" for j in jobs))


def test_stop_ends_a_running_job_and_keeps_its_artifacts():
    manager = JobManager(max_running=1)

    def work(job):
        for step in range(10_000):
            job.update(progress=step / 10_000, best=step)
            job.check()
            time.sleep(0.001)

    job = manager.submit("s", work)
    wait_for(lambda: job.snapshot()["artifacts"].get("best", 0) > 3)
    job.stop()
    wait_for(lambda: job.status == "stopped")
    snap = job.snapshot()
    assert snap["message"] == "stopped by the user" and snap["artifacts"]["best"] > 3


def test_a_job_stopped_while_waiting_never_starts():
    manager = JobManager(max_running=1)
    gate = threading.Event()
    first = manager.submit("a", lambda job: gate.wait(2))
    started = []
    second = manager.submit("b", lambda job: started.append(1))
    second.stop()
    gate.set()
    wait_for(lambda: first.status == "done" and second.status == "stopped")
    assert started == []


def test_maximum_time_and_abandoned_owner():
    manager = JobManager(max_running=2, heartbeat_timeout=0.2)

    def forever(job):
        while True:
            job.check()
            time.sleep(0.01)

    timed = manager.submit("a", forever, max_seconds=0.1)
    abandoned = manager.submit("b", forever, max_seconds=60)
    wait_for(lambda: timed.status == "stopped" and abandoned.status == "stopped")
    assert "maximum of 0 s" in timed.message
    assert "page was closed" in abandoned.message


def test_stop_owner_stops_only_that_sessions_jobs():
    manager = JobManager(max_running=2)

    def forever(job):
        while True:
            job.check()
            job.touch()
            time.sleep(0.01)

    mine, theirs = manager.submit("me", forever), manager.submit("you", forever)
    wait_for(lambda: mine.status == theirs.status == "running")
    manager.stop_owner("me")
    wait_for(lambda: mine.status == "stopped")
    assert theirs.status == "running"
    theirs.stop()
    wait_for(lambda: theirs.status == "stopped")


def test_failure_is_reported_and_the_queue_goes_on():
    manager = JobManager(max_running=1)

    def boom(job):
        raise ValueError("the data set has only one class")

    bad = manager.submit("s", boom)
    good = manager.submit("s", lambda job: 42)
    wait_for(lambda: good.status == "done")
    assert bad.status == "failed" and "only one class" in bad.message and good.result == 42
    with pytest.raises(JobStopped):
        bad.stop()
        bad._stop.set()
        bad.check()


def test_invalid_cap_is_refused(monkeypatch):
    monkeypatch.setenv("EXPLORER_MAX_TRAINING_JOBS", "0")
    with pytest.raises(ValueError, match="EXPLORER_MAX_TRAINING_JOBS"):
        JobManager()
