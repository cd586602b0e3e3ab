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


# --------------------------------------------------------------------------- heartbeat, versions, store, shutdown
def test_a_queued_job_whose_page_closed_gives_way():
    manager = JobManager(max_running=1, heartbeat_timeout=0.3)
    gate = threading.Event()
    running = manager.submit("a", lambda job: gate.wait(5))
    orphan = manager.submit("b", lambda job: None)  # its tab was closed: nobody touches it
    mine = manager.submit("c", lambda job: None)
    end = time.monotonic() + 2
    while time.monotonic() < end:
        running.touch()
        mine.touch()
        time.sleep(0.05)
    assert manager.position(mine) == 1  # the orphan ahead no longer counts
    manager.sweep()  # what every poll of the page does
    assert orphan.status == "stopped" and "page was closed" in orphan.message
    gate.set()
    wait_for(lambda: mine.status == "done")


def test_with_the_default_heartbeat_an_orphan_goes_within_10_s_and_a_late_poller_stays():
    """Pages poll every second. With the default heartbeat, a queued job whose page last polled 3 s
    ago (a slow rerun) keeps its place, and one whose page closed 10 s ago gives way at the next
    sweep. The owners' clocks are set back instead of waited for."""
    manager = JobManager(max_running=1)
    gate = threading.Event()
    running = manager.submit("a", lambda job: gate.wait(5))
    wait_for(lambda: running.status == "running")
    late = manager.submit("b", lambda job: "late")
    orphan = manager.submit("c", lambda job: "orphan")
    mine = manager.submit("d", lambda job: "mine")
    now = time.monotonic()
    late.last_seen, orphan.last_seen = now - 3.0, now - 10.0
    assert manager.position(mine) == 2  # the late poller still counts, the orphan no longer does
    manager.sweep()
    assert orphan.status == "stopped" and "page was closed" in orphan.message
    assert late.status == "queued" and not late.stop_requested
    gate.set()
    wait_for(lambda: late.status == "done" and mine.status == "done")
    assert (late.result, mine.result, orphan.result) == ("late", "mine", None)


def test_version_grows_with_every_visible_change_and_snapshots_thin_steps():
    manager = JobManager(max_running=1)
    gate = threading.Event()

    def work(job):
        for step in range(1000):
            job.log({"kind": "step", "step": step})
        job.log({"kind": "epoch", "epoch": 1})
        gate.wait(5)

    job = manager.submit("s", work)
    wait_for(lambda: len(job.history) == 1001)
    v = job.snapshot()["version"]
    assert job.snapshot()["version"] == v  # reading changes nothing: a poll can skip redrawing
    job.update(message="x")
    assert job.snapshot()["version"] == v + 1
    thin = job.snapshot(steps=100)["history"]
    steps = [h for h in thin if h["kind"] == "step"]
    assert len(steps) <= 101 and steps[-1]["step"] == 999 and steps[0]["step"] == 0
    assert [h for h in thin if h["kind"] == "epoch"] == [{"kind": "epoch", "epoch": 1}]
    gate.set()


def test_session_codes_are_strict():
    from explorer.jobs import check_code, new_code

    codes = {new_code() for _ in range(200)}
    assert len(codes) == 200 and all(check_code(c) == c and len(c) == 8 for c in codes)
    assert check_code("abcdefgh") == "ABCDEFGH"
    for bad in ("../../etc/passwd", "ABCDEFG", "ABCDEFGHI", "ABCDEF01", "ABCD/EFG", "", None, 12345678):
        assert check_code(bad) is None


