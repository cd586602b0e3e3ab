"""Trust: is the map faithful? Every method's map, deletion/insertion curves, areas, randomisation check."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
import torch

from app_pages._ui import model_input, page_inputs, show_error, trace_for
from explorer import state as S
from explorer import trust as T
from explorer.budget import deep_nbytes, shared_cache
from explorer.models import LoadedModel, ModelSpec


# ----------------------------------------------------------------------------- caches (one entry per method)
# In the server's byte cache (EXPLORER_CACHE_MB, explorer.budget), counted by their arrays' bytes:
# a count of entries says nothing about memory (a randomisation check of a 448 px model holds
# hundreds of maps). The leading-underscore arguments are inputs, not part of the key.
def cached_map(spec: ModelSpec, image_key: str, target: int, method: str, _loaded: LoadedModel, _x: torch.Tensor):
    return shared_cache().get_or_compute(("trust_map", spec, image_key, int(target), method),
                                         lambda: T.method_map(_loaded, _x, target, method), deep_nbytes)


def cached_curves(spec: ModelSpec, image_key: str, target: int, method: str, fill: str, steps: int,
                  _loaded: LoadedModel, _x: torch.Tensor, _relevance: np.ndarray):
    return shared_cache().get_or_compute(
        ("trust_curves", spec, image_key, int(target), method, fill, int(steps)),
        lambda: T.method_curves(_loaded, _x, target, method, _relevance, steps, fill), deep_nbytes)


def cached_randomization(spec: ModelSpec, image_key: str, target: int, method: str,
                         _loaded: LoadedModel, _x: torch.Tensor, _progress: Any = None):
    return shared_cache().get_or_compute(("trust_randomization", spec, image_key, int(target), method),
                                         lambda: T.method_randomization(_loaded, _x, target, method, _progress),
                                         deep_nbytes)


# ----------------------------------------------------------------------------- layout
spec, loaded, key, image, mask = page_inputs("trust")
try:
    T.check_explainable(loaded)
except ValueError as exc:
    show_error(exc, "Model")
    st.stop()

x = model_input(loaded, image)  # the model's own preprocessing record
names = loaded.class_names
probs = trace_for(spec, loaded, key, image).logits[0].softmax(-1).double().numpy()  # cached with the trace
st.markdown(T.INTRO)
with st.expander("What each method computes"):
    st.markdown(T.METHODS_TEXT)

left, mid, right = st.columns([2, 1, 1])
target = int(left.selectbox("Class to explain", range(len(names)), index=int(np.argmax(probs)), key=S.TRUST_CLASS,
                            format_func=lambda i: f"{names[i]} ({probs[i]:.1%})"))
fill = mid.radio("Removed patches show", T.FILLS, horizontal=True, key=S.TRUST_FILL,
                 format_func=lambda f: {"mean": "mean colour", "blur": "blurred"}.get(f, f))
steps = int(right.slider("Steps per curve", 2, 32, 10, key=S.TRUST_STEPS))

run = (spec, key, target, fill, steps)
if st.button("Compute every map and its curves", type="primary", key="trust_compute"):
    st.session_state[S.TRUST_RUN] = run

if st.session_state.get(S.TRUST_RUN) == run:
    bar = st.progress(0.0, text="Computing the maps…")
    maps, curves = {}, {}
    try:
        for i, method in enumerate(T.METHODS):
            maps[method] = cached_map(spec, key, target, method, loaded, x)
            curves[method] = cached_curves(spec, key, target, method, fill, steps, loaded, x, maps[method])
            bar.progress((i + 1) / len(T.METHODS), text=f"{method}: map and curves done")
    except ValueError as exc:
        show_error(exc, "Trust")
        st.stop()
    bar.empty()
    st.subheader(f"Every method's map for '{names[target]}'")
    st.plotly_chart(T.maps_figure(maps), key="trust_maps")
    st.subheader("Deletion and insertion")
    st.markdown(T.CURVES_TEXT)
    st.plotly_chart(T.curves_figure(curves), key="trust_curves")
    st.dataframe(T.area_rows(curves, fill), hide_index=True, key="trust_areas")
    if mask is not None:
        st.subheader("Is the map on the object?")
        st.dataframe(T.localisation_rows(maps, mask), hide_index=True, key="trust_localisation")
        st.caption(f"The object covers {float(np.mean(mask)):.0%} of the image: a map spread evenly would put "
                   "that share inside it.")
else:
    st.info("Maps, curves and areas are computed on demand (a few seconds on large models): press the button.")

st.subheader("Sanity check: randomise the model")
st.markdown(T.RANDOMIZATION_TEXT)
check_run = (spec, key, target)
if st.button("Run the randomisation check", key="trust_randomize_button"):
    st.session_state[S.TRUST_RANDOMIZE] = check_run
if st.session_state.get(S.TRUST_RANDOMIZE) == check_run:
    bar = st.progress(0.0, text="Randomising the model block by block…")
    checks = {}
    try:
        for i, method in enumerate(T.METHODS):
            def report(share: float, stage: str, i: int = i, method: str = method) -> None:
                bar.progress((i + share) / len(T.METHODS), text=f"{method}: {stage}")

            checks[method] = cached_randomization(spec, key, target, method, loaded, x, report)
    except ValueError as exc:
        show_error(exc, "Randomisation check")
        st.stop()
    bar.empty()
    shown = st.selectbox("Strip of maps for", list(checks), index=list(checks).index("gradient-rollout"),
                         key=S.TRUST_STRIP_METHOD)
    st.plotly_chart(T.randomization_figure(checks[shown], shown), key="trust_strip")
    st.dataframe(T.randomization_rows(checks), hide_index=True, key="trust_randomization")
