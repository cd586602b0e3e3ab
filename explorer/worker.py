"""Training in its own process: the web process only starts it, forwards "stop" and reads small files.

A fine-tune or teach job's work is a :class:`ProcessWork`: when the job manager
(:mod:`explorer.jobs`) starts it, the manager's thread becomes the job's *supervisor*. It pickles
the request into the job's folder, spawns a worker (``python -m explorer.worker``: a fresh
interpreter, nothing of the web process is inherited, no locks, no thread pools), and then only
reads what the worker writes and copies it into the :class:`explorer.jobs.Job` the page polls.
The web process never trains: no optimiser step and no backward pass run in it.

Why not ``multiprocessing``'s spawn: its child re-imports the parent's ``__main__`` by path, and
under ``streamlit run`` that is the app script (Streamlit installs it as ``__main__`` while a
script runs): every worker would run the app, and a script that starts a job would start one
again in its own worker. A command line names exactly what the worker imports.

The worker runs the same function a thread used to run (``run_finetune(job, request)``,
``run_teach(job, request)``) with a :class:`WorkerJob`: the same ``update`` / ``log`` /
``check`` interface, backed by files in the job's folder (the session's folder
``<EXPLORER_DATA_DIR>/sessions/<CODE>/`` for a job with a session code, else a folder under
``<EXPLORER_DATA_DIR>/work/``):

==========================  =================================================================
``worker-state.json``       status, message, progress, small artifacts, versions of the files
``worker-history.jsonl``    one metrics row per line, appended (a reader takes complete lines)
``worker-<name>.npz``       an artifact holding arrays (timeline, summary, the taught head):
                            its structure as JSON plus the arrays, read with ``allow_pickle=False``
``checkpoint.safetensors``  the best checkpoint so far (the session's checkpoint file)
``worker-stop``             written by the supervisor: the reason the job should stop
==========================  =================================================================

Every file except the history log is written to a temporary name and renamed into place
(:func:`explorer.jobs.atomic_write`), so a reader never sees half a file. The ``worker-*`` files
are removed when the job ends; the checkpoint stays.

The worker owns its PyTorch threads: ``EXPLORER_TRAINING_THREADS``, by default the cores this
process may use minus one (at least 1), leaving a core to the web process. It also lowers its own
CPU priority (``EXPLORER_TRAINING_NICE``, by default 10): when the web process needs more than its
core (a class clicking), the scheduler serves the students' script runs first and the training
takes the rest. It stops, writing
its last checkpoint, when the supervisor asks (Stop button, time limit, closed tab, server
shutdown), on SIGTERM or SIGINT (Ctrl-C reaches the whole process group), and when the web
process is gone (its parent process id changes). A worker that dies without reporting (killed,
out of memory, a crash in native code) fails its job with a message; the last checkpoint it
wrote is kept and offered.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from explorer.jobs import SHUTDOWN_REASON, Job, JobFailed, JobStopped, JobStore, atomic_write, default_data_dir

__all__ = [
    "CHECKPOINT",
    "ENV_NICE",
    "ENV_THREADS",
    "ProcessWork",
    "WorkerJob",
    "decode",
    "encode",
    "read_artifact",
    "training_niceness",
    "training_threads",
    "write_artifact",
]

ENV_THREADS = "EXPLORER_TRAINING_THREADS"
ENV_NICE = "EXPLORER_TRAINING_NICE"
DEFAULT_NICE = 10  # the web process (niceness 0) gets about 10x the training's share of a busy core
CHECKPOINT = "checkpoint.safetensors"
REQUEST = "worker-request.pkl"
STATE = "worker-state.json"
HISTORY = "worker-history.jsonl"
STOP = "worker-stop"
POLL = 0.25  # seconds between the supervisor's reads
STATE_EVERY = 0.25  # the worker rewrites its state at most this often for progress alone
CHECK_EVERY = 0.1  # the worker looks for the stop file and its parent at most this often
JOIN_AFTER_STOP = 60.0  # seconds a stopped worker may take to write its checkpoint before it is killed


def training_threads() -> int:
    """PyTorch threads of a worker: ``EXPLORER_TRAINING_THREADS``, else usable cores - 1 (at least 1).

    A value that is not a positive whole number is refused with a ValueError naming the variable.
    """
    raw = os.environ.get(ENV_THREADS, "").strip()
    if raw:
        try:
            threads = int(raw)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"{ENV_THREADS}={raw!r} must be a whole number of threads, at least 1 (or unset for "
                             "the cores minus one)")
        return threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def training_niceness() -> int:
    """How far a worker lowers its CPU priority: ``EXPLORER_TRAINING_NICE`` (0 to 19), else 10.

    0 keeps the web process's priority. A value outside 0..19 is refused with a ValueError naming
    the variable.
    """
    raw = os.environ.get(ENV_NICE, "").strip()
    if not raw:
        return DEFAULT_NICE
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise ValueError(f"{ENV_NICE}={raw!r} must be a whole number from 0 (the web process's priority) to 19 "
                         f"(the lowest), or unset for {DEFAULT_NICE}")
    return value


def _lower_priority(niceness: int) -> None:
    """Raise this process's niceness by ``niceness`` (before PyTorch starts threads: they inherit it)."""
    if niceness > 0:
        with contextlib.suppress(OSError, AttributeError):  # not permitted, or not a POSIX system: train anyway
            os.nice(niceness)


