"""Plotly figures for the explorer. Pure functions: arrays in, ``go.Figure`` out.

Every patch-level figure hovers with the patch index (row-major, as in ``patchify``) and its
value, and carries a transparent marker per patch so a click selects that patch (Streamlit's
plotly selection events report the marker's ``customdata`` = patch index).
Images travel as one compressed PNG, keeping each figure well under 2 MB.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import threading

import numpy as np
import plotly.graph_objects as go
from PIL import Image

__all__ = [
    "image_with_grid",
    "heatmap_over_image",
    "head_maps",
    "matrix_heatmap",
    "similarity_grid",
    "filters_figure",
    "distance_figure",
    "topk_bars",
    "activation_curves",
    "curves_figure",
    "confusion_figure",
    "selected_patch",
    "to_csv",
    "FrozenFigure",
    "freeze",
]

MARGIN = dict(l=0, r=0, t=30, b=0)


def _png_uri(arr: np.ndarray) -> str:
    """uint8 (H, W, 3) array -> data URI of a PNG (memoised: pages redraw the same image often)."""
    arr = np.ascontiguousarray(arr)
    key = (arr.shape, hashlib.blake2b(arr.tobytes(), digest_size=16).digest())
    with _PNG_LOCK:
        uri = _PNG_CACHE.get(key)
    if uri is None:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        with _PNG_LOCK:
            if len(_PNG_CACHE) >= 64:
                _PNG_CACHE.pop(next(iter(_PNG_CACHE)))
            _PNG_CACHE[key] = uri
    return uri


_PNG_CACHE: dict[tuple, str] = {}
_PNG_LOCK = threading.Lock()


def _as_uint8(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * 255.0 if arr.max() <= 1.0 else arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr


def _upsample(image: np.ndarray, min_side: int = 224) -> tuple[np.ndarray, int]:
    """Nearest-neighbour upscaling of small images (32×32 Shapes) so patches stay crisp."""
    factor = max(1, int(np.ceil(min_side / max(1, min(image.shape[:2])))))
    if factor > 1:
        image = np.kron(image, np.ones((factor, factor, 1), dtype=np.uint8))
    return image, factor


def _patch_markers(grid: tuple[int, int], cell: float, values: np.ndarray | None = None, name: str = "value"):
    """One invisible, clickable marker at the centre of each patch (customdata = patch index)."""
    gh, gw = grid
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    text = None
    if values is not None:
        text = [f"{name}: {v:.4g}" for v in np.asarray(values).reshape(-1)]
    return go.Scatter(
        x=(cols + 0.5) * cell,
        y=(rows + 0.5) * cell,
        mode="markers",
        marker=dict(size=max(6, cell * 0.9), opacity=0.01, color="white", symbol="square"),
        customdata=np.arange(gh * gw),
        text=text,
        hovertemplate="patch %{customdata}" + ("<br>%{text}" if text else "") + "<extra></extra>",
        showlegend=False,
    )


def _image_layout(fig: go.Figure, width: float, height: float, title: str = "") -> go.Figure:
    fig.update_xaxes(visible=False, range=[0, width], constrain="domain")
    fig.update_yaxes(visible=False, range=[height, 0], scaleanchor="x")
    # no dragmode here: with points-only selection Streamlit sets pan + click-to-select itself
    fig.update_layout(margin=MARGIN, title=title, height=420)
    return fig


def image_with_grid(image, patch_size: int, highlight: int | None = None, title: str = "") -> go.Figure:
    """The model-sized image with its patch grid drawn and clickable patches."""
    arr, factor = _upsample(_as_uint8(image))
    h, w = arr.shape[:2]
    cell = patch_size * factor
    grid = (h // cell, w // cell)
    fig = go.Figure(go.Image(source=_png_uri(arr), hoverinfo="skip"))
    for r in range(1, grid[0]):
        fig.add_shape(type="line", x0=0, x1=w, y0=r * cell, y1=r * cell, line=dict(color="white", width=1))
    for c in range(1, grid[1]):
        fig.add_shape(type="line", x0=c * cell, x1=c * cell, y0=0, y1=h, line=dict(color="white", width=1))
    if highlight is not None:
        r, c = divmod(int(highlight), grid[1])
        fig.add_shape(type="rect", x0=c * cell, x1=(c + 1) * cell, y0=r * cell, y1=(r + 1) * cell,
                      line=dict(color="red", width=3))
    fig.add_trace(_patch_markers(grid, cell))
    return _image_layout(fig, w, h, title)


def heatmap_over_image(
    image, heat: np.ndarray, title: str = "", highlight: int | None = None, opacity: float = 0.55,
    colorscale: str = "Inferno", name: str = "value",
) -> go.Figure:
    """A (gh, gw) map drawn over the image, one cell per patch, hover = patch index and value."""
    heat = np.asarray(heat, dtype=np.float64)
    arr, _ = _upsample(_as_uint8(image))
    h, w = arr.shape[:2]
    gh, gw = heat.shape
    cell_h, cell_w = h / gh, w / gw
    fig = go.Figure(go.Image(source=_png_uri(arr), hoverinfo="skip"))
    fig.add_trace(go.Heatmap(
        z=heat, x0=cell_w / 2, dx=cell_w, y0=cell_h / 2, dy=cell_h, colorscale=colorscale, opacity=opacity,
        hoverinfo="skip", colorbar=dict(thickness=10),
    ))
    fig.add_trace(_patch_markers((gh, gw), cell_w, heat, name))
    if highlight is not None:
        r, c = divmod(int(highlight), gw)
        fig.add_shape(type="rect", x0=c * cell_w, x1=(c + 1) * cell_w, y0=r * cell_h, y1=(r + 1) * cell_h,
                      line=dict(color="cyan", width=3))
    return _image_layout(fig, w, h, title)


def head_maps(maps: np.ndarray, titles: list[str], cols: int = 4, zmax: float | None = None) -> go.Figure:
    """Small multiples of (K, gh, gw) maps (e.g. every head for one query) as one tiled heatmap.

    One trace instead of K subplots keeps the figure fast to build and small to send; hover
    gives the map's title, the patch index and the value.
    """
    maps = np.asarray(maps, dtype=np.float64)
    k, gh, gw = maps.shape
    cols = max(1, min(cols, k))
    rows = int(np.ceil(k / cols))
    tile = np.full((rows * (gh + 1) - 1, cols * (gw + 1) - 1), np.nan)
    index = np.full(tile.shape, -1)
    names = np.full(tile.shape, "", dtype=object)
    patch_ids = np.arange(gh * gw).reshape(gh, gw)
    annotations = []
    for i, m in enumerate(maps):
        r, c = divmod(i, cols)
        rs, cs = slice(r * (gh + 1), r * (gh + 1) + gh), slice(c * (gw + 1), c * (gw + 1) + gw)
        tile[rs, cs], index[rs, cs], names[rs, cs] = m, patch_ids, titles[i]
        annotations.append(dict(x=c * (gw + 1) + (gw - 1) / 2, y=r * (gh + 1) - 0.9, text=titles[i],
                                showarrow=False, yanchor="bottom", font=dict(size=12)))
    fig = go.Figure(go.Heatmap(
        z=tile, customdata=np.dstack([index, names]), colorscale="Inferno", zmin=0, zmax=zmax, hoverongaps=False,
        hovertemplate="%{customdata[1]}<br>patch %{customdata[0]}<br>value %{z:.4f}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", visible=False, scaleanchor="x")
    fig.update_xaxes(visible=False)
    fig.update_layout(annotations=annotations, margin=dict(l=0, r=0, t=25, b=0), height=max(220, 200 * rows))
    return fig


def matrix_heatmap(matrix: np.ndarray, title: str, x_title: str, y_title: str, max_rows: int = 256) -> go.Figure:
    """A 2-D matrix (e.g. the flattened patch matrix N × 3P²) as a heatmap, rows capped."""
    m = np.asarray(matrix, dtype=np.float32)[:max_rows]
    fig = go.Figure(go.Heatmap(z=m, colorscale="RdBu", zmid=0,
                               hovertemplate=y_title + " %{y}<br>" + x_title + " %{x}<br>%{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title=y_title)
    fig.update_xaxes(title=x_title)
    fig.update_layout(title=title, margin=dict(l=0, r=0, t=40, b=0), height=380)
    return fig


def similarity_grid(sim: np.ndarray, grid: tuple[int, int], highlight: int | None = None, title: str = "") -> go.Figure:
    """Fig. 7 (centre) style: one patch's similarity map, or a tiled overview of all patches."""
    gh, gw = grid
    sim = np.asarray(sim, dtype=np.float64)
    if highlight is not None:
        z = sim[int(highlight)]
        fig = go.Figure(go.Heatmap(z=z, colorscale="Viridis", zmin=-1, zmax=1,
                                   customdata=np.arange(gh * gw).reshape(gh, gw),
                                   hovertemplate="patch %{customdata}<br>cosine %{z:.3f}<extra></extra>"))
    else:
        # tile: row r, col c holds the (gh, gw) map of patch r*gw+c, with a 1-cell gap
        tile = np.full((gh * (gh + 1), gw * (gw + 1)), np.nan)
        for i in range(gh * gw):
            r, c = divmod(i, gw)
            tile[r * (gh + 1): r * (gh + 1) + gh, c * (gw + 1): c * (gw + 1) + gw] = sim[i]
        fig = go.Figure(go.Heatmap(z=tile, colorscale="Viridis", zmin=-1, zmax=1, hoverongaps=False,
                                   hovertemplate="cosine %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", visible=False, scaleanchor="x")
    fig.update_xaxes(visible=False)
    fig.update_layout(title=title, margin=MARGIN, height=420)
    return fig


def filters_figure(filters: np.ndarray, cols: int = 7) -> go.Figure:
    """Fig. 7 (left): principal components of the patch-embedding filters as small RGB tiles."""
    f = np.asarray(filters, dtype=np.float64)  # (k, C, P, P)
    k, c, p, _ = f.shape
    cols = min(cols, k)
    rows = int(np.ceil(k / cols))
    canvas = np.full((rows * (p + 1), cols * (p + 1), 3), 255, dtype=np.uint8)
    for i in range(k):
        tile = f[i].transpose(1, 2, 0)
        if c == 1:
            tile = np.repeat(tile, 3, axis=2)
        tile = tile[..., :3]
        lo, hi = tile.min(), tile.max()
        tile = (tile - lo) / (hi - lo) if hi > lo else np.zeros_like(tile)
        r, cc = divmod(i, cols)
        canvas[r * (p + 1): r * (p + 1) + p, cc * (p + 1): cc * (p + 1) + p] = (tile * 255).astype(np.uint8)
    canvas, _ = _upsample(canvas, 280)
    fig = go.Figure(go.Image(source=_png_uri(canvas), hoverinfo="skip"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    fig.update_layout(margin=MARGIN, title=f"first {k} principal components of the embedding filters", height=360)
    return fig


def distance_figure(distance: np.ndarray, patch_size: int) -> go.Figure:
    """Fig. 7 (right): mean attention distance of every head against depth."""
    d = np.asarray(distance, dtype=np.float64)  # (L, H)
    L, H = d.shape
    fig = go.Figure()
    for h in range(H):
        fig.add_trace(go.Scatter(x=np.arange(L), y=d[:, h], mode="markers", name=f"head {h}",
                                 hovertemplate="layer %{x}<br>%{y:.1f} px<extra>head " + str(h) + "</extra>"))
    fig.update_layout(xaxis_title="network depth (layer)", yaxis_title="mean attention distance (pixels)",
                      margin=dict(l=0, r=0, t=30, b=0), height=360,
                      title=f"mean attention distance (patch {patch_size} px)")
    return fig


def plain_label(text: str) -> str:
    """A user's label shown as typed: plotly renders <b>, <a>, ... in labels, so the markup is escaped."""
    return html.escape(str(text), quote=False)


def topk_bars(probs: np.ndarray, names: list[str], k: int = 5, title: str = "top predictions") -> go.Figure:
    """Horizontal bars of the k most probable classes."""
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-p)[:k]
    fig = go.Figure(go.Bar(x=p[order][::-1], y=[plain_label(names[i]) for i in order][::-1], orientation="h",
                           hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_layout(xaxis=dict(range=[0, 1], tickformat=".0%"), margin=dict(l=0, r=0, t=30, b=0),
                      height=60 + 35 * len(order), title=title)
    return fig


def activation_curves() -> go.Figure:
    """GELU vs ReLU vs ELU on [-4, 3]."""
    x = np.linspace(-4, 3, 281)
    from math import erf

    gelu = np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in x])
    relu = np.maximum(x, 0)
    elu = np.where(x > 0, x, np.expm1(x))
    fig = go.Figure()
    for name, y in (("GELU", gelu), ("ReLU", relu), ("ELU", elu)):
        fig.add_trace(go.Scatter(x=x, y=y, name=name, mode="lines"))
    fig.update_layout(height=300, margin=dict(l=0, r=0, t=10, b=0), xaxis_title="x", yaxis_title="f(x)")
    return fig


def curves_figure(history: list[dict], keys: tuple[str, ...], title: str, x: str = "epoch") -> go.Figure:
    """Training curves from a list of metric dicts (one line per key present)."""
    fig = go.Figure()
    for key in keys:
        pts = [(h[x], h[key]) for h in history if key in h and h.get(key) is not None]
        if pts:
            xs, ys = zip(*pts)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=key))
    fig.update_layout(title=title, xaxis_title=x, height=300, margin=dict(l=0, r=0, t=40, b=0))
    return fig


