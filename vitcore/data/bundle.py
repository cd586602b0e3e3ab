"""The bundle a loader returns and the transforms it applies (image folders: :mod:`vitcore.data.folders`,
safe zips: :mod:`vitcore.data.zips`, the synthetic Shapes set: :mod:`vitcore.data.shapes`).

A :class:`DataBundle` is the seed tutorial's contract (``dataloaders``, ``class_names``,
``dataset_sizes``) plus what a model needs at inference time: one
:class:`~vitcore.data.images.Preprocessing` record (size, fit, interpolation, mean, std), the one
its validation split applies and a checkpoint stores. ``DataBundle.datasets`` keeps the underlying
datasets so :func:`vitcore.train.fit` can rebuild seeded or distributed loaders.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .images import Preprocessing

__all__ = [
    "IMAGENET_NORMALIZATION",
    "DataBundle",
    "Normalization",
    "as_pair",
    "check_normalization",
    "convert_mode",
    "image_mode",
    "make_bundle",
    "train_transform",
    "val_transform",
]

Normalization = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std), one value per channel

IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def as_pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"image_size={size!r} must be a positive int or a (height, width) pair, e.g. 224")


def check_normalization(normalization: Any) -> Normalization:
    try:
        mean, std = normalization
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except (TypeError, ValueError):
        raise ValueError(
            f"normalization={normalization!r} must be (mean, std), e.g. ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))"
        ) from None
    if len(mean) != len(std) or not mean or any(not math.isfinite(v) for v in mean + std) or any(s <= 0 for s in std):
        raise ValueError(f"normalization mean {mean} and std {std} need one finite value per channel and std > 0")
    return mean, std


def image_mode(normalization: Normalization) -> str:
    """The PIL mode images are read in: "RGB" for 3-channel statistics, "L" (grey) for 1-channel ones."""
    channels = len(normalization[0])
    if channels not in (1, 3):
        raise ValueError(f"normalization has {channels} channels; images are read as RGB (3 values) or grey (1 value)")
    return "RGB" if channels == 3 else "L"


# --------------------------------------------------------------------------- the bundle
@dataclass
class DataBundle:
    """Loaders and facts about one labelled image dataset (train and val splits)."""

    dataloaders: dict[str, DataLoader]  # {"train", "val"}
    class_names: list[str]  # index i is the name of label i
    dataset_sizes: dict[str, int]  # {"train", "val"}
    preprocessing: Preprocessing  # what the validation split applies; travels with a model trained on this data
    datasets: dict[str, Dataset] = field(default_factory=dict)  # "train", "val" and "train_plain" (no augmentation)
    batch_size: int = 32
    augment: bool = True  # whether datasets["train"] applies random augmentation
    keepalive: Any = field(default=None, repr=False)  # e.g. the temporary directory a zip was extracted into

    def __post_init__(self) -> None:
        if not isinstance(self.preprocessing, Preprocessing):
            raise ValueError(f"preprocessing must be a vitcore Preprocessing record, got "
                             f"{type(self.preprocessing).__name__}; e.g. val_transform(image_size, normalization)")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def normalization(self) -> Normalization:
        """(mean, std) the transforms apply, from the preprocessing record."""
        return self.preprocessing.normalization

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every tensor the loaders yield, from the preprocessing record."""
        return self.preprocessing.crop_size

    def loader(
        self, split: str, *, shuffle: bool | None = None, generator: torch.Generator | None = None
    ) -> DataLoader:
        """A fresh single-process loader over ``datasets[split]`` (shuffled for "train" by default)."""
        if split not in self.datasets:
            raise ValueError(f"unknown split {split!r}; this bundle has {sorted(self.datasets)}")
        shuffle = split.startswith("train") if shuffle is None else shuffle
        return DataLoader(
            self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, num_workers=0, generator=generator
        )


def make_bundle(
    train: Dataset,
    val: Dataset,
    train_plain: Dataset,
    class_names: list[str],
    preprocessing: Preprocessing,
    batch_size: int,
    augment: bool,
    num_workers: int = 0,
    keepalive: Any = None,
) -> DataBundle:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    loaders = {
        "train": DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=num_workers),
        "val": DataLoader(val, batch_size=batch_size, shuffle=False, num_workers=num_workers),
    }
    return DataBundle(
        dataloaders=loaders,
        class_names=list(class_names),
        dataset_sizes={"train": len(train), "val": len(val)},  # type: ignore[arg-type]
        preprocessing=preprocessing,
        datasets={"train": train, "val": val, "train_plain": train_plain},
        batch_size=batch_size,
        augment=augment,
        keepalive=keepalive,
    )


# --------------------------------------------------------------------------- transforms
def train_transform(image_size: int | tuple[int, int], normalization: Normalization = IMAGENET_NORMALIZATION,
                    augment: bool = True) -> Any:
    """RandomResizedCrop, horizontal flip, ColorJitter, ToTensor, Normalize (val transform if not augment)."""
    from torchvision import transforms as T

    if not augment:
        return val_transform(image_size, normalization)
    size = as_pair(image_size)
    mean, std = check_normalization(normalization)
    return T.Compose([
        T.Lambda(functools.partial(convert_mode, mode=image_mode((mean, std)))),
        T.RandomResizedCrop(size, scale=(0.6, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def val_transform(image_size: int | tuple[int, int],
                  normalization: Normalization = IMAGENET_NORMALIZATION) -> Preprocessing:
    """The validation split's preprocessing: PIL image -> normalised (C, H, W) tensor.

    It is the :class:`vitcore.data.images.Preprocessing` record that is saved with a model trained on
    this data (``DataBundle.preprocessing``) and that the app and the CLI apply, so a photo gets
    the same logits everywhere. Images become RGB, or grey when ``normalization`` has one value
    per channel.
    """
    return Preprocessing.for_model(as_pair(image_size), check_normalization(normalization))


def convert_mode(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """``image`` in PIL mode ``mode`` ("RGB" or "L"), converted only when it is not already."""
    return image if image.mode == mode else image.convert(mode)

