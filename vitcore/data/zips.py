"""Safe zip uploads: a zip of class folders checked member by member (names, links, encryption,
sizes, compression ratios, pixels) and extracted into a private temporary folder, then read as an
image folder (:func:`vitcore.data.folders.from_image_folder`).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from .bundle import DataBundle
from .folders import IMAGE_EXTENSIONS, MAX_DEPTH, from_image_folder

__all__ = ["MAX_NAME_BYTES", "MAX_PATH_CHARS", "from_zip"]

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
    bundle.keepalive = tmp  # the folder is removed when the bundle is garbage collected
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

