"""The model registry: what the sidebar can pick, and how each choice becomes a model.

A :class:`ModelSpec` is small and hashable, so the app caches one shared, read-only model per
spec. Pages only read the shared object (``forward_intermediates`` touches no flag or hook), so
no copy is made for reading; only training copies a model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from explorer.specs import MODEL_KINDS, ModelSpec, digest  # plain data, defined where the sidebar reads them
from vitcore import VisionTransformer, ViTConfig
from vitcore.data.images import HALF_NORMALIZATION, Preprocessing

__all__ = [
    "ASSETS",
    "BUNDLED_CHECKPOINT",
    "LoadedModel",
    "MODEL_KINDS",
    "ModelSpec",
    "build_model",
    "digest",
    "preprocessing_from_metadata",
    "seeded_model",
]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_CHECKPOINT = ASSETS / "shapes_micro.safetensors"


@dataclass
class LoadedModel:
    """A model ready for inference plus what the pages need to feed and label it."""

    model: VisionTransformer
    class_names: list[str]
    preprocessing: Preprocessing  # how this model wants its pixels (stored with its weights)
    label: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the preprocessing record."""
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel std of the preprocessing record."""
        return self.preprocessing.std

    @property
    def config(self) -> ViTConfig:
        """The model's configuration."""
        return self.model.config

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) the model was built for."""
        return self.model.config.image_size


def preprocessing_from_metadata(
    meta: dict[str, Any], config: ViTConfig, default_normalization: Any = HALF_NORMALIZATION
) -> Preprocessing:
    """The model's preprocessing record: stored in the metadata, else built from its normalisation and size."""
    record = meta.get("preprocessing")
    if record is not None:
        pre = Preprocessing.from_dict(record)
    else:
        norm = meta.get("normalization")
        if not norm:  # no statistics stored: the default, or 0.5 per channel for a grey model
            norm = default_normalization if config.in_channels == 3 else ((0.5,) * config.in_channels,) * 2
        pre = Preprocessing.for_model(config.image_size, norm)
    if pre.channels != config.in_channels:
        raise ValueError(f"the stored preprocessing normalises {pre.channels} channel(s) but the model reads "
                         f"{config.in_channels}; re-save the checkpoint with matching mean and std")
    return pre


def _class_names(meta: dict[str, Any], model: VisionTransformer) -> list[str]:
    """One label per model output: the stored names when they fit, else "class i".

    A backbone without a head (``num_classes=0``) outputs its D pooled features, so its outputs
    are labelled "feature i" (the pages then rank features instead of crashing on no classes).
    """
    config = model.config
    if not config.num_classes:
        return [f"feature {i}" for i in range(config.dim)]
    names = meta.get("class_names")
    if isinstance(names, (list, tuple)) and len(names) == config.num_classes and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"class {i}" for i in range(config.num_classes)]


def _from_checkpoint(source: Any, label: str) -> LoadedModel:
    from vitcore.io.checkpoint import load_checkpoint

    model, meta = load_checkpoint(source)
    pre = preprocessing_from_metadata(meta, model.config)
    return LoadedModel(model.eval(), _class_names(meta, model), pre, label, meta)


def build_model(spec: ModelSpec, data: bytes | None = None) -> LoadedModel:
    """Materialise a spec (``data``: checkpoint bytes for uploaded / session models)."""
    if spec.kind == "bundled":
        if not BUNDLED_CHECKPOINT.exists():
            raise ValueError(f"the bundled model {BUNDLED_CHECKPOINT} is missing; run `make checkpoint` to rebuild it")
        return _from_checkpoint(BUNDLED_CHECKPOINT, spec.label())
    if spec.kind == "dinov2":
        model, meta = _dinov2()
        pre = Preprocessing.from_dict(meta["preprocessing"]).at_size(spec.input_size)
        return LoadedModel(model, [], pre, spec.label(), dict(meta))
    if spec.kind == "preset":
        config = ViTConfig.preset(spec.preset, **dict(spec.overrides))
        model = seeded_model(config)
        names = [f"class {i}" for i in range(config.num_classes)]
        pre = Preprocessing.for_model(config.image_size)
        return LoadedModel(model, names, pre, spec.label(), {"source": "random init"})
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
        from torchvision.models import get_model_weights

        if pretrained.torchvision_weights_cached(spec.name):
            model, meta = pretrained.from_torchvision(spec.name, "DEFAULT")
            reference = pretrained.load_torchvision(spec.name, "DEFAULT")
        else:  # no weights offline: a random model, converted from the very reference it is checked against
            reference = pretrained.load_torchvision(spec.name)
            model, meta = pretrained.from_torchvision(reference)
            meta["notes"] = ("random weights: the ImageNet weights are not in the local torch hub cache "
                             "(download them with the button above when online)")
        pre = Preprocessing.from_torchvision(get_model_weights(spec.name).DEFAULT.transforms())
    else:
        # a hub id (local cache only) or a folder under EXPLORER_MODELS_ROOT; no other server path is read
        model, meta, reference = pretrained.from_hf_source(spec.name, pretrained.models_root_from_env())
        pre = _hf_preprocessing(meta, model.config)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, model.config.in_channels, *model.config.image_size, generator=generator)
    meta["reproduction_max_diff"] = pretrained.verify(model, reference, images)
    del reference
    meta["preprocessing"] = pre.to_dict()
    return LoadedModel(model.eval(), _class_names(meta, model), pre, spec.label(), meta)


def _hf_preprocessing(meta: dict[str, Any], config: ViTConfig) -> Preprocessing:
    """The record of a Hugging Face processor: stretch to a fixed size (ViT) or resize + centre crop (DINOv2)."""
    norm = meta.get("normalization") or HALF_NORMALIZATION
    mean, std = (norm["mean"], norm["std"]) if isinstance(norm, dict) else norm
    resize = meta.get("resize_size")
    crop = tuple(meta.get("image_size") or config.image_size)
    if isinstance(resize, int):
        return Preprocessing(crop_size=crop, resize_size=max(resize, min(crop)), interpolation="bicubic",
                             mean=mean, std=std, fit="crop")
    if resize:
        return Preprocessing(crop_size=tuple(resize), interpolation="bilinear", mean=mean, std=std, fit="stretch")
    return Preprocessing.for_model(config.image_size, (mean, std))


@functools.lru_cache(maxsize=1)
def _dinov2() -> tuple[VisionTransformer, dict[str, Any]]:
    """The one DINOv2 ViT-S/14 of this process (every input size shares its weights; read-only)."""
    from vitcore.pretrained.dinov2 import dinov2_small

    return dinov2_small()


def seeded_model(config: ViTConfig, seed: int = 0) -> VisionTransformer:
    """A random model in eval mode; the same config always gets the same weights.

    The weights are drawn from a private generator; what construction draws from the global RNG
    is given back (``fork_rng`` restores its state), so callers' random numbers are unaffected.
    """
    with torch.random.fork_rng(devices=[]):
        model = VisionTransformer(config)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model.eval()
