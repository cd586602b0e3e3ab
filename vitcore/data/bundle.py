"""Data for training and exploring: image folders and safe zip uploads (Shapes: :mod:`vitcore.data.shapes`).

Every loader returns a :class:`DataBundle`, the seed tutorial's contract (``dataloaders``,
``class_names``, ``dataset_sizes``) plus what a model needs at inference time: the
normalisation statistics and the image size. ``DataBundle.datasets`` keeps the underlying
datasets so :func:`vitcore.train.fit` can rebuild seeded or distributed loaders.

The synthetic Shapes set lives in :mod:`vitcore.data.shapes`; the package ``vitcore.data``
exports both.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import tempfile
import zipfile
import zlib
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
    "as_pair",
    "check_normalization",
    "from_zip",
    "make_bundle",
    "train_transform",
    "val_transform",
]

Normalization = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std), one value per channel

IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


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


def _image_mode(normalization: Normalization) -> str:
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

    @property
    def preprocessing(self) -> Any:
        """The record the validation split applies; save it with a model trained on this data."""
        return val_transform(self.image_size, self.normalization)

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
    size = as_pair(image_size)
    mean, std = check_normalization(normalization)
    return T.Compose([
        T.Lambda(functools.partial(_convert, mode=_image_mode((mean, std)))),
        T.RandomResizedCrop(size, scale=(0.6, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def val_transform(image_size: int | tuple[int, int], normalization: Normalization = IMAGENET_NORMALIZATION) -> Any:
    """The validation split's preprocessing: PIL image -> normalised (C, H, W) tensor.

    It is the :class:`vitcore.data.images.Preprocessing` record that is saved with a model trained on
    this data (``DataBundle.preprocessing``) and that the app and the CLI apply, so a photo gets
    the same logits everywhere. Images become RGB, or grey when ``normalization`` has one value
    per channel.
    """
    from .images import Preprocessing

    return Preprocessing.for_model(as_pair(image_size), check_normalization(normalization))


def _convert(image: Image.Image, mode: str = "RGB") -> Image.Image:
    return image if image.mode == mode else image.convert(mode)


# --------------------------------------------------------------------------- image folders
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
                image = _convert(image, self.mode)
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
    mode = _image_mode(normalization)
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


MAX_NAME_BYTES = 255  # one file or folder name (the common file-system limit)
MAX_PATH_CHARS = 1024  # a whole member name


def _zip_member_path(name: str) -> PurePosixPath:
    """Validate a member name and return it as a relative POSIX path; refuse anything unsafe."""
    if len(name) > MAX_PATH_CHARS:
        raise ValueError(f"the zip member {name[:60]!r}… has a {len(name)}-character name; the limit is "
                         f"{MAX_PATH_CHARS}. Shorten the folder and file names")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise ValueError(f"the zip member {name!r} has an absolute path; archives must use relative paths")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"the zip member {name!r} points outside the archive ('..'); refusing to extract it")
    if any(_DRIVE.match(p) for p in parts) or "\x00" in posix:
        raise ValueError(f"the zip member {name!r} has an invalid name")
    long = [p for p in parts if len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES]
    if long:
        raise ValueError(f"the zip member {name[:60]!r}… has a name part of {len(long[0])} characters; the limit is "
                         f"{MAX_NAME_BYTES} bytes. Shorten the folder and file names")
    if len(parts) > MAX_DEPTH + 3:  # wrapper/train/class + MAX_DEPTH sub-folders
        raise ValueError(f"the zip member {name[:60]!r}… is nested {len(parts) - 1} folders deep; the limit is "
                         f"{MAX_DEPTH + 2}. Keep each class's images in one folder")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


_FOLDER_OPTIONS = frozenset({"normalization", "augment", "val_fraction", "seed", "num_workers"})


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    """Unix zips store the file type in the top bits of external_attr; 0o120000 is a symbolic link."""
    return info.create_system == 3 and (info.external_attr >> 16) & 0o170000 == 0o120000


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
    unknown = sorted(set(kwargs) - _FOLDER_OPTIONS)
    if unknown:
        raise ValueError(f"from_zip() got unknown options {unknown}; it accepts {sorted(_FOLDER_OPTIONS)} "
                         "besides its own limits")
    if isinstance(source, (bytes, bytearray, memoryview)):
        handle: Any = io.BytesIO(bytes(source))
    elif isinstance(source, io.IOBase):
        handle = source
    elif isinstance(source, (str, os.PathLike)):
        handle = Path(source)
        try:
            is_file = handle.is_file()
        except OSError as exc:  # e.g. a name too long for the file system
            raise ValueError(f"{str(handle)[:80]!r} cannot be opened ({exc.strerror or exc}); check the path") from None
        if not is_file:
            raise ValueError(f"{str(handle)!r} is not a file; pass the path or the bytes of a .zip")
    else:
        raise ValueError(f"a zip is a path, bytes or a binary file object, got {type(source).__name__}")
    try:
        archive = zipfile.ZipFile(handle)
    except Exception as exc:  # zipfile raises many types (BadZipFile, OSError, EOFError, ValueError, ...)
        raise ValueError(f"this is not a readable zip file ({exc}); upload a .zip of class folders") from None
    try:
        return _from_archive(archive, image_size, batch_size, max_total_bytes, max_members, max_ratio, max_pixels,
                             kwargs)
    finally:
        archive.close()


def _from_archive(archive: zipfile.ZipFile, image_size: Any, batch_size: int, max_total_bytes: int, max_members: int,
                  max_ratio: float, max_pixels: int, kwargs: dict[str, Any]) -> DataBundle:
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
        if _is_symlink(info):
            raise ValueError(f"the zip member {info.filename!r} is a symbolic link; archives must hold plain "
                             "files (zip without following links, e.g. `zip -r` without -y)")
        if info.is_dir() or _skipped(path):
            continue
        if info.flag_bits & 0x1:
            raise ValueError(f"the zip member {info.filename!r} is encrypted; upload a zip without a password")
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
            written = _extract(archive, info, target, written, max_total_bytes)
            _check_image(target, path, max_pixels)
        bundle = from_image_folder(root, image_size, batch_size, **kwargs)  # either layout
    except BaseException:
        tmp.cleanup()
        raise
    bundle._keepalive = tmp  # the folder is removed when the bundle is garbage collected
    return bundle


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, written: int, limit: int) -> int:
    """Copy one member to ``target``, counting the bytes that really come out; returns the new total."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 16):
                written += len(chunk)
                if written > limit:  # headers can lie; count what actually comes out
                    raise ValueError(f"the zip unpacks to more than {limit / 2**20:.0f} MiB; upload fewer images")
                dst.write(chunk)
    except ValueError:
        raise
    except (OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"the zip member {info.filename!r} cannot be extracted ({type(exc).__name__}: {exc}); "
                         "the zip may be damaged or use an unsupported feature. Re-create it") from None
    return written


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
# --------------------------------------------------------------------------- backwards compatibility
