"""ViT Explorer: follow an image through a Vision Transformer, stage by stage.

Run with ``make run`` (or ``streamlit run streamlit_app.py``). This entry draws the shared
sidebar (image and model) and hands over to the selected page.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a classroom server has no hub access

import streamlit as st

from pages._ui import sidebar

st.set_page_config(page_title="ViT Explorer", page_icon="🔬", layout="wide")

PAGES = [
    st.Page("pages/0_home.py", title="Home: the guided tour", icon="🏠", default=True, url_path="home"),
]

navigation = st.navigation(PAGES)
sidebar()
navigation.run()
