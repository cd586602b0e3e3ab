"""Teach the real ViT your classes: the logic behind the "Teach it your classes" page (no Streamlit).

A session collects 2-6 named classes of photos (:class:`ClassCollection`), a job of the shared
queue computes the frozen DINOv2 features of every photo once and trains a linear head on them
(:func:`run_teach`; optionally a deeper fine-tune: last k blocks, LoRA, full), and the page then
predicts new photos with the taught model and explains them (:func:`explain`): the class-specific
gradient rollout and occlusion map of the taught model next to the backbone's class-agnostic
last-layer CLS attention.

Isolation: the collection, the request and the result belong to one session; the shared backbone
is only read. Class names are labels, kept as plain text: never file names, never markdown/HTML
(:func:`plain_label` escapes them for plotly, which renders a subset of HTML).
"""

from __future__ import annotations

import copy
import html
import io
import itertools
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from explorer.images import ImageError, load_image
from explorer.jobs import Job
from explorer.texts import page_name
from explorer.training import MAX_CLASS_NAME, allowed_data_folder, check_class_names
from vitcore import VisionTransformer
from vitcore.data.images import Preprocessing
from vitcore.train.fewshot import attach_head, extract_features, train_linear_head, with_views

__all__ = [
    "AUGMENT_BELOW",
    "MAX_CLASSES",
    "MAX_IMAGES_PER_CLASS",
    "MIN_CLASSES",
    "MIN_IMAGES",
    "STRATEGIES",
    "TEACH_SIDE",
    "ClassCollection",
    "TeachClass",
    "TeachRequest",
    "checkpoint_bytes",
    "explain",
    "plain_label",
    "run_teach",
    "share_unchanged",
    "split_indices",
    "submit_teach",
    "take_result",
    "taught_model",
]

MIN_CLASSES, MAX_CLASSES = 2, 6
MIN_IMAGES = 5  # per class, before Start
MAX_IMAGES_PER_CLASS = 60  # more are refused with a message (memory stays bounded)
TEACH_SIDE = 448  # collected photos are decoded to at most this long side (DINOv2 reads 224)
THUMB_SIDE = 96
AUGMENT_BELOW = 10  # with fewer photos in a class, each training photo also counts flipped and cropped
STRATEGIES = {
    "linear": "linear head on frozen features (seconds)",
    "last_k": "last k blocks + head (minutes)",
    "lora": "LoRA adapters + head, through peft (minutes)",
    "full": "every weight (slowest)",
}


_CLASS_IDS = itertools.count(1)


def plain_label(name: str) -> str:
    """A class name for plotly text, which renders some HTML: '<b>' is shown as typed, not bold."""
    return html.escape(str(name), quote=False)


# --------------------------------------------------------------------------- collecting
@dataclass
class CollectedImage:
    """One collected photo at working size and its thumbnail."""

    image: Image.Image  # RGB, long side <= TEACH_SIDE
    thumb: Image.Image  # RGB, long side <= THUMB_SIDE
    source: str  # file name or "camera"


@dataclass
class TeachClass:
    """A class being collected: its name as typed and its photos by key (upload id or camera shot)."""

    name: str = ""
    images: dict[str, CollectedImage] = field(default_factory=dict)
    uid: int = field(default_factory=lambda: next(_CLASS_IDS))  # stable id for widget keys
    removed: set[str] = field(default_factory=set)  # keys deleted by the user: an upload is not re-added


