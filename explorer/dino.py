"""The views DINO-style ViTs are famous for, computed from a cached trace (no Streamlit).

- Last-layer CLS attention per head, each thresholded to keep 60 % of its mass (Caron et al. 2021,
  "Emerging Properties in Self-Supervised Vision Transformers", Fig. 3).
- Patch-feature PCA: the first component separates the object from the background, the next three
  coloured as RGB on the object (Oquab et al. 2023, "DINOv2", Fig. 1), also across two images.
- High-norm "artifact" tokens (Darcet et al. 2023, "Vision Transformers Need Registers"): measured
  on the model at hand, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch

from vitcore.inspect import views

__all__ = ["ArtifactSummary", "artifact_summary", "attention_mask_maps", "final_tokens", "norms_figure", "pca_pair"]


def final_tokens(model, trace) -> torch.Tensor:
    """Tokens after the final LayerNorm, (B, T, D), from the trace's last block output (the model is only read)."""
    with torch.no_grad():
        return model.norm(trace.tokens[-1])


def attention_mask_maps(trace, keep: float = 0.6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per head of the last layer: CLS attention (H, gh, gw), its 60 %-mass mask (H, gh, gw), kept mass (H,)."""
    dino = views.dino_attention_masks(trace, keep=keep)
    return dino.attention[0].numpy(), dino.masks[0].numpy(), dino.kept_mass[0].numpy()


def pca_pair(model, trace_a, trace_b) -> tuple[views.PCAView, views.PCAView]:
    """PCA foreground and RGB parts of two images fitted jointly, so matching parts get matching colours."""
    return views.pca_foreground_pair(final_tokens(model, trace_a), tuple(trace_a.grid),
                                     final_tokens(model, trace_b), tuple(trace_b.grid),
                                     num_prefix_tokens=trace_a.num_prefix_tokens)


@dataclass(frozen=True)
class ArtifactSummary:
    """What the artifact-token rule finds on one image, in plain numbers."""

    per_layer_max_ratio: np.ndarray  # (L+1,) largest patch norm / median patch norm, per layer
    outliers: np.ndarray  # (gh, gw) bool, at the last layer
    count: int
    area_share: float
    cls_share: float  # CLS attention (mean of heads, last layer) on the outliers
    prefix_share: np.ndarray  # (prefix,) CLS attention on CLS itself and on each register
    verdict: str


def artifact_summary(trace) -> ArtifactSummary:
    """Darcet et al.'s high-norm outliers measured on this trace, with a one-sentence verdict."""
    norms = views.token_norms(trace)[:, 0, trace.num_prefix_tokens:].double()  # (L+1, N)
    ratio = (norms.max(dim=-1).values / norms.median(dim=-1).values).numpy()  # (L+1,)
    found = views.artifact_tokens(trace)
    count, share = int(found.count[0]), float(found.area_share[0])
    cls_share = float(found.cls_share[0])
    if count:
        verdict = (f"{count} high-norm patch token(s) ({share:.1%} of the patches) take {cls_share:.1%} of the "
                   "CLS attention: the artifact pattern of Darcet et al." if cls_share > 2 * share else
                   f"{count} high-norm patch token(s), but they take no more CLS attention than their area "
                   f"({cls_share:.1%} vs {share:.1%}): not the artifact pattern.")
    else:
        verdict = (f"No high-norm outliers at the last layer (largest norm {ratio[-1]:.2f}x the median). Darcet et "
                   "al. found them in large, long-trained ViTs; this one does not show them.")
    return ArtifactSummary(ratio, found.outliers[0].numpy(), count, share, cls_share,
                           found.prefix_share[0].numpy(), verdict)


def norms_figure(ratio: np.ndarray) -> go.Figure:
    """Largest patch-token norm over the median, per layer (0 = embeddings)."""
    fig = go.Figure(go.Scatter(x=list(range(len(ratio))), y=ratio, mode="lines+markers", name="max / median"))
    fig.add_hline(y=2.0, line_dash="dot", annotation_text="2x the median")
    fig.update_layout(height=260, margin=dict(l=0, r=0, t=30, b=0), title="largest token norm / median, per layer",
                      xaxis_title="layer (0 = embeddings)", yaxis_title="ratio")
    return fig
