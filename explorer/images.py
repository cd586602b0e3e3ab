"""Image input for the explorer: bytes from an upload or camera -> a safe RGB ``PIL.Image``.

Everything a student can throw at the uploader either becomes an RGB image or an
:class:`ImageError` with a sentence they can act on. The pixel limit is checked from the
header, before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageError",
    "SUPPORTED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "load_image",
    "fit_to_size",
    "to_tensor",
    "SampleImage",
]

SUPPORTED_FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF", "GIF"}
DEFAULT_MAX_PIXELS = 50_000_000
MAX_SIDE = 4096  # decoded images larger than this are downscaled (aspect kept) to save memory
MAX_ASPECT_FOR_CROP = 2.0  # beyond this ratio a centre crop would drop too much: pad instead


class ImageError(ValueError):
    """The bytes are not an image the explorer can use; the message says what to do."""


def max_pixels_from_env() -> int:
    """The pixel limit: ``EXPLORER_MAX_PIXELS`` if set, else 50 MP."""
    raw = os.environ.get("EXPLORER_MAX_PIXELS", "")
    try:
        return int(raw) if raw else DEFAULT_MAX_PIXELS
    except ValueError:
        return DEFAULT_MAX_PIXELS


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16-bit scaled (not clipped), alpha composited on white, CMYK converted."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        else:
            # integer images: 16-bit range unless values exceed it (then their own maximum)
            top = max(65535.0, float(arr.max()))
            arr = np.clip(arr, 0, None) / top * 255.0
        grey = Image.fromarray(np.round(arr).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
        mode = img.mode
    if mode in ("RGBA", "RGBa"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    if mode == "1":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")


def load_image(data: bytes, *, max_pixels: int | None = None, max_side: int = MAX_SIDE) -> Image.Image:
    """Decode uploaded bytes into an RGB image (EXIF-rotated, first frame), or raise ImageError."""
    limit = max_pixels_from_env() if max_pixels is None else int(max_pixels)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"expected the file's bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("The file is empty (0 bytes). Pick the image again or try another file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)))
    except UnidentifiedImageError:
        raise ImageError(
            "This file is not an image we can read. Upload a PNG, JPEG, WebP, BMP, TIFF or GIF."
        ) from None
    except Image.DecompressionBombError as exc:  # PIL's own header check, far above our limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "far too large"
        raise ImageError(
            f"The image is {size}; the limit is {limit / 1e6:.0f} MP. Resize it or raise EXPLORER_MAX_PIXELS."
        ) from None
    except Exception as exc:
        raise ImageError(f"The file could not be opened as an image ({exc}).") from None

    fmt = (img.format or "").upper()
    if fmt not in SUPPORTED_FORMATS:
        raise ImageError(
            f"{fmt or 'This'} images are not supported. Convert it to PNG or JPEG "
            f"(supported: {', '.join(sorted(SUPPORTED_FORMATS - {'MPO'}))})."
        )
    w, h = img.size
    if w * h > limit:
        raise ImageError(
            f"The image is {w}×{h} ({w * h / 1e6:.0f} MP); the limit is {limit / 1e6:.0f} MP. "
            "Resize it or raise EXPLORER_MAX_PIXELS."
        )
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # first frame of an animation
        if max(w, h) > max_side and img.mode in ("RGB", "L", "RGBA", "CMYK", "YCbCr"):
            img.draft(img.mode, (max_side, max_side))  # JPEG: decode at reduced scale
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as exc:
        if "truncated" in str(exc).lower() or isinstance(exc, OSError):
            raise ImageError(
                "The image file is truncated or damaged (the upload may have been cut short). "
                "Try uploading it again or export it anew."
            ) from None
        raise ImageError(f"The image could not be decoded ({exc}).") from None
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def fit_to_size(img: Image.Image, size: tuple[int, int], mode: str = "auto") -> Image.Image:
    """Resize to the model's (H, W): centre crop for ordinary shapes, pad for extreme ones.

    ``mode``: "crop" (resize the short side, centre crop), "pad" (letterbox on the mean
    colour, nothing lost), "stretch", or "auto" (crop unless the aspect ratio differs from
    the target's by more than 2x, e.g. a 10000×20 strip, which is padded).
    """
    th, tw = size
    w, h = img.size
    if mode == "auto":
        ratio = (w / h) / (tw / th)
        mode = "crop" if 1 / MAX_ASPECT_FOR_CROP <= ratio <= MAX_ASPECT_FOR_CROP else "pad"
    if mode == "stretch":
        return img.resize((tw, th), Image.Resampling.BICUBIC)
    if mode == "crop":
        return ImageOps.fit(img, (tw, th), method=Image.Resampling.BICUBIC)
    if mode == "pad":
        fill = tuple(int(c) for c in np.asarray(img).reshape(-1, 3).mean(0))
        return ImageOps.pad(img, (tw, th), method=Image.Resampling.BICUBIC, color=fill)
    raise ValueError(f"mode={mode!r} must be 'auto', 'crop', 'pad' or 'stretch'")


def to_tensor(
    img: Image.Image,
    size: tuple[int, int],
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
    mode: str = "auto",
) -> torch.Tensor:
    """RGB image -> normalised (1, 3, H, W) float tensor at the model's size."""
    arr = np.asarray(fit_to_size(img, size, mode), dtype=np.float32) / 255.0  # (H, W, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1)  # (3, H, W)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x.unsqueeze(0)  # (1, 3, H, W)


@dataclass(frozen=True)
class SampleImage:
    """A gallery image: its name, the picture, and an object mask when one is known."""

    name: str
    image: Image.Image
    mask: np.ndarray | None = None
    label: str | None = None
