"""The synthetic Shapes data set: coloured shapes on cluttered backgrounds, one object per image.

Small enough to render in seconds and learn in a minute on two CPU cores, and every image comes
with the mask of its object, so attention maps can be scored against the truth. The images are
a pure function of ``(seed, index)``: rendering neither reads nor changes global random state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from .bundle import DataBundle, Normalization, as_pair, check_normalization, make_bundle, val_transform

__all__ = ["SHAPE_CLASSES", "SHAPES_NORMALIZATION", "ShapesDataset", "shapes_bundle"]

SHAPES_NORMALIZATION: Normalization = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # [0, 1] -> [-1, 1]
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
RENDER_VERSION = 1  # change it with the drawing code: renders stored by an older version are not reused


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius ``r`` centred at (cx, cy), rotated by ``angle``."""
    if kind == "square":
        pts = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4))
               for k in range(4)]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == "star":
        pts = []
        for k in range(10):
            radius = 1.0 if k % 2 == 0 else 0.42
            a = angle + k * math.pi / 5
            pts.append((radius * math.cos(a), radius * math.sin(a)))
    elif kind == "cross":
        t = 0.3  # half the arm width, relative to the arm length
        base = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t),
                (-t, -t)]
        c, s = math.cos(angle), math.sin(angle)
        pts = [(x * c - y * s, x * s + y * c) for x, y in base]
    else:
        raise ValueError(f"unknown shape {kind!r}; choose from {SHAPE_CLASSES}")
    return [(cx + r * x, cy + r * y) for x, y in pts]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float, fill: Any) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=fill)


