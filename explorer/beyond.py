"""Logic of the "Beyond the CLS token" page: segmentation and boxes from frozen tokens, and the token mixers.

Streamlit-free: :func:`dense_report` trains the page's heads on one model (the page caches it
per model), the figure functions return plotly figures, :func:`mixer_table` reads the README
table written by ``benchmarks/mixers.py`` and :func:`mixing_maps` shows each mixer's matrix.
The model passed in is only read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from explorer import state as S
from vitcore import VisionTransformer, ViTConfig
from vitcore.inspect import dense
from vitcore.model.config import TOKEN_MIXERS
from vitcore.model.mixers import MIXER_LABELS

__all__ = [
    "BOX_COLOURS",
    "DenseReport",
    "METHODS",
    "MIXER_LABELS",
    "README",
    "TOKEN_MIXERS",
    "boxes_figure",
    "dense_report",
    "image_masks",
    "micro_image",
    "image_masks_figure",
    "masks_figure",
    "mixer_note",
    "mixer_table",
    "mixing_figure",
    "mixing_maps",
    "mixing_matrices",
    "row_sum_note",
    "split_sizes",
]

README = Path(__file__).resolve().parent.parent / "README.md"

# Session-state keys of the page's widgets (listed here, next to the page's logic).
IMAGE_INDEX, MIXER, MIXER_GRID = S.BEYOND_IMAGE, S.BEYOND_MIXER, S.BEYOND_GRID  # the page's session keys

METHODS = ("linear probe (trained)", "PCA, 1st component (DINOv2)", "CLS attention, 60% mass (DINO)")
BOX_SOURCES = ("CLS token", "mean patch token", "box of the probe's mask")
BOX_COLOURS = {"truth": "#00e676", "CLS token": "#ff9100", "mean patch token": "#2979ff",
               "box of the probe's mask": "#e040fb"}


def split_sizes(
    config: ViTConfig, image_size: tuple[int, int] | None = None, budget_macs: float = 3e11
) -> tuple[int, int]:
    """(train, val) image counts whose token extraction costs about ``budget_macs`` multiply-accumulates.

    ``image_size`` is the input the model will get (default its config's). The bundled micro model
    gets 1000 / 200 (all in about a second); a ViT-S at 224 px 64 / 32.
    """
    h, w = image_size or config.image_size
    T = config.num_prefix_tokens + (h // config.patch_size) * (w // config.patch_size)
    D = config.dim
    per_image = config.depth * T * (12 * D * D + 2 * T * D)
    n_train = int(min(1000, max(64, budget_macs / per_image)))
    return n_train, max(32, n_train // 5)


@dataclass
class DenseReport:
    """The page's results for one model: masks and boxes on Shapes validation, and their scores."""

    val: dense.DenseSplit  # images, masks, pixels of the validation split
    grid: tuple[int, int]
    n_train: int
    masks: dict[str, torch.Tensor]  # method -> (n, H, W) bool (methods that could not run are absent)
    mask_rows: list[dict[str, Any]]  # one row per method: mIoU, object / background IoU, Jaccard per image
    boxes: dict[str, torch.Tensor]  # "truth" and each BOX_SOURCES entry -> (n, 4) (cx, cy, w, h)
    box_rows: list[dict[str, Any]]  # one row per box source: mean and median IoU
    grid_ceiling: float  # mIoU of the true patch fractions upsampled like the probe's logits
    probe: dense.SegmentationProbe | None = None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def image_jaccard(self, index: int) -> dict[str, float]:
        """Jaccard index of each method's mask on one validation image."""
        truth = self.val.masks[index : index + 1]
        return {m: float(dense.mask_iou(mask[index : index + 1], truth)[0]) for m, mask in self.masks.items()}

    def image_box_iou(self, index: int) -> dict[str, float]:
        """IoU of each box source on one validation image."""
        truth = self.boxes["truth"][index : index + 1]
        return {s: float(dense.box_iou(self.boxes[s][index : index + 1], truth)[0]) for s in BOX_SOURCES}


def _mask_row(method: str, pred: torch.Tensor, truth: torch.Tensor, trained: bool) -> dict[str, Any]:
    scores = dense.segmentation_miou(pred, truth)
    per_image = dense.mask_iou(pred, truth)
    return {"method": method, "training": "yes" if trained else "none", "mIoU": round(scores["miou"], 3),
            "object IoU": round(scores["object"], 3), "background IoU": round(scores["background"], 3),
            "median Jaccard per image": round(float(per_image.median()), 3)}


def dense_report(
    model: VisionTransformer,
    normalization: Any,
    image_size: tuple[int, int] | None = None,
    sizes: tuple[int, int] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> DenseReport:
    """Train the segmentation probe and both box heads on Shapes, score them and the two unsupervised masks.

    ``normalization`` is the model's (mean, std) and ``image_size`` its input size (default the
    config's); Shapes images are rendered at that size. ``sizes`` = (train, val) images, default
    :func:`split_sizes`. ``progress(fraction, text)`` is called between the steps.
    """
    import time

    def say(fraction: float, text: str) -> None:
        if progress is not None:
            progress(fraction, text)

    cfg = model.config
    size = tuple(image_size or cfg.image_size)
    n_train, n_val = sizes or split_sizes(cfg, size)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    say(0.0, f"Rendering {n_train} + {n_val} Shapes images at {size[0]}×{size[1]}…")
    train = dense.shapes_split(n_train, size, split="train", normalization=normalization)
    val = dense.shapes_split(n_val, size, split="val", normalization=normalization)
    seconds["render"] = time.perf_counter() - t0
    say(0.15, "Reading the frozen tokens…")
    t0 = time.perf_counter()
    tokens_train = dense.extract_tokens(model, train.images)
    tokens_val = dense.extract_tokens(model, val.images)
    seconds["tokens"] = time.perf_counter() - t0
    grid = tokens_val.grid

    say(0.55, "Training the per-patch linear head…")
    probe = dense.train_segmentation_probe(tokens_train, train.masks)
    seconds["probe"] = probe.seconds
    masks = {METHODS[0]: probe.predict(tokens_val.patches)}
    notes = []
    say(0.7, "Unsupervised masks: PCA and CLS attention…")
    masks[METHODS[1]] = dense.pca_masks(tokens_val)
    if tokens_val.cls_attention is not None:
        masks[METHODS[2]] = dense.attention_masks(tokens_val, keep=0.6)
    else:
        notes.append("This model's token mixer has no mixing matrix (MLP-Mixer), so there is no CLS attention mask.")
    rows = [_mask_row(m, pred, val.masks, trained=(m == METHODS[0])) for m, pred in masks.items()]

    from vitcore.inspect.views import upsample

    fractions = dense.patch_targets(val.masks, grid)  # (n, gh, gw)
    ceiling = dense.segmentation_miou(upsample(fractions - 0.5, tokens_val.patch_size, "bilinear") > 0, val.masks)

    say(0.8, "Training the box heads on the CLS token and on the mean patch token…")
    boxes = {"truth": val.boxes}
    t0 = time.perf_counter()
    for source, train_x, val_x in (("CLS token", tokens_train.cls, tokens_val.cls),
                                   ("mean patch token", tokens_train.mean_patch, tokens_val.mean_patch)):
        head = dense.train_box_head(train_x, train.boxes)
        boxes[source] = head.predict(val_x)
    boxes["box of the probe's mask"] = dense.mask_boxes(masks[METHODS[0]])
    seconds["boxes"] = time.perf_counter() - t0
    average = train.boxes.mean(0).expand(n_val, 4)
    box_rows = []
    for source in (*BOX_SOURCES, "the average training box (baseline)"):
        pred = average if source.startswith("the average") else boxes[source]
        iou = dense.box_iou(pred, boxes["truth"])
        box_rows.append({"box from": source, "trained head": "yes" if source in BOX_SOURCES[:2] else "no",
                         "mean IoU": round(float(iou.mean()), 3), "median IoU": round(float(iou.median()), 3),
                         "IoU ≥ 0.5": f"{float((iou >= 0.5).float().mean()):.0%}"})
    say(1.0, "Done")
    return DenseReport(val=val, grid=grid, n_train=n_train, masks=masks, mask_rows=rows, boxes=boxes,
                       box_rows=box_rows, grid_ceiling=ceiling["miou"], probe=probe, notes=notes, seconds=seconds)


def image_masks(report: DenseReport, model: VisionTransformer, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Each method's mask (H, W) bool on any image ``x`` (1, C, H, W), with the report's trained probe."""
    tokens = dense.extract_tokens(model, x)
    masks = {METHODS[0]: report.probe.predict(tokens.patches)[0], METHODS[1]: dense.pca_masks(tokens)[0]}
    if tokens.cls_attention is not None:
        masks[METHODS[2]] = dense.attention_masks(tokens)[0]
    return {m: mask.numpy() for m, mask in masks.items()}


def micro_image(index: int) -> torch.Tensor:
    """Shapes validation image ``index`` at 32×32, normalised for a micro ViT, (1, 3, 32, 32)."""
    return dense.shapes_split(index + 1, 32, split="val").images[index : index + 1]


# --------------------------------------------------------------------------- figures
def _overlay(pixels: np.ndarray, mask: np.ndarray | None, colour=(0, 230, 118)) -> np.ndarray:
    """The image (H, W, 3) uint8 with a mask tinted in ``colour``, edges of the mask kept sharp."""
    image = pixels.astype(np.float32)
    if mask is not None:
        tint = np.asarray(colour, dtype=np.float32)
        image = np.where(mask[..., None], 0.45 * image + 0.55 * tint, 0.35 * image)
    return image.clip(0, 255).astype(np.uint8)


def _enlarge(image: np.ndarray, side: int = 160) -> np.ndarray:
    factor = max(1, math.ceil(side / max(1, min(image.shape[:2]))))
    return np.kron(image, np.ones((factor, factor, 1), dtype=np.uint8)) if factor > 1 else image


def _short(method: str) -> str:
    return method.split(" (")[0].split(",")[0]


def masks_figure(report: DenseReport, index: int) -> go.Figure:
    """Input, ground truth and every method's mask for one validation image, side by side."""
    pixels = report.val.pixels[index].permute(1, 2, 0).numpy()  # (H, W, 3) uint8
    truth = report.val.masks[index].numpy()
    jaccard = report.image_jaccard(index)
    panels = [("input", pixels), ("ground truth", _overlay(pixels, truth))]
    panels += [(f"{_short(m)}<br>J = {jaccard[m]:.2f}", _overlay(pixels, mask[index].numpy()))
               for m, mask in report.masks.items()]
    return _panels(panels)


def image_masks_figure(pixels: np.ndarray, masks: dict[str, np.ndarray]) -> go.Figure:
    """Any image (H, W, 3) uint8 with each method's mask; no ground truth."""
    return _panels([("input", pixels)] + [(_short(m), _overlay(pixels, mask)) for m, mask in masks.items()])


def _panels(panels: list[tuple[str, np.ndarray]]) -> go.Figure:
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t, _ in panels], horizontal_spacing=0.01)
    for i, (_, image) in enumerate(panels, start=1):
        fig.add_trace(go.Image(z=_enlarge(image), hoverinfo="skip"), row=1, col=i)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(margin=dict(l=0, r=0, t=50, b=0), height=260)
    return fig


def boxes_figure(report: DenseReport, index: int) -> go.Figure:
    """One validation image with the true box and each source's predicted box."""
    pixels = _enlarge(report.val.pixels[index].permute(1, 2, 0).numpy(), 320)
    h, w = pixels.shape[:2]
    fig = go.Figure(go.Image(z=pixels, hoverinfo="skip"))
    ious = report.image_box_iou(index)
    for source in ("truth", *BOX_SOURCES):
        cx, cy, bw, bh = report.boxes[source][index].tolist()
        name = source if source == "truth" else f"{source} (IoU {ious[source]:.2f})"
        xs = [(cx - bw / 2) * w, (cx + bw / 2) * w]
        ys = [(cy - bh / 2) * h, (cy + bh / 2) * h]
        fig.add_trace(go.Scatter(x=[xs[0], xs[1], xs[1], xs[0], xs[0]], y=[ys[0], ys[0], ys[1], ys[1], ys[0]],
                                 mode="lines", name=name, line=dict(color=BOX_COLOURS[source], width=3,
                                                                    dash="solid" if source == "truth" else "dash")))
    fig.update_xaxes(visible=False, range=[0, w])
    fig.update_yaxes(visible=False, range=[h, 0], scaleanchor="x")
    fig.update_layout(margin=dict(l=0, r=0, t=10, b=0), height=380, legend=dict(orientation="h", y=-0.02))
    return fig


# --------------------------------------------------------------------------- the mixers
def mixer_table(text: str | None = None) -> list[dict[str, str]]:
    """The comparison table ``benchmarks/mixers.py --readme`` wrote into the README (``text``), as rows.

    Empty when the README has no table yet.
    """
    text = README.read_text() if text is None else text
    found = re.search(r"<!-- mixers:start -->\n(.*?)\n<!-- mixers:end -->", text, flags=re.S)
    if not found:
        return []
    lines = [line.strip() for line in found.group(1).splitlines() if line.strip().startswith("|")]
    if len(lines) < 3:
        return []

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip("|").split("|")]

    header = cells(lines[0])
    return [dict(zip(header, cells(line))) for line in lines[2:]]


