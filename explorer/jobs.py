"""A small job queue for long work (fine-tuning) that never runs inside a Streamlit script run.

Each job runs ``work(job)`` in its own thread. For training that work is an
:class:`explorer.worker.ProcessWork`: the thread only supervises a worker process, which trains,
and copies what the worker writes into the job; the web process itself never trains.
A process-wide :class:`JobManager` caps how many
run at once (``EXPLORER_MAX_TRAINING_JOBS``, default 1) and starts waiting jobs strictly in the
order they were submitted. Pages only read :meth:`Job.snapshot` (cheaply: :attr:`Job.version`
says whether anything changed) and call :meth:`Job.stop`; the worker never touches Streamlit.

A job ends when its work returns, when it is stopped, when its maximum time passes, or when its
owner stops polling for ``heartbeat_timeout`` seconds (the browser tab was closed): a queued or
orphaned job gives way within about 10 s.

Jobs that carry a session *code* (8 random base32 characters, kept in the page's URL) are written
to a :class:`JobStore` under ``EXPLORER_DATA_DIR``: the status record (``job.json``), the last good
checkpoint and the session's fine-tuned models. A reload finds its job again through the code; after
a restart the record says the job was interrupted and its checkpoint is still offered. With a store,
the cap also holds across several app processes that share the data directory (one lock file per
training slot).

When the interpreter exits (SIGTERM to ``streamlit run`` ends the server, then Python exits), an
``atexit`` hook stops every job, lets it write its last checkpoint (a worker process writes it and
exits) and joins its thread, so no thread or worker is left while the interpreter is torn down.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import itertools
import json
import os
import re
import secrets
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Job", "JobFailed", "JobManager", "JobStopped", "JobStore", "atomic_write", "check_code", "default_manager",
           "new_code"]

QUEUED, RUNNING, DONE, STOPPED, FAILED = "queued", "running", "done", "stopped", "failed"
INTERRUPTED = "interrupted"  # read back from disk: the server ended while the job ran
FINISHED = (DONE, STOPPED, FAILED)
SHUTDOWN_REASON = "stopped because the server is shutting down"
SERVER_ID = secrets.token_hex(8)  # this process; a record written by another one is not ours to run
PERSIST_EVERY = 2.0  # seconds between status writes of a running job
STALE_AFTER = 20.0  # a running record not rewritten for this long belongs to a server that is gone


class JobStopped(Exception):  # noqa: N818 - an instruction to the worker, not an error
    """Raised inside a worker by :meth:`Job.check` once the job should end."""


class JobFailed(Exception):  # noqa: N818 - carries a message already written for the page
    """Raised by a job's work to fail it with exactly this message (e.g. a worker process that died)."""


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a hidden temporary file in the same folder and ``os.replace``:
    a reader sees the old file or the new one, never half of one; on errors no temporary file is left."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


# ------------------------------------------------------------------------------------------ session codes
CODE_LENGTH = 8
_CODE = re.compile(rf"[A-Z2-7]{{{CODE_LENGTH}}}")
_FILE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def new_code() -> str:
    """A fresh session code: 8 base32 characters (40 random bits), e.g. ``'K7QX2MZA'``."""
    return base64.b32encode(secrets.token_bytes(5)).decode("ascii")


def check_code(code: Any) -> str | None:
    """``code`` when it is exactly a session code (upper-cased), else None: never a path or anything else."""
    if not isinstance(code, str):
        return None
    code = code.strip().upper()
    return code if _CODE.fullmatch(code) else None


def default_data_dir() -> Path:
    """``EXPLORER_DATA_DIR``, else the per-user cache folder ``~/.cache/vit-explorer``."""
    configured = os.environ.get("EXPLORER_DATA_DIR", "").strip()
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(cache) / "vit-explorer"


