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

if "app_pages._ui" not in sys.modules:
    # The first visit after the server starts imports PyTorch (a few seconds): say so at once.
    with st.spinner("Starting up: loading PyTorch and the models…"):
        import app_pages._ui  # noqa: F401

from app_pages._ui import count_run, sidebar  # noqa: E402
from explorer.registry import PAGES  # noqa: E402

count_run()  # a full script run (GET /_stcore/metrics?families=explorer_script_runs)
navigation = st.navigation(
    [st.Page(p.file, title=p.label, icon=p.icon, url_path=p.slug, default=not p.numbered) for p in PAGES]
)
sidebar()
navigation.run()
