"""Image folders: ``root/<class>/…`` or ``root/train/<class>/…`` + ``root/val/<class>/…`` -> :class:`DataBundle`.

Class folders and images are scanned without following links out of ``confine_to``; a single folder
of class folders is split into train/val deterministically per class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .bundle import (
    IMAGENET_NORMALIZATION,
    DataBundle,
    Normalization,
    as_pair,
    check_normalization,
    convert_mode,
    image_mode,
    make_bundle,
    train_transform,
    val_transform,
)

__all__ = ["IMAGE_EXTENSIONS", "MAX_DEPTH", "from_image_folder"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_DEPTH = 32  # folders below a class folder (or inside a zip) deeper than this are refused


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _inside(path: Path, confine_to: Path | None) -> bool:
    if confine_to is None:
        return True
    resolved = path.resolve()
    return resolved == confine_to or confine_to in resolved.parents


def _class_dirs(folder: Path, confine_to: Path | None = None) -> list[str]:
    names = []
    for entry in sorted(folder.iterdir()):
        if _hidden(entry.name) or not entry.is_dir():
            continue
        if not _inside(entry, confine_to):
            raise ValueError(f"the class folder {str(entry)!r} is a link to a place outside {confine_to}; "
                             "copy the images into the data folder instead of linking them")
        names.append(entry.name)
    return names


def _image_files(folder: Path, confine_to: Path | None = None) -> list[Path]:
    """Image files under ``folder`` (any depth up to MAX_DEPTH), skipping hidden ones; no recursion."""
    found: list[Path] = []
    stack = [(folder, 0)]
    while stack:
        current, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{str(folder)!r} has folders nested more than {MAX_DEPTH} deep; "
                             "keep each class's images in its folder or a few sub-folders")
        with os.scandir(current) as entries:
            for entry in entries:
                if _hidden(entry.name):
                    continue
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    stack.append((path, depth + 1))
                elif path.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
                    if not _inside(path, confine_to):
                        raise ValueError(f"the image {str(path)!r} is a link to a file outside {confine_to}; "
                                         "copy the image into the data folder instead of linking it")
                    found.append(path)
    return sorted(found)


class _FolderDataset(Dataset):
    """(path, label) samples read with PIL (as RGB or grey) and passed through a transform."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Any, mode: str = "RGB") -> None:
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image.load()  # decode now: the file closes when the block ends
                image = convert_mode(image, self.mode)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{path} is not a readable image ({type(exc).__name__}); remove it from the data set"
                             ) from None
        return self.transform(image), label


def _scan(folder: Path, class_names: list[str], confine_to: Path | None) -> list[tuple[Path, int]]:
    return [(path, label) for label, name in enumerate(class_names)
            for path in _image_files(folder / name, confine_to)]


def from_image_folder(
    root: str | os.PathLike,
    image_size: int | tuple[int, int] = 224,
    batch_size: int = 32,
    *,
    normalization: Normalization = IMAGENET_NORMALIZATION,
    augment: bool = True,
    val_fraction: float = 0.2,
    seed: int = 0,
    num_workers: int = 0,
    confine_to: str | os.PathLike | None = None,
) -> DataBundle:
    """Labelled images from ``root/train/<class>/…`` + ``root/val/<class>/…`` or ``root/<class>/…``.

    With a single folder of class folders, each class is split into train/val deterministically
    (``val_fraction`` of its images, at least one, chosen by ``seed``). Images are read as RGB,
    or as grey when ``normalization`` has one value per channel. With ``confine_to``, class
    folders and images that are links to places outside that folder are refused.
    Bad input of any kind raises ``ValueError`` with a message.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be a folder path, got {type(root).__name__}")
    size = as_pair(image_size)
    normalization = check_normalization(normalization)
    mode = image_mode(normalization)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} must be between 0 and 1, e.g. 0.2")
    for name, value in (("seed", seed), ("num_workers", num_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative integer")
    try:
        return _folder_bundle(Path(root), size, batch_size, normalization, mode, augment, val_fraction, seed,
                              num_workers, None if confine_to is None else Path(confine_to).resolve())
    except OSError as exc:  # unreadable folders, names too long for the file system, vanished files
        raise ValueError(f"the folder {str(root)!r} could not be read ({exc.strerror or exc}); "
                         "check that it exists and is readable") from None


def _folder_bundle(root: Path, size: tuple[int, int], batch_size: int, normalization: Normalization, mode: str,
                   augment: bool, val_fraction: float, seed: int, num_workers: int,
                   confine_to: Path | None) -> DataBundle:
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a folder; pass a folder of class folders (or train/ and val/)")
    if not _inside(root, confine_to):
        raise ValueError(f"{str(root)!r} is outside {confine_to}; pick a folder inside it")
    t_train = train_transform(size, normalization, augment)
    t_val = val_transform(size, normalization)

    if (root / "train").is_dir() and (root / "val").is_dir():
        class_names = _class_dirs(root / "train", confine_to)
        val_classes = _class_dirs(root / "val", confine_to)
        if class_names != val_classes:
            raise ValueError(
                f"train/ has classes {class_names} but val/ has {val_classes}; both need the same class folders"
            )
        train_samples = _scan(root / "train", class_names, confine_to)
        val_samples = _scan(root / "val", class_names, confine_to)
        _check_counts(class_names, train_samples, where=str(root / "train"), minimum=1)
        _check_counts(class_names, val_samples, where=str(root / "val"), minimum=1)
    else:
        class_names = _class_dirs(root, confine_to)
        samples = _scan(root, class_names, confine_to)
        _check_counts(class_names, samples, where=str(root), minimum=2)
        rng = np.random.default_rng(seed)
        train_samples, val_samples = [], []
        for label in range(len(class_names)):
            mine = [s for s in samples if s[1] == label]
            order = rng.permutation(len(mine))
            n_val = min(len(mine) - 1, max(1, round(val_fraction * len(mine))))
            val_samples += [mine[i] for i in sorted(order[:n_val])]
            train_samples += [mine[i] for i in sorted(order[n_val:])]

    return make_bundle(
        _FolderDataset(train_samples, t_train, mode),
        _FolderDataset(val_samples, t_val, mode),
        _FolderDataset(train_samples, t_val, mode),
        class_names,
        t_val,
        batch_size,
        augment,
        num_workers,
    )


def _check_counts(class_names: list[str], samples: list[tuple[Path, int]], where: str, minimum: int) -> None:
    if len(class_names) < 2:
        raise ValueError(
            f"{where} has {len(class_names)} class folder(s) {class_names}; a classifier needs at least 2 "
            "(one sub-folder of images per class)"
        )
    counts = np.bincount([label for _, label in samples], minlength=len(class_names))
    few = [f"{name} ({int(c)})" for name, c in zip(class_names, counts) if c < minimum]
    if few:
        raise ValueError(f"in {where} these classes have fewer than {minimum} image(s): {', '.join(few)}")