def confusion_figure(matrix: np.ndarray, names: list[str]) -> go.Figure:
    """Confusion matrix, true classes down, predicted across."""
    m = np.asarray(matrix)
    names = [plain_label(n) for n in names]
    fig = go.Figure(go.Heatmap(z=m, x=names, y=names, colorscale="Blues", text=m, texttemplate="%{text}",
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title="true")
    fig.update_xaxes(title="predicted")
    fig.update_layout(height=360, margin=dict(l=0, r=0, t=30, b=0))
    return fig


def selected_patch(event) -> int | None:
    """Patch index from a Streamlit plotly selection event (first selected marker), if any."""
    if not event:
        return None
    selection = event.get("selection") if isinstance(event, dict) else getattr(event, "selection", None)
    if not selection:
        return None
    points = selection.get("points") if isinstance(selection, dict) else getattr(selection, "points", None)
    for point in points or []:
        data = point.get("customdata") if isinstance(point, dict) else None
        if isinstance(data, (list, tuple)):
            data = data[0] if data else None
        if data is not None:
            return int(data)
    return None


def to_csv(array: np.ndarray, header: str = "") -> bytes:
    """A 1-D or 2-D array as CSV bytes for a download button (row, col index columns for 2-D)."""
    arr = np.asarray(array)
    buf = io.StringIO()
    if arr.ndim == 1:
        arr = arr[:, None]
    if header:
        buf.write(header + "\n")
    np.savetxt(buf, arr.reshape(arr.shape[0], -1), delimiter=",", fmt="%.6g")
    return buf.getvalue().encode()


class FrozenFigure(go.Figure):
    """A read-only figure whose plain-JSON form is computed once: serialising it again is one dump.

    ``st.plotly_chart`` turns a figure into a dict (a deep copy), converts its arrays to base64 and
    writes JSON on every script run. A figure shared by many sessions (a cached one) pays that once
    here: :meth:`to_dict` returns the stored JSON form (plain lists, strings and numbers, arrays
    already base64), so ``plotly.io.to_json`` of it is the same text as of the original figure.
    Do not change a frozen figure (``update_layout`` and the like would not reach :meth:`to_dict`):
    freeze a new one instead.
    """

    def __init__(self, figure: go.Figure) -> None:
        import json

        import plotly.io

        super().__init__(figure, _validate=False)  # a go.Figure is valid already
        text = plotly.io.to_json(figure, validate=False)
        self._frozen_dict = json.loads(text)
        self._frozen_bytes = len(text)

    def to_dict(self) -> dict:
        """The figure's JSON form, shared: read it, never change it."""
        return self._frozen_dict

    def to_plotly_json(self) -> dict:
        return self._frozen_dict

    @property
    def json_bytes(self) -> int:
        """Length of the figure's JSON text (what a browser receives)."""
        return self._frozen_bytes


def freeze(figure: go.Figure) -> FrozenFigure:
    """``figure`` as a :class:`FrozenFigure` (a frozen one is returned as it is)."""
    if isinstance(figure, FrozenFigure):
        return figure
    if not isinstance(figure, go.Figure):
        raise ValueError(f"freeze() takes a plotly go.Figure, got {type(figure).__name__}")
    return FrozenFigure(figure)
