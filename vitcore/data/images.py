"""Images in: safe decoding of any file a user can throw at us, and one preprocessing record per model.

:func:`load_image` turns bytes into an RGB ``PIL.Image`` or raises :class:`ImageError` (a
``ValueError``) with a sentence the user can act on; the pixel limit is checked from the header,
before any pixel is decoded, so a decompression bomb costs nothing.

:class:`Preprocessing` is the record of how a model wants its pixels (resize, crop, interpolation,
mean, std, how a non-square photo is fitted). It is taken from the model's weights (torchvision's
weights transforms, a Hugging Face ``preprocessor_config.json``, our checkpoints' metadata), stored
in every checkpoint, and used by the app, the CLI, training's validation split and the playground,
so one photo gives one answer everywhere.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FITS",
    "HALF_NORMALIZATION",
    "IMAGENET_NORMALIZATION",
    "INTERPOLATIONS",
    "ImageError",
    "Preprocessing",
    "SUPPORTED_FORMATS",
    "fit_to_size",
    "load_image",
    "max_pixels_from_env",
]

IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision, DINO, DeiT
HALF_NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # Hugging Face ViT, our Shapes models

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


INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# How a photo whose shape differs from the model's is fitted: "crop" resizes so the photo covers
# the frame and cuts the centre out, "pad" letterboxes it on its mean colour (nothing lost),
# "stretch" resizes to the frame (Hugging Face's ViT processor), "auto" crops unless the aspect
# ratios differ by more than 2x (a 10000x20 strip), which is padded.
FITS = ("auto", "crop", "pad", "stretch")


def _cover(img: Image.Image, box: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """Resize keeping the aspect ratio so the image covers ``box`` (H, W) exactly on one side."""
    bh, bw = box
    w, h = img.size
    scale = max(bh / h, bw / w)
    size = (max(bw, round(w * scale)), max(bh, round(h * scale)))  # (W, H)
    return img.resize(size, resample)


def _centre_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    th, tw = size
    w, h = img.size
    left, top = (w - tw) // 2, (h - th) // 2
    return img.crop((left, top, left + tw, top + th))


def fit_to_size(
    img: Image.Image,
    size: tuple[int, int],
    mode: str = "auto",
    interpolation: str = "bicubic",
    resize_size: int | None = None,
) -> Image.Image:
    """Fit an image to the model's (H, W) as :data:`FITS` describes.

    With ``mode="crop"`` and ``resize_size`` (torchvision's 256 for a 224 crop), the photo first
    covers a frame ``resize_size / min(H, W)`` times the crop, then the centre is cut out.
    """
    if mode not in FITS:
        raise ValueError(f"mode={mode!r} must be one of {list(FITS)}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation={interpolation!r} must be one of {list(INTERPOLATIONS)}")
    resample = INTERPOLATIONS[interpolation]
    th, tw = size
    w, h = img.size
    if mode == "auto":
        ratio = (w / h) / (tw / th)
        mode = "crop" if 1 / MAX_ASPECT_FOR_CROP <= ratio <= MAX_ASPECT_FOR_CROP else "pad"
    if mode == "stretch":
        return img.resize((tw, th), resample)
    if mode == "crop":
        k = (resize_size or min(th, tw)) / min(th, tw)
        return _centre_crop(_cover(img, (math.ceil(th * k), math.ceil(tw * k)), resample), (th, tw))
    fill = tuple(int(c) for c in np.asarray(img.convert("RGB")).reshape(-1, 3).mean(0))
    return ImageOps.pad(img, (tw, th), method=resample, color=fill if img.mode == "RGB" else fill[0])


def _floats(values: Any, what: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{what}={values!r} must be a list of numbers, one per channel")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what}={values!r} must be a list of numbers, one per channel") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what}={values!r} must hold finite numbers, one per channel")
    return out


def _size(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536 for v in value)
    ):
        raise ValueError(f"{what}={value!r} must be a positive int or a (height, width) pair")
    return tuple(value)


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its pixels: one record, stored with its weights, used everywhere.

    Applied to a PIL image it gives the normalised (C, H, W) tensor the model reads: fit to
    ``crop_size`` (see :data:`FITS`), scale to [0, 1], subtract ``mean``, divide by ``std``. One
    mean/std value means a grey-scale (1-channel) model.
    """

    crop_size: tuple[int, int] = (224, 224)  # (H, W) the model reads
    resize_size: int | None = None  # short side before the centre crop (torchvision: 256 for 224); None = no margin
    interpolation: str = "bicubic"  # see INTERPOLATIONS
    mean: tuple[float, ...] = HALF_NORMALIZATION[0]
    std: tuple[float, ...] = HALF_NORMALIZATION[1]
    fit: str = "auto"  # see FITS

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_size", _size(self.crop_size, "crop_size"))
        if self.resize_size is not None:
            if isinstance(self.resize_size, bool) or not isinstance(self.resize_size, int) or self.resize_size <= 0:
                raise ValueError(f"resize_size={self.resize_size!r} must be a positive int (short side) or None")
            if self.resize_size < min(self.crop_size):
                raise ValueError(
                    f"resize_size={self.resize_size} is smaller than the crop {self.crop_size}; "
                    "the short side must be resized to at least the crop size"
                )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={self.interpolation!r} must be one of {list(INTERPOLATIONS)}")
        if self.fit not in FITS:
            raise ValueError(f"fit={self.fit!r} must be one of {list(FITS)}")
        mean, std = _floats(self.mean, "mean"), _floats(self.std, "std")
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(f"mean {mean} and std {std} need one value per channel (1 for grey, 3 for RGB)")
        if any(s <= 0 for s in std):
            raise ValueError(f"std {std} must be > 0 in every channel (0 would divide by zero)")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        """C, the number of channels the model reads."""
        return len(self.mean)

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std), the tutorial's normalisation pair."""
        return self.mean, self.std

    def fit_image(self, img: Image.Image) -> Image.Image:
        """The image fitted to ``crop_size`` (still a PIL image, RGB or grey), e.g. to show what the model sees."""
        img = img.convert("L" if self.channels == 1 else "RGB")
        return fit_to_size(img, self.crop_size, self.fit, self.interpolation, self.resize_size)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """PIL image -> normalised (C, H, W) float tensor."""
        if not isinstance(img, Image.Image):
            raise ValueError(f"expected a PIL image, got {type(img).__name__}; decode files with load_image()")
        arr = np.asarray(self.fit_image(img), dtype=np.float32) / 255.0  # (H, W) or (H, W, 3)
        x = torch.from_numpy(arr.reshape(*arr.shape[:2], self.channels)).permute(2, 0, 1)  # (C, H, W)
        mean = torch.tensor(self.mean).view(-1, 1, 1)  # (C, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (x - mean) / std  # (C, H, W)

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Several PIL images -> (B, C, H, W)."""
        return torch.stack([self(img) for img in images])

    def at_size(self, size: int | tuple[int, int]) -> Preprocessing:
        """The same record for another input size (a larger grid); the resize margin scales along."""
        crop = _size(size, "size")
        resize = None
        if self.resize_size is not None:
            resize = math.ceil(self.resize_size * min(crop) / min(self.crop_size))
        return replace(self, crop_size=crop, resize_size=resize)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (stored in checkpoints)."""
        d = asdict(self)
        d["crop_size"], d["mean"], d["std"] = list(self.crop_size), list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessing:
        """Inverse of :meth:`to_dict`; anything malformed is a ValueError naming the field."""
        if not isinstance(data, dict):
            raise ValueError(f"a preprocessing record must be a dict, got {type(data).__name__}")
        known = {"crop_size", "resize_size", "interpolation", "mean", "std", "fit"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing fields {unknown}; valid fields are {sorted(known)}")
        data = dict(data)
        if isinstance(data.get("crop_size"), list):
            data["crop_size"] = tuple(data["crop_size"])
        return cls(**data)

    @classmethod
    def for_model(cls, image_size: tuple[int, int], normalization: Any = HALF_NORMALIZATION,
                  fit: str = "auto") -> Preprocessing:
        """Our own models' record: fit the photo to the model's size, then normalise."""
        if isinstance(normalization, dict):
            mean, std = normalization.get("mean"), normalization.get("std")
        else:
            try:
                mean, std = normalization
            except (TypeError, ValueError):
                raise ValueError(f"normalization={normalization!r} must be (mean, std)") from None
        return cls(crop_size=image_size, mean=mean, std=std, fit=fit)

    @classmethod
    def from_torchvision(cls, transforms: Any) -> Preprocessing:
        """From a torchvision weights' ``transforms()`` (``ImageClassification``: resize, crop, mean, std)."""
        try:
            crop, resize = transforms.crop_size, transforms.resize_size
            mean, std = transforms.mean, transforms.std
            interpolation = getattr(transforms.interpolation, "value", str(transforms.interpolation))
        except AttributeError as exc:
            name = type(transforms).__name__
            raise ValueError(f"{name} is not torchvision's ImageClassification preset: {exc}") from None
        crop = crop[0] if isinstance(crop, (list, tuple)) and len(crop) == 1 else crop
        resize = resize[0] if isinstance(resize, (list, tuple)) else resize
        return cls(crop_size=crop, resize_size=int(resize), interpolation=str(interpolation), mean=mean, std=std,
                   fit="crop")

    @classmethod
    def from_hf(cls, processor: dict[str, Any], default_size: tuple[int, int]) -> Preprocessing:
        """From a Hugging Face ``preprocessor_config.json`` (ViTImageProcessor, BitImageProcessor for DINOv2, ...)."""
        if not isinstance(processor, dict):
            raise ValueError("preprocessor_config.json must hold a JSON object")
        pil_names = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL's resample codes
        resample = pil_names.get(processor.get("resample", 2), "bilinear")
        mean = processor.get("image_mean", HALF_NORMALIZATION[0])
        std = processor.get("image_std", HALF_NORMALIZATION[1])
        size = processor.get("size") or {}
        crop = processor.get("crop_size") or {}
        if processor.get("do_center_crop") and crop:
            crop_size = (int(crop.get("height", default_size[0])), int(crop.get("width", default_size[1])))
            short = size.get("shortest_edge") if isinstance(size, dict) else None
            return cls(crop_size=crop_size, resize_size=int(short) if short else None, interpolation=resample,
                       mean=mean, std=std, fit="crop")
        if isinstance(size, dict) and "height" in size and "width" in size:
            crop_size = (int(size["height"]), int(size["width"]))
        else:
            crop_size = tuple(default_size)
        return cls(crop_size=crop_size, interpolation=resample, mean=mean, std=std, fit="stretch")
