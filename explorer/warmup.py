"""Work a server does once, in the background, so that no page waits for it before its first paint.

A :class:`Warmup` runs named steps, in the order they were added, in one daemon thread. The app
(``app_pages/_startup.py``) gives it: import PyTorch and the app's modules, build the sample
gallery, load the default model, run the Home page's forward pass on the default photo; other
code may add steps (e.g. compiling the default model) with :meth:`Warmup.add`, before or after
the thread started. A page that needs a step waits for it (:meth:`Warmup.wait`) after drawing
what it can without it.

    warm = Warmup([("imports", import_app), ("model", load_default_model)])
    warm.start()                      # returns at once; a second call does nothing
    warm.wait("imports", timeout=60)  # True once the step has finished (or failed: see error())

A step that raises is recorded (:meth:`Warmup.error`) and the next step runs: the page that needs
it then does the work itself and shows the real error where it happens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["StepReport", "Warmup"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepReport:
    """How one step stands: "waiting", "running", "done" or "failed", with its seconds and error."""

    name: str
    state: str
    seconds: float | None = None
    error: str | None = None


class Warmup:
    """Named steps run once, in order, in one background thread (see the module docstring)."""

    def __init__(self, steps: Iterable[tuple[str, Callable[[], Any]]] = (), *, name: str = "warmup") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._steps: list[tuple[str, Callable[[], Any]]] = []
        self._finished: dict[str, threading.Event] = {}
        self._errors: dict[str, BaseException] = {}
        self._seconds: dict[str, float] = {}
        self._running_step: str | None = None
        self._next = 0
        self._started = False
        self._active = False  # a thread is running steps (it clears this, with the lock, when it finds none left)
        for step_name, fn in steps:
            self.add(step_name, fn)

    def add(self, name: str, fn: Callable[[], Any]) -> None:
        """Queue step ``name`` after the others; it runs even when the thread has already finished."""
        if not callable(fn):
            raise ValueError(f"warm-up step {name!r} must be a function of no arguments, got {type(fn).__name__}")
        with self._lock:
            if name in self._finished:
                raise ValueError(f"a warm-up step named {name!r} exists already; give the new step another name")
            self._steps.append((name, fn))
            self._finished[name] = threading.Event()
            if self._started and not self._active:
                self._spawn()

    def start(self) -> bool:
        """Start the thread (True), or do nothing if it was started before (False)."""
        with self._lock:
            if self._started:
                return False
            self._started = True
            self._spawn()
            return True

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has been called."""
        return self._started

    def done(self, name: str) -> bool:
        """Whether step ``name`` has finished (successfully or not)."""
        return self._event(name).is_set()

    def wait(self, name: str, timeout: float | None = None) -> bool:
        """Block until step ``name`` has finished (True) or ``timeout`` seconds have passed (False).

        Waiting for a step of a warm-up that was never started starts it.
        """
        event = self._event(name)
        if not event.is_set():
            self.start()
        return event.wait(timeout)

    def error(self, name: str) -> BaseException | None:
        """The exception step ``name`` raised, or None (not failed, or not finished yet)."""
        self._event(name)
        with self._lock:
            return self._errors.get(name)

    def report(self) -> list[StepReport]:
        """Every step, in order, with its state and time."""
        with self._lock:
            out = []
            for name, _ in self._steps:
                if name in self._errors:
                    err = self._errors[name]
                    out.append(StepReport(name, "failed", self._seconds.get(name), f"{type(err).__name__}: {err}"))
                elif self._finished[name].is_set():
                    out.append(StepReport(name, "done", self._seconds.get(name)))
                else:
                    out.append(StepReport(name, "running" if name == self._running_step else "waiting"))
            return out

    def _event(self, name: str) -> threading.Event:
        with self._lock:
            event = self._finished.get(name)
            known = list(self._finished)
        if event is None:
            raise ValueError(f"no warm-up step named {name!r}; the steps are {known}")
        return event

    def _spawn(self) -> None:  # with the lock held
        self._active = True
        threading.Thread(target=self._run, name=self._name, daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._next >= len(self._steps):
                    self._running_step = None
                    self._active = False
                    return
                name, fn = self._steps[self._next]
                self._next += 1
                self._running_step = name
            begin = time.perf_counter()
            try:
                fn()
            except BaseException as exc:  # recorded; the page that needs the step redoes it and shows the error
                log.warning("warm-up step %r failed: %s: %s", name, type(exc).__name__, exc)
                with self._lock:
                    self._errors[name] = exc
            finally:
                with self._lock:
                    self._seconds[name] = time.perf_counter() - begin
                self._finished[name].set()
