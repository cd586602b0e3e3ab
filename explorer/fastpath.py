"""The fast inference path for the app's traces: built once per process, used only where it is faithful.

    path = fast_path(loaded)          # one per loaded model, process-wide
    path.start()                      # after the first paint: optimise (+ compile) in a thread
    model = path.model_for(x)         # the fast model once it is ready and faithful, else the shared one
    path.label()                      # for the sidebar: "fp32", "int8 + compiled", "fp32 (int8 warming up)"...

:func:`vitcore.optimize` builds a new model (the shared one is only read); compiling is paid in the
warm-up thread, never on a student's click. Before it is used, the fast model is checked against
the shared fp32 one on the sample photos (:func:`vitcore.model.optimize.fidelity`: CLS cosine >=
0.999, last-layer CLS attention r >= 0.99); when that fails, the app stays on fp32 and says why.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch

from explorer.models import LoadedModel

__all__ = ["FastPath", "env_mode", "existing", "fast_path", "status_line"]

_PATHS: dict[int, FastPath] = {}
_LOCK = threading.Lock()
_LAST: list[FastPath] = []  # the path the warm-up started last (what the sidebar reports)
# auto (default: bf16 where the CPU has native bf16 dot products, which builds in about a second and
# halves a trace's time, else off) | off | bf16 | int8 | int8+compile | compile | bf16+compile (the
# compiled ones spend minutes compiling in the warm-up thread)
ENV = "EXPLORER_FAST_PATH"


def env_mode() -> str | None:
    """The fast path the app warms up (``$EXPLORER_FAST_PATH``, default "auto"): None when off."""
    value = os.environ.get(ENV, "auto").strip().lower()
    if value in ("off", "0", "none", "fp32"):
        return None
    from vitcore.model.optimize import MODES, bf16_native

    if value in ("", "auto"):
        return "bf16" if bf16_native() else None
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r} is not one of auto, off, {', '.join(m for m in MODES if m != 'fp32')}")
    return value


def status_line() -> str:
    """One line for the sidebar: which path the traces of the default model run on."""
    if not _LAST:
        return "Traces run on fp32."
    path = _LAST[-1]
    name, size = path.loaded.label, f"{path.shape[-1]} px"
    text = f"Traces of {name if size in name else f'{name} at {size}'} run on {path.label()}"
    return text + (f": {path.detail}" if path.detail and path.state != "warming" else ".")


class FastPath:
    """The optimised twin of one loaded model and the state of its warm-up."""

    def __init__(self, loaded: LoadedModel, mode: str | None = None, size: int = 224) -> None:
        self.loaded = loaded
        self.mode = mode  # None: bf16 on a CPU with native bf16, else int8+compile where a compiler exists, else int8
        self.shape = (1, loaded.model.config.in_channels, size, size)
        self.state = "off"  # off -> warming -> ready | refused | failed
        self.model: Any = None
        self.detail = ""
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, photos: torch.Tensor | None = None, wait: bool = False) -> None:
        """Warm up in a daemon thread (once); ``photos`` (B, C, H, W) preprocessed, for the fidelity check."""
        with self._lock:
            if self._thread is None:
                self.state = "warming"
                _LAST.append(self)
                self._thread = threading.Thread(target=self._warm, args=(photos,), name="fast-path", daemon=True)
                self._thread.start()
            thread = self._thread
        if wait:
            thread.join()

    def _warm(self, photos: torch.Tensor | None) -> None:
        from vitcore.model.optimize import bf16_native, compiler_available, fidelity, optimize

        try:
            mode = self.mode or ("bf16" if bf16_native() else "int8+compile" if compiler_available() else "int8")
            fast = optimize(self.loaded.model, mode, shapes=[self.shape], trace={"qkv": True})  # trace_image's request
            if photos is not None:
                report = fidelity(self.loaded.model, fast, photos)
                if not report.passed:
                    self.model, self.state = None, "refused"
                    self.detail = (f"{fast.optimization.label()} differs too much from fp32 (CLS cosine "
                                   f"{report.cls_cosine:.4f}, attention r {report.attention_pearson:.3f})")
                    return
            self.model, self.detail, self.state = fast, fast.optimization.describe(), "ready"
        except Exception as err:  # the app keeps running on fp32
            self.model, self.state, self.detail = None, "failed", f"{type(err).__name__}: {err}"

    def model_for(self, x: torch.Tensor) -> Any:
        """The model a trace of ``x`` should run on: the fast one for its warmed-up shape, else the shared one."""
        if self.state == "ready" and tuple(x.shape) == self.shape:
            return self.model
        return self.loaded.model

    def label(self) -> str:
        """Which path traces run on, for the sidebar."""
        if self.state == "ready":
            return self.model.optimization.label()
        if self.state == "warming":
            return "fp32 (fast path warming up)"
        if self.state in ("refused", "failed"):
            return "fp32 (fast path not used)"
        return "fp32"


def fast_path(loaded: LoadedModel, mode: str | None = None) -> FastPath:
    """The process-wide :class:`FastPath` of a loaded model (created on first use, not started)."""
    with _LOCK:
        path = _PATHS.get(id(loaded.model))
        if path is None or path.loaded.model is not loaded.model:
            path = _PATHS[id(loaded.model)] = FastPath(loaded, mode)
        return path


def existing(loaded: LoadedModel) -> FastPath | None:
    """The FastPath of a loaded model if one was created, else None (nothing is built)."""
    path = _PATHS.get(id(loaded.model))
    return path if path is not None and path.loaded.model is loaded.model else None
