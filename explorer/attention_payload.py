"""Maps packed for the browser: one layer's attention (or any set of per-query maps) as uint8 rows.

A view of the Attention page shows, for every head, where one query patch looks. To redraw it on
hover without asking the server, the browser needs every query's row of every head at once:
(H, 1 + N, N) numbers for H heads, N patches and the CLS row. Each row is quantised on its own to
uint8, ``value = low + code * step``, so a map that peaks at 0.02 keeps 255 levels instead of
being crushed by a CLS weight of 0.9 (the prefix tokens' weights travel apart, exactly, as
float32). DINOv2 ViT-S/14 at 224 px (6 heads, 257 tokens) costs about 0.41 MB this way.

Above the byte budget (DINOv2 at 448 px would send 6.3 MB) the view falls back to the rows of one
query and the CLS row: the page then fetches a new query's rows from the server on click, and says so.
Nothing here imports Streamlit; ``components/attention_grid`` draws what is packed here.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BUDGET_BYTES = 1_000_000  # per view: maps, scales, prefix weights and the background image together
CLS_ROW = -1  # the row id of the CLS token's query (patch queries are 0..N-1)
FLOAT = np.dtype("<f4")  # little-endian float32: what the browser's Float32Array reads on every machine we serve


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


def quantise_rows(values: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantise each row (the last axis) of ``values`` to uint8: ``(codes, low, step)``.

    ``low`` and ``step`` have one entry per row; ``low + codes * step`` gives the values back
    within ``step / 2``. A row's range always includes 0 (``low = min(0, row min)``), so a row of
    non-negative weights has ``low = 0``, exact zeros stay exact and the error is at most
    ``row max / 510``, under 1/255 of the row's largest value.
    """
    v = np.asarray(values, dtype=np.float32)
    if v.ndim < 1 or v.shape[-1] == 0:
        raise ValueError(f"need rows of at least one value, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("the maps contain NaN or infinite values; check the model's output before packing it")
    low = np.minimum(v.min(axis=-1), 0.0)
    high = np.maximum(v.max(axis=-1), 0.0)
    step = (high - low) / 255.0
    safe = np.where(step > 0, step, 1.0)
    codes = np.rint((v - low[..., None]) / safe[..., None]).clip(0, 255).astype(np.uint8)
    return codes, low.astype(np.float32), step.astype(np.float32)


def dequantise_rows(codes: np.ndarray, low: np.ndarray, step: np.ndarray) -> np.ndarray:
    """``low + codes * step`` row by row (the inverse of :func:`quantise_rows`), float32."""
    return low[..., None] + codes.astype(np.float32) * step[..., None]


def view_bytes(panels: int, rows: int, patches: int, extras: int = 0, image: int = 0) -> int:
    """Bytes a view sends: uint8 codes, a float32 low and step per row, float32 prefix weights, the image."""
    return panels * rows * (patches + 2 * FLOAT.itemsize + extras * FLOAT.itemsize) + image


def attention_fits(heads: int, grid: tuple[int, int], num_prefix_tokens: int, image: int = 0,
                   budget: int = BUDGET_BYTES) -> bool:
    """Whether one layer's attention with every query's rows (:func:`attention_payload`) fits ``budget``."""
    N, p = grid[0] * grid[1], int(num_prefix_tokens)
    return view_bytes(heads, N + (p > 0), N, p, image) <= budget


def matrix_fits(panels: int, grid: tuple[int, int], image: int = 0, budget: int = BUDGET_BYTES) -> bool:
    """Whether (panels, N, N) patch-to-patch maps with every row (:func:`matrix_payload`) fit ``budget``."""
    N = grid[0] * grid[1]
    return view_bytes(panels, N, N, 0, image) <= budget


def encode_image(pixels: Any, quality: int = 85) -> bytes:
    """The background image (H, W, 3) uint8 as JPEG bytes: a 224 px photo is about 15 KB."""
    from PIL import Image

    arr = np.asarray(pixels)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"the background image must be (H, W, 3) RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0, 1) * 255).round().astype(np.uint8) if arr.max() <= 1.0 \
            else np.clip(arr, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass(frozen=True)
class MapPayload:
    """Per-query maps of K panels (heads) over a (gh, gw) patch grid, ready for the browser.

    Row ``r`` of every panel is the map of query ``rows[r]`` (:data:`CLS_ROW` for the CLS token,
    0..N-1 for a patch). ``fallback`` views hold only the rows the server was asked for.
    """

    grid: tuple[int, int]
    panels: int
    rows: tuple[int, ...]
    codes: bytes  # (panels, R, N) uint8, C order
    low: bytes  # (panels, R) float32: the value of code 0
    step: bytes  # (panels, R) float32: the value of one code step
    extra: bytes = b""  # (panels, R, E) float32: exact weights on the E prefix tokens (CLS first)
    extra_names: tuple[str, ...] = ()
    image: bytes = b""  # JPEG of the model's view of the image; empty draws the maps alone
    full_bytes: int = 0  # what the view with every query's rows would send
    budget: int = BUDGET_BYTES
    signed: bool = False  # True when values can be negative (cosines, some token mixers)
    id: str = field(default="", compare=False)  # a short digest of the content (the browser's cache key)

    @property
    def patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def fallback(self) -> bool:
        """True when the view holds only some queries' rows because all of them would exceed the budget."""
        return len(self.rows) < self.patches + (CLS_ROW in self.rows)

    @property
    def nbytes(self) -> int:
        """Bytes this payload sends (maps, scales, prefix weights, image)."""
        return len(self.codes) + len(self.low) + len(self.step) + len(self.extra) + len(self.image)

    def decode(self) -> np.ndarray:
        """The maps as the browser sees them, (panels, R, gh, gw) float32."""
        R = len(self.rows)
        codes = np.frombuffer(self.codes, dtype=np.uint8).reshape(self.panels, R, self.patches)
        low = np.frombuffer(self.low, dtype=FLOAT).reshape(self.panels, R)
        step = np.frombuffer(self.step, dtype=FLOAT).reshape(self.panels, R)
        return dequantise_rows(codes, low, step).reshape(self.panels, R, *self.grid)

    def extras(self) -> np.ndarray:
        """The prefix tokens' weights, (panels, R, E) float32 (E = 0 when there are none)."""
        E = len(self.extra_names)
        return np.frombuffer(self.extra, dtype=FLOAT).reshape(self.panels, len(self.rows), E)

    def row(self, query: int | None) -> int:
        """Index of ``query``'s row (None = CLS); ValueError when this view does not hold it."""
        wanted = CLS_ROW if query is None else int(query)
        if wanted not in self.rows:
            raise ValueError(f"this view holds queries {list(self.rows)} only (fallback); ask for query {wanted}")
        return self.rows.index(wanted)

    def fallback_note(self) -> str | None:
        """What the page says when the view is over the budget, or None."""
        if not self.fallback:
            return None
        return (f"This view would send {_size(self.full_bytes)} to the browser, over the {_size(self.budget)} "
                "budget: hovering does not preview other patches here. Click a patch and its maps come from "
                "the server.")

    def args(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        """(JSON description, binary arrays) for the browser component."""
        meta = {
            "id": self.id, "grid": list(self.grid), "panels": self.panels, "rows": list(self.rows),
            "extra_names": list(self.extra_names), "signed": self.signed, "fallback": self.fallback,
            "nbytes": self.nbytes, "full_bytes": self.full_bytes, "budget": self.budget,
        }
        blobs = {"codes": self.codes, "low": self.low, "step": self.step, "extra": self.extra, "image": self.image}
        return meta, blobs

    @classmethod
    def from_args(cls, meta: dict[str, Any], blobs: dict[str, bytes]) -> MapPayload:
        """The payload back from :meth:`args` (what a test reads out of a rendered page)."""
        return cls(
            grid=tuple(meta["grid"]), panels=int(meta["panels"]), rows=tuple(meta["rows"]),
            codes=bytes(blobs["codes"]), low=bytes(blobs["low"]), step=bytes(blobs["step"]),
            extra=bytes(blobs.get("extra", b"")), extra_names=tuple(meta["extra_names"]),
            image=bytes(blobs.get("image", b"")), full_bytes=int(meta["full_bytes"]), budget=int(meta["budget"]),
            signed=bool(meta["signed"]), id=str(meta["id"]),
        )


def pack(maps: Any, grid: tuple[int, int], rows: list[int] | tuple[int, ...], *, extra: Any = None,
         extra_names: tuple[str, ...] = (), image: bytes = b"", full_bytes: int | None = None,
         budget: int = BUDGET_BYTES) -> MapPayload:
    """Pack (K, R, N) maps (row r is the map of query ``rows[r]``) into a :class:`MapPayload`."""
    m = np.asarray(maps, dtype=np.float32)
    gh, gw = (int(g) for g in grid)
    if m.ndim != 3 or m.shape[2] != gh * gw or m.shape[1] != len(rows):
        raise ValueError(f"maps must be (panels, {len(rows)} rows, {gh * gw} patches) for a {gh}x{gw} grid, "
                         f"got {m.shape}")
    codes, low, step = quantise_rows(m)
    if extra is None:
        extra_arr = np.zeros((m.shape[0], m.shape[1], 0), dtype=FLOAT)
    else:
        extra_arr = np.ascontiguousarray(np.asarray(extra, dtype=np.float32), dtype=FLOAT)
        if extra_arr.shape != (m.shape[0], m.shape[1], len(extra_names)):
            raise ValueError(f"extra must be (panels, rows, {len(extra_names)}), got {extra_arr.shape}")
    parts = [codes.tobytes(), low.astype(FLOAT).tobytes(), step.astype(FLOAT).tobytes(), extra_arr.tobytes()]
    digest = hashlib.blake2b(digest_size=8)
    for part in (*parts, image, repr((gh, gw, tuple(rows), extra_names)).encode()):
        digest.update(part)
    return MapPayload(
        grid=(gh, gw), panels=int(m.shape[0]), rows=tuple(int(r) for r in rows), codes=parts[0], low=parts[1],
        step=parts[2], extra=parts[3], extra_names=tuple(extra_names), image=image,
        full_bytes=int(full_bytes if full_bytes is not None else sum(map(len, parts)) + len(image)),
        budget=budget, signed=bool((m < 0).any()), id=digest.hexdigest(),
    )


def _as_numpy(x: Any) -> np.ndarray:
    """A float32 array from a numpy array or a torch tensor of any float dtype (float16 maps included)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def attention_payload(attention: Any, grid: tuple[int, int], num_prefix_tokens: int, *, query: int = 0,
                      prefix_names: tuple[str, ...] | None = None, image: bytes = b"",
                      budget: int = BUDGET_BYTES) -> MapPayload:
    """One layer's attention for every head, (H, T, T) with T = prefix + N, packed for the browser.

    Rows: the CLS query, then every patch query, each over the N patch keys (the maps the page
    draws); the prefix keys' weights (CLS, registers) travel exactly in ``extra``. Over ``budget``
    only the CLS row and ``query``'s row are packed (the fallback).
    """
    gh, gw = (int(g) for g in grid)
    N, p = gh * gw, int(num_prefix_tokens)
    shape = tuple(attention.shape)
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] != p + N:
        raise ValueError(f"attention must be (heads, T, T) with T = {p} prefix + {N} patches, got {shape}")
    if not 0 <= int(query) < N:
        raise ValueError(f"query patch {query} is outside 0..{N - 1}")
    if prefix_names is None:
        prefix_names = ("CLS", *(f"prefix {i}" for i in range(1, p)))
    if len(prefix_names) != p:
        raise ValueError(f"{p} prefix tokens need {p} names, got {len(prefix_names)}")
    H = shape[0]
    full = view_bytes(H, N + (p > 0), N, p, len(image))
    fits = attention_fits(H, (gh, gw), p, len(image), budget)
    if p == 0:  # no CLS token (e.g. a mean-pooled model without one): the patch queries only
        rows = list(range(N)) if fits else [int(query)]
        tokens = rows
    else:
        rows = [CLS_ROW, *range(N)] if fits else [CLS_ROW, int(query)]
        tokens = [0 if r == CLS_ROW else p + r for r in rows]
    picked = _as_numpy(attention[:, tokens])  # (H, R, T): only the rows this view sends
    return pack(picked[:, :, p:], (gh, gw), rows, extra=picked[:, :, :p], extra_names=tuple(prefix_names),
                image=image, full_bytes=full, budget=budget)


def matrix_payload(matrix: Any, grid: tuple[int, int], *, query: int = 0, image: bytes = b"",
                   budget: int = BUDGET_BYTES) -> MapPayload:
    """(K, N, N) patch-to-patch maps (position cosine similarity, a token mixer's matrix) for the browser.

    Row q of panel k is the map of patch q. Over ``budget`` only ``query``'s row is packed.
    """
    m = matrix
    gh, gw = (int(g) for g in grid)
    N = gh * gw
    if len(m.shape) == 2:
        m = m[None]
    if len(m.shape) != 3 or tuple(m.shape[1:]) != (N, N):
        raise ValueError(f"need (panels, {N}, {N}) maps for a {gh}x{gw} grid, got {tuple(matrix.shape)}")
    if not 0 <= int(query) < N:
        raise ValueError(f"query patch {query} is outside 0..{N - 1}")
    K = m.shape[0]
    full = view_bytes(K, N, N, 0, len(image))
    rows = list(range(N)) if matrix_fits(K, (gh, gw), len(image), budget) else [int(query)]
    return pack(_as_numpy(m[:, rows]), (gh, gw), rows, image=image, full_bytes=full, budget=budget)


# --------------------------------------------------------------------------- what the browser shows
def next_selection(record: dict | None, desired: tuple[int, int], picked: Any) -> dict:
    """Which selection to send to the browser, so that a click in it costs no resend of the maps.

    The browser keeps the query and head the user clicked; the page sends a selection only when
    it should override that (a number typed, a link opened, a fresh component). ``record`` is what
    was sent before (None at first), ``desired`` the page's (query, head) and ``picked`` the
    component's last report (``{"query", "head", "seq"}`` or None). Returns the new record; its
    ``query``, ``head`` and ``nonce`` go to the browser, which adopts them when the nonce changes.
    The arguments (and the maps with them) stay byte-identical while the user only clicks, so
    Streamlit sends a reference instead of the maps again.
    """
    rec = dict(record or {"query": None, "head": None, "nonce": 0, "shown": None, "seen": None})
    seq = picked.get("seq") if isinstance(picked, dict) else None
    if seq is None and rec["seen"] is not None:
        rec["shown"], rec["seen"] = None, None  # the component's value is gone: it was mounted anew
    elif seq is not None and seq != rec["seen"]:
        try:
            rec["shown"] = (int(picked["query"]), int(picked["head"]))
        except (KeyError, TypeError, ValueError):
            rec["shown"] = None
        rec["seen"] = seq
    desired = (int(desired[0]), int(desired[1]))
    if rec["shown"] != desired:
        rec.update(query=desired[0], head=desired[1], nonce=rec["nonce"] + 1, shown=desired)
    return rec
