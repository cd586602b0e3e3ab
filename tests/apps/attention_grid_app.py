"""A one-component Streamlit app for the browser tests of components/attention_grid (no model, no PyTorch).

Synthetic attention for 3 heads over a 6x6 grid with a CLS token; every label carries markup
that must show as text (``?hostile=1``), and ``?fallback=1`` packs it over a tiny budget.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: components/, explorer/

import numpy as np
import streamlit as st

from components.attention_grid import attention_grid, picked
from explorer.attention_payload import attention_payload, encode_image

HOSTILE = '<img src=x onerror="window.__pwned=1;window.parent.__pwned=1">'

hostile = st.query_params.get("hostile") == "1"
fallback = st.query_params.get("fallback") == "1"
name = HOSTILE if hostile else "cat"
g = np.random.default_rng(0)
scores = g.normal(size=(3, 37, 37)) * 3
attention = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
yy, xx = np.mgrid[0:96, 0:96]
pixels = np.stack([xx * 2, yy * 2, np.full_like(xx, 128)], -1).astype(np.uint8)
query = (picked("grid") or (0, 0))[0]
payload = attention_payload(attention, (6, 6), 1, query=query, image=encode_image(pixels),
                            budget=5_000 if fallback else 1_000_000)
st.title("attention grid test app")
attention_grid(payload, key="grid", query=query, panel_labels=[f"{name} head {h}" for h in range(3)],
               big_title=f"{name}: {{panel}} where patch {{query}} looks", caption=f"class {name}",
               status=f"{name} query {{query}}", cls_title=f"what CLS of {name} attends to")
st.write(f"runs: {st.session_state.setdefault('runs', 0) + 1}")
st.session_state["runs"] += 1
