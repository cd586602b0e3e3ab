"""Fetching pretrained weights into the standard caches, only when asked.

Nothing in vitcore downloads on its own: the converters read the torch.hub and Hugging Face
caches and fail at once, naming the path, when a file is missing. :func:`download` is the one
explicit call (an app runs it from a button) that fills those caches:

- ``"torchvision:vit_b_16"`` -> ``torch.hub.get_dir()/checkpoints/vit_b_16-c867db91.pth``, the file
  ``load_state_dict_from_url`` would write, checked against the sha256 prefix in its name and read
  back as tensors (``weights_only=True``);
- ``"hf:facebook/dinov2-small"`` (or just the id) -> the Hugging Face cache
  (``huggingface_hub.hf_hub_download``: config.json, preprocessor_config.json when there is one,
  and model.safetensors, else pytorch_model.bin), the weights checked after the download.

The size is known before any byte is fetched (HEAD request, Hub file metadata; ``None`` when the
server does not say), progress goes to ``progress(done_bytes, total_bytes)``, and without a
network the call fails within about two seconds with a ValueError that says where to put the
file by hand. A download that breaks off or a file that fails its check leaves nothing in the
cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .common import strip_prefix
from .hf import HUB_ID_PATTERN, hf_cached, hf_offline
from .torchvision import TORCHVISION_NAMES, torchvision_weights

__all__ = ["HF_DOWNLOAD_FILES", "ProgressCallback", "cached_path", "download", "download_size"]

ProgressCallback = Callable[[int, "int | None"], None]  # (done_bytes, total_bytes or None when unknown)

# What download() fetches from a Hugging Face repo: (file, required). Of the weights, the first that
# exists is taken; sharded checkpoints (*.index.json) are not fetched.
HF_DOWNLOAD_FILES = ("config.json", "preprocessor_config.json")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_PROBE_SECONDS = 1.5  # name lookup + TCP connect budget: without a network, fail well within 2 s
_CHUNK = 1 << 16  # 64 KiB: a progress report every few milliseconds on a fast line
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torch.hub.HASH_REGEX: "vit_b_16-c867db91.pth"


@dataclass(frozen=True)
class _Source:
    kind: str  # "torchvision" | "hf"
    name: str  # torchvision model name or hub id


def _parse(source: str) -> _Source:
    if not isinstance(source, str) or not source.strip():
        raise ValueError("give a source such as 'torchvision:vit_b_16' or 'hf:facebook/dinov2-small'")
    text = source.strip()
    if text.startswith("torchvision:"):
        name = strip_prefix(text, "torchvision:")
        if name not in TORCHVISION_NAMES:
            raise ValueError(f"unknown torchvision ViT {name!r}; choose one of {list(TORCHVISION_NAMES)}")
        return _Source("torchvision", name)
    repo_id = strip_prefix(text, "hf:")
    if HUB_ID_PATTERN.match(repo_id) and ".." not in repo_id:
        return _Source("hf", repo_id)
    raise ValueError(
        f"{source!r} is not a source download() knows: use 'torchvision:<name>' ({', '.join(TORCHVISION_NAMES)}) "
        f"or a Hugging Face id 'hf:org/name'"
    )


# --------------------------------------------------------------------------- network
def _probe(url: str) -> None:
    """Raise OSError unless the host of ``url`` resolves and accepts a TCP connection within the budget."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=_PROBE_SECONDS).close()
            result.append(None)
        except OSError as err:
            result.append(err)

    # Name resolution ignores socket timeouts, so the whole probe runs in a thread we stop waiting for.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(_PROBE_SECONDS)
    if not result:
        raise OSError(f"no answer from {host}:{port} within {_PROBE_SECONDS} s")
    if result[0] is not None:
        raise result[0]


