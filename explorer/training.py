"""The live fine-tune behind the Fine-tune page: data sources, the worker, the attention timeline.

:func:`run_finetune` is the work of one :class:`explorer.jobs.Job`. :func:`submit_finetune` runs
it in a worker process (:mod:`explorer.worker`), so the web process never trains. It never calls
Streamlit, trains a private deep copy of the chosen model and publishes
everything the page draws through the job: step and epoch metrics, the attention timeline of a
fixed probe image, the best checkpoint so far (as bytes), and at the end a confusion matrix, a
grid of validation predictions and an optional ResNet-18 baseline.
"""

from __future__ import annotations

import atexit
import copy
import functools
import os
import tempfile
import threading
import time
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from explorer.images import load_image
from explorer.jobs import SHUTDOWN_REASON, Job, default_data_dir
from explorer.models import LoadedModel, preprocessing_from_metadata
from vitcore import VisionTransformer
from vitcore.data import DataBundle, from_image_folder, from_zip, shapes_bundle
from vitcore.train import FitOptions, replace_head

__all__ = [
    "FinetuneRequest",
    "allowed_data_folder",
    "check_class_names",
    "collected_bundle",
    "build_bundle",
    "checkpoint_bytes",
    "resume_request",
    "run_finetune",
    "submit_finetune",
    "shapes_cache_dir",
    "shapes_warming",
    "warm_shapes",
    "confusion_matrix",
]


@dataclass
class FinetuneRequest:
    """Everything a fine-tune needs; built by the page, consumed by the worker."""

    loaded: LoadedModel  # the starting model (shared: the worker deep-copies it)
    source: str = "shapes"  # shapes | zip | folder | collected
    shapes_classes: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
    shapes_per_class: int = 1000
    zip_bytes: bytes | None = None
    folder: str = ""
    collected: dict[str, list[bytes]] = field(default_factory=dict)
    strategy: str = "full"
    last_k: int = 2
    epochs: int = 15
    max_seconds: float = 60.0
    lr: float | None = None
    batch_size: int = 64
    augment: bool = False
    probe_image: Image.Image | None = None
    probe_head: int = 0
    baseline: bool = False
    seed: int = 0  # Shapes rendering and the baseline's own generator; training never reseeds the global RNG
    options: FitOptions | None = None  # the page builds one; None: from the fields above
    eval_limit: int = 250  # validation images evaluated after each epoch; the full split once at the end

    def fit_options(self) -> FitOptions:
        """The run's validated :class:`FitOptions` (``options``, else built from the plain fields)."""
        if self.options is not None:
            return self.options
        return FitOptions(strategy=self.strategy, last_k=self.last_k, epochs=self.epochs,
                          max_seconds=self.max_seconds, lr=self.lr, seed=None, augment=self.augment)

    def settings(self) -> dict[str, Any]:
        """The request as plain JSON (kept on disk with the job; data bytes and models are not)."""
        return {"source": self.source, "shapes_classes": list(self.shapes_classes),
                "shapes_per_class": self.shapes_per_class, "folder": self.folder, "batch_size": self.batch_size,
                "model": self.loaded.label, "options": self.fit_options().to_dict()}


def _data_root(root: str | None = None) -> Path:
    """``EXPLORER_DATA_ROOT`` resolved (or ``root``); refused when unset."""
    root = root if root is not None else os.environ.get("EXPLORER_DATA_ROOT", "")
    if not root:
        raise ValueError(
            "Reading folders on the server is off. The teacher can allow it by starting the app with "
            "EXPLORER_DATA_ROOT=/path/to/datasets."
        )
    return Path(root).resolve()


