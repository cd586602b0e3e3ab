"""Predict: top-k classes, mask patches by clicking, and the occlusion sensitivity of every patch."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app_pages._ui import cached_occlusion_map, model_input, model_view, page_inputs, trace_for
from explorer import figures as F
from explorer import state as S
from explorer.texts import page_name
from explorer.traces import occlusion_effect
from vitcore.explain.perturb import FILL_NOTES

spec, loaded, key, image, _ = page_inputs("predict")
cfg = loaded.config
if not loaded.class_names:
    st.info(f"{loaded.label} has no classifier head: it was trained without labels (self-supervised), so it "
            f"describes images but names no classes. Teach it classes of your own in seconds on the "
            f"{page_name('teach')} page; \"Use this model\" there brings the taught model back here with its labels.")
    st.stop()
x = model_input(loaded, image)
names = loaded.class_names
probs = trace_for(spec, loaded, key, image).logits[0].softmax(-1).double().numpy()  # cached with the trace
resized = model_view(loaded, image)
gh, gw = cfg.grid_size
top = int(np.argmax(probs))

k = st.slider("Show the top k classes", 1, min(10, len(names)), min(5, len(names)), key=S.TOPK)
left, right = st.columns(2)
right.plotly_chart(F.topk_bars(probs, names, k), key=S.PRED_TOPK_FIG)
order = np.argsort(-probs)[:k]
right.download_button("Probabilities (CSV)", "\n".join(f"{names[i]},{probs[i]:.6f}" for i in order).encode(),
                      "probabilities.csv")

st.session_state.setdefault(S.MASKED_PATCHES, [])
masked: list[int] = [p for p in st.session_state[S.MASKED_PATCHES] if 0 <= p < gh * gw]


def toggle() -> None:
    patch = F.selected_patch(st.session_state.get(S.PRED_CLICK))
    if patch is not None:
        current = set(st.session_state.get(S.MASKED_PATCHES, []))
        current ^= {patch}
        st.session_state[S.MASKED_PATCHES] = sorted(current)


with left:
    fig = F.image_with_grid(resized, cfg.patch_size, title="click patches to mask / unmask them")
    for p in masked:
        r, c = divmod(p, gw)
        cell = fig.layout.xaxis.range[1] / gw
        fig.add_shape(type="rect", x0=c * cell, x1=(c + 1) * cell, y0=r * cell, y1=(r + 1) * cell,
                      fillcolor="grey", opacity=0.85, line=dict(width=0))
    st.plotly_chart(fig, key=S.PRED_CLICK, on_select=toggle, selection_mode="points")
    if st.button("Clear masked patches", disabled=not masked):
        st.session_state[S.MASKED_PATCHES] = []
        st.rerun()

if masked:
    fill = st.radio("Masked patches are filled with", list(FILL_NOTES), horizontal=True, key=S.PRED_FILL,
                    help="; ".join(f"{name}: {note}" for name, note in FILL_NOTES.items()))
    delta = occlusion_effect(loaded.model, x, masked, fill=fill, normalization=(loaded.mean, loaded.std))
    order = np.argsort(-np.abs(delta))[:k]
    st.markdown(f"Masking {len(masked)} patch(es) changes the logits like this (largest changes):")
    st.dataframe([{"class": names[i], "logit change": round(float(delta[i]), 4)} for i in order], hide_index=True)

st.subheader("Occlusion sensitivity")
target = st.selectbox("Class", range(len(names)), index=top, key=S.PRED_TARGET,
                      format_func=lambda i: f"{names[i]} ({probs[i]:.1%})")
heat = cached_occlusion_map(spec, key, loaded, x, int(target))
st.plotly_chart(F.heatmap_over_image(resized, heat, colorscale="RdBu_r", name="logit drop",
                                     title=f"drop of the '{names[target]}' logit when each patch is masked"),
                key=S.PRED_OCCLUSION_FIG)
st.download_button("Occlusion map (CSV)", F.to_csv(heat), "occlusion.csv")
