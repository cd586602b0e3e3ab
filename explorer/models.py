"""The model registry: what the sidebar can pick, and how each choice becomes a model.

A :class:`ModelSpec` is small and hashable, so the app caches one shared, read-only model per
spec. Pages never hook or train the shared object: :func:`session_copy` gives them their own.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitcore import VisionTransformer, ViTConfig

__all__ = [
    "ASSETS",
    "BUNDLED_CHECKPOINT",
    "LoadedModel",
    "MODEL_KINDS",
    "ModelSpec",
    "build_model",
    "digest",
    "session_copy",
]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_CHECKPOINT = ASSETS / "shapes_micro.safetensors"
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

MODEL_KINDS = {
    "bundled": "Bundled Shapes model (trained)",
    "preset": "Random-initialised preset (you set the architecture)",
    "checkpoint": "Upload a checkpoint (.safetensors)",
    "session": "Fine-tuned in this session",
    "torchvision": "torchvision ViT",
    "hf": "Hugging Face ViT / DeiT / DINO",
}


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a kind plus the few values that identify it (hashable, cache key)."""

    kind: str = "bundled"
    preset: str = "tiny"
    overrides: tuple[tuple[str, Any], ...] = ()  # ViTConfig fields changed from the preset
    name: str = ""  # torchvision name, HF id/path, or session model name
    digest: str = ""  # sha256 of uploaded / session checkpoint bytes

    def label(self) -> str:
        """Short human-readable description."""
        if self.kind == "preset":
            changes = ", ".join(f"{k}={v}" for k, v in self.overrides)
            return f"random {self.preset}" + (f" ({changes})" if changes else "")
        if self.kind in ("torchvision", "hf", "session"):
            return f"{self.kind}: {self.name}"
        if self.kind == "checkpoint":
            return f"uploaded checkpoint {self.digest[:8]}"
        return "bundled Shapes micro ViT"


@dataclass
class LoadedModel:
    """A model ready for inference plus what the pages need to feed and label it."""

    model: VisionTransformer
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    label: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> ViTConfig:
        """The model's configuration."""
        return self.model.config

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) the model was built for."""
        return self.model.config.image_size


def digest(data: bytes) -> str:
    """sha256 hex digest of bytes (identifies uploads in cache keys)."""
    return hashlib.sha256(data).hexdigest()


def _norm(meta: dict[str, Any], default: tuple) -> tuple[tuple[float, ...], tuple[float, ...]]:
    norm = meta.get("normalization") or {}
    if isinstance(norm, dict) and "mean" in norm and "std" in norm:
        return tuple(norm["mean"]), tuple(norm["std"])
    if isinstance(norm, (list, tuple)) and len(norm) == 2:
        return tuple(norm[0]), tuple(norm[1])
    return default


def _class_names(meta: dict[str, Any], model: VisionTransformer) -> list[str]:
    names = meta.get("class_names")
    return list(names) if names else [f"class {i}" for i in range(model.config.num_classes)]


def _from_checkpoint(source: Any, label: str) -> LoadedModel:
    from vitcore.checkpoint import load_checkpoint

    model, meta = load_checkpoint(source)
    mean, std = _norm(meta, HALF_NORM)
    return LoadedModel(model.eval(), _class_names(meta, model), mean, std, label, meta)


def build_model(spec: ModelSpec, data: bytes | None = None) -> LoadedModel:
    """Materialise a spec (``data``: checkpoint bytes for uploaded / session models)."""
    if spec.kind == "bundled":
        if not BUNDLED_CHECKPOINT.exists():
            raise ValueError(f"the bundled model {BUNDLED_CHECKPOINT} is missing; run `make checkpoint` to rebuild it")
        return _from_checkpoint(BUNDLED_CHECKPOINT, spec.label())
    if spec.kind == "preset":
        config = ViTConfig.preset(spec.preset, **dict(spec.overrides))
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)  # the same architecture always gets the same random weights
        try:
            model = VisionTransformer(config).eval()
        finally:
            torch.random.set_rng_state(generator_state)
        names = [f"class {i}" for i in range(config.num_classes)]
        return LoadedModel(model, names, *HALF_NORM, spec.label(), {"source": "random init"})
    if spec.kind in ("checkpoint", "session"):
        if data is None:
            raise ValueError("no checkpoint bytes were given; upload a .safetensors file first")
        return _from_checkpoint(data, spec.label())
    if spec.kind in ("torchvision", "hf"):
        return _pretrained(spec)
    raise ValueError(f"unknown model kind {spec.kind!r}; choose one of {sorted(MODEL_KINDS)}")


@torch.no_grad()
def _pretrained(spec: ModelSpec) -> LoadedModel:
    """A torchvision / Hugging Face model converted to vitcore, with its reproduction check."""
    from vitcore import pretrained

    if spec.kind == "torchvision":
        if pretrained.torchvision_weights_cached(spec.name):
            model, meta = pretrained.from_torchvision(spec.name, "DEFAULT")
            reference = pretrained.load_torchvision(spec.name, "DEFAULT")
        else:  # no weights offline: a random model, converted from the very reference it is checked against
            reference = pretrained.load_torchvision(spec.name)
            model, meta = pretrained.from_torchvision(reference)
            meta["notes"] = "random weights: the ImageNet weights are not in the local torch hub cache"
        default_norm = IMAGENET_NORM
    else:
        reference = pretrained.load_hf(spec.name)
        model, meta = pretrained.from_hf(reference)
        default_norm = HALF_NORM
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, model.config.in_channels, *model.config.image_size, generator=generator)
    meta["reproduction_max_diff"] = pretrained.verify(model, reference, images)
    del reference
    mean, std = _norm(meta, default_norm)
    return LoadedModel(model.eval(), _class_names(meta, model), mean, std, spec.label(), meta)


def session_copy(loaded: LoadedModel) -> LoadedModel:
    """A private deep copy of a (shared, cached) model for hooking or training."""
    return LoadedModel(
        copy.deepcopy(loaded.model),
        list(loaded.class_names),
        loaded.mean,
        loaded.std,
        loaded.label,
        copy.deepcopy(loaded.metadata),
    )
