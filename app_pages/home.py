"""Home: the pipeline of eq. (1)-(4) with live shapes for the current model and image.

The title, the text and the tour are drawn first, before PyTorch is imported (the first page
after a server start, see ``app_pages/_startup.py``); the data flow fills its place above the tour
once the warm-up has imported PyTorch.
"""

from __future__ import annotations

import streamlit as st

from app_pages import _startup
from explorer.registry import tour


def data_flow() -> None:
    """The data flow of the current image through the current model (needs PyTorch: imported here)."""
    from app_pages._cache import cached_shape_flow
    from app_pages._ui import current_image, current_model, model_input, show_error

    picked, img = current_model(), current_image()
    stages = []
    if picked is not None and img is not None:
        spec, loaded = picked
        image_key, image, _ = img
        size = tuple(loaded.preprocessing.crop_size)  # the input the model reads (DINOv2: 224, not its native 518)
        try:  # one forward pass per (model, image, size), shared by every session
            stages = cached_shape_flow(spec, image_key, size, loaded, lambda: model_input(loaded, image))
        except ValueError as exc:  # the guard: this model at this size does not fit the budget
            show_error(exc, "Data flow")
    if not stages:
        return
    cfg = loaded.config
    st.subheader("The data flow, with the shapes of this run")
    st.caption(
        f"Model: {loaded.label} · image {size[0]}×{size[1]}, patch P={cfg.patch_size}, "
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


st.title("ViT Explorer")
st.markdown(
    "Follow one image through a **Vision Transformer** (Dosovitskiy et al., *An Image is Worth "
    "16x16 Words*, 2021). Pick an image and a model in the sidebar; every page uses them."
)
flow = st.container()  # filled after the tour is on the page

st.subheader("The guided tour")
for step in tour():
    cols = st.columns([1, 4])
    cols[0].page_link(step.file, label=step.label, icon=step.icon)
    cols[1].markdown(step.blurb)

with flow:
    _startup.wait_for("imports", "Starting up: loading PyTorch and the model (the first visit after a server start)…")
    data_flow()