class ClassCollection:
    """2-6 classes of photos collected by one session (held in its session state, never shared)."""

    def __init__(self, num_classes: int = 2) -> None:
        self.classes: list[TeachClass] = [TeachClass() for _ in range(max(MIN_CLASSES, min(num_classes, MAX_CLASSES)))]

    # ---- classes ------------------------------------------------------------------------
    def add_class(self) -> str | None:
        """Add an empty class; a message when the limit is reached."""
        if len(self.classes) >= MAX_CLASSES:
            return f"At most {MAX_CLASSES} classes can be taught at once."
        self.classes.append(TeachClass())
        return None

    def index_of(self, uid: int) -> int | None:
        """Position of the class with this id (None once it was removed)."""
        return next((i for i, c in enumerate(self.classes) if c.uid == uid), None)

    def remove_class(self, index: int) -> str | None:
        """Remove class ``index``; a message when only the minimum is left."""
        if len(self.classes) <= MIN_CLASSES:
            return f"Keep at least {MIN_CLASSES} classes (clear the name and photos instead)."
        del self.classes[index]
        return None

    def rename(self, index: int, name: str) -> None:
        """Set the name as typed (it is checked when training starts)."""
        self.classes[index].name = str(name)[: MAX_CLASS_NAME * 4]

    # ---- photos ---------------------------------------------------------------------------
    def add(self, index: int, key: str, data: bytes, source: str = "upload") -> str | None:
        """Decode one photo into class ``index``; returns a message instead of raising for bad input.

        The photo is decoded at a bounded size (JPEG draft mode, then at most :data:`TEACH_SIDE`),
        so a 20 MB photo costs a few MB. Keys already present or deleted by the user are skipped.
        """
        cls = self.classes[index]
        if key in cls.images or key in cls.removed:
            return None
        shown = source if len(source) <= 60 else source[:57] + "…"
        if len(cls.images) >= MAX_IMAGES_PER_CLASS:
            return (f"{shown}: class {index + 1} already has {MAX_IMAGES_PER_CLASS} photos, the most it keeps; "
                    "delete some to add others.")
        try:
            image = load_image(data, max_side=TEACH_SIDE)
        except (ImageError, ValueError) as exc:
            return f"{shown}: {exc}"
        image.thumbnail((TEACH_SIDE, TEACH_SIDE), Image.Resampling.LANCZOS)
        thumb = ImageOps.fit(image, (THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
        cls.images[key] = CollectedImage(image, thumb, source)
        return None

    def wants(self, index: int, key: str) -> bool:
        """Whether a photo with this key would be added (new, not deleted): read an upload's bytes only then."""
        cls = self.classes[index]
        return key not in cls.images and key not in cls.removed

    def add_many(self, index: int, items: list[tuple[str, str, Any]]) -> list[str]:
        """Add (key, file name, bytes or a function returning them) items; messages for those refused.

        Photos over the per-class limit are counted in one message; their bytes are not read.
        """
        messages, over = [], 0
        for key, name, data in items:
            if not self.wants(index, key):
                continue
            if len(self.classes[index].images) >= MAX_IMAGES_PER_CLASS:
                over += 1
                self.classes[index].removed.add(key)  # not offered again on the next run
                continue
            message = self.add(index, key, data() if callable(data) else data, name)
            if message:
                messages.append(message)
        if over:
            messages.append(f"{over} photo(s) were not added to class {index + 1}: it keeps at most "
                            f"{MAX_IMAGES_PER_CLASS} photos. Delete some to make room, or upload fewer.")
        return messages

    def remove(self, index: int, key: str) -> None:
        """Delete one photo (it is not re-added from the uploader)."""
        self.classes[index].images.pop(key, None)
        self.classes[index].removed.add(key)

    def counts(self) -> list[int]:
        """Photos per class."""
        return [len(c.images) for c in self.classes]

    def check(self) -> list[str]:
        """The cleaned class names when the collection can be trained; a ValueError saying what is missing."""
        used = [c for c in self.classes if c.name.strip() or c.images]
        if len(used) < MIN_CLASSES:
            raise ValueError(f"Teach at least {MIN_CLASSES} classes: name them and add at least {MIN_IMAGES} "
                             f"photos to each (now {len(used)}).")
        if len(used) > MAX_CLASSES:
            raise ValueError(f"At most {MAX_CLASSES} classes can be taught at once (now {len(used)}).")
        names = check_class_names([c.name for c in used])
        short = [f"{name!r}: {len(c.images)}" for name, c in zip(names, used) if len(c.images) < MIN_IMAGES]
        if short:
            raise ValueError(f"Every class needs at least {MIN_IMAGES} photos before Start; add more to "
                             + ", ".join(short) + ".")
        return names

    def request_data(self) -> tuple[list[str], list[list[Image.Image]]]:
        """(names, photos per class) of a valid collection; the photos are this session's own objects."""
        names = self.check()
        used = [c for c in self.classes if c.name.strip() or c.images]
        return names, [[item.image for item in c.images.values()] for c in used]

    # ---- other sources ----------------------------------------------------------------------
    @classmethod
    def from_bundle_samples(cls, class_names: list[str], samples: list[tuple[Path, int]]) -> tuple[
            ClassCollection, list[str]]:
        """A collection from (path, label) samples of a zip or server folder (at most the per-class limit)."""
        if len(class_names) > MAX_CLASSES:
            raise ValueError(f"the data has {len(class_names)} classes; this page teaches at most {MAX_CLASSES}")
        out = cls(len(class_names))
        messages = []
        for i, name in enumerate(class_names):
            out.rename(i, name)
        for path, label in samples:
            message = out.add(label, f"file:{path.name}:{label}", path.read_bytes(), path.name)
            if message and message not in messages:
                messages.append(message)
        return out, messages


def collection_from_zip(data: bytes) -> tuple[ClassCollection, list[str]]:
    """A zip of class folders (read with vitcore.data's safe zip reader) as a collection + messages."""
    from vitcore.data import from_zip

    bundle = from_zip(data, 32, 8)
    try:
        return ClassCollection.from_bundle_samples(list(bundle.class_names), _bundle_samples(bundle))
    finally:
        keep = bundle.keepalive
        if isinstance(keep, tempfile.TemporaryDirectory):
            keep.cleanup()


def collection_from_folder(folder: str) -> tuple[ClassCollection, list[str]]:
    """A server folder of class folders under ``EXPLORER_DATA_ROOT`` as a collection + messages."""
    from vitcore.data import from_image_folder

    path = allowed_data_folder(folder)
    bundle = from_image_folder(path, 32, 8, confine_to=path)  # links out of the chosen folder are refused
    return ClassCollection.from_bundle_samples(list(bundle.class_names), _bundle_samples(bundle))


def _bundle_samples(bundle: Any) -> list[tuple[Path, int]]:
    samples = []
    for split in ("train_plain", "val"):
        samples += list(getattr(bundle.datasets.get(split), "samples", []))
    return sorted(samples, key=lambda s: (s[1], str(s[0])))


# --------------------------------------------------------------------------- training
@dataclass
class TeachRequest:
    """What a teach job needs; built by the page from this session's collection."""

    backbone: VisionTransformer | None  # the app's shared backbone: only read (None: load ``backbone_spec``)
    preprocessing: Preprocessing  # the backbone's record (saved with the taught model)
    class_names: list[str]
    images: list[list[Image.Image]]  # photos per class
    strategy: str = "linear"
    last_k: int = 2
    epochs: int = 8
    augment: bool | None = None  # None: when a class has fewer than AUGMENT_BELOW photos
    val_fraction: float = 0.2
    batch_size: int = 16
    weight_decay: float = 1e-3
    seed: int = 0
    backbone_spec: Any = None  # the backbone's explorer.models.ModelSpec: the worker loads it (no 88 MB copy)

    def for_worker(self) -> TeachRequest:
        """The request a worker process gets: with a ``backbone_spec``, the backbone is left out and the
        worker loads its own from the spec (DINOv2 loads in well under a second, and pickling 88 MB of
        weights into the job's folder would stall the web process and its students for as long)."""
        if self.backbone_spec is None:
            return self
        return replace(self, backbone=None)

    def resolved(self) -> TeachRequest:
        """The request with its backbone (loaded from ``backbone_spec`` when it was left out)."""
        if self.backbone is not None:
            return self
        if self.backbone_spec is None:
            raise ValueError("a teach request needs a backbone model or a backbone_spec to load it from")
        from explorer.models import build_model

        return replace(self, backbone=build_model(self.backbone_spec).model)


def split_indices(counts: list[int], val_fraction: float, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Per class: (train indices, val indices), val = round(fraction · n) but at least 1, seeded."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for n in counts:
        order = torch.randperm(n, generator=generator).tolist()
        k = min(n - 1, max(1, round(n * val_fraction)))
        val.append(sorted(order[:k]))
        train.append(sorted(order[k:]))
    return train, val


def _thumb(image: Image.Image) -> np.ndarray:
    return np.asarray(ImageOps.fit(image, (THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR).convert("RGB"))


def run_teach(job: Job, request: TeachRequest) -> dict[str, Any]:
    """The job's work: features (progress counts images) -> head (-> optional fine-tune) -> evaluation.

    Publishes ``summary`` (val accuracy, confusion matrix, misclassified thumbnails, timings),
    ``head`` (its weight and bias tensors) and, for the deeper strategies, ``model`` (the
    fine-tuned copy as checkpoint bytes) through the job's artifacts; returns the summary. It runs
    in a worker process (:func:`submit_teach`): only these plain values reach the web process.
    """
    if request.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {request.strategy!r}; choose one of {list(STRATEGIES)}")
    request = request.resolved()
    started = time.perf_counter()
    names = list(request.class_names)
    counts = [len(images) for images in request.images]
    train_ids, val_ids = split_indices(counts, request.val_fraction, request.seed)
    train_images = [request.images[c][i] for c in range(len(names)) for i in train_ids[c]]
    train_labels = [c for c in range(len(names)) for _ in train_ids[c]]
    val_images = [request.images[c][i] for c in range(len(names)) for i in val_ids[c]]
    val_labels = [c for c in range(len(names)) for _ in val_ids[c]]
    augment = request.augment if request.augment is not None else min(counts) < AUGMENT_BELOW
    views = ("flip", "crop") if augment else ()  # each view costs one more backbone pass per photo
    train_all, labels_all = with_views(train_images, train_labels, views)
    inputs = train_all + val_images
    feature_share = 0.85 if request.strategy == "linear" else 0.3

    def on_progress(done: int, total: int) -> None:
        job.check()
        job.update(progress=feature_share * done / total, message=f"computing features: {done}/{total} images")

    job.update(message=f"computing features of {len(inputs)} images…", class_names=names)
    features = extract_features(request.backbone, inputs, request.preprocessing, request.batch_size, on_progress)
    feature_seconds = time.perf_counter() - started
    job.check()
    job.update(message="training the linear head…", progress=feature_share)
    n_train = len(train_all)
    fitted = train_linear_head(features[:n_train], labels_all, len(names), weight_decay=request.weight_decay)
    head_seconds = time.perf_counter() - started - feature_seconds
    val_features = features[n_train:]
    model = None
    if request.strategy != "linear":
        model = _finetune(job, request, fitted.head, train_all, labels_all, val_images, val_labels, feature_share)
        with torch.no_grad():
            val_logits = model(request.preprocessing.batch(val_images))  # (V, C)
    else:
        with torch.no_grad():
            val_logits = fitted.head(val_features)  # (V, C)
    preds = val_logits.argmax(-1).tolist()
    C = len(names)
    confusion = np.zeros((C, C), dtype=np.int64)
    np.add.at(confusion, (np.asarray(val_labels, dtype=int), np.asarray(preds, dtype=int)), 1)
    mistakes = [{"image": _thumb(img), "true": t, "pred": p}
                for img, t, p in zip(val_images, val_labels, preds) if t != p]
    summary = {
        "class_names": names,
        "strategy": request.strategy,
        "val_accuracy": float(np.trace(confusion) / max(1, confusion.sum())),
        "confusion": confusion,
        "mistakes": mistakes,
        "train_images": len(train_images),
        "train_features": n_train,
        "val_images": len(val_images),
        "augmented": bool(views),
        "train_accuracy": fitted.train_accuracy,
        "feature_seconds": feature_seconds,
        "head_seconds": head_seconds,
        "seconds": time.perf_counter() - started,
    }
    head = {"weight": fitted.head.weight.detach(), "bias": fitted.head.bias.detach()}  # (C, 2D), (C,): small
    model_bytes = checkpoint_bytes(model, names, request.preprocessing) if model is not None else None
    job.update(summary=summary, head=head, model=model_bytes, progress=1.0,
               message=f"validation accuracy {summary['val_accuracy']:.0%} in {summary['seconds']:.1f} s")
    return summary


def _finetune(job: Job, request: TeachRequest, head: nn.Linear, train_images: list[Image.Image],
              train_labels: list[int], val_images: list[Image.Image], val_labels: list[int],
              share: float) -> VisionTransformer:
    """Deeper strategies: start from backbone + probe head (a copy) and fine-tune with vitcore's fit."""
    from torch.utils.data import TensorDataset

    from vitcore.data import DataBundle
    from vitcore.train import fit

    model = attach_head(request.backbone, head, request.class_names)  # a private copy
    pre = request.preprocessing
    train = TensorDataset(pre.batch(train_images), torch.tensor(train_labels))
    val = TensorDataset(pre.batch(val_images), torch.tensor(val_labels))
    loaders = {"train": torch.utils.data.DataLoader(train, batch_size=request.batch_size, shuffle=True),
               "val": torch.utils.data.DataLoader(val, batch_size=request.batch_size)}
    data = DataBundle(dataloaders=loaders, class_names=list(request.class_names),
                      dataset_sizes={"train": len(train), "val": len(val)}, preprocessing=pre,
                      datasets={"train": train, "val": val, "train_plain": train},
                      batch_size=request.batch_size, augment=False)

    def on_event(event: dict[str, Any]) -> None:
        job.update(progress=share + (1 - share) * 0.95 * event["epoch"] / request.epochs,
                   message=f"fine-tuning ({request.strategy}): epoch {event['epoch']}/{request.epochs}, "
                           f"loss {event.get('loss', float('nan')):.3f}")

    result = fit(model, data, strategy=request.strategy, last_k=request.last_k, epochs=request.epochs,
                 lr=None, callbacks=[on_event], stop=lambda: job.stop_requested, seed=None, augment=False)
    job.check()
    return result.model.eval()


# --------------------------------------------------------------------------- the taught model
def taught_model(backbone: VisionTransformer, head: nn.Linear, class_names: list[str]) -> VisionTransformer:
    """Backbone + head as one model that *shares* the backbone's tensors: no copy of its weights.

    The model is a :class:`VisionTransformer` of its own (``pool="cls+mean"``, its own modules,
    mode and head) whose encoder parameters are views of the shared backbone's storage, frozen
    (``requires_grad=False``). Nothing is written to them: the web process only predicts and
    explains (``torch.autograd.grad`` with respect to attention maps), so 30 taught sessions cost
    30 heads, not 30 backbones. Its forward equals :func:`vitcore.attach_head`'s copy.
    """
    if not isinstance(head, nn.Linear) or head.in_features != 2 * backbone.config.dim:
        raise ValueError(f"the head must be an nn.Linear reading [CLS ; mean patch] = {2 * backbone.config.dim} "
                         "features of this backbone")
    if len(class_names) != head.out_features:
        raise ValueError(f"{len(class_names)} class names for a head with {head.out_features} outputs")
    config = backbone.config.replace(num_classes=head.out_features, pool="cls+mean", distilled_head=False)
    with torch.device("meta"):  # shapes only: every tensor is assigned below
        model = VisionTransformer(config)
    param = next(backbone.parameters())
    state = {k: v.detach() for k, v in backbone.state_dict().items() if not k.startswith(("head.", "head_dist."))}
    state["head.weight"] = head.weight.detach().to(param.device, param.dtype).clone()
    state["head.bias"] = head.bias.detach().to(param.device, param.dtype).clone()
    model.load_state_dict(state, assign=True)  # the backbone's storage, not copies
    return model.requires_grad_(False).eval()


def share_unchanged(model: VisionTransformer, backbone: VisionTransformer) -> VisionTransformer:
    """``model`` with every tensor that equals the backbone's (same name, shape, dtype, values) replaced
    by the backbone's own storage: a last-k or LoRA fine-tune keeps only what it changed.

    The shared tensors are frozen and never written (see :func:`taught_model`).
    """
    shared = backbone.state_dict()
    state = {}
    for name, tensor in model.state_dict().items():
        other = shared.get(name)
        same = (other is not None and other.shape == tensor.shape and other.dtype == tensor.dtype
                and other.device == tensor.device and torch.equal(other, tensor))
        state[name] = other.detach() if same else tensor
    model.load_state_dict(state, assign=True)
    return model.requires_grad_(False).eval()


def checkpoint_bytes(model: VisionTransformer, class_names: list[str], preprocessing: Preprocessing,
                     extra: dict[str, Any] | None = None) -> bytes:
    """One .safetensors checkpoint (weights, config, class names, preprocessing record) as bytes."""
    from vitcore.io.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "taught.safetensors"
        save_checkpoint(model, path, class_names=list(class_names), preprocessing=preprocessing,
                        extra={"source": f"taught on the {page_name('teach', False)} page", **(extra or {})})
        return path.read_bytes()


def explain(model: VisionTransformer, backbone: VisionTransformer, preprocessing: Preprocessing,
            image: Image.Image, occlusion_block: int = 4) -> dict[str, Any]:
    """Prediction and explanations of one photo.

    ``probs`` (C,) of the taught ``model``; for its predicted class the gradient rollout (Chefer et
    al. 2021) and the occlusion map (Zeiler & Fergus 2014) over blocks of ``occlusion_block``²
    patches (occlusion needs one forward pass per block, so blocks keep it to seconds on a CPU);
    and the backbone's last-layer CLS attention (mean over heads): class-agnostic, what the
    features attend to before any class was taught. ``view`` is the photo as the model sees it.
    """
    from vitcore.inspect.analysis import gradient_rollout
    from vitcore.inspect.capture import capture

    x = preprocessing(image)[None]  # (1, C, H, W)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]  # (C,)
    target = int(probs.argmax())
    rollout = gradient_rollout(model, x, target)[0].numpy()  # (gh, gw)
    occlusion = block_occlusion(model, x, target, occlusion_block)  # (gh, gw)
    trace = capture(backbone, x, layers=[-1])
    prefix = trace.num_prefix_tokens
    cls_attention = trace.attention[0, 0, :, 0, prefix:].float().mean(0).reshape(trace.grid).numpy()  # (gh, gw)
    return {"probs": probs.numpy(), "target": target, "rollout": rollout, "occlusion": occlusion,
            "cls_attention": cls_attention, "view": np.asarray(preprocessing.fit_image(image).convert("RGB"))}


def block_occlusion(model: VisionTransformer, x: torch.Tensor, target: int, block: int = 2,
                    batch_size: int = 16) -> np.ndarray:
    """Drop of the ``target`` logit when each block of block × block patches shows the data set's mean colour.

    :func:`vitcore.inspect.analysis.occlusion_map` with ``block`` (1: one patch at a time); larger
    blocks need block² times fewer forward passes. Returned on the patch grid (gh, gw), each
    block's value repeated over its patches.
    """
    from vitcore.inspect.analysis import occlusion_map

    return occlusion_map(model, x, target, fill="mean", batch_size=batch_size, block=block).numpy()


def submit_teach(manager: Any, owner: str, request: TeachRequest) -> Job:
    """Queue a teach job for this session's owner id (what the Start button does)."""
    photos = sum(len(images) for images in request.images)
    views = 3 if min(len(images) for images in request.images) < AUGMENT_BELOW else 1
    limit = 120.0 + 2.0 * photos * views  # ~0.1 s a photo on 2 idle cores; room for a busy server
    if request.strategy != "linear":
        limit += 60.0 * request.epochs
    from explorer.worker import ProcessWork

    work = ProcessWork("explorer.fewshot:run_teach", request.for_worker(), getattr(manager, "store", None))
    return manager.submit(owner, work, max_seconds=limit)  # trained in a worker process, not in the web process


def take_result(job: Job, backbone: VisionTransformer) -> dict[str, Any] | None:
    """A finished job's result for the session that owns it: summary and the taught model.

    The model is the shared ``backbone`` + this job's head (:func:`taught_model`, no copy of the
    backbone); after a deeper strategy, the fine-tuned checkpoint with every unchanged tensor
    shared (:func:`share_unchanged`). The job's artifacts then drop the model bytes.
    """
    from vitcore import load_checkpoint

    snap = job.snapshot()
    artifacts = snap["artifacts"]
    summary = artifacts.get("summary")
    if snap["status"] != "done" or summary is None:
        return None
    if artifacts.get("model") is not None:
        model = share_unchanged(load_checkpoint(artifacts["model"])[0], backbone)
    else:
        weight, bias = artifacts["head"]["weight"], artifacts["head"]["bias"]  # (C, 2D), (C,)
        head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        model = taught_model(backbone, head, summary["class_names"])
    job.update(model=None)
    return {"job": job.id, "summary": copy.deepcopy(summary), "model": model}


def image_bytes(image: Image.Image) -> bytes:
    """PNG bytes of a PIL image (tests and the benchmark feed photos as uploads)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