def _torchvision_target(name: str, weights: Any, url: str | None) -> tuple[str, Path]:
    enum = torchvision_weights(name, weights)
    url = url or enum.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _hf_endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _hf_repo_cache(repo_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def _no_network(what: str, err: BaseException, where: str) -> ValueError:
    return ValueError(f"no network: cannot reach {what} ({err}). {where}")


def _check_network(src: _Source, url: str, dest: Path | None) -> None:
    if src.kind == "hf" and hf_offline():
        raise _no_network("the Hugging Face Hub", OSError("HF_HUB_OFFLINE is set"), _hf_manual_hint(src.name))
    try:
        _probe(url)
    except OSError as err:
        if src.kind == "hf":
            raise _no_network(urlparse(url).netloc, err, _hf_manual_hint(src.name)) from None
        raise _no_network(
            urlparse(url).netloc,
            err,
            f"Put the file at {dest} (download {url} on a machine with internet and copy it there), or set "
            f"TORCH_HOME to a cache that has it",
        ) from None


def _hf_manual_hint(repo_id: str) -> str:
    return (
        f"Put the files (config.json, model.safetensors) in a folder and load that folder, or fill the Hugging "
        f"Face cache at {_hf_repo_cache(repo_id)} on a machine with internet (`hf download {repo_id}`) and copy it"
    )


# --------------------------------------------------------------------------- torchvision
def _head_size(url: str, timeout: float) -> int | None:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
    except (OSError, http.client.HTTPException):
        return None
    return int(length) if length and length.isdigit() else None


def _fetch_url(url: str, dest: Path, progress: ProgressCallback, timeout: float) -> Path:
    """Stream ``url`` to a temporary file beside ``dest``; check length and name hash; then rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    total = _head_size(url, timeout)
    progress(0, total)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".partial")
    tmp = Path(tmp_name)
    digest, done = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    if length and length.isdigit():
                        total = int(length)
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        progress(done, total)
            except (OSError, http.client.HTTPException) as err:
                reason = (
                    f"HTTP {err.code}" if isinstance(err, urllib.error.HTTPError) else str(err) or type(err).__name__
                )
                raise ValueError(
                    f"the download of {url} stopped after {done} of {total if total is not None else 'unknown'} "
                    f"bytes ({reason}); nothing was kept in the cache, try again"
                ) from err
        if total is not None and done != total:
            raise ValueError(
                f"the download of {url} stopped after {done} of {total} bytes (the connection closed early); "
                f"nothing was kept in the cache, try again"
            )
        match = _HASH_IN_NAME.search(dest.name)
        if match and not digest.hexdigest().startswith(match.group(1)):
            raise ValueError(
                f"the file downloaded from {url} is corrupt: its sha256 starts with {digest.hexdigest()[:12]}, "
                f"but its name {dest.name} promises {match.group(1)}. It was removed; try again"
            )
        try:  # tensors only, memory-mapped: a quick look that this is a state dict torch can read
            torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            raise ValueError(
                f"the file downloaded from {url} is corrupt: torch cannot read it as weights ({err}). It was "
                f"removed; try again"
            ) from err
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# --------------------------------------------------------------------------- Hugging Face
def _hf_plan(repo_id: str, endpoint: str, timeout: float) -> list[tuple[str, int | None]]:
    """[(filename, size or None)] to fetch: config.json, preprocessor_config.json if any, the weights file."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    def size_of(filename: str) -> tuple[bool, int | None]:
        url = hf_hub_url(repo_id, filename, endpoint=endpoint)
        try:
            meta = get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint)
        except EntryNotFoundError:
            return False, None
        except RepositoryNotFoundError as err:
            raise ValueError(f"there is no model {repo_id!r} on {endpoint} (or it is private or gated)") from err
        except Exception as err:
            raise ValueError(f"could not ask {endpoint} about {repo_id}/{filename}: {err}") from err
        return True, meta.size

    plan = []
    for filename in HF_DOWNLOAD_FILES:
        exists, size = size_of(filename)
        if exists:
            plan.append((filename, size))
        elif filename == "config.json":
            raise ValueError(f"{repo_id!r} on {endpoint} has no config.json; it is not a transformers model")
    for filename in HF_WEIGHTS:
        exists, size = size_of(filename)
        if exists:
            return [*plan, (filename, size)]
    raise ValueError(
        f"{repo_id!r} on {endpoint} has none of {list(HF_WEIGHTS)} (sharded checkpoints are not fetched here; "
        f"use `hf download {repo_id}`)"
    )


class _Bar:
    """Stands in for tqdm inside huggingface_hub's downloader: forwards byte counts to the callback."""

    def __init__(self, report: Callable[[int], None], **_: Any) -> None:
        self.report = report
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n
        self.report(n)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    def close(self) -> None:
        return None


def _remove_cached(path: str) -> None:
    """Remove a cached Hugging Face file: the snapshot link and the blob it points to."""
    link = Path(path)
    with contextlib.suppress(OSError):
        blob = link.resolve()
        if blob != link:
            blob.unlink(missing_ok=True)
    link.unlink(missing_ok=True)