def test_store_writes_atomically_and_keeps_session_models(tmp_path):
    from explorer.jobs import JobStore

    store = JobStore(tmp_path)
    with pytest.raises(ValueError, match="not a session code"):
        store.folder("../escape")
    with pytest.raises(ValueError, match="not a file name"):
        store.write_bytes("ABCDEFGH", "../x", b"")
    store.add_model("ABCDEFGH", "fine-tune #1", b"one")
    store.add_model("ABCDEFGH", "fine-tune #2", b"two")
    store.add_model("ABCDEFGH", "fine-tune #1", b"one again")
    assert store.models("ABCDEFGH") == {"fine-tune #2": b"two", "fine-tune #1": b"one again"}

    with pytest.raises(TypeError):
        store.write_bytes("ABCDEFGH", "job.json", object())  # fails mid-write
    names = sorted(p.name for p in store.folder("ABCDEFGH").iterdir())
    assert not [n for n in names if n.startswith(".tmp-")]  # no half-written file left behind
    assert store.record("ZZZZZZZZ") is None


def test_a_job_with_a_code_is_on_disk_and_a_foreign_running_record_reads_as_interrupted(tmp_path, monkeypatch):
    from explorer import jobs
    from explorer.jobs import JobStore

    store = JobStore(tmp_path)
    manager = JobManager(store=store)

    def work(job):
        job.log({"kind": "epoch", "epoch": 1, "val_accuracy": 0.5})
        job.update(best_checkpoint=b"weights")
        return 1

    job = manager.submit("s", work, code="ABCDEFGH", settings={"source": "shapes"})
    wait_for(lambda: job.status == "done")
    record = store.record("ABCDEFGH")
    assert record["status"] == "done" and record["checkpoint"] and record["settings"] == {"source": "shapes"}
    assert store.read_bytes("ABCDEFGH", "checkpoint.safetensors") == b"weights"
    store.write_json("ABCDEFGH", "job.json", {**record, "status": "running", "server": "another", "written": 0})
    assert store.record("ABCDEFGH")["status"] == "interrupted"
    monkeypatch.setattr(jobs, "SERVER_ID", "another")  # our own running record is not interrupted
    assert store.record("ABCDEFGH")["status"] == "running"


def test_a_new_job_of_the_same_session_replaces_the_old_one(tmp_path):
    from explorer.jobs import JobStore

    manager = JobManager(max_running=1, store=JobStore(tmp_path))

    def forever(job):
        while True:
            job.check()
            job.touch()
            time.sleep(0.01)

    old = manager.submit("s", forever, code="ABCDEFGH")
    wait_for(lambda: old.status == "running")
    new = manager.submit("s", lambda job: 7, code="ABCDEFGH")  # it does not queue behind its own orphan
    wait_for(lambda: new.status == "done")
    assert old.status == "stopped" and "replaced" in old.message
    assert manager.find("ABCDEFGH") is new


def test_two_processes_sharing_a_store_share_the_cap(tmp_path):
    """Two managers (as two app processes) with one data directory run one job at a time together."""
    from explorer.jobs import JobStore

    a, b = JobManager(max_running=1, store=JobStore(tmp_path)), JobManager(max_running=1, store=JobStore(tmp_path))
    gate = threading.Event()
    first = a.submit("s", lambda job: gate.wait(5), code="AAAAAAAA")
    wait_for(lambda: first.status == "running")
    second = b.submit("t", lambda job: 2, code="BBBBBBBB")
    time.sleep(0.6)
    second.touch()
    assert second.status == "queued" and b.position(second) == 1
    gate.set()
    wait_for(lambda: second.status == "done")


def test_shutdown_stops_every_job_lets_it_save_and_joins_it():
    from explorer.jobs import SHUTDOWN_REASON

    manager = JobManager(max_running=1)
    saved = []

    def work(job):
        try:
            while True:
                job.check()
                job.touch()
                time.sleep(0.01)
        finally:
            saved.append(job.message)

    running = manager.submit("a", work)
    queued = manager.submit("b", work)
    wait_for(lambda: running.status == "running")
    assert manager.shutdown(timeout=5)
    assert saved == [SHUTDOWN_REASON] and running.status == queued.status == "stopped"
    with pytest.raises(RuntimeError, match="shutting down"):
        manager.submit("c", work)
