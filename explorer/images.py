"""Image input for the explorer: uploads and camera shots -> safe RGB ``PIL.Image``.

Decoding (EXIF, 16-bit, CMYK, alpha, decompression bombs) and the preprocessing record live in
:mod:`vitcore.data.images`, shared with the CLI and training; this module adds what only the app
needs: a working size for uploads and the gallery's sample type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vitcore.data.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_FORMATS,
    ImageError,
    Preprocessing,
    fit_to_size,
    load_image,
    max_pixels_from_env,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "WORKING_SIDE",
    "ImageError",
    "SampleImage",
    "decode_upload",
    "fit_to_size",
    "load_image",
    "max_pixels_from_env",
    "to_tensor",
]

WORKING_SIDE = 1024  # uploads are kept at most this large: models read 32-518 px


def decode_upload(data: bytes) -> Image.Image:
    """An upload's bytes -> RGB image at most :data:`WORKING_SIDE` on its long side (or ImageError)."""
    image = load_image(data)
    image.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.LANCZOS)
    return image


def to_tensor(
    img: Image.Image,
    size: tuple[int, int],
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
    mode: str = "auto",
) -> torch.Tensor:
    """RGB image -> normalised (1, C, H, W) float tensor at ``size`` (a one-off :class:`Preprocessing`)."""
    return Preprocessing(crop_size=size, mean=mean, std=std, fit=mode)(img)[None]


@dataclass(frozen=True)
class SampleImage:
    """A gallery image: its name, the picture, and an object mask when one is known."""

    name: str
    image: Image.Image
    mask: np.ndarray | None = None
    label: str | None = None