def mixer_note(text: str | None = None) -> str:
    """The prose under the README's mixer table: where, when and under what load it was measured."""
    text = README.read_text() if text is None else text
    found = re.search(r"<!-- mixers:start -->\n(.*?)\n<!-- mixers:end -->", text, flags=re.S)
    if not found:
        return ""
    return " ".join(line.strip() for line in found.group(1).splitlines()
                    if line.strip() and not line.strip().startswith("|"))


@torch.no_grad()
def mixing_matrices(mixer: str, image: torch.Tensor, layer: int = 0,
                    seed: int = 0) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Each head's mixing matrix over the patches in one block of a random micro ViT with ``mixer``.

    Returns ((H, N, N) with row q = how patch q mixes all patches (prefix tokens left out), the
    (gh, gw) grid). ``image`` is a normalised (1, 3, 32, 32) Shapes image. The model is untrained
    (seeded), so what shows is each mixer's built-in structure: a 3 x 3 window for pooling, a decay
    with grid distance for retention, content-driven weights for the two attentions. None for the
    MLP mixer, which mixes without a matrix.
    """
    if mixer not in TOKEN_MIXERS:
        raise ValueError(f"mixer={mixer!r} is unknown; choose one of {list(TOKEN_MIXERS)}")
    from explorer.models import seeded_model

    config = ViTConfig.preset("micro", token_mixer=mixer)
    model = seeded_model(config, seed)  # the same weights for the same mixer, from a private generator
    out = model.forward_intermediates(image, layers=[layer], attention=True, head=False)
    if not out.attention:
        return None
    p = config.num_prefix_tokens
    return out.attention[0][0, :, p:, p:].numpy(), tuple(out.grid)  # (H, N, N)


def mixing_maps(mixer: str, image: torch.Tensor, query: int, layer: int = 0, seed: int = 0) -> np.ndarray | None:
    """Row ``query`` (a patch index, 0..15) of each head's mixing matrix (:func:`mixing_matrices`), (H, gh, gw)."""
    found = mixing_matrices(mixer, image, layer, seed)
    if found is None:
        return None
    matrices, grid = found
    return matrices[:, query].reshape(len(matrices), *grid)


