"""Embeddings: what the patch, position and CLS embeddings look like (paper Fig. 7 left, centre)."""

from __future__ import annotations

import streamlit as st

from app_pages._cache import (
    cached_cls_similarity,
    cached_filters,
    cached_patch_colours,
    cached_payload,
    cached_position_similarity,
    cached_view_jpeg,
)
from app_pages._ui import model_view, page_inputs, trace_for
from components.attention_grid import attention_grid, picked
from explorer import figures as F
from explorer import state as S
from explorer.attention_payload import matrix_fits, matrix_payload

spec, loaded, key, image, _ = page_inputs("embeddings")
cfg = loaded.config
trace = trace_for(spec, loaded, key, image)
grid = tuple(trace.grid)
resized = model_view(loaded, image)

st.subheader("Patch tokens as colours")
layer = st.slider("After block (0 = embeddings + position, before any block)", 0, cfg.depth, cfg.depth,
                  key=S.EMB_LAYER)
colours = cached_patch_colours(spec, key, layer, trace)  # (gh·16, gw·16, 3) in [0, 1]
left, right = st.columns(2)
left.plotly_chart(F.image_with_grid(resized, cfg.patch_size, title="input"), key=S.EMB_INPUT_FIG)
right.image(colours, caption=(
    "first three principal components of the patch tokens as red, green, blue: patches the model "
    "represents alike get alike colours"), width="stretch")
with st.expander("What is a token, and what is the CLS token for?"):
    st.markdown(
        "Each patch becomes one D-dimensional vector, a *token*. A transformer has no built-in notion of "
        "'the whole image', so ViT prepends one extra learned token, **CLS**. It carries no pixels; through "
        "attention it gathers information from every patch, and after the last block the classifier reads "
        "only that token. (With `pool='mean'` the head averages the patch tokens instead.)"
    )

st.subheader("Embedding filters (Fig. 7, left)")
filters = cached_filters(spec, loaded)  # (k, C, P, P)
st.plotly_chart(F.filters_figure(filters), key=S.EMB_FILTERS_FIG)
st.caption("The principal components of the rows of E (the patch-embedding weights), each shown as a P×P RGB "
           "patch. Trained ViTs learn smooth, Gabor-like bases; a random model shows noise.")

st.subheader("Position embedding similarity (Fig. 7, centre)")
sim = cached_position_similarity(spec, trace)  # (N, gh, gw)
N = grid[0] * grid[1]
cols = st.columns([1, 1])
with cols[1]:  # hover a patch: its row is drawn in the browser, no script run (explorer.attention_payload)
    size = tuple(loaded.preprocessing.crop_size)
    jpeg = cached_view_jpeg(spec, key, size, resized)
    patch = (picked(S.EMB_GRID) or (0, 0))[0]  # only reported back when the view is over the budget
    patch = patch if 0 <= patch < N else 0  # a click on another model's larger grid
    fits = matrix_fits(1, grid, len(jpeg))
    payload = cached_payload(("position", spec, key, size, *(() if fits else (patch,))),
                             lambda: matrix_payload(sim.reshape(N, N), grid, query=patch, image=jpeg))
    attention_grid(payload, key=S.EMB_GRID, query=patch, panel_labels=["cosine"],
                   big_title="cosine of patch {query}'s position with all others",
                   status="patch {query} (row {row}, column {col}): hover another patch, click to pin")
cols[0].plotly_chart(F.similarity_grid(sim, grid, title="all patches (tile r, c = patch at row r, column c)"),
                     key=S.EMB_POS_ALL_FIG)
st.download_button("Position similarity (CSV, N×N)", F.to_csv(sim.reshape(N, N)), "position_similarity.csv")

st.subheader("How much each patch resembles CLS")
cls = cached_cls_similarity(spec, key, trace)  # (gh, gw)
st.plotly_chart(F.heatmap_over_image(resized, cls, title="cosine(patch token, CLS token) after the last block",
                                     name="cosine"), key=S.EMB_CLS_FIG)
