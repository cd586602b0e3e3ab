"""The sample gallery: real photos from scikit-image plus Shapes images with their object masks.

The sidebar lists the gallery's names (:func:`sample_names`) before PyTorch is imported (the
first page is drawn first, see ``app_pages/_startup.py``): the names come from constants and
scikit-image's list of loaders, without decoding a photo or rendering a shape. The images
themselves (:func:`gallery`) are made on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from explorer.images import SampleImage

__all__ = ["SHAPES_SHOWN", "SKIMAGE_PHOTOS", "gallery", "sample_images", "sample_key", "sample_names", "shapes_samples"]

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry")
# one Shapes image per class, in the order of vitcore.data.shapes.SHAPE_CLASSES (tests/test_images.py checks it)
SHAPES_SHOWN = ("circle", "square", "triangle", "cross", "star")
SHAPES_PREFIX = "shapes: "


def sample_key(name: str) -> str:
    """The cache key of a gallery sample (traces, maps and figures of it are stored under it)."""
    return f"sample:{name}"


def sample_names(names: tuple[str, ...] = SKIMAGE_PHOTOS) -> list[str]:
    """The names :func:`gallery` gives, in its order, without making an image.

    A photo is listed when scikit-image has its loader (the seven photos ship inside its wheel,
    so they load offline); the Shapes samples are one per class of :data:`SHAPES_SHOWN`.
    """
    try:
        from skimage import data as skdata
    except ImportError:
        photos = []
    else:
        photos = [name for name in names if getattr(skdata, name, None) is not None]
    return photos + [f"{SHAPES_PREFIX}{c}" for c in SHAPES_SHOWN]


def sample_images(names: tuple[str, ...] = SKIMAGE_PHOTOS) -> dict[str, Image.Image]:
    """Real RGB photos bundled with scikit-image (astronaut, chelsea, coffee, …); missing ones are skipped."""
    try:
        from skimage import data as skdata
    except ImportError:
        return {}
    photos: dict[str, Image.Image] = {}
    for name in names:
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        try:
            array = loader()
        except Exception:  # files fetched on demand are absent offline
            continue
        if array.ndim == 3 and array.shape[2] >= 3:
            photos[name] = Image.fromarray(np.ascontiguousarray(array[..., :3]))
    return photos


def shapes_samples(per_class: int = 1, image_size: int = 64, seed: int = 1234) -> dict[str, SampleImage]:
    """Shapes images (one per class by default) with their ground-truth masks, from a fixed seed."""
    from explorer.images import SampleImage
    from vitcore.data.shapes import ShapesDataset

    classes = SHAPES_SHOWN
    ds = ShapesDataset(len(classes) * per_class, image_size=image_size, classes=classes, seed=seed)
    out: dict[str, SampleImage] = {}
    for i in range(len(ds)):
        image, label, mask = ds.sample(i)
        name = f"{SHAPES_PREFIX}{classes[label]}" + (f" #{i // len(classes) + 1}" if per_class > 1 else "")
        if name not in out:
            out[name] = SampleImage(name, image, mask, classes[label])
    return out


def gallery() -> dict[str, SampleImage]:
    """Every sample the sidebar offers, photos first (the names of :func:`sample_names`)."""
    from explorer.images import SampleImage

    out = {name: SampleImage(name, img) for name, img in sample_images().items()}
    out.update(shapes_samples())
    return out