# ------------------------------------------------------------------------------------------ artifacts as files
def encode(value: Any, arrays: list[np.ndarray]) -> Any:
    """``value`` as JSON with its arrays, tensors and bytes moved into ``arrays`` (referenced by index).

    Handles None, bool, int, float, str, numpy scalars, lists/tuples, dicts, ``np.ndarray``,
    ``torch.Tensor`` and ``bytes``; anything else is a TypeError (a worker must publish plain data).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("object arrays cannot be published by a worker")
        arrays.append(np.ascontiguousarray(value))
        return {"__array__": len(arrays) - 1}
    if isinstance(value, (bytes, bytearray)):
        arrays.append(np.frombuffer(bytes(value), dtype=np.uint8))
        return {"__bytes__": len(arrays) - 1}
    if isinstance(value, (list, tuple)):
        return [encode(v, arrays) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[encode(k, arrays), encode(v, arrays)] for k, v in value.items()]}
    import torch

    if isinstance(value, torch.Tensor):
        arrays.append(value.detach().cpu().contiguous().numpy())
        return {"__tensor__": len(arrays) - 1}
    raise TypeError(f"a worker cannot publish a {type(value).__name__}; publish arrays, tensors or plain values")


def decode(value: Any, arrays: list[np.ndarray]) -> Any:
    """The inverse of :func:`encode` (tensors come back as CPU tensors, bytes as bytes)."""
    if isinstance(value, list):
        return [decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if "__dict__" in value:
        return {_hashable(decode(k, arrays)): decode(v, arrays) for k, v in value["__dict__"]}
    if "__array__" in value:
        return arrays[value["__array__"]]
    if "__bytes__" in value:
        return arrays[value["__bytes__"]].tobytes()
    if "__tensor__" in value:
        import torch

        return torch.from_numpy(np.array(arrays[value["__tensor__"]]))  # a writable copy
    raise ValueError(f"unknown artifact encoding {sorted(value)}")


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def write_artifact(path: Path, value: Any) -> None:
    """One artifact as an ``.npz``: its JSON structure plus its arrays (written atomically)."""
    arrays: list[np.ndarray] = []
    structure = json.dumps(encode(value, arrays)).encode("utf-8")
    buf = io.BytesIO()
    np.savez(buf, structure=np.frombuffer(structure, dtype=np.uint8), **{f"a{i}": a for i, a in enumerate(arrays)})
    atomic_write(path, buf.getvalue())


def read_artifact(path: Path) -> Any:
    """An artifact written by :func:`write_artifact` (no pickle: ``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = [data[f"a{i}"] for i in range(len(data.files) - 1)]
        structure = json.loads(data["structure"].tobytes().decode("utf-8"))
    return decode(structure, arrays)


def _json_plain(value: Any) -> bool:
    """Whether a value goes straight into the state file (no arrays, tensors or bytes inside)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_json_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_plain(v) for k, v in value.items())
    return False


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ------------------------------------------------------------------------------------------ the worker side
class WorkerJob:
    """The job as the worker sees it: :class:`explorer.jobs.Job`'s worker interface, backed by files."""

    def __init__(self, folder: Path, parent_pid: int, started: float) -> None:
        self.folder = Path(folder)
        self.parent_pid = parent_pid
        self.started = started  # time.monotonic() of the web process (one clock for the whole machine)
        self.message = ""
        self.progress = 0.0
        self._stopped = False
        self.orphaned = False  # the web process is gone: stop as at a shutdown, then clear the worker files
        self._small: dict[str, Any] = {}
        self._files: dict[str, list] = {}  # artifact name -> [file name, version]
        self._written = 0.0
        self._checked = 0.0
        self._history = open(self.folder / HISTORY, "a", encoding="utf-8")  # noqa: SIM115 - closed in finish()

    # ---- what Job offers a worker -------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """End at the next check (also called from the signal handlers: no I/O here)."""
        if not self._stopped:
            self.message = reason
            self._stopped = True

    def touch(self) -> None:
        """Heartbeats are the supervisor's business."""

    @property
    def stop_requested(self) -> bool:
        """Stopped here, asked to stop by the supervisor, or orphaned (the web process is gone)."""
        now = time.monotonic()
        if not self._stopped and now - self._checked >= CHECK_EVERY:
            self._checked = now
            try:
                reason = (self.folder / STOP).read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                reason = None
            if reason is not None:
                self.stop(reason or "stopped by the user")
            elif os.getppid() != self.parent_pid:
                self.orphaned = True
                self.stop(SHUTDOWN_REASON)
        return self._stopped

    def check(self) -> None:
        """Raise :class:`explorer.jobs.JobStopped` if the job should end."""
        if self.stop_requested:
            raise JobStopped(self.message)

    def update(self, *, progress: float | None = None, message: str | None = None, **artifacts: Any) -> None:
        """Publish progress, a status line and artifacts (arrays to files, the checkpoint to its file)."""
        urgent = bool(artifacts) or (message is not None and message != self.message)
        if progress is not None:
            self.progress = min(1.0, max(0.0, float(progress)))
        if message is not None:
            self.message = message
        for name, value in artifacts.items():
            self._publish(name, value)
        self._write_state(force=urgent)

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one metrics row (one line, flushed: the supervisor reads complete lines only)."""
        self._history.write(json.dumps(dict(metrics), default=_plain) + "\n")
        self._history.flush()

    # ---- files ---------------------------------------------------------------------------------
    def _publish(self, name: str, value: Any) -> None:
        self._small.pop(name, None)
        if _json_plain(value):
            self._small[name] = value
            self._files.pop(name, None)
            return
        version = self._files.get(name, [None, 0])[1] + 1
        if isinstance(value, (bytes, bytearray)) and name == "best_checkpoint":
            file = CHECKPOINT
            atomic_write(self.folder / file, bytes(value))
        else:
            file = f"worker-{name}.npz"
            write_artifact(self.folder / file, value)
        self._files[name] = [file, version]

    def _write_state(self, force: bool = False, final: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        if not force and final is None and now - self._written < STATE_EVERY:
            return
        self._written = now
        state = {"pid": os.getpid(), "message": self.message, "progress": self.progress, "artifacts": self._small,
                 "files": self._files, "final": final}
        atomic_write(self.folder / STATE, json.dumps(state, default=_plain).encode("utf-8"))

    def finish(self, status: str, result: Any = None) -> None:
        """The last state: ``status`` (done, stopped or failed) and the work's result."""
        self._history.close()
        final: dict[str, Any] = {"status": status, "message": self.message}
        if result is not None:
            try:
                write_artifact(self.folder / "worker-result.npz", result)
                final["result"] = "worker-result.npz"
            except TypeError:  # a result that is not plain data stays in the worker
                pass
        self._write_state(final=final)


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def worker_main(folder: str, target: str, parent_pid: int, started: float, threads: int, niceness: int = 0) -> None:
    """The worker process: read the request, run ``target(job, request)``, report how it ended."""
    _lower_priority(niceness)
    import torch

    torch.set_num_threads(threads)
    job = WorkerJob(Path(folder), parent_pid, started)

    def on_signal(signum, frame) -> None:  # SIGTERM from a supervisor or service manager, Ctrl-C
        job.stop(SHUTDOWN_REASON)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    result, status = None, "failed"
    try:
        path = Path(folder) / REQUEST
        with open(path, "rb") as f:
            request = pickle.load(f)  # written by our own web process a moment ago, in the app's data folder
        path.unlink()
        result = _resolve(target)(job, request)
        status = "stopped" if job._stopped else "done"
    except JobStopped:
        status = "stopped"
    except MemoryError:
        job.message = "ran out of memory: try a smaller model, image size or batch"
    except Exception as exc:
        job.message = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            job.update(traceback=traceback.format_exc())
    job.finish(status, result)
    if job.orphaned:  # nobody reads these files any more: leave only the checkpoint
        _remove_worker_files(Path(folder))


def _remove_worker_files(folder: Path) -> None:
    for path in folder.glob("worker-*"):
        with contextlib.suppress(OSError):
            path.unlink()


# ------------------------------------------------------------------------------------------ the web side
class ProcessWork:
    """The work of a :class:`explorer.jobs.Job` that runs ``target(job, request)`` in a worker process.

    ``target`` is ``"module:function"`` (imported in the worker); ``request`` is pickled into the
    job's folder (so nothing the web process holds is shared with the worker or moved to shared
    memory). ``store`` gives jobs with a session code their session folder.
    """

    def __init__(self, target: str, request: Any, store: JobStore | None = None) -> None:
        self.target = target
        self.request = request
        self.store = store

    def __call__(self, job: Job) -> Any:
        folder, temporary = self._folder(job)
        try:
            return self._supervise(job, folder)
        finally:
            self.request = None  # the models and data of the request are not kept after the job
            if temporary:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                _remove_worker_files(folder)

    def _folder(self, job: Job) -> tuple[Path, bool]:
        if job.code is not None and self.store is not None:
            folder = self.store.folder(job.code, create=True)
            _remove_worker_files(folder)  # left by a worker of an earlier server run
            with contextlib.suppress(FileNotFoundError):
                (folder / CHECKPOINT).unlink()  # a new job: the previous job's checkpoint is not this one's
            return folder, False
        root = (self.store.root if self.store is not None else default_data_dir()) / "work"
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"job-{job.id}-", dir=root)), True

    def _supervise(self, job: Job, folder: Path) -> Any:
        job.check()
        atomic_write(folder / REQUEST, pickle.dumps(self.request, protocol=pickle.HIGHEST_PROTOCOL))
        root = str(Path(__file__).resolve().parent.parent)  # where explorer/ and vitcore/ live
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        command = [sys.executable, "-m", "explorer.worker", str(folder), self.target, str(os.getpid()),
                   repr(job.started or time.monotonic()), str(training_threads()), str(training_niceness())]
        process = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL)  # same process group:
        job.update(worker_pid=process.pid)  # Ctrl-C in the terminal reaches the worker too, which stops cleanly
        mirror = _Mirror(folder)
        stop_sent = None
        try:
            while process.poll() is None:
                if job.stop_requested and stop_sent is None:
                    atomic_write(folder / STOP, (job.message or "stopped").encode("utf-8"))
                    stop_sent = time.monotonic()
                if stop_sent is not None and time.monotonic() - stop_sent > JOIN_AFTER_STOP:
                    process.kill()  # it did not stop in time: the last checkpoint on disk is what is kept
                mirror.pull(job)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(POLL)
        finally:
            if process.poll() is None:  # the supervisor itself failed: the worker must not outlive its job
                process.kill()
                process.wait(10)
        state = mirror.pull(job)
        final = (state or {}).get("final")
        if not final:
            raise JobFailed(_death_message(process.returncode, job))
        if final["status"] == "failed":
            raise JobFailed(final["message"])
        result = read_artifact(folder / final["result"]) if final.get("result") else None
        if final["status"] == "stopped":
            job.stop(final["message"])  # stopped in the worker (signal, orphan): the page says why
        return result