def allowed_data_folder(path: str, root: str | None = None) -> Path:
    """Resolve a server folder, allowed only inside ``EXPLORER_DATA_ROOT`` (refused otherwise).

    The folder itself is resolved (links followed) before the check; class folders and images
    that are links out of the root are refused when the data is read (``confine_to``).
    """
    base = _data_root(root)
    shown = repr(path) if len(path) <= 120 else repr(path[:119] + "…")
    try:
        target = (base / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
        is_dir = target.is_dir()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        raise ValueError(f"{shown} is not a usable folder name ({exc}); pick a folder inside {base}.") from None
    if target != base and base not in target.parents:
        raise ValueError(f"{shown} is outside the allowed data folder {base}; pick a folder inside it.")
    if not is_dir:
        raise ValueError(f"{target} is not a folder; give a folder of class folders (or with train/ and val/).")
    return target


MAX_CLASS_NAME = 60  # characters in a collected class name
MAX_COLLECTED_CLASSES = 100


def check_class_names(names: list[str]) -> list[str]:
    """Class names typed in the app, stripped; a ValueError for empty, '.'/'..', control characters,
    names over 60 characters and duplicates (ignoring case and surrounding spaces).

    Names are labels, never paths: they are kept as plain text and never used to name files.
    """
    cleaned: list[str] = []
    seen: dict[str, str] = {}
    for raw in names:
        if not isinstance(raw, str):
            raise ValueError(f"class name {raw!r} must be text, e.g. 'cat'")
        name = raw.strip()
        if not name:
            raise ValueError("a class name is empty: give every class with images a name, e.g. 'cat'")
        if set(name) == {"."}:
            raise ValueError(f"class name {name!r} is not allowed: use a word such as 'cat'")
        if any(unicodedata.category(c) == "Cc" for c in name):
            raise ValueError(f"class name {name[:20]!r} contains control characters (tabs, line breaks); "
                             "use plain text")
        if len(name) > MAX_CLASS_NAME:
            raise ValueError(f"class name {name[:20]!r}… is {len(name)} characters long; the limit is "
                             f"{MAX_CLASS_NAME}. Use a shorter name")
        key = name.casefold()
        if key in seen:
            raise ValueError(f"class names {seen[key]!r} and {name!r} are the same (ignoring case and spaces); "
                             "give each class its own name")
        seen[key] = name
        cleaned.append(name)
    return cleaned


def collected_bundle(collected: dict[str, list[bytes]] | list[tuple[str, list[bytes]]], image_size: tuple[int, int],
                     batch_size: int, normalization, augment: bool, workdir: Path) -> DataBundle:
    """Images gathered per class from the camera or uploads -> a DataBundle (split deterministically).

    ``collected`` maps class name -> image bytes (or is a list of such pairs, which keeps
    duplicate names visible). Classes without images are ignored. Images are written as
    ``workdir/collected/class_000/img_0000.png``: the names stay labels (``class_names``) and
    never become paths, so '..', '/' or '<b>' in a name cannot write anywhere else.
    """
    pairs = list(collected.items()) if isinstance(collected, dict) else list(collected)
    pairs = [(name, list(items)) for name, items in pairs if items]
    names = check_class_names([name for name, _ in pairs])
    if len(names) < 2 or any(len(items) < 2 for _, items in pairs):
        counts = ", ".join(f"{name}: {len(items)}" for name, (_, items) in zip(names, pairs)) or "nothing yet"
        raise ValueError(f"collect at least 2 classes with at least 2 images each (now {counts})")
    if len(names) > MAX_COLLECTED_CLASSES:
        raise ValueError(f"{len(names)} classes were collected; the limit is {MAX_COLLECTED_CLASSES}")
    root = workdir / "collected"
    root.mkdir(parents=True)
    for index, (name, (_, items)) in enumerate(zip(names, pairs)):
        folder = root / f"class_{index:03d}"  # sorts in label order
        folder.mkdir()
        for i, data in enumerate(items):
            try:
                image = load_image(data)
            except ValueError as exc:
                raise ValueError(f"image {i + 1} of class {name!r}: {exc}") from None
            image.save(folder / f"img_{i:04d}.png")
    bundle = from_image_folder(root, image_size, batch_size, normalization=normalization, augment=augment,
                               confine_to=root)
    bundle.class_names = names  # label i is class_{i:03d}
    return bundle


class _Render:
    """One Shapes set being rendered (in its own thread) or ready, shared by every job of the server."""

    def __init__(self, per_image: float, n: int) -> None:
        self.done = threading.Event()
        self.bundle: DataBundle | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.expected = max(0.5, per_image * n)  # seconds, from a timed sample
        self.thread: threading.Thread | None = None

    def fraction(self) -> float:
        """An estimate of how far the rendering is, in [0, 0.99] (1.0 once done)."""
        if self.done.is_set():
            return 1.0
        return min(0.99, (time.monotonic() - self.started) / self.expected)


_RENDERS: dict[tuple, _Render] = {}
_RENDER_LOCK = threading.Lock()
_KEEP_RENDERS = 4


def _shapes_key(image_size, per_class: int, classes, batch_size: int, seed: int, augment: bool) -> tuple:
    return tuple(image_size), int(per_class), tuple(classes), int(batch_size), int(seed), bool(augment)


def _render(key: tuple) -> _Render:
    """The render of ``key``: started in a thread on first request, shared afterwards (one per server)."""
    with _RENDER_LOCK:
        entry = _RENDERS.get(key)
        if entry is not None and entry.error is None:
            return entry
        image_size, per_class, classes, batch_size, seed, augment = key
        entry = _Render(_seconds_per_image(image_size), per_class * len(classes) * 6 // 5)
        _RENDERS[key] = entry
        for old in list(_RENDERS)[:-_KEEP_RENDERS]:
            if _RENDERS[old].done.is_set():
                del _RENDERS[old]

    def work() -> None:
        try:
            per_val = max(10, per_class // 5)
            entry.bundle = shapes_bundle(image_size, per_class, per_val, classes, batch_size, seed, augment=augment,
                                         cache_dir=shapes_cache_dir())
        except BaseException as exc:  # reported to the job that waits for it
            entry.error = exc
        finally:
            entry.done.set()

    entry.thread = threading.Thread(target=work, name="render-shapes", daemon=True)
    entry.thread.start()
    return entry


def shapes_cache_dir() -> Path:
    """Where rendered Shapes sets are kept between worker processes: ``<EXPLORER_DATA_DIR>/shapes``.

    Each fine-tune runs in a fresh worker process; without this folder every one of them would
    draw its set again (seconds for the default 6,000 images at 32 px).
    """
    return default_data_dir() / "shapes"


@functools.cache
def _seconds_per_image(image_size: tuple[int, int]) -> float:
    from vitcore.data.shapes import ShapesDataset

    t0 = time.perf_counter()
    ShapesDataset(10, image_size)
    return (time.perf_counter() - t0) / 10


def _shapes(image_size: tuple[int, int], per_class: int, classes: tuple[str, ...], batch_size: int, seed: int,
            augment: bool, job: Job | None = None) -> DataBundle:
    """Shapes are deterministic: render each set once per server and share it between jobs.

    While the set is still being rendered (the page warms it up when it opens) a waiting job says so,
    with an estimated fraction, and can be stopped.
    """
    entry = _render(_shapes_key(image_size, per_class, classes, batch_size, seed, augment))
    while not entry.done.wait(0.25):
        if job is not None:
            job.check()
            job.update(message="preparing the Shapes set (rendered once per server)…", warmup=entry.fraction())
    if entry.error is not None:
        raise entry.error
    if job is not None:
        job.update(warmup=1.0)
    return entry.bundle


def shapes_warming(image_size: tuple[int, int] = (32, 32)) -> float | None:
    """How far the default Shapes set of this size is rendered (None: not started, 1.0: ready)."""
    entry = _RENDERS.get(_default_shapes_key(image_size))
    return None if entry is None else entry.fraction()


def _default_shapes_key(image_size) -> tuple:
    defaults = FinetuneRequest.__dataclass_fields__
    return _shapes_key(image_size, defaults["shapes_per_class"].default, defaults["shapes_classes"].default,
                       defaults["batch_size"].default, 0, False)


def warm_shapes(image_size: tuple[int, int] = (32, 32)) -> None:
    """Render the default Shapes set in the background so the first fine-tune starts at once."""
    _render(_default_shapes_key(image_size))


def _join_renders(timeout: float = 20.0) -> None:
    """At exit: let renders finish so no thread is inside PyTorch while the interpreter ends."""
    deadline = time.monotonic() + timeout
    for entry in list(_RENDERS.values()):
        if entry.thread is not None:
            entry.thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(_join_renders)


def build_bundle(request: FinetuneRequest, workdir: Path, job: Job | None = None) -> DataBundle:
    """The request's data source as a DataBundle at the model's image size and normalisation."""
    size = request.loaded.image_size
    norm = (tuple(request.loaded.mean), tuple(request.loaded.std))
    if request.source == "shapes":
        if request.loaded.config.in_channels != 3:
            raise ValueError(f"the Shapes set is in colour (3 channels) but this model reads "
                             f"{request.loaded.config.in_channels}; fine-tune it on a zip, a folder or collected "
                             "images (read as grey)")
        return _shapes(tuple(size), request.shapes_per_class, tuple(request.shapes_classes), request.batch_size,
                       request.seed, request.augment, job)
    if request.source == "zip":
        if not request.zip_bytes:
            raise ValueError("upload a .zip of class folders first")
        return from_zip(request.zip_bytes, size, request.batch_size, normalization=norm, augment=request.augment)
    if request.source == "folder":
        folder = allowed_data_folder(request.folder)
        return from_image_folder(folder, size, request.batch_size, normalization=norm, augment=request.augment,
                                 confine_to=_data_root())
    if request.source == "collected":
        return collected_bundle(request.collected, size, request.batch_size, norm, request.augment, workdir)
    raise ValueError(f"unknown data source {request.source!r}; use shapes, zip, folder or collected")


def checkpoint_bytes(model: torch.nn.Module, class_names: list[str], normalization, extra: dict | None = None) -> bytes:
    """A checkpoint (.safetensors with config and metadata) as bytes for a download button."""
    from vitcore.io.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_checkpoint(model, path, class_names=class_names, normalization=normalization, extra=extra or {})
        return path.read_bytes()


@torch.no_grad()
def confusion_matrix(model: torch.nn.Module, loader, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) over a loader, (C, C)."""
    model.eval()
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for images, labels in loader:
        preds = model(images).argmax(-1)
        np.add.at(matrix, (labels.numpy(), preds.numpy()), 1)
    return matrix


def _denormalize(x: torch.Tensor, normalization) -> np.ndarray:
    """(C, H, W) normalised -> (H, W, 3) uint8 (a grey image is repeated over RGB)."""
    mean, std = (torch.tensor(v, dtype=x.dtype).view(-1, 1, 1) for v in normalization)
    pixels = (x * std + mean).clamp(0, 1).expand(3, -1, -1) if x.shape[0] == 1 else (x * std + mean).clamp(0, 1)
    return (pixels.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


@torch.no_grad()
def prediction_grid(model: torch.nn.Module, loader, normalization, limit: int = 16) -> list[dict[str, Any]]:
    """The tutorial's ``visualize_model``: validation images with predicted and true labels."""
    model.eval()
    out: list[dict[str, Any]] = []
    for images, labels in loader:
        preds = model(images).argmax(-1)
        for x, y, p in zip(images, labels, preds):
            out.append({"image": _denormalize(x, normalization), "true": int(y), "pred": int(p)})
            if len(out) >= limit:
                return out
    return out


@torch.no_grad()
def probe_attention(model: VisionTransformer, x: torch.Tensor, head: int) -> dict[str, Any]:
    """Rollout and one last-layer head's CLS attention of the probe image, plus its prediction."""
    from vitcore.inspect.analysis import attention_rollout
    from vitcore.inspect.capture import capture

    was_training = model.training
    try:
        trace = capture(model, x)
    finally:
        model.train(was_training)
    prefix = trace.num_prefix_tokens
    rollout = attention_rollout(trace.attention, grid=trace.grid, num_prefix_tokens=prefix)[0]
    head = min(head, trace.attention.shape[2] - 1)
    cls_head = trace.attention[-1, 0, head, 0, prefix:].reshape(trace.grid)
    return {"rollout": rollout.numpy(), "head": cls_head.float().numpy(),
            "probs": trace.logits[0].softmax(-1).numpy()}


def resume_request(previous: FinetuneRequest, checkpoint: bytes) -> FinetuneRequest:
    """The same fine-tune, continuing from a checkpoint of an earlier (stopped) run."""
    from vitcore.io.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    pre = preprocessing_from_metadata(meta, model.config, previous.loaded.preprocessing.normalization)
    loaded = LoadedModel(model, list(meta["class_names"]), pre, f"resumed from {previous.loaded.label}", meta)
    return replace(previous, loaded=loaded)


def run_finetune(job: Job, request: FinetuneRequest) -> dict[str, Any]:
    """The worker: build data, train a private copy, publish progress; returns the final summary.

    Temporary folders (collected images, an extracted zip) are removed when the job ends, also
    when it fails or is stopped.
    """
    options = request.fit_options()  # invalid settings fail the job with FitOptions' message
    job.update(message="preparing the data…", progress=0.0)
    with tempfile.TemporaryDirectory(prefix="vit-explorer-") as tmp:  # collected images; removed at the end
        data = build_bundle(request, Path(tmp), job)
        try:
            return _train_and_publish(job, request, options, data)
        finally:
            _release(data)


def submit_finetune(manager: Any, owner: str, request: FinetuneRequest, *, code: str | None = None,
                    max_seconds: float | None = None) -> Job:
    """Queue ``run_finetune(job, request)`` in a worker process (what the Start button does).

    The job may run for three times its training budget plus two minutes (data, evaluation,
    baseline) unless ``max_seconds`` says otherwise; with a session ``code`` it is kept on disk.
    """
    from explorer.worker import ProcessWork

    if max_seconds is None:
        max_seconds = (request.fit_options().max_seconds or 600.0) * 3 + 120
    work = ProcessWork("explorer.training:run_finetune", request, getattr(manager, "store", None))
    return manager.submit(owner, work, max_seconds=max_seconds, code=code, settings=request.settings())


def _release(data: DataBundle) -> None:
    """Remove a bundle's temporary folder (a zip's extraction) now, not whenever it is garbage collected."""
    keepalive = data.keepalive
    if isinstance(keepalive, tempfile.TemporaryDirectory):
        keepalive.cleanup()


def _bounded_val(data: DataBundle, limit: int) -> DataBundle:
    """The bundle with at most ``limit`` validation images (evenly spaced, so every class stays in),
    evaluated after each epoch; the full split is evaluated once when training ends."""
    datasets = data.datasets or {split: loader.dataset for split, loader in data.dataloaders.items()}
    val = datasets["val"]
    if len(val) <= limit:
        return data
    stride = len(val) / limit
    subset = torch.utils.data.Subset(val, [int(i * stride) for i in range(limit)])
    return replace(data, datasets={**datasets, "val": subset})


@torch.no_grad()
def final_evaluation(model: torch.nn.Module, loader, num_classes: int, normalization,
                     limit: int = 16) -> dict[str, Any]:
    """One pass over the validation split: confusion matrix, accuracy and a grid of predictions."""
    model.eval()
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    grid: list[dict[str, Any]] = []
    for images, labels in loader:
        preds = model(images).argmax(-1)
        np.add.at(matrix, (labels.numpy(), preds.numpy()), 1)
        for x, y, p in zip(images, labels, preds):
            if len(grid) < limit:
                grid.append({"image": _denormalize(x, normalization), "true": int(y), "pred": int(p)})
    total = int(matrix.sum())
    return {"confusion": matrix, "grid": grid, "val_accuracy": float(np.trace(matrix)) / max(total, 1)}


def _probe(request: FinetuneRequest, data: DataBundle) -> tuple[torch.Tensor, np.ndarray]:
    """The probe image, as the model reads it (1, C, H, W) and as shown (H, W, 3) uint8.

    A photo given with the request is used as it is; otherwise the first validation image of the
    run's own data (a Shapes run probes a Shapes image).
    """
    if request.probe_image is not None:
        x = request.loaded.preprocessing(request.probe_image)[None]
        return x, np.asarray(request.loaded.preprocessing.fit_image(request.probe_image).convert("RGB"))
    datasets = data.datasets or {split: loader.dataset for split, loader in data.dataloaders.items()}
    x, _ = datasets["val"][0]
    return x[None], _denormalize(x, data.normalization)


def _train_and_publish(job: Job, request: FinetuneRequest, options: FitOptions, data: DataBundle) -> dict[str, Any]:
    from vitcore.train import fit

    job.check()
    names = list(data.class_names)
    norm = data.normalization
    model = replace_head(copy.deepcopy(request.loaded.model), len(names))
    probe_x, probe_image = _probe(request, data)
    timeline: list[dict[str, Any]] = [{"epoch": 0, **probe_attention(model, probe_x, request.probe_head)}]
    job.update(message=f"training ({options.strategy}) on {data.dataset_sizes['train']} images…",
               class_names=names, timeline=list(timeline), probe=probe_image,
               budget=options.max_seconds, train_started=_job_elapsed(job))
    started = time.monotonic()
    best = {"acc": -1.0}
    logged = {"epochs": 0}
    max_seconds = options.max_seconds or float("inf")

    def on_epoch(event: dict[str, Any]) -> None:
        job.log({k: v for k, v in event.items() if k != "event"} | {"kind": "epoch"})
        logged["epochs"] += 1
        timeline.append({"epoch": event["epoch"], **probe_attention(model, probe_x, request.probe_head)})
        job.update(timeline=list(timeline))
        if event["val_accuracy"] > best["acc"]:
            best["acc"] = event["val_accuracy"]
            job.update(best_checkpoint=_safe_checkpoint(model, names, norm, event))

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "step":
            job.log({k: event[k] for k in ("step", "epoch", "loss", "accuracy", "lr", "images_per_second",
                                           "seconds")} | {"kind": "step"})
        else:
            on_epoch(event)
        by_time = (time.monotonic() - started) / max_seconds
        by_epoch = (event["epoch"] - 1 + (1.0 if event["event"] == "epoch" else 0.5)) / options.epochs
        job.update(progress=min(0.99, max(by_time, by_epoch)))

    result = fit(model, _bounded_val(data, request.eval_limit), options, callbacks=[on_event],
                 stop=lambda: job.stop_requested)
    for event in result.history[logged["epochs"]:]:  # a partial epoch evaluated after a stop: no callback ran
        on_epoch(event)
    stop_note = job.message if job.stop_requested else ""  # why it was stopped ("stopped by the user", ...)
    trained = result.model
    summary: dict[str, Any] = {
        "stop_reason": result.stop_reason,
        "message": result.message,
        "best_val_accuracy": result.best_val_accuracy,
        "seconds": result.seconds,
        "images_per_second": result.images_per_second,
        "trainable_params": result.trainable_params,
    }
    final_ckpt = checkpoint_bytes(trained, names, norm, {"val_accuracy": result.best_val_accuracy,
                                                          "strategy": options.strategy})
    job.update(best_checkpoint=final_ckpt)
    if job.message == SHUTDOWN_REASON:  # the server is going down: the checkpoint is what matters
        job.update(summary=summary)
        return summary
    job.update(message="evaluating on the full validation split…")
    t0 = time.monotonic()
    datasets = data.datasets or {split: loader.dataset for split, loader in data.dataloaders.items()}
    val_loader = torch.utils.data.DataLoader(datasets["val"], batch_size=max(64, data.batch_size), shuffle=False)
    summary.update(final_evaluation(trained, val_loader, len(names), norm))
    summary["after"] = probe_attention(trained, probe_x, request.probe_head)
    summary["before"] = timeline[0]
    summary["evaluation_seconds"] = time.monotonic() - t0
    if request.baseline and not job.stop_requested:
        summary["baseline"] = _baseline(job, data, request)
    final = result.message or f"done: {result.stop_reason}"
    job.update(summary=summary, message=f"{stop_note}: {final}" if stop_note else final)
    return summary


def _job_elapsed(job: Job) -> float:
    """Seconds since the job started (0 before)."""
    return time.monotonic() - job.started if job.started else 0.0


def _safe_checkpoint(model, names, norm, event) -> bytes | None:
    """Checkpoint bytes of the current weights; None while LoRA adapters are still unmerged
    (the final, merged checkpoint is written when the run ends, also when it is stopped)."""
    if any(type(m).__module__.startswith("peft") for m in model.modules()):
        return None
    return checkpoint_bytes(model, names, norm, {"val_accuracy": event["val_accuracy"], "epoch": event["epoch"]})


def _seeded_resnet_init(cnn: torch.nn.Module, seed: int) -> None:
    """torchvision's ResNet initialisation drawn from a private generator: the same weights for the
    same seed, without reseeding the global RNG that other sessions' threads are using."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in cnn.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(module, torch.nn.Linear):  # nn.Linear's own default, with our generator
                torch.nn.init.kaiming_uniform_(module.weight, a=5**0.5, generator=generator)
                bound = 1 / module.in_features**0.5
                torch.nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def _baseline(job: Job, data: DataBundle, request: FinetuneRequest) -> dict[str, Any]:
    """The same budget on a torchvision ResNet-18 (random init): the inductive-bias comparison."""
    from torchvision.models import resnet18

    from vitcore.train import fit

    job.update(message="training the ResNet-18 baseline…")
    cnn = resnet18(num_classes=len(data.class_names))
    _seeded_resnet_init(cnn, request.seed)
    options = request.fit_options()
    result = fit(cnn, _bounded_val(data, request.eval_limit), strategy="full", epochs=options.epochs,
                 max_seconds=options.max_seconds, stop=lambda: job.stop_requested, seed=options.seed)
    return {"best_val_accuracy": result.best_val_accuracy, "seconds": result.seconds,
            "params": sum(p.numel() for p in cnn.parameters())}


# --------------------------------------------------------------------------- the page's logic (no Streamlit)
def session_code(state: Any, params: Any) -> str | None:
    """This browser session's code: kept in session state, else read (strictly checked) from the URL."""
    from explorer import state as S
    from explorer.jobs import check_code

    code = check_code(state.get(S.SESSION_CODE))
    if code is None:
        raw = params.get("code") if hasattr(params, "get") else None
        code = check_code(raw[-1] if isinstance(raw, list) and raw else raw)
        if code is not None:
            state[S.SESSION_CODE] = code
    return code


def restore_session(state: Any, store: Any, code: str | None) -> None:
    """After a reload or a restart: the session's fine-tuned models come back from the data directory."""
    from explorer import state as S

    if code is None or store is None or state.get(S.SESSION_RESTORED) == code:
        return
    models = dict(state.get(S.SESSION_MODELS) or {})
    for name, data in store.models(code).items():
        models.setdefault(name, data)
    state[S.SESSION_MODELS] = models
    state[S.SESSION_RESTORED] = code


def use_session_model(state: Any, store: Any, code: str | None, name: str, data: bytes) -> None:
    """Make a fine-tuned checkpoint the model of every page (sidebar included) and keep it on disk."""
    from explorer import state as S

    models = dict(state.get(S.SESSION_MODELS) or {})
    models[name] = data
    state[S.SESSION_MODELS] = models
    state[S.SESSION_MODEL_NAME] = name
    state[S.MODEL_KIND] = "session"
    if store is not None and code is not None:
        store.add_model(code, name, data)


def request_from_record(record: dict[str, Any], loaded: LoadedModel) -> FinetuneRequest:
    """A request rebuilt from a job record on disk (after a restart), on ``loaded``'s weights.

    Only Shapes and server folders can be read again; zips and collected images were not kept.
    """
    settings = record.get("settings") or {}
    source = settings.get("source", "shapes")
    if source not in ("shapes", "folder"):
        raise ValueError("this job trained on uploaded images, which were not kept: upload them again and press "
                         "Start (or use the checkpoint as it is)")
    options = FitOptions.build(None, **(settings.get("options") or {}))
    return FinetuneRequest(loaded=loaded, source=source, shapes_classes=tuple(settings.get("shapes_classes") or
                                                                              FinetuneRequest.shapes_classes),
                           shapes_per_class=int(settings.get("shapes_per_class", 1000)),
                           folder=str(settings.get("folder", "")), batch_size=int(settings.get("batch_size", 64)),
                           options=options)


def time_left(snap: dict[str, Any]) -> float | None:
    """Seconds of training left: never more than the budget, None before training starts."""
    artifacts = snap.get("artifacts", {})
    budget = artifacts.get("budget")
    if budget is None or "train_started" not in artifacts or snap.get("status") != "running":
        return None
    by_budget = budget - (snap["elapsed"] - artifacts["train_started"])
    left = min(by_budget, snap["eta"]) if snap.get("eta") is not None else by_budget
    return float(min(budget, max(0.0, left)))


def last_val_accuracy(history: list[dict[str, Any]]) -> float | None:
    """The last measured validation accuracy (also of a partial epoch evaluated after a stop)."""
    epochs = [h for h in history if h.get("kind") == "epoch"]
    return float(epochs[-1]["val_accuracy"]) if epochs else None
