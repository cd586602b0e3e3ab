"""The sample gallery: real photos from scikit-image plus Shapes images with their object masks."""

from __future__ import annotations

import numpy as np
from PIL import Image

from explorer.images import SampleImage
from vitcore.data.shapes import SHAPE_CLASSES, ShapesDataset

__all__ = ["gallery", "sample_images", "shapes_samples"]

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry")


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
    classes = SHAPE_CLASSES
    ds = ShapesDataset(len(classes) * per_class, image_size=image_size, seed=seed)
    out: dict[str, SampleImage] = {}
    for i in range(len(ds)):
        image, label, mask = ds.sample(i)
        name = f"shapes: {classes[label]} #{i // len(classes) + 1}" if per_class > 1 else f"shapes: {classes[label]}"
        if name not in out:
            out[name] = SampleImage(name, image, mask, classes[label])
    return out


def gallery() -> dict[str, SampleImage]:
    """Every sample the sidebar offers, photos first."""
    out = {name: SampleImage(name, img) for name, img in sample_images().items()}
    out.update(shapes_samples())
    return out
