"""Beyond the CLS token: segment and locate with the patch tokens, and swap attention for its alternatives."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from app_pages._ui import page_inputs, show_error
from components.attention_grid import attention_grid
from explorer import beyond as B
from explorer import state as S
from explorer.attention_payload import MapPayload, matrix_payload
from explorer.beyond_assets import stored_report
from explorer.models import LoadedModel, ModelSpec


@st.cache_resource(max_entries=8, show_spinner="Rendering Shapes, reading this model's frozen tokens and fitting the "
                                               "heads (seconds for the bundled model, about a minute for a ViT-S)…")
def cached_report(spec: ModelSpec, _loaded: LoadedModel) -> B.DenseReport:
    """The page's report: precomputed for the default models (assets/beyond, by fingerprint), else computed."""
    pre = _loaded.preprocessing
    size = tuple(pre.crop_size)
    stored = stored_report(_loaded.model, pre.normalization, size)
    return stored if stored is not None else B.dense_report(_loaded.model, pre.normalization, size)


@st.cache_resource(max_entries=64, show_spinner=False)
def cached_image_masks(spec: ModelSpec, image_key: str, _report: B.DenseReport, _loaded: LoadedModel, _image: Any):
    return B.image_masks(_report, _loaded.model, _loaded.preprocessing(_image)[None])


@st.cache_resource(max_entries=64, show_spinner=False)
def cached_mixing(mixer: str, index: int) -> tuple[MapPayload, str] | None:
    """Every query's row of each head's mixing matrix, packed for the browser (a few KB), and its row sums."""
    found = B.mixing_matrices(mixer, B.micro_image(index))
    if found is None:
        return None
    matrices, grid = found
    return matrix_payload(matrices, grid), B.row_sum_note(matrices)


spec, loaded, key, image, _ = page_inputs("beyond")
st.caption("The classifier reads one token. The other N tokens still know a lot about the image: "
           "which patches are the object, and where it is. And attention itself is only one way to mix tokens.")

# ----------------------------------------------------------------------------- segmentation
st.header("Segmentation from patch tokens")
try:
    report = cached_report(spec, loaded)
except (ValueError, RuntimeError) as exc:
    show_error(exc, "Segmentation")
    st.stop()

n_val = len(report.val)
if not 0 <= st.session_state.get(B.IMAGE_INDEX, 0) < n_val:
    st.session_state[B.IMAGE_INDEX] = 0
index = int(st.number_input(f"Shapes validation image (0–{n_val - 1})", 0, n_val - 1, key=B.IMAGE_INDEX))
st.plotly_chart(B.masks_figure(report, index), key=S.BEYOND_MASKS_FIG)
probe_row = report.mask_rows[0]
c1, c2, c3 = st.columns(3)
c1.metric("Linear probe mIoU (Shapes validation)", f"{probe_row['mIoU']:.3f}")
c2.metric("Best the patch grid allows", f"{report.grid_ceiling:.3f}",
          help="mIoU of the true object fraction of each patch, upsampled like the probe's logits")
c3.metric("Validation images", n_val)
st.dataframe(report.mask_rows, hide_index=True, key=S.BEYOND_MASK_TABLE)
gh, gw = report.grid
st.caption(
    f"The probe is one linear map D → 1 (least squares) applied to each of the {gh}×{gw} patch tokens, trained on "
    f"{report.n_train} Shapes images ({report.seconds.get('probe', 0):.1f} s on cached tokens) to predict the object "
    "fraction of each patch; its logits are upsampled bilinearly to pixels. PCA and CLS attention use no labels at "
    "all. mIoU is the mean of the object IoU and the background IoU over the whole split; Jaccard per image is "
    "the object IoU of one image."
)
for note in report.notes:
    st.info(note)

with st.expander("The same three masks on your image (sidebar)"):
    masks = cached_image_masks(spec, key, report, loaded, image)
    pixels = np.asarray(loaded.preprocessing.fit_image(image).convert("RGB"))
    st.plotly_chart(B.image_masks_figure(pixels, masks), key=S.BEYOND_YOUR_MASKS_FIG)
    st.caption("No ground truth here: the probe was trained on Shapes only.")

# ----------------------------------------------------------------------------- boxes
st.header("Where is it? Boxes from the CLS token and from the mean patch token")
left, right = st.columns([3, 2])
left.plotly_chart(B.boxes_figure(report, index), key=S.BEYOND_BOXES_FIG)
right.dataframe(report.box_rows, hide_index=True, key=S.BEYOND_BOX_TABLE)
iou = {row["box from"]: row["mean IoU"] for row in report.box_rows}
cls_iou, mean_iou = iou["CLS token"], iou["mean patch token"]
baseline = iou["the average training box (baseline)"]
right.markdown(
    f"The same linear head (D → 4 box numbers) reads the **CLS token** (mean IoU {cls_iou:.2f}) or the "
    f"**mean of the patch tokens** ({mean_iou:.2f}); always guessing the average box scores {baseline:.2f}. "
    f"The box around the probe's mask ({iou[B.BOX_SOURCES[2]]:.2f}) reads each patch token where it is."
)
right.caption("Boxes are (centre x, centre y, width, height) of the mask's tight box, as fractions of the image.")

# ----------------------------------------------------------------------------- mixers
st.header("Replacing attention")
st.markdown(
    "Each block mixes tokens, then transforms each token with its MLP. Softmax attention is one mixer; "
    "`ViTConfig(token_mixer=...)` swaps in another. Below: who mixes with whom in block 0 of a micro ViT "
    "(untrained, so you see each mixer's built-in structure) for the query patch you pick."
)
m1, _ = st.columns([2, 1])
if st.session_state.get(B.MIXER) not in B.TOKEN_MIXERS:
    st.session_state[B.MIXER] = "attention"
mixer = m1.selectbox("Token mixer", list(B.TOKEN_MIXERS), key=B.MIXER, format_func=B.MIXER_LABELS.get)
mixing = cached_mixing(mixer, index)
if mixing is None:
    st.info("The token-mixing MLP has no mixing matrix: it is a nonlinear function of all tokens at once, with "
            "one weight per token position, so it only works at the token count it was built for.")
else:
    payload, sums = mixing
    attention_grid(payload, key=B.MIXER_GRID, query=5, panel_labels=[f"head {h}" for h in range(payload.panels)],
                   big=False, cols=payload.panels, colour="rdbu" if payload.signed else "inferno",
                   shared_scale=True, status="query patch {query} (row {row}, column {col}): hover another patch")
    st.caption(f"Row q of each head's matrix for the query patch q under your pointer, over the 4×4 patch grid "
               f"(prefix tokens left out), drawn in your browser; {sums}.")

rows = B.mixer_table()
st.subheader("Same training steps, same data")
if rows:
    st.dataframe(rows, hide_index=True, key=S.BEYOND_MIXER_TABLE)
    st.caption("From `python benchmarks/mixers.py --readme`: micro ViTs trained from scratch on 32×32 Shapes for "
               "the same number of steps (seeded, so the accuracies do not depend on the machine); parameters, "
               "GFLOPs and batch-1 latency of tiny ViTs at 224 px (197 tokens) and 448 px (785 tokens), the "
               "latency as a ratio to attention's in the same run. ×FLOPs and ×latency: how each cost grows for 4× "
               "the tokens. " + B.mixer_note())
else:
    st.info("No comparison yet: run `python benchmarks/mixers.py --readme` (a few minutes) to fill the table.")
