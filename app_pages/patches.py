"""Patches: cut the image into P×P patches, flatten them, and see conv = flatten + linear."""

from __future__ import annotations

import streamlit as st

from app_pages._ui import model_input, model_view, page_inputs, sync_url
from explorer import figures as F
from explorer import state as S
from explorer.pipeline import cost_summary
from explorer.traces import conv_linear_difference, patch_size_rows
from vitcore import patchify
from vitcore.model.config import valid_patch_sizes

spec, loaded, _, image, _ = page_inputs("patches")
cfg = loaded.config
sizes = valid_patch_sizes(cfg.image_size)
if st.session_state.get(S.PATCH_SIZE) not in sizes:
    st.session_state[S.PATCH_SIZE] = cfg.patch_size if cfg.patch_size in sizes else sizes[-1]
P = st.select_slider("Patch size P (only sizes that tile the image)", sizes, key=S.PATCH_SIZE)
sync_url(S.PATCH_SIZE)

H, W = cfg.image_size
gh, gw = H // P, W // P
N = gh * gw
resized = model_view(loaded, image)
x = model_input(loaded, image)
cost = cost_summary(cfg.replace(patch_size=P))

c1, c2, c3, c4 = st.columns(4)
c1.metric("tokens N", N)
c2.metric("sequence length T = N + 1", N + 1)
c3.metric("numbers per patch 3·P·P", 3 * P * P)
c4.metric("attention entries per head T²", (N + 1) ** 2)

left, right = st.columns(2)
with left:
    st.plotly_chart(F.image_with_grid(resized, P, title=f"{H}×{W} image as a {gh}×{gw} grid"),
                    key=S.PATCH_GRID_FIG)
with right:
    patches = patchify(x, P)[0].numpy()  # (N, 3·P·P)
    st.plotly_chart(F.matrix_heatmap(patches, f"flattened patches: a {N} × {3 * P * P} matrix",
                                     "element (channel, row, column)", "patch"), key=S.PATCH_MATRIX_FIG)
    st.download_button("Patch matrix (CSV)", F.to_csv(patches), "patches.csv", "text/csv")

st.subheader("conv = flatten + linear, on this image")
diff = conv_linear_difference(x, P, loaded.model)
st.metric("max |conv(x) − linear(flatten(x))|", f"{diff:.2e}")
st.caption(
    ("The model's own patch embedding" if cfg.patch_size == P else f"A Conv2d(3, 64, kernel={P}, stride={P})")
    + " against an nn.Linear holding the same weights, applied to the flattened patches."
)
with st.expander("Why a convolution with kernel = stride = P is just a linear layer"):
    st.markdown(
        "A convolution slides a P×P×3 filter over the image. When the stride equals the kernel size, "
        "the windows never overlap: each output position sees exactly one patch, and computes a dot "
        "product of that patch's 3·P·P numbers with each filter. Stack the D filters as the rows of a "
        "D × 3P² matrix E and you have the paper's *x_p E*: flatten every patch, multiply by E. "
        "The difference above is floating-point rounding, nothing more."
    )

st.subheader("What the patch size costs")
st.dataframe(patch_size_rows(cfg), hide_index=True, width="stretch")
st.caption(
    f"At P={P}: {cost['gflops']:.2f} GFLOPs per image, {cost['attention_share']:.0%} of it in the attention "
    "matrices. Halving P multiplies the tokens by 4 and the attention matrix by 16."
)