def row_sum_note(matrices: np.ndarray) -> str:
    """How each query's patch weights add up, for the caption under the mixing maps."""
    sums = np.asarray(matrices, dtype=np.float64).sum(-1)  # (H, N)
    lo, hi = round(float(sums.min()), 3) + 0.0, round(float(sums.max()), 3) + 0.0
    if hi - lo < 5e-4:
        return f"every row's patch weights sum to {lo:.3f} in every head"
    return f"a row's patch weights sum to between {lo:.3f} and {hi:.3f}"


def mixing_figure(maps: np.ndarray, query: int) -> go.Figure:
    """Each head's row of the mixing matrix over the patch grid; diverging colours when weights are negative."""
    H, _, gw = maps.shape
    negative = bool((maps < -1e-9).any())
    bound = float(np.abs(maps).max()) or 1.0
    fig = make_subplots(rows=1, cols=H, subplot_titles=[f"head {h}" for h in range(H)], horizontal_spacing=0.02)
    for h in range(H):
        fig.add_trace(go.Heatmap(
            z=maps[h], colorscale="RdBu" if negative else "Inferno", reversescale=negative,
            zmin=-bound if negative else 0.0, zmax=bound, showscale=h == H - 1,
            hovertemplate="patch row %{y}, col %{x}<br>weight %{z:.4f}<extra></extra>",
        ), row=1, col=h + 1)
        r, c = divmod(query, gw)
        fig.add_shape(type="rect", x0=c - 0.5, x1=c + 0.5, y0=r - 0.5, y1=r + 0.5, line=dict(color="cyan", width=3),
                      row=1, col=h + 1)
    fig.update_yaxes(autorange="reversed", visible=False, scaleanchor="x")
    fig.update_xaxes(visible=False)
    fig.update_layout(margin=dict(l=0, r=0, t=30, b=0), height=240)
    return fig