class JobStore:
    """Session folders ``<root>/sessions/<CODE>/`` with a job record, checkpoints and session models.

    Every write goes to a hidden temporary file in the same folder and is renamed into place, so a
    reader never sees half a file and a crash leaves no partial file under a real name (the
    temporary file is removed on errors). File names are fixed by the app, never typed by users.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_data_dir()

    def folder(self, code: str, create: bool = False) -> Path:
        """The folder of one session code (a ValueError for anything that is not a code)."""
        checked = check_code(code)
        if checked is None:
            raise ValueError(f"{str(code)[:20]!r} is not a session code (8 letters A-Z and digits 2-7)")
        path = self.root / "sessions" / checked
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def _path(self, code: str, name: str, create: bool = False) -> Path:
        if not _FILE.fullmatch(name):
            raise ValueError(f"{name!r} is not a file name the store writes")
        return self.folder(code, create) / name

    def write_bytes(self, code: str, name: str, data: bytes) -> Path:
        """Write one file atomically."""
        return atomic_write(self._path(code, name, create=True), data)

    def read_bytes(self, code: str, name: str) -> bytes | None:
        """One file's bytes, or None when it does not exist."""
        try:
            return self._path(code, name).read_bytes()
        except FileNotFoundError:
            return None

    def write_json(self, code: str, name: str, value: Any) -> None:
        """Write a JSON document atomically."""
        self.write_bytes(code, name, json.dumps(value, default=_plain).encode("utf-8"))

    def read_json(self, code: str, name: str) -> Any:
        """A JSON document, or None when it is missing or unreadable."""
        data = self.read_bytes(code, name)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None

    # ---- session models ------------------------------------------------------------------
    def add_model(self, code: str, name: str, data: bytes) -> None:
        """Keep a fine-tuned checkpoint under a display name (replacing one of the same name)."""
        index = [m for m in (self.read_json(code, "models.json") or []) if m.get("name") != name]
        used = {m["file"] for m in index}
        file = next(f"model-{i:03d}.safetensors" for i in itertools.count() if f"model-{i:03d}.safetensors" not in used)
        self.write_bytes(code, file, data)
        self.write_json(code, "models.json", [*index, {"name": str(name)[:200], "file": file}])

    def models(self, code: str) -> dict[str, bytes]:
        """Display name -> checkpoint bytes of the session's fine-tuned models, oldest first."""
        out: dict[str, bytes] = {}
        for entry in self.read_json(code, "models.json") or []:
            file = entry.get("file", "") if isinstance(entry, dict) else ""
            if _FILE.fullmatch(str(file)):
                data = self.read_bytes(code, file)
                if data is not None:
                    out[str(entry.get("name", file))] = data
        return out

    def record(self, code: str) -> dict[str, Any] | None:
        """The session's last job record, with status ``interrupted`` when its server is gone."""
        record = self.read_json(code, "job.json")
        if not isinstance(record, dict):
            return None
        if record.get("status") in (QUEUED, RUNNING):
            foreign = record.get("server") != SERVER_ID
            if foreign and time.time() - float(record.get("written", 0)) > STALE_AFTER:
                record["status"] = INTERRUPTED
                record["message"] = ("the server stopped while this job ran; its last checkpoint is kept"
                                     if record.get("checkpoint") else "the server stopped before this job saved "
                                     "a checkpoint")
        return record

    @contextlib.contextmanager
    def slot(self, slots: int, stop: Callable[[], bool]) -> Iterator[bool]:
        """Hold one of ``slots`` training slots shared by every process using this store.

        Yields True once a slot is held, False if ``stop()`` became true while waiting.
        """
        import fcntl

        folder = self.root / "slots"
        folder.mkdir(parents=True, exist_ok=True)
        handle = None
        while handle is None:
            for i in range(slots):
                f = open(folder / f"slot-{i}.lock", "a+b")  # noqa: SIM115 - closed in finally
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    f.close()
                    continue
                handle = f
                break
            if handle is None:
                if stop():
                    yield False
                    return
                time.sleep(0.25)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _plain(value: Any) -> Any:
    """JSON fallback for numpy scalars and the like."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ------------------------------------------------------------------------------------------ jobs
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
    code: str | None = None  # session code: the job is written to the manager's store
    settings: dict[str, Any] = field(default_factory=dict)  # JSON-able request settings, kept on disk
    version: int = 0  # grows with every change a page could show
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    last_seen: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _on_change: Callable[[Job, bool], None] | None = field(default=None, repr=False)

    # ---- called by the page ------------------------------------------------------------
    def stop(self, reason: str = "stopped by the user") -> None:
        """Ask the job to end at its next check (a queued job ends at once)."""
        with self._lock:
            if self.status in FINISHED:
                return
            if not self._stop.is_set():
                self.message = reason
                self.version += 1
            self._stop.set()

    def touch(self) -> None:
        """The owner is still watching (call on every poll)."""
        self.last_seen = time.monotonic()

    def abandoned(self, now: float | None = None) -> bool:
        """Whether the owner stopped polling more than ``heartbeat_timeout`` seconds ago."""
        return ((now or time.monotonic()) - self.last_seen) > self.heartbeat_timeout

    def snapshot(self, steps: int | None = None) -> dict[str, Any]:
        """A consistent copy of the job's public state for display.

        ``steps`` thins the per-step rows to at most that many (evenly spaced, the last one kept):
        a page redraws a curve of a few hundred points, not of every step.
        """
        with self._lock:
            now = time.monotonic()
            elapsed = (self.finished or now) - self.started if self.started else 0.0
            eta = elapsed * (1 - self.progress) / self.progress if self.started and 0 < self.progress < 1 else None
            history = list(self.history)
            artifacts = dict(self.artifacts)
            version, status, message, progress = self.version, self.status, self.message, self.progress
        if steps is not None:
            history = _thin(history, steps)
        return {
            "id": self.id,
            "code": self.code,
            "status": status,
            "message": message,
            "progress": progress,
            "elapsed": elapsed,
            "eta": eta,
            "version": version,
            "settings": dict(self.settings),
            "history": history,
            "artifacts": artifacts,
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
        elif self.abandoned(now):
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
            self.version += 1
        self._changed("best_checkpoint" in artifacts)  # a new checkpoint goes to disk at once

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one row of metrics to the job's history."""
        with self._lock:
            self.history.append(dict(metrics))
            self.version += 1
        self._changed(metrics.get("kind") == "epoch")

    def _changed(self, important: bool) -> None:
        if self._on_change is not None:
            self._on_change(self, important)


