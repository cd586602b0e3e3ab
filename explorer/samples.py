"""The sample gallery: real photos from scikit-image plus Shapes images with their object masks."""

from __future__ import annotations

from explorer.images import SampleImage
from vitcore.data import SHAPE_CLASSES, ShapesDataset, sample_images

__all__ = ["gallery", "shapes_samples"]


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
