"""Home: the pipeline of eq. (1)-(4) with live shapes for the current model and image."""

from __future__ import annotations

import streamlit as st
import torch

from explorer.pipeline import shape_flow
from pages._ui import current_image, current_model, enter_page, model_input

enter_page()
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
TOUR = [
    ("pages/1_patches.py", "Patches",
     "the image becomes a grid of P×P patches; watch the token count change with P, and see that the "
     "patch embedding convolution is exactly a linear layer on flattened patches."),
    ("pages/2_embeddings.py", "Embeddings",
     "what the model turns patches into: token colours by PCA, the embedding filters and the position "
     "embeddings that learned the 2-D layout (paper Fig. 7)."),
    ("pages/3_attention.py", "Attention",
     "click a patch and see where every head looks; follow the CLS token, rollout and the q·k/√d "
     "arithmetic with real numbers."),
    ("pages/9_dino.py", "DINO views",
     "what a ViT that learned from photos without labels finds: object masks per head, parts in colour across "
     "two photos, and whether it has artifact tokens."),
    ("pages/4_playground.py", "Architecture playground",
     "change patch size, heads, depth and width: parameters, FLOPs, memory and latency, two models side by side."),
    ("pages/5_predict.py", "Predict",
     "top classes, and which patches the prediction depends on: mask them by clicking, or see the occlusion map."),
    ("pages/6_teach.py", "Teach it your classes",
     "photograph a few things per class and teach the real ViT in seconds, then see what it looks at."),
    ("pages/7_trust.py", "Can you trust the map?",
     "deletion and insertion curves, the randomisation check and baselines for every explanation."),
    ("pages/8_beyond.py", "Beyond the CLS token",
     "segment and locate with the patch tokens, and swap attention for its alternatives."),
    ("pages/6_finetune.py", "Train from scratch",
     "train a small ViT on Shapes in about a minute with live curves and the attention timeline."),
]
for number, (path, title, what) in enumerate(TOUR, start=1):
    cols = st.columns([1, 4])
    cols[0].page_link(path, label=f"{number}. {title}")
    cols[1].markdown(f"Look at {what}")