def _thin(history: list[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """Every non-step row, and at most ``steps`` evenly spaced step rows (always the last)."""
    step_rows = [h for h in history if h.get("kind") == "step"]
    if len(step_rows) <= steps:
        return history
    stride = len(step_rows) / steps
    keep = {id(step_rows[int(i * stride)]) for i in range(steps)} | {id(step_rows[-1])}
    return [h for h in history if h.get("kind") != "step" or id(h) in keep]


class JobManager:
    """Runs at most ``max_running`` jobs at once; the rest wait in submission order."""

    def __init__(self, max_running: int | None = None, heartbeat_timeout: float = 8.0,
                 store: JobStore | None = None) -> None:
        if max_running is None:
            max_running = int(os.environ.get("EXPLORER_MAX_TRAINING_JOBS", "1") or 1)
        if max_running < 1:
            raise ValueError(f"max_running={max_running} must be at least 1 (EXPLORER_MAX_TRAINING_JOBS)")
        self.max_running = max_running
        self.heartbeat_timeout = heartbeat_timeout
        self.store = store
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: deque[Job] = deque()
        self._running: set[int] = set()
        self._jobs: dict[int, Job] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._written: dict[int, float] = {}
        self._closing = False

    def submit(self, owner: str, work: Callable[[Job], Any], max_seconds: float = 600.0, *,
               code: str | None = None, settings: dict[str, Any] | None = None) -> Job:
        """Queue ``work``; it starts as soon as a slot is free and every earlier job has started.

        With a session ``code`` (and a store) the job is written to disk, and an earlier unfinished
        job of the same code is stopped: a session runs one job at a time.
        """
        if self._closing:
            raise RuntimeError("the server is shutting down; start the job again once it is back")
        if code is not None and check_code(code) is None:
            raise ValueError(f"{code!r} is not a session code")
        if code is not None:
            for other in self.jobs_of(code):
                other.stop("replaced by a new job of the same session")
        job = Job(next(self._ids), owner, work, float(max_seconds), self.heartbeat_timeout, code=code,
                  settings=dict(settings or {}))
        if code is not None and self.store is not None:
            job._on_change = self._persist_soon
        with self._lock:
            self._jobs[job.id] = job
            self._waiting.append(job)
        self._persist(job)
        self._dispatch()
        return job

    def get(self, job_id: int | None) -> Job | None:
        """The job with this id, if it exists."""
        return self._jobs.get(job_id) if job_id is not None else None

    def jobs_of(self, code: str) -> list[Job]:
        """This process's jobs of one session code, oldest first."""
        return [job for job in list(self._jobs.values()) if job.code == code]

    def find(self, code: str | None) -> Job | None:
        """The newest job of a session code in this process (a reload finds its job again)."""
        jobs = self.jobs_of(code) if code else []
        return jobs[-1] if jobs else None

    def position(self, job: Job) -> int:
        """0 when running or finished; otherwise 1 + the number of live jobs ahead of it in line."""
        now = time.monotonic()
        with self._lock:
            ahead = 0
            for waiting in self._waiting:
                if waiting.id == job.id:
                    return ahead + 1
                if not waiting._stop.is_set() and not waiting.abandoned(now):
                    ahead += 1
        return 1 if job.status == QUEUED else 0  # started, waiting for a slot another process holds

    def stop_owner(self, owner: str, reason: str = "its session ended") -> None:
        """Stop every job of one owner (a session that ended)."""
        for job in list(self._jobs.values()):
            if job.owner == owner:
                job.stop(reason)

    def running(self) -> int:
        """How many jobs run now."""
        with self._lock:
            return len(self._running)

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Stop every job (each writes its last checkpoint) and wait for their threads; True if all ended."""
        self._closing = True
        for job in list(self._jobs.values()):
            job.stop(SHUTDOWN_REASON)
        self._dispatch()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads.values())

    def _dispatch(self) -> None:
        ended: list[Job] = []
        with self._lock:
            now = time.monotonic()
            for job in list(self._waiting):  # a queued job that was stopped or abandoned gives way at once
                if not job._stop.is_set() and job.abandoned(now):
                    job.stop("stopped because its page was closed while it waited")
                if job._stop.is_set():
                    self._waiting.remove(job)
                    job.status, job.finished = STOPPED, now
                    job.version += 1
                    ended.append(job)
            while self._waiting and len(self._running) < self.max_running:
                job = self._waiting.popleft()
                job.touch()
                if not self._needs_slot(job):
                    job.status, job.started = RUNNING, now
                    job.version += 1
                self._running.add(job.id)
                thread = threading.Thread(target=self._run, args=(job,), name=f"job-{job.id}", daemon=True)
                self._threads[job.id] = thread
                thread.start()
        for job in ended:
            self._persist(job)

    def sweep(self) -> None:
        """End queued jobs that were stopped or whose page was closed (pages call this when they poll)."""
        self._dispatch()

    def _run(self, job: Job) -> None:
        status = FAILED
        try:
            with self._slot(job) as held:
                if not held:
                    raise JobStopped(job.message)
                if job.status == QUEUED:  # it waited for a slot another process held
                    with job._lock:
                        job.status, job.started = RUNNING, time.monotonic()
                        job.version += 1
                self._persist(job)
                job.result = job.work(job)
            status = STOPPED if job._stop.is_set() else DONE
        except JobStopped:
            status = STOPPED
        except JobFailed as exc:
            status = FAILED
            job.message = str(exc)
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
                job.version += 1
            job.work = _finished  # drop references to models and data so their memory is freed
            self._persist(job)
            with self._lock:
                self._running.discard(job.id)
            self._dispatch()
        self._forget_old()

    def _needs_slot(self, job: Job) -> bool:
        return self.store is not None and job.code is not None

    def _slot(self, job: Job):
        """A training slot shared with the other processes of this store (none needed without one)."""
        if not self._needs_slot(job):
            return contextlib.nullcontext(True)
        return self.store.slot(self.max_running, lambda: job.stop_requested)

    # ---- on disk -----------------------------------------------------------------------------
    def _persist_soon(self, job: Job, important: bool) -> None:
        """Write a running job's record at most every PERSIST_EVERY seconds (at once for epochs/checkpoints)."""
        now = time.monotonic()
        if important or now - self._written.get(job.id, 0.0) >= PERSIST_EVERY:
            self._persist(job)

    def _persist(self, job: Job) -> None:
        if self.store is None or job.code is None:
            return
        self._written[job.id] = time.monotonic()
        snap = job.snapshot(steps=200)
        checkpoint = snap["artifacts"].get("best_checkpoint")
        try:
            if isinstance(checkpoint, bytes) and snap["artifacts"].get("_saved") is not checkpoint:
                self.store.write_bytes(job.code, "checkpoint.safetensors", checkpoint)
                job.artifacts["_saved"] = checkpoint
            record = {k: snap[k] for k in ("id", "status", "message", "progress", "elapsed", "settings", "history")}
            record.update(server=SERVER_ID, written=time.time(), checkpoint=isinstance(checkpoint, bytes),
                          summary=_summary_facts(snap["artifacts"].get("summary")))
            self.store.write_json(job.code, "job.json", record)
        except OSError as exc:  # a full disk must not end the training
            job.artifacts["persist_error"] = f"could not write the job to {self.store.root}: {exc}"

    def _forget_old(self, keep: int = 200) -> None:
        with self._lock:
            finished = [j for j in self._jobs.values() if j.status in FINISHED]
            for job in sorted(finished, key=lambda j: j.finished or 0)[:-keep]:
                self._jobs.pop(job.id, None)
                self._threads.pop(job.id, None)
                self._written.pop(job.id, None)


def _summary_facts(summary: Any) -> dict[str, Any] | None:
    """The numbers of a result summary that fit in JSON (figures' arrays stay in memory)."""
    if not isinstance(summary, dict):
        return None
    return {k: summary[k] for k in ("stop_reason", "message", "best_val_accuracy", "seconds", "images_per_second",
                                    "trainable_params") if k in summary}


def _finished(job: Job) -> None:
    """The work of a job that has ended (its real work was released)."""


_DEFAULT: JobManager | None = None
_DEFAULT_LOCK = threading.Lock()


def default_manager() -> JobManager:
    """The process-wide manager shared by every session of the app (its store is ``EXPLORER_DATA_DIR``).

    Created on first use; at interpreter exit its jobs are stopped, checkpointed and joined.
    """
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = JobManager(store=JobStore())
            atexit.register(_DEFAULT.shutdown)
        return _DEFAULT
