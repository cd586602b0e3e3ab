"""ViT Explorer: follow an image through a Vision Transformer, stage by stage.

Run with ``make run`` (or ``streamlit run streamlit_app.py``). This entry draws the shared
sidebar (image and model) and hands over to the selected page.

The first page after a server start is drawn before PyTorch is imported: this file, the sidebar
and the Home page's text import only PyTorch-free modules; the first page that needs PyTorch
starts a background warm-up, once its first paint is on its way, which imports PyTorch and loads
the default model (``app_pages/_startup.py``).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a classroom server has no hub access

import streamlit as st

from app_pages import _startup

st.set_page_config(page_title="ViT Explorer", page_icon="🔬", layout="wide")

from app_pages._sidebar import sidebar  # noqa: E402
from explorer.registry import PAGES  # noqa: E402

_startup.count_run()  # a full script run (GET /_stcore/metrics?families=explorer_script_runs)
navigation = st.navigation(
    [st.Page(p.file, title=p.label, icon=p.icon, url_path=p.slug, default=not p.numbered) for p in PAGES]
)
sidebar()
if navigation.url_path:  # every page but Home (url_path "") imports PyTorch at its top: after the warm-up's imports
    _startup.wait_for("imports", "Starting up: loading PyTorch (the first visit after a server start)…")
navigation.run()
