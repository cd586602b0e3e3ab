"""One byte budget for everything the app keeps between clicks: traces, figures, small maps.

A count (``max_entries=64``) says nothing about memory: 64 traces of the tiny preset at P=16 are
0.5 GB, 64 at P=4 are 90 GB. :class:`ByteCache` counts bytes instead (``Trace.nbytes()`` for
traces, the JSON length for figures, ``ndarray.nbytes`` for maps) and drops the least recently
used entries until a new one fits. It never holds an entry larger than the whole budget: work
that big is refused by :mod:`explorer.guard` before it starts, and :meth:`ByteCache.get_or_compute`
returns such a result without keeping it.

Thread-safe: every session of the server shares one cache (``shared_cache()``). When several
sessions ask for the same missing entry at once (30 students opening the same sample), one
computes it and the others wait for its result instead of computing it 30 times.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

__all__ = ["ByteCache", "CacheStats", "DEFAULT_CACHE_MB", "cache_bytes", "deep_nbytes", "return_large_frees_to_os",
           "shared_cache"]

# 2 GB by default, sized for a 16 GB teacher's laptop: the OS, the teacher's own browser and
# the Python server with torch loaded (~1 GB) take 4-6 GB; the models live outside this budget
# (DINOv2 ViT-S/14 is 88 MB, the guard refuses models above the budget); the largest allowed
# forward pass needs about as much working memory again as the trace it produces. 2 GB of
# cached results plus those leaves more than half of the machine free.
DEFAULT_CACHE_MB = 2048


def cache_bytes() -> int:
    """The byte budget: ``EXPLORER_CACHE_MB`` megabytes (default 2048); bad values fall back to it."""
    raw = os.environ.get("EXPLORER_CACHE_MB", "")
    try:
        mb = float(raw) if raw.strip() else DEFAULT_CACHE_MB
    except ValueError:
        mb = DEFAULT_CACHE_MB
    if not mb > 0:
        mb = DEFAULT_CACHE_MB
    return int(mb * 2**20)


def deep_nbytes(value: Any, _seen: set[int] | None = None) -> int:
    """Bytes held by a result: arrays and tensors (``nbytes``; a storage shared by two views counts
    once), through dicts, lists, tuples and dataclasses, plus 64 bytes for every other object.

    What a cache entry of maps, curves or a randomisation check costs, without knowing its type.
    """
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if hasattr(value, "untyped_storage"):  # a torch tensor: its storage, once
        storage = value.untyped_storage()
        key = ("storage", storage.data_ptr())
        if key in seen:
            return 64
        seen.add(key)
        return int(storage.nbytes()) + 64
    if hasattr(value, "nbytes") and hasattr(value, "dtype"):  # a numpy array or scalar
        return int(value.nbytes) + 64
    if isinstance(value, (bytes, bytearray, str)):
        return len(value) + 64
    if isinstance(value, dict):
        return 64 + sum(deep_nbytes(k, seen) + deep_nbytes(v, seen) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return 64 + sum(deep_nbytes(v, seen) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return 64 + sum(deep_nbytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    return 64


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache: bytes held, entries, and how it was used."""

    bytes: int
    max_bytes: int
    entries: int
    hits: int
    misses: int
    evictions: int


class ByteCache:
    """A least-recently-used mapping whose entries together stay within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes={max_bytes} must be positive")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()  # key -> (value, bytes)
        self._bytes = 0
        self._lock = threading.Lock()
        self._computing: dict[Hashable, threading.Lock] = {}  # key -> lock held while one thread computes it
        self._hits = self._misses = self._evictions = 0

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value for ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self._misses += 1
                return default
            self._items.move_to_end(key)
            self._hits += 1
            return item[0]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: Hashable, value: Any, nbytes: int) -> bool:
        """Store ``value`` as ``nbytes`` bytes, evicting the least recently used; False if it can never fit."""
        nbytes = max(int(nbytes), 0)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if nbytes > self.max_bytes:
                return False
            while self._items and self._bytes + nbytes > self.max_bytes:
                _, (_, size) = self._items.popitem(last=False)
                self._bytes -= size
                self._evictions += 1
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            return True

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any], size: Callable[[Any], int]) -> Any:
        """The cached value, or ``compute()`` stored under ``size(value)`` bytes.

        Concurrent callers of the same missing key wait for the first one; errors are not cached.
        """
        missing = object()
        value = self.get(key, missing)
        if value is not missing:
            return value
        with self._lock:
            key_lock = self._computing.setdefault(key, threading.Lock())
        with key_lock:
            value = self.get(key, missing)  # another thread may have finished it meanwhile
            if value is missing:
                try:
                    value = compute()
                    self.put(key, value, size(value))
                finally:
                    with self._lock:
                        self._computing.pop(key, None)
        return value

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        """Bytes, entries and counters at this moment."""
        with self._lock:
            return CacheStats(self._bytes, self.max_bytes, len(self._items), self._hits, self._misses,
                              self._evictions)


MMAP_THRESHOLD_BYTES = 4 * 2**20


def return_large_frees_to_os(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make glibc serve every allocation of ``threshold`` bytes or more by mmap, so freeing it returns it to the OS.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which the
    per-layer tensors of a trace (e.g. 21 MB of attention per layer at 384 px) come from the heap,
    and an evicted trace leaves holes the heap cannot give back: measured on twenty uploads at the
    heaviest allowed setting, RSS rose 250-570 MB above the cache's 200 MB budget with the dynamic
    threshold and stayed within 290 MB with a fixed 4 MB one. Fixing the threshold (``mallopt``)
    turns the adjustment off. Returns False where there is no glibc (macOS, Windows, musl): nothing changes.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # M_MMAP_THRESHOLD in glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, int(threshold)))


@functools.lru_cache(maxsize=1)
def shared_cache() -> ByteCache:
    """The one cache of this server process, sized by ``EXPLORER_CACHE_MB`` when first used.

    Creating it also fixes the allocator's mmap threshold (:func:`return_large_frees_to_os`), so
    what the cache evicts leaves the process instead of fragmenting its heap.
    """
    return_large_frees_to_os()
    return ByteCache(cache_bytes())
