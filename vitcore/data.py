"""Data for training and exploring: image folders and safe zip uploads (Shapes: :mod:`vitcore.shapes`).

Every loader returns a :class:`DataBundle`, the seed tutorial's contract (``dataloaders``,
``class_names``, ``dataset_sizes``) plus what a model needs at inference time: the
normalisation statistics and the image size. ``DataBundle.datasets`` keeps the underlying
datasets so :func:`vitcore.train.fit` can rebuild seeded or distributed loaders.

The synthetic Shapes set lives in :mod:`vitcore.shapes`; ``from vitcore.data import
shapes_bundle`` (and ``ShapesDataset``, ``SHAPE_CLASSES``, ``SHAPES_NORMALIZATION``) keeps
working through a lazy re-export.
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "IMAGENET_NORMALIZATION",
    "IMAGE_EXTENSIONS",
    "DataBundle",
    "from_image_folder",
    "from_zip",
    "sample_images",
    "train_transform",
    "val_transform",
]

Normalization = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std), one value per channel

IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"image_size={size!r} must be a positive int or a (height, width) pair, e.g. 224")


def _check_normalization(normalization: Any) -> Normalization:
    try:
        mean, std = normalization
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except (TypeError, ValueError):
        raise ValueError(
            f"normalization={normalization!r} must be (mean, std), e.g. ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))"
        ) from None
    if len(mean) != len(std) or not mean or any(s <= 0 for s in std):
        raise ValueError(f"normalization mean {mean} and std {std} need one value per channel and std > 0")
    return mean, std


# --------------------------------------------------------------------------- the bundle
@dataclass
class DataBundle:
    """Loaders and facts about one labelled image dataset (train and val splits)."""

    dataloaders: dict[str, DataLoader]  # {"train", "val"}
    class_names: list[str]  # index i is the name of label i
    dataset_sizes: dict[str, int]  # {"train", "val"}
    normalization: Normalization  # (mean, std) applied by the transforms; travels with the model
    image_size: tuple[int, int]  # (H, W) of every tensor the loaders yield
    datasets: dict[str, Dataset] = field(default_factory=dict)  # "train", "val" and "train_plain" (no augmentation)
    batch_size: int = 32
    augment: bool = True  # whether datasets["train"] applies random augmentation
    _keepalive: Any = field(default=None, repr=False)  # e.g. the temporary directory a zip was extracted into

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

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


def _make_bundle(
    train: Dataset,
    val: Dataset,
    train_plain: Dataset,
    class_names: list[str],
    normalization: Normalization,
    image_size: tuple[int, int],
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
        normalization=normalization,
        image_size=image_size,
        datasets={"train": train, "val": val, "train_plain": train_plain},
        batch_size=batch_size,
        augment=augment,
        _keepalive=keepalive,
    )


# --------------------------------------------------------------------------- transforms
def train_transform(image_size: int | tuple[int, int], normalization: Normalization = IMAGENET_NORMALIZATION,
                    augment: bool = True) -> Any:
    """RandomResizedCrop, horizontal flip, ColorJitter, ToTensor, Normalize (val transform if not augment)."""
    from torchvision import transforms as T

    if not augment:
        return val_transform(image_size, normalization)
    size = _pair(image_size)
    mean, std = _check_normalization(normalization)
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.6, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def val_transform(image_size: int | tuple[int, int], normalization: Normalization = IMAGENET_NORMALIZATION) -> Any:
    """Resize (to size / 0.875, the usual 224 <- 256 ratio), CenterCrop, ToTensor, Normalize."""
    from torchvision import transforms as T

    h, w = _pair(image_size)
    mean, std = _check_normalization(normalization)
    resize = (math.ceil(h / 0.875), math.ceil(w / 0.875))
    return T.Compose([
        T.Lambda(_to_rgb),
        T.Resize(resize),
        T.CenterCrop((h, w)),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


# --------------------------------------------------------------------------- image folders
def _class_dirs(folder: Path) -> list[str]:
    return sorted(
        d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "__MACOSX"
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in p.parts)
    )


class _FolderDataset(Dataset):
    """(path, label) samples read with PIL and passed through a transform."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Any) -> None:
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            image = _to_rgb(image)
            return self.transform(image), label


