"""The live fine-tune behind the Fine-tune page: data sources, the worker, the attention timeline.

:func:`run_finetune` is the work of one :class:`explorer.jobs.Job`. It runs in a background
thread, never calls Streamlit, trains a private deep copy of the chosen model and publishes
everything the page draws through the job: step and epoch metrics, the attention timeline of a
fixed probe image, the best checkpoint so far (as bytes), and at the end a confusion matrix, a
grid of validation predictions and an optional ResNet-18 baseline.
"""

from __future__ import annotations

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
from explorer.jobs import Job
from explorer.models import LoadedModel, preprocessing_from_metadata
from vitcore import VisionTransformer
from vitcore.data import DataBundle, from_image_folder, from_zip, shapes_bundle
from vitcore.train import replace_head

__all__ = [
    "FinetuneRequest",
    "allowed_data_folder",
    "check_class_names",
    "collected_bundle",
    "build_bundle",
    "checkpoint_bytes",
    "resume_request",
    "run_finetune",
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
    seed: int = 0


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


@functools.lru_cache(maxsize=4)
def _shapes(image_size: tuple[int, int], per_class: int, classes: tuple[str, ...], batch_size: int, seed: int,
            augment: bool) -> DataBundle:
    """Shapes are deterministic: render each set once per server and share it between jobs."""
    per_val = max(10, per_class // 5)
    return shapes_bundle(image_size, per_class, per_val, classes, batch_size, seed, augment=augment)


def warm_shapes(image_size: tuple[int, int] = (32, 32)) -> None:
    """Render the default Shapes set in the background so the first fine-tune starts at once."""
    global _WARMING
    with _WARM_LOCK:
        if _WARMING:
            return
        _WARMING = True
    defaults = FinetuneRequest.__dataclass_fields__
    args = (tuple(image_size), defaults["shapes_per_class"].default, defaults["shapes_classes"].default,
            defaults["batch_size"].default, 0, False)
    threading.Thread(target=_shapes, args=args, name="warm-shapes", daemon=True).start()


_WARMING = False
_WARM_LOCK = threading.Lock()


def build_bundle(request: FinetuneRequest, workdir: Path) -> DataBundle:
    """The request's data source as a DataBundle at the model's image size and normalisation."""
    size = request.loaded.image_size
    norm = (tuple(request.loaded.mean), tuple(request.loaded.std))
    if request.source == "shapes":
        if request.loaded.config.in_channels != 3:
            raise ValueError(f"the Shapes set is in colour (3 channels) but this model reads "
                             f"{request.loaded.config.in_channels}; fine-tune it on a zip, a folder or collected "
                             "images (read as grey)")
        return _shapes(tuple(size), request.shapes_per_class, tuple(request.shapes_classes), request.batch_size,
                       request.seed, request.augment)
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
    from vitcore.checkpoint import save_checkpoint

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
    from vitcore.analysis import attention_rollout
    from vitcore.capture import capture

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


def _probe_tensor(request: FinetuneRequest) -> torch.Tensor | None:
    """The probe photo as the model reads it, (1, C, H, W): the model's own preprocessing record."""
    if request.probe_image is None:
        return None
    return request.loaded.preprocessing(request.probe_image)[None]


def resume_request(previous: FinetuneRequest, checkpoint: bytes) -> FinetuneRequest:
    """The same fine-tune, continuing from a checkpoint of an earlier (stopped) run."""
    from vitcore.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    pre = preprocessing_from_metadata(meta, model.config, previous.loaded.preprocessing.normalization)
    loaded = LoadedModel(model, list(meta["class_names"]), pre, f"resumed from {previous.loaded.label}", meta)
    return replace(previous, loaded=loaded)


def run_finetune(job: Job, request: FinetuneRequest) -> dict[str, Any]:
    """The worker: build data, train a private copy, publish progress; returns the final summary.

    Temporary folders (collected images, an extracted zip) are removed when the job ends, also
    when it fails or is stopped.
    """
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    job.update(message="preparing the data…", progress=0.0)
    with tempfile.TemporaryDirectory(prefix="vit-explorer-") as tmp:  # collected images; removed at the end
        data = build_bundle(request, Path(tmp))
        try:
            return _train_and_publish(job, request, data)
        finally:
            _release(data)


def _release(data: DataBundle) -> None:
    """Remove a bundle's temporary folder (a zip's extraction) now, not whenever it is garbage collected."""
    keepalive = data._keepalive
    if isinstance(keepalive, tempfile.TemporaryDirectory):
        keepalive.cleanup()


def _train_and_publish(job: Job, request: FinetuneRequest, data: DataBundle) -> dict[str, Any]:
    from vitcore.train import fit

    job.check()
    names = list(data.class_names)
    norm = data.normalization
    model = replace_head(copy.deepcopy(request.loaded.model), len(names))
    probe_x = _probe_tensor(request)
    timeline: list[dict[str, Any]] = []
    if probe_x is not None:
        timeline.append({"epoch": 0, **probe_attention(model, probe_x, request.probe_head)})
    job.update(message=f"training ({request.strategy}) on {data.dataset_sizes['train']} images…",
               class_names=names, timeline=list(timeline))
    started = time.monotonic()
    best = {"acc": -1.0}

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "step":
            job.log({k: event[k] for k in ("step", "epoch", "loss", "accuracy", "lr", "images_per_second",
                                           "seconds")} | {"kind": "step"})
        else:
            job.log({k: v for k, v in event.items() if k != "event"} | {"kind": "epoch"})
            if probe_x is not None:
                timeline.append({"epoch": event["epoch"], **probe_attention(model, probe_x, request.probe_head)})
                job.update(timeline=list(timeline))
            if event["val_accuracy"] > best["acc"]:
                best["acc"] = event["val_accuracy"]
                job.update(best_checkpoint=_safe_checkpoint(model, names, norm, event))
        by_time = (time.monotonic() - started) / request.max_seconds
        by_epoch = (event["epoch"] - 1 + (1.0 if event["event"] == "epoch" else 0.5)) / request.epochs
        job.update(progress=min(0.99, max(by_time, by_epoch)))

    result = fit(model, data, strategy=request.strategy, last_k=request.last_k, epochs=request.epochs,
                 max_seconds=request.max_seconds, lr=request.lr, callbacks=[on_event],
                 stop=lambda: job.stop_requested, seed=request.seed, augment=request.augment)
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
                                                          "strategy": request.strategy})
    job.update(best_checkpoint=final_ckpt, message="evaluating…")
    summary["confusion"] = confusion_matrix(trained, data.dataloaders["val"], len(names))
    summary["grid"] = prediction_grid(trained, data.dataloaders["val"], norm)
    if probe_x is not None:
        summary["after"] = probe_attention(trained, probe_x, request.probe_head)
        summary["before"] = timeline[0]
    if request.baseline and not job.stop_requested:
        summary["baseline"] = _baseline(job, data, request)
    job.update(summary=summary, message=result.message or f"done: {result.stop_reason}")
    return summary


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
    result = fit(cnn, data, strategy="full", epochs=request.epochs, max_seconds=request.max_seconds,
                 stop=lambda: job.stop_requested, seed=request.seed)
    return {"best_val_accuracy": result.best_val_accuracy, "seconds": result.seconds,
            "params": sum(p.numel() for p in cnn.parameters())}
