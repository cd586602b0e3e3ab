"""Home: the pipeline of eq. (1)-(4) with live shapes for the current model and image."""

from __future__ import annotations

import streamlit as st
import torch

from app_pages._ui import current_image, current_model, model_input
from explorer.pipeline import shape_flow
from explorer.registry import tour

st.title("ViT Explorer")
st.markdown(
    "Follow one image through a **Vision Transformer** (Dosovitskiy et al., *An Image is Worth "
    "16x16 Words*, 2021). Pick an image and a model in the sidebar; every page uses them."
)

picked = current_model()
img = current_image()
if picked is not None and img is not None:
    spec, loaded = picked
    _, image, _ = img
    cfg = loaded.config
    x = model_input(loaded, image)
    with torch.no_grad():
        stages = shape_flow(loaded.model, x)
    st.subheader("The data flow, with the shapes of this run")
    st.caption(
        f"Model: {loaded.label} · image {cfg.image_size[0]}×{cfg.image_size[1]}, patch P={cfg.patch_size}, "
        f"D={cfg.dim}, {cfg.depth} blocks × {cfg.heads} heads"
    )
    left, right = st.columns([1, 2])
    left.image(image, caption="input", width="stretch")
    right.dataframe(
        [{"stage": s.name, "shape": s.symbolic, "this run": s.shape_text, "what happens": s.note} for s in stages],
        hide_index=True,
        width="stretch",
    )
    st.markdown(" → ".join(f"`{s.name} {s.shape_text}`" for s in stages))

st.subheader("The guided tour")
for step in tour():
    cols = st.columns([1, 4])
    cols[0].page_link(step.file, label=step.label, icon=step.icon)
    cols[1].markdown(step.blurb)