def _scan(folder: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    return [(path, label) for label, name in enumerate(class_names) for path in _image_files(folder / name)]


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
) -> DataBundle:
    """Labelled images from ``root/train/<class>/…`` + ``root/val/<class>/…`` or ``root/<class>/…``.

    With a single folder of class folders, each class is split into train/val deterministically
    (``val_fraction`` of its images, at least one, chosen by ``seed``).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a folder; pass a folder of class folders (or train/ and val/)")
    size = _pair(image_size)
    normalization = _check_normalization(normalization)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be between 0 and 1, e.g. 0.2")
    t_train = train_transform(size, normalization, augment)
    t_val = val_transform(size, normalization)

    if (root / "train").is_dir() and (root / "val").is_dir():
        class_names = _class_dirs(root / "train")
        val_classes = _class_dirs(root / "val")
        if class_names != val_classes:
            raise ValueError(
                f"train/ has classes {class_names} but val/ has {val_classes}; both need the same class folders"
            )
        train_samples, val_samples = _scan(root / "train", class_names), _scan(root / "val", class_names)
        _check_counts(class_names, train_samples, where=str(root / "train"), minimum=1)
        _check_counts(class_names, val_samples, where=str(root / "val"), minimum=1)
    else:
        class_names = _class_dirs(root)
        samples = _scan(root, class_names)
        _check_counts(class_names, samples, where=str(root), minimum=2)
        rng = np.random.default_rng(seed)
        train_samples, val_samples = [], []
        for label in range(len(class_names)):
            mine = [s for s in samples if s[1] == label]
            order = rng.permutation(len(mine))
            n_val = min(len(mine) - 1, max(1, round(val_fraction * len(mine))))
            val_samples += [mine[i] for i in sorted(order[:n_val])]
            train_samples += [mine[i] for i in sorted(order[n_val:])]

    return _make_bundle(
        _FolderDataset(train_samples, t_train),
        _FolderDataset(val_samples, t_val),
        _FolderDataset(train_samples, t_val),
        class_names,
        normalization,
        size,
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


# --------------------------------------------------------------------------- safe zip import
_DRIVE = re.compile(r"^[A-Za-z]:")


def _zip_member_path(name: str) -> PurePosixPath:
    """Validate a member name and return it as a relative POSIX path; refuse anything unsafe."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise ValueError(f"the zip member {name!r} has an absolute path; archives must use relative paths")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"the zip member {name!r} points outside the archive ('..'); refusing to extract it")
    if any(_DRIVE.match(p) for p in parts) or "\x00" in posix:
        raise ValueError(f"the zip member {name!r} has an invalid name")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _skipped(path: PurePosixPath) -> bool:
    return any(p == "__MACOSX" or p.startswith(".") for p in path.parts) or path.suffix.lower() not in IMAGE_EXTENSIONS


