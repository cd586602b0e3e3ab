"""A small job queue for long work (fine-tuning) that never runs inside a Streamlit script run.

Each job runs ``work(job)`` in its own daemon thread. A process-wide :class:`JobManager` caps how
many run at once (``EXPLORER_MAX_TRAINING_JOBS``, default 1) and starts waiting jobs strictly in
the order they were submitted. Pages only read :meth:`Job.snapshot` and call :meth:`Job.stop`;
the worker never touches Streamlit.

A job ends when its work returns, when it is stopped, when its maximum time passes, or when its
owner stops polling for ``heartbeat_timeout`` seconds (the browser tab was closed).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Job", "JobManager", "JobStopped", "default_manager"]

QUEUED, RUNNING, DONE, STOPPED, FAILED = "queued", "running", "done", "stopped", "failed"
FINISHED = (DONE, STOPPED, FAILED)


class JobStopped(Exception):  # noqa: N818 - an instruction to the worker, not an error
    """Raised inside a worker by :meth:`Job.check` once the job should end."""


@dataclass
class Job:
    """One unit of background work and everything a page shows about it."""

    id: int
    owner: str
    work: Callable[[Job], Any]
    max_seconds: float
    heartbeat_timeout: float
    status: str = QUEUED
    message: str = ""
    progress: float = 0.0  # 0..1
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    last_seen: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ---- called by the page ------------------------------------------------------------
    def stop(self, reason: str = "stopped by the user") -> None:
        """Ask the job to end at its next check (a queued job ends at once)."""
        with self._lock:
            if self.status in FINISHED:
                return
            if not self._stop.is_set():
                self.message = reason
            self._stop.set()

    def touch(self) -> None:
        """The owner is still watching (call on every poll)."""
        self.last_seen = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the job's public state for display."""
        with self._lock:
            now = time.monotonic()
            elapsed = (self.finished or now) - self.started if self.started else 0.0
            eta = elapsed * (1 - self.progress) / self.progress if self.started and 0 < self.progress < 1 else None
            return {
                "id": self.id,
                "status": self.status,
                "message": self.message,
                "progress": self.progress,
                "elapsed": elapsed,
                "eta": eta,
                "history": list(self.history),
                "artifacts": dict(self.artifacts),
            }

    # ---- called by the worker ------------------------------------------------------------
    @property
    def stop_requested(self) -> bool:
        """Whether the job should end now (stopped, out of time, or abandoned by its owner)."""
        if self._stop.is_set():
            return True
        now = time.monotonic()
        if self.started is not None and now - self.started > self.max_seconds:
            self.stop(f"stopped after the maximum of {self.max_seconds:.0f} s")
        elif now - self.last_seen > self.heartbeat_timeout:
            self.stop("stopped because its page was closed")
        return self._stop.is_set()

    def check(self) -> None:
        """Raise :class:`JobStopped` if the job should end."""
        if self.stop_requested:
            raise JobStopped(self.message)

    def update(self, *, progress: float | None = None, message: str | None = None, **artifacts: Any) -> None:
        """Publish progress, a status line or artifacts (checkpoint bytes, figures' data)."""
        with self._lock:
            if progress is not None:
                self.progress = min(1.0, max(0.0, float(progress)))
            if message is not None:
                self.message = message
            self.artifacts.update(artifacts)

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one row of metrics to the job's history."""
        with self._lock:
            self.history.append(dict(metrics))


class JobManager:
    """Runs at most ``max_running`` jobs at once; the rest wait in submission order."""

    def __init__(self, max_running: int | None = None, heartbeat_timeout: float = 90.0) -> None:
        if max_running is None:
            max_running = int(os.environ.get("EXPLORER_MAX_TRAINING_JOBS", "1") or 1)
        if max_running < 1:
            raise ValueError(f"max_running={max_running} must be at least 1 (EXPLORER_MAX_TRAINING_JOBS)")
        self.max_running = max_running
        self.heartbeat_timeout = heartbeat_timeout
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: deque[Job] = deque()
        self._running: set[int] = set()
        self._jobs: dict[int, Job] = {}

    def submit(self, owner: str, work: Callable[[Job], Any], max_seconds: float = 600.0) -> Job:
        """Queue ``work``; it starts as soon as a slot is free and every earlier job has started."""
        job = Job(next(self._ids), owner, work, float(max_seconds), self.heartbeat_timeout)
        with self._lock:
            self._jobs[job.id] = job
            self._waiting.append(job)
        self._dispatch()
        return job

    def get(self, job_id: int | None) -> Job | None:
        """The job with this id, if it exists."""
        return self._jobs.get(job_id) if job_id is not None else None

    def position(self, job: Job) -> int:
        """0 when running or finished; otherwise 1 + the number of jobs ahead of it in line."""
        with self._lock:
            for i, waiting in enumerate(self._waiting):
                if waiting.id == job.id:
                    return i + 1
        return 0

    def stop_owner(self, owner: str, reason: str = "its session ended") -> None:
        """Stop every job of one owner (a session that ended)."""
        for job in list(self._jobs.values()):
            if job.owner == owner:
                job.stop(reason)

    def running(self) -> int:
        """How many jobs run now."""
        with self._lock:
            return len(self._running)

    def _dispatch(self) -> None:
        with self._lock:
            while self._waiting and len(self._running) < self.max_running:
                job = self._waiting.popleft()
                if job._stop.is_set():  # stopped while waiting
                    job.status, job.finished = STOPPED, time.monotonic()
                    continue
                job.status, job.started = RUNNING, time.monotonic()
                job.touch()
                self._running.add(job.id)
                threading.Thread(target=self._run, args=(job,), name=f"job-{job.id}", daemon=True).start()

    def _run(self, job: Job) -> None:
        status = FAILED
        try:
            job.result = job.work(job)
            status = STOPPED if job._stop.is_set() else DONE
        except JobStopped:
            status = STOPPED
        except MemoryError:
            status = FAILED
            job.message = "ran out of memory: try a smaller model, image size or batch"
        except Exception as exc:
            status = FAILED
            job.message = f"{type(exc).__name__}: {exc}"
            job.artifacts["traceback"] = traceback.format_exc()
        finally:
            with job._lock:
                job.status = status
                job.finished = time.monotonic()
                if job.status == DONE:
                    job.progress = 1.0
            job.work = _finished  # drop references to models and data so their memory is freed
            with self._lock:
                self._running.discard(job.id)
            self._dispatch()
        self._forget_old()

    def _forget_old(self, keep: int = 200) -> None:
        with self._lock:
            finished = [j for j in self._jobs.values() if j.status in FINISHED]
            for job in sorted(finished, key=lambda j: j.finished or 0)[:-keep]:
                self._jobs.pop(job.id, None)


def _finished(job: Job) -> None:
    """The work of a job that has ended (its real work was released)."""


_DEFAULT: JobManager | None = None
_DEFAULT_LOCK = threading.Lock()


def default_manager() -> JobManager:
    """The process-wide manager shared by every session of the app."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = JobManager()
        return _DEFAULT