def _contrasting_colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A dark background colour and a bright object colour (consistent polarity keeps the task about shape)."""
    bg = rng.integers(0, 100, size=3)
    fg = rng.integers(0, 256, size=3)
    fg[int(rng.integers(0, 3))] = int(rng.integers(200, 256))  # at least one bright channel
    while int(fg.sum()) - int(bg.sum()) < 250:
        fg = np.minimum(fg + 40, 255)
    return tuple(int(v) for v in bg), tuple(int(v) for v in fg)  # type: ignore[return-value]


class ShapesDataset(Dataset):
    """Synthetic coloured shapes on cluttered backgrounds, one object per image, with its mask.

    Sample ``i`` depends only on ``(seed, i)``, so datasets are reproducible and a larger ``n``
    extends a smaller one. Label of sample ``i`` is ``i % len(classes)`` (balanced). All images
    are rendered once at construction into a uint8 tensor, so loading costs an index.
    ``__getitem__`` returns ``(normalised image (3, H, W), label)``; :meth:`sample` returns
    ``(PIL image, label, bool mask (H, W))``.
    """

    def __init__(
        self,
        n: int,
        image_size: int | tuple[int, int] = 32,
        classes: tuple[str, ...] | list[str] = SHAPE_CLASSES,
        seed: int = 0,
        *,
        clutter: int = 3,
        normalization: Normalization = SHAPES_NORMALIZATION,
        augment: bool = False,
        max_rotation: float = 15.0,
        supersample: int = 4,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be a positive number of images")
        classes = tuple(classes)
        unknown = [c for c in classes if c not in SHAPE_CLASSES]
        if unknown or len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"classes={classes} must be at least 2 distinct names from {SHAPE_CLASSES}")
        self.n, self.image_size, self.classes, self.seed = n, as_pair(image_size), classes, seed
        self.clutter, self.supersample, self.augment = clutter, supersample, augment
        self.max_rotation = float(max_rotation)  # degrees either way from the upright shape
        self.normalization = check_normalization(normalization)
        stored = self._load(cache_dir)
        if stored is not None:
            self.images, self.masks = stored
        else:
            rendered = [self._render(i) for i in range(n)]
            self.images = torch.from_numpy(np.stack([r[0] for r in rendered]))  # (n, H, W, 3) uint8
            self.images = self.images.permute(0, 3, 1, 2).contiguous()  # (n, 3, H, W) uint8
            self.masks = torch.from_numpy(np.stack([r[1] for r in rendered]))  # (n, H, W) bool
            self._store(cache_dir)
        self.targets = torch.tensor([i % len(classes) for i in range(n)], dtype=torch.long)  # (n,)
        mean, std = self.normalization
        mean_t = torch.tensor(mean).view(1, 3, 1, 1)
        std_t = torch.tensor(std).view(1, 3, 1, 1)
        self.tensors = (self.images.float() / 255 - mean_t) / std_t  # (n, 3, H, W) normalised, computed once

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return list(self.classes)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.tensors[index]  # (3, H, W)
        if self.augment and torch.rand(()) < 0.5:
            image = image.flip(-1)  # every class is mirror-symmetric as a class
        return image, int(self.targets[index])

    def sample(self, index: int) -> tuple[Image.Image, int, np.ndarray]:
        """Image ``index`` as a PIL image, its label and its object mask (H, W) bool."""
        if not 0 <= index < self.n:
            raise ValueError(f"index {index} is out of range for {self.n} images")
        image = Image.fromarray(self.images[index].permute(1, 2, 0).numpy())
        return image, int(self.targets[index]), self.masks[index].numpy().copy()

    def cache_path(self, cache_dir: str | os.PathLike) -> Path:
        """The file under ``cache_dir`` that holds this set's render: named by everything that draws it."""
        key = json.dumps([RENDER_VERSION, self.n, list(self.image_size), list(self.classes), self.seed, self.clutter,
                          self.supersample, self.max_rotation])
        return Path(cache_dir) / f"shapes-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"

    def _load(self, cache_dir: str | os.PathLike | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(images, masks) rendered earlier with the same settings, or None (absent, unreadable, wrong shape)."""
        if cache_dir is None:
            return None
        h, w = self.image_size
        try:
            with np.load(self.cache_path(cache_dir), allow_pickle=False) as data:
                images, masks = data["images"], data["masks"]
        except (OSError, KeyError, ValueError):
            return None
        if images.shape != (self.n, 3, h, w) or images.dtype != np.uint8 or masks.shape != (self.n, h, w):
            return None
        return torch.from_numpy(images), torch.from_numpy(masks.astype(bool))

    def _store(self, cache_dir: str | os.PathLike | None) -> None:
        """Keep the render for the next process (written to a temporary name, then renamed: no half files)."""
        if cache_dir is None:
            return
        path = self.cache_path(cache_dir)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".shapes-", suffix=".npz", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez_compressed(f, images=self.images.numpy(), masks=self.masks.numpy())
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError:  # a full or read-only disk: the set is rendered again next time
            pass

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        kind = self.classes[index % len(self.classes)]
        h, w = self.image_size
        s = self.supersample
        H, W = h * s, w * s
        bg, fg = _contrasting_colours(rng)
        image = Image.new("RGB", (W, H), bg)
        draw = ImageDraw.Draw(image)
        side = min(H, W)
        # Clutter: thin lines and small dots in random colours, drawn before the object.
        for _ in range(int(rng.integers(0, self.clutter + 1))):
            colour = tuple(int(v) for v in rng.integers(40, 180, size=3))
            x0, y0, x1, y1 = rng.uniform(0, 1, size=4) * [W, H, W, H]
            if rng.uniform() < 0.5:
                draw.line([x0, y0, x1, y1], fill=colour, width=max(1, s // 2))
            else:
                rad = side * rng.uniform(0.02, 0.05)
                draw.ellipse([x0 - rad, y0 - rad, x0 + rad, y0 + rad], fill=colour)
        r = side * rng.uniform(0.22, 0.42)  # circumradius
        cx = rng.uniform(r, W - r)
        cy = rng.uniform(r, H - r)
        angle = math.radians(rng.uniform(-self.max_rotation, self.max_rotation))
        if kind in ("triangle", "star"):
            angle -= math.pi / 2  # upright: a vertex at the top
        _draw_shape(draw, kind, cx, cy, r, angle, fg)
        mask = Image.new("L", (W, H), 0)
        _draw_shape(ImageDraw.Draw(mask), kind, cx, cy, r, angle, 255)
        image = image.resize((w, h), Image.Resampling.BOX)
        mask = mask.resize((w, h), Image.Resampling.BOX)
        return np.asarray(image, dtype=np.uint8), np.asarray(mask) >= 128


def shapes_bundle(
    image_size: int | tuple[int, int] = 32,
    per_class_train: int = 1000,
    per_class_val: int = 200,
    classes: tuple[str, ...] | list[str] = SHAPE_CLASSES,
    batch_size: int = 64,
    seed: int = 0,
    *,
    augment: bool = False,
    clutter: int = 3,
    cache_dir: str | os.PathLike | None = None,
) -> DataBundle:
    """Shapes train/val splits as a :class:`DataBundle` (val uses a different seed, so no overlap).

    ``cache_dir``: a folder where renders are kept (compressed, named by their settings), so the
    next call with the same settings, in any process, reads them instead of drawing them again.
    """
    for name, value in (("per_class_train", per_class_train), ("per_class_val", per_class_val)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    k = len(tuple(classes))
    train = ShapesDataset(k * per_class_train, image_size, classes, seed, clutter=clutter, augment=augment,
                          cache_dir=cache_dir)
    val = ShapesDataset(k * per_class_val, image_size, classes, seed + 10_007, clutter=clutter, cache_dir=cache_dir)
    plain = train
    if augment:
        plain = ShapesDataset.__new__(ShapesDataset)
        plain.__dict__.update(train.__dict__)
        plain.augment = False
    return make_bundle(
        train, val, plain, train.class_names, val_transform(train.image_size, train.normalization), batch_size, augment
    )