def from_zip(
    source: str | os.PathLike | bytes | io.IOBase,
    image_size: int | tuple[int, int] = 224,
    batch_size: int = 32,
    *,
    max_total_bytes: int = 200 * 2**20,
    max_members: int = 5000,
    max_ratio: float = 100.0,
    max_pixels: int = 50_000_000,
    **kwargs: Any,
) -> DataBundle:
    """A zip of class folders (optionally inside train/ and val/) read safely into a :class:`DataBundle`.

    Refuses with a ``ValueError`` anything that is not a zip, archives over ``max_members``
    entries or ``max_total_bytes`` uncompressed, members compressed more than ``max_ratio``
    times (zip bombs), absolute names, drive letters, ``..``, unreadable images, and fewer than
    2 classes with 2 images each. Skips ``__MACOSX``, hidden files and non-images. Extracts
    only into a private temporary directory that lives as long as the bundle.
    Other keyword arguments go to :func:`from_image_folder`.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        handle: Any = io.BytesIO(bytes(source))
    elif isinstance(source, io.IOBase):
        handle = source
    else:
        handle = Path(source)
        if not handle.is_file():
            raise ValueError(f"{str(handle)!r} is not a file; pass the path or the bytes of a .zip")
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"this is not a readable zip file ({exc}); upload a .zip of class folders") from None

    with archive:
        infos = archive.infolist()
        if not infos:
            raise ValueError("the zip is empty; it needs one folder per class with at least 2 images each")
        if len(infos) > max_members:
            raise ValueError(f"the zip has {len(infos)} entries; the limit is {max_members}. Upload fewer images")
        total = sum(i.file_size for i in infos)
        if total > max_total_bytes:
            raise ValueError(
                f"the zip unpacks to {total / 2**20:.1f} MiB; the limit is {max_total_bytes / 2**20:.0f} MiB. "
                "Upload fewer or smaller images"
            )
        members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        for info in infos:
            path = _zip_member_path(info.filename)
            if info.is_dir() or _skipped(path):
                continue
            if info.file_size > 1024 and info.file_size > max_ratio * max(info.compress_size, 1):
                raise ValueError(
                    f"the zip member {info.filename!r} is compressed {info.file_size / max(info.compress_size, 1):.0f} "
                    f"times (limit {max_ratio:.0f}); this looks like a zip bomb"
                )
            members.append((info, path))
        if not members:
            raise ValueError(
                f"the zip holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "put the images in one folder per class"
            )

        # Strip one wrapper folder ("data/cats/1.png" -> "cats/1.png") when everything sits in it.
        tops = {p.parts[0] for _, p in members}
        if len(tops) == 1 and all(len(p.parts) >= 3 for _, p in members):
            members = [(i, PurePosixPath(*p.parts[1:])) for i, p in members]
        loose = [str(p) for _, p in members if len(p.parts) < 2]
        if loose:
            raise ValueError(
                f"images must sit inside class folders; {loose[:3]} are at the top level of the zip"
            )

        tmp = tempfile.TemporaryDirectory(prefix="vitcore-zip-")
        root = Path(tmp.name).resolve()
        written = 0
        try:
            for info, path in members:
                target = (root / path).resolve()
                if root not in target.parents:  # belt and braces after the name checks above
                    raise ValueError(f"the zip member {info.filename!r} would be written outside the extraction folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 16):
                        written += len(chunk)
                        if written > max_total_bytes:  # headers can lie; count what actually comes out
                            raise ValueError(
                                f"the zip unpacks to more than {max_total_bytes / 2**20:.0f} MiB; upload fewer images"
                            )
                        dst.write(chunk)
                _check_image(target, path, max_pixels)
            bundle = from_image_folder(root, image_size, batch_size, **kwargs)  # either layout
        except BaseException:
            tmp.cleanup()
            raise
    bundle._keepalive = tmp  # the folder is removed when the bundle is garbage collected
    return bundle


def _check_image(target: Path, path: PurePosixPath, max_pixels: int) -> None:
    try:
        with Image.open(target) as image:
            w, h = image.size
            if w * h > max_pixels:
                raise ValueError(
                    f"{path} is {w}x{h} ({w * h / 1e6:.0f} MP); the limit is {max_pixels / 1e6:.0f} MP. Resize it"
                )
            image.verify()
    except ValueError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise ValueError(f"{path} is not a readable image ({type(exc).__name__}); remove it from the zip") from None


# --------------------------------------------------------------------------- sample photos
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry")


def sample_images(names: tuple[str, ...] = _SKIMAGE_PHOTOS) -> dict[str, Image.Image]:
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


# --------------------------------------------------------------------------- backwards compatibility
_MOVED_TO_SHAPES = frozenset({"SHAPE_CLASSES", "SHAPES_NORMALIZATION", "ShapesDataset", "shapes_bundle"})


def __getattr__(name: str) -> Any:
    """``from vitcore.data import shapes_bundle`` still works: the Shapes set moved to :mod:`vitcore.shapes`."""
    if name in _MOVED_TO_SHAPES:
        from . import shapes

        return getattr(shapes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
