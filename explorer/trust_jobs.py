"""The Trust page's computations as jobs: maps, curves and the randomisation check run in a worker process.

The page submits a :class:`TrustRequest` (a model reference, the preprocessed image, the target,
the methods and the part to compute) with :func:`submit_trust`; a
:class:`explorer.worker.ProcessWork` starts ``python -m explorer.worker`` on
:func:`run_trust`, which rebuilds the model there and computes

- ``part="maps"``: every method's map (one method at a time, each published as soon as it is
  done), then the deletion and insertion curves of all maps in shared batches;
- ``part="randomization"``: the cascading randomisation check, one method at a time.

Progress is published per method (``methods``: {method: status line}) and the results as small
files of arrays (``maps``, ``curves``, ``checks``) through the worker's files; the page polls the
:class:`explorer.jobs.Job` and turns its artifacts back into arrays, :class:`FA.Curve` and
:class:`FA.RandomizationCheck` objects (:func:`maps_from`, :func:`curves_from`,
:func:`checks_from`). The web process never computes a map.

Models are passed by reference: a :class:`~explorer.specs.ModelSpec` for what the worker can
build itself (the bundled model, DINOv2, presets, torchvision / Hugging Face models), and the
path of a checkpoint file for models that exist only in the session (an upload, the model taught
on the Teach page): :func:`checkpoint_reference` writes the bytes once to
``<EXPLORER_DATA_DIR>/models/<sha256>.safetensors`` (named by their digest, so the same model is
written once) and the worker loads that file.

Trust jobs have their own :class:`explorer.jobs.JobManager` (:func:`trust_manager`), separate
from training: they do not take a training slot, do not replace a session's training job, and
at most ``EXPLORER_MAX_TRUST_JOBS`` (default 1) run at once, the rest wait in line.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explorer.jobs import Job, JobManager, atomic_write, default_data_dir
from explorer.specs import ModelSpec

__all__ = [
    "PARTS",
    "TrustRequest",
    "checkpoint_reference",
    "checks_from",
    "curves_from",
    "maps_from",
    "method_rows",
    "run_trust",
    "submit_trust",
    "trust_manager",
]

PARTS = ("maps", "randomization")
ENV_MAX_JOBS = "EXPLORER_MAX_TRUST_JOBS"


@dataclass
class TrustRequest:
    """What a trust job needs: plain data and tensors only (pickled into the job's folder)."""

    spec: ModelSpec  # the model; kinds "checkpoint" / "session" also need ``checkpoint``
    image: Any  # (1, C, H, W) float tensor: the photo through the model's preprocessing record
    target: int | str  # a class index or "similarity"
    methods: list[str]
    part: str = "maps"  # "maps" (maps, then curves) or "randomization"
    checkpoint: str | None = None  # path of the checkpoint file of a session-only model
    reference: Any = None  # (1, C, H, W) second photo for the similarity target, or None
    fill: str = "mean"
    steps: int = 8
    seed: int = 0
    labels: list[str] = field(default_factory=list)  # display only

    def settings(self) -> dict[str, Any]:
        """The JSON-able facts of the request (for the job record)."""
        return {"model": self.spec.label(), "target": self.target, "part": self.part, "fill": self.fill,
                "steps": self.steps, "methods": list(self.methods)}


def checkpoint_reference(spec: ModelSpec, data: bytes | None, root: str | Path | None = None) -> str | None:
    """The checkpoint file a worker loads for an upload or session model (written once per digest); else None."""
    if spec.kind not in ("checkpoint", "session"):
        return None
    if data is None:
        raise ValueError("this model exists only as checkpoint bytes and none were given; upload it again")
    from explorer.specs import digest

    name = digest(data)
    folder = Path(root) if root is not None else default_data_dir() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    if not path.exists() or path.stat().st_size != len(data):
        atomic_write(path, data)
    return str(path)


# ------------------------------------------------------------------------------------------ the worker side
def _load(request: TrustRequest):
    from explorer.models import build_model

    if request.spec.kind in ("checkpoint", "session"):
        if not request.checkpoint or not Path(request.checkpoint).is_file():
            raise ValueError(f"the checkpoint file of {request.spec.label()} is gone ({request.checkpoint}); "
                             "pick the model again in the sidebar")
        return build_model(request.spec, Path(request.checkpoint).read_bytes())
    return build_model(request.spec)


def _curve_arrays(curve) -> dict[str, Any]:
    return {"fractions": curve.fractions.numpy(), "probabilities": curve.probabilities.numpy(),
            "correct": curve.correct.numpy()}


def run_trust(job: Any, request: TrustRequest) -> dict[str, Any]:
    """The job's work (in the worker process): maps then curves, or the randomisation check.

    Publishes ``methods`` ({method: status}) after every method, ``maps`` ({method: (gh, gw)
    array}) as each map is done, then ``curves`` ({method: {kind: arrays}}) and ``checks``
    ({method: {stages, maps, spearman, ssim}}); returns the seconds each part took.
    """
    from explorer import trust as T

    if request.part not in PARTS:
        raise ValueError(f"part={request.part!r} must be one of {PARTS}")
    job.update(message="loading the model…", progress=0.0)
    loaded = _load(request)
    x = request.image
    goal = T.make_target(request.target, request.reference)
    methods = list(request.methods)
    status = {m: "waiting" for m in methods}
    seconds: dict[str, float] = {}
    if request.part == "maps":
        score = T.bound_target(loaded, x, goal)  # one clean forward for every method (a bad class fails here)
        maps: dict[str, np.ndarray] = {}
        shared = [m for m in methods if m in T.CAPTURE_METHODS]  # one capture serves them all
        groups = ([shared] if shared else []) + [[m] for m in methods if m not in T.CAPTURE_METHODS]
        for group in groups:
            job.check()
            for method in group:
                status[method] = "computing the map…"
            job.update(message=f"{', '.join(group)}: map ({len(maps) + 1}/{len(methods)})",
                       progress=0.5 * len(maps) / len(methods), methods=dict(status))
            start = time.perf_counter()
            maps.update(T.method_maps(loaded, x, score, group, request.fill))
            took = time.perf_counter() - start
            for method in group:
                seconds[f"map {method}"] = took / len(group)
                status[method] = f"map ✓ {took:.1f} s" + (f" (with {len(group) - 1} more)" if len(group) > 1 else "")
            job.update(progress=0.5 * len(maps) / len(methods), methods=dict(status),
                       maps={m: maps[m] for m in methods if m in maps})
        seconds["maps"] = sum(seconds.values())
        status = {m: f"{s}; curves…" for m, s in status.items()}
        job.update(message="deletion and insertion curves of every map…", methods=dict(status))

        def on_batch(done: int, total: int) -> None:
            job.check()
            job.update(progress=0.5 + 0.5 * done / total,
                       message=f"deletion and insertion curves: {done}/{total} perturbed images")

        start = time.perf_counter()
        curves = T.all_curves(loaded, x, score, maps, request.steps, request.fill, on_batch)
        seconds["curves"] = time.perf_counter() - start
        status = {m: s.replace("curves…", "curves ✓") for m, s in status.items()}
        first = next(iter(curves.values()))["deletion"]
        job.update(progress=1.0, message="done", methods=dict(status),
                   curves={m: {kind: _curve_arrays(c) for kind, c in pair.items()} for m, pair in curves.items()},
                   curve_facts={"target": first.target, "fill": first.fill})
    else:
        checks: dict[str, Any] = {}
        for i, method in enumerate(methods):
            job.check()

            def report(share: float, stage: str, i: int = i, method: str = method) -> None:
                job.check()
                status[method] = f"randomised up to {stage}"
                job.update(progress=(i + share) / len(methods), message=f"{method}: {stage}", methods=dict(status))

            start = time.perf_counter()
            check = T.method_randomization(loaded, x, goal, method, report)
            seconds[method] = time.perf_counter() - start
            status[method] = f"✓ {seconds[method]:.1f} s: {check.verdict(method)}"
            checks[method] = {"stages": list(check.stages), "target": check.target,
                              "maps": np.stack([m.numpy() for m in check.maps[method]]),
                              "spearman": [float(r) for r in check.spearman[method]],
                              "ssim": [float(r) for r in check.ssim[method]]}
            job.update(progress=(i + 1) / len(methods), methods=dict(status), checks=dict(checks))
        job.update(message="done")
    return {"seconds": seconds}


# ------------------------------------------------------------------------------------------ the web side
_MANAGER: JobManager | None = None
_MANAGER_LOCK = threading.Lock()


def trust_manager() -> JobManager:
    """The process-wide manager of trust jobs (``EXPLORER_MAX_TRUST_JOBS`` at once, default 1)."""
    global _MANAGER
    with _MANAGER_LOCK:
        if _MANAGER is None:
            raw = os.environ.get(ENV_MAX_JOBS, "").strip() or "1"
            try:
                running = int(raw)
            except ValueError:
                running = 0
            if running < 1:
                raise ValueError(f"{ENV_MAX_JOBS}={raw!r} must be a whole number of jobs, at least 1")
            _MANAGER = JobManager(max_running=running)
            import atexit

            atexit.register(_MANAGER.shutdown)
        return _MANAGER


def submit_trust(manager: JobManager, owner: str, request: TrustRequest, max_seconds: float = 1800.0) -> Job:
    """Queue a trust job; it runs ``run_trust`` in a worker process (never in the web process)."""
    from explorer.worker import ProcessWork

    if request.part not in PARTS:
        raise ValueError(f"part={request.part!r} must be one of {PARTS}")
    work = ProcessWork("explorer.trust_jobs:run_trust", request, getattr(manager, "store", None))
    return manager.submit(owner, work, max_seconds=max_seconds, settings=request.settings())


def maps_from(artifacts: dict[str, Any]) -> dict[str, np.ndarray]:
    """The maps published so far: {method: (gh, gw) float64 array}."""
    return {m: np.asarray(a, dtype=np.float64) for m, a in (artifacts.get("maps") or {}).items()}


def curves_from(artifacts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The published curves as {method: {"deletion": FA.Curve, "insertion": FA.Curve}} ({} until done)."""
    import torch

    from vitcore.explain import faithfulness as FA

    facts = artifacts.get("curve_facts") or {}
    out: dict[str, dict[str, Any]] = {}
    for method, pair in (artifacts.get("curves") or {}).items():
        out[method] = {kind: FA.Curve(kind, method, torch.as_tensor(np.asarray(c["fractions"], dtype=np.float64)),
                                      torch.as_tensor(np.asarray(c["probabilities"], dtype=np.float64)),
                                      torch.as_tensor(np.asarray(c["correct"], dtype=bool)),
                                      facts.get("target"), facts.get("fill"))
                       for kind, c in pair.items()}
    return out


def checks_from(artifacts: dict[str, Any]) -> dict[str, Any]:
    """The published randomisation checks as {method: FA.RandomizationCheck} (one method each)."""
    import torch

    from vitcore.explain import faithfulness as FA

    out = {}
    for method, c in (artifacts.get("checks") or {}).items():
        maps = np.asarray(c["maps"])
        out[method] = FA.RandomizationCheck(
            stages=list(c["stages"]), target=c["target"],
            maps={method: [torch.as_tensor(m) for m in maps]},
            spearman={method: list(c["spearman"])}, ssim={method: list(c["ssim"])})
    return out


def method_rows(snapshot: dict[str, Any]) -> list[dict[str, str]]:
    """One row per method of a job: where it stands ("waiting", "map ✓ 1.2 s; curves…", ...)."""
    return [{"method": m, "progress": str(s)} for m, s in (snapshot["artifacts"].get("methods") or {}).items()]