def _check_weights(path: str, repo_id: str) -> None:
    """Refuse (and remove) a downloaded weights file that is not what its name says."""
    problem = None
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                f.keys()
        except Exception as err:
            problem = f"not a valid safetensors file ({err})"
    else:
        import zipfile

        if not zipfile.is_zipfile(path):
            problem = "not a torch zip archive"
    if problem:
        _remove_cached(path)
        raise ValueError(
            f"the weights downloaded for {repo_id} ({os.path.basename(path)}) are corrupt: {problem}. "
            f"The file was removed from the cache; try again"
        )


def _fetch_hf(repo_id: str, endpoint: str, progress: ProgressCallback, timeout: float) -> Path:
    from huggingface_hub import hf_hub_download

    plan = _hf_plan(repo_id, endpoint, timeout)
    sizes = [size for _, size in plan]
    total = None if any(s is None for s in sizes) else sum(sizes)
    progress(0, total)
    done = 0

    def report(n: int) -> None:
        nonlocal done
        done += n
        progress(done, total)

    paths = {}
    for filename, _size in plan:
        try:
            paths[filename] = hf_hub_download(
                repo_id, filename, endpoint=endpoint, etag_timeout=timeout, tqdm_class=lambda **kw: _Bar(report, **kw)
            )
        except Exception as err:
            raise ValueError(
                f"the download of {filename} from {repo_id} failed ({type(err).__name__}: {err}); no partial file "
                f"was kept in the cache, try again"
            ) from err
    _check_weights(paths[plan[-1][0]], repo_id)
    return Path(paths["config.json"]).parent


# --------------------------------------------------------------------------- public API
def cached_path(source: str, *, weights: Any = "DEFAULT", url: str | None = None) -> Path | None:
    """The cached copy of ``source`` (torchvision: the file; Hugging Face: the snapshot folder), or None."""
    src = _parse(source)
    if src.kind == "torchvision":
        _, dest = _torchvision_target(src.name, weights, url)
        return dest if dest.is_file() else None
    config = hf_cached(src.name, "config.json")
    if config is None or not any(hf_cached(src.name, f) for f in HF_WEIGHTS):
        return None
    return Path(config).parent


def download_size(
    source: str, *, weights: Any = "DEFAULT", url: str | None = None, endpoint: str | None = None, timeout: float = 10.0
) -> int | None:
    """Bytes :func:`download` would fetch (0 when already cached), or None when the server does not say.

    Asks the server only (HEAD request / Hub file metadata); raises the same "no network"
    ValueError as :func:`download` within about two seconds when it cannot be reached.
    """
    src = _parse(source)
    if cached_path(source, weights=weights, url=url) is not None:
        return 0
    if src.kind == "torchvision":
        target, dest = _torchvision_target(src.name, weights, url)
        _check_network(src, target, dest)
        return _head_size(target, timeout)
    base = _hf_endpoint(endpoint)
    _check_network(src, base, None)
    sizes = [size for _, size in _hf_plan(src.name, base, timeout)]
    return None if any(s is None for s in sizes) else sum(sizes)


def download(
    source: str,
    progress: ProgressCallback | None = None,
    *,
    weights: Any = "DEFAULT",
    url: str | None = None,
    endpoint: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """Fetch the weights of ``source`` into the standard cache; returns the cached file or snapshot folder.

    ``source``: ``"torchvision:<name>"`` (``weights``: the weights enum member or its name,
    "DEFAULT" by default; ``url`` replaces the weights' URL, e.g. for a mirror) or a Hugging Face id
    ``"hf:org/name"`` / ``"org/name"`` (``endpoint``, else ``HF_ENDPOINT``, else huggingface.co).
    ``progress(done_bytes, total_bytes)`` is called first with ``(0, total)`` -- ``total`` is
    None when the server does not give sizes -- then as bytes arrive; an exception raised by it
    cancels the download. Already cached: returns at once without the network. Errors are
    ValueErrors that say what to do: no network (within about 2 s, naming where to put the file),
    an interrupted download or a corrupt file (hash in the torchvision file name, invalid
    safetensors); in those cases nothing partial or corrupt stays in the cache.
    """
    src = _parse(source)
    report: ProgressCallback = progress or (lambda _done, _total: None)
    if src.kind == "torchvision":
        target, dest = _torchvision_target(src.name, weights, url)
        if dest.is_file():
            size = dest.stat().st_size
            report(size, size)
            return dest
        _check_network(src, target, dest)
        return _fetch_url(target, dest, report, timeout)
    cached = cached_path(source)
    if cached is not None:
        size = sum(f.stat().st_size for f in cached.iterdir() if f.is_file())
        report(size, size)
        return cached
    base = _hf_endpoint(endpoint)
    _check_network(src, base, None)
    return _fetch_hf(src.name, base, report, timeout)
