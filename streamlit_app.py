"""ViT Explorer: follow an image through a Vision Transformer, stage by stage.

Run with ``make run`` (or ``streamlit run streamlit_app.py``). This entry draws the shared
sidebar (image and model) and hands over to the selected page.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a classroom server has no hub access

import streamlit as st

st.set_page_config(page_title="ViT Explorer", page_icon="🔬", layout="wide")

if "pages._ui" not in sys.modules:
    # The first visit after the server starts imports PyTorch (a few seconds): say so at once.
    with st.spinner("Starting up: loading PyTorch and the models…"):
        import pages._ui  # noqa: F401

from pages._ui import in_navigation, sidebar  # noqa: E402

PAGES = [
    st.Page("pages/0_home.py", title="Home: the guided tour", icon="🏠", default=True, url_path="home"),
    st.Page("pages/1_patches.py", title="1 · Patches", icon="🧩", url_path="patches"),
    st.Page("pages/2_embeddings.py", title="2 · Embeddings", icon="🎨", url_path="embeddings"),
    st.Page("pages/3_attention.py", title="3 · Attention", icon="👀", url_path="attention"),
    st.Page("pages/9_dino.py", title="4 · DINO views", icon="🦖", url_path="dino"),
    st.Page("pages/4_playground.py", title="5 · Architecture playground", icon="🛠️", url_path="playground"),
    st.Page("pages/5_predict.py", title="6 · Predict", icon="🎯", url_path="predict"),
    st.Page("pages/6_teach.py", title="7 · Teach it your classes", icon="🍎", url_path="teach"),
    st.Page("pages/7_trust.py", title="8 · Can you trust the map?", icon="⚖️", url_path="trust"),
    st.Page("pages/8_beyond.py", title="9 · Beyond the CLS token", icon="🧭", url_path="beyond"),
    st.Page("pages/6_finetune.py", title="10 · Train from scratch", icon="🏋️", url_path="finetune"),
]

navigation = st.navigation(PAGES)
with in_navigation():
    sidebar()
    navigation.run()