def _death_message(exitcode: int | None, job: Job) -> str:
    how = f"was killed (signal {-exitcode})" if exitcode is not None and exitcode < 0 else f"exited ({exitcode})"
    kept = ("its last checkpoint is kept below" if job.snapshot()["artifacts"].get("best_checkpoint")
            else "it had not written a checkpoint yet")
    return f"the training process {how} before it finished; {kept}"


class _Mirror:
    """Reads a worker's files into the web process's :class:`Job`, only what changed since the last read."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.offset = 0
        self.seen: tuple[int, int] | None = None
        self.versions: dict[str, int] = {}
        self.state: dict[str, Any] | None = None

    def pull(self, job: Job) -> dict[str, Any] | None:
        self._history(job)
        path = self.folder / STATE
        try:
            stat = path.stat()
        except FileNotFoundError:
            return self.state
        if (stat.st_mtime_ns, stat.st_size) == self.seen:
            return self.state
        try:
            state = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return self.state
        self.seen = (stat.st_mtime_ns, stat.st_size)
        self.state = state
        changed: dict[str, Any] = dict(state.get("artifacts") or {})
        for name, (file, version) in (state.get("files") or {}).items():
            if self.versions.get(name) == version:
                continue
            try:
                value = (self.folder / file).read_bytes() if file == CHECKPOINT else read_artifact(self.folder / file)
            except (OSError, ValueError):
                continue  # replaced while read: the next pull takes the newer one
            self.versions[name] = version
            changed[name] = value
            if file == CHECKPOINT:
                changed["_saved"] = value  # already in the session folder: the manager need not write it again
        if job.stop_requested and state.get("final") is None:
            state = {**state, "message": job.message}  # the page keeps saying why it was stopped
        job.update(progress=state.get("progress"), message=state.get("message"), **changed)
        return state

    def _history(self, job: Job) -> None:
        try:
            with open(self.folder / HISTORY, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # complete lines only; a partly written one waits for the next read
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                job.log(json.loads(line))
        self.offset += end


if __name__ == "__main__":  # python -m explorer.worker FOLDER TARGET PARENT_PID STARTED THREADS [NICENESS]
    _folder, _target, _parent, _started, _threads = sys.argv[1:6]
    _nice = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    worker_main(_folder, _target, int(_parent), float(_started), int(_threads), _nice)
