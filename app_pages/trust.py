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
from explorer.samples import sample_images
from explorer.texts import page_name


# ----------------------------------------------------------------------------- caches (one entry per method)
# In the server's byte cache (EXPLORER_CACHE_MB, explorer.budget), counted by their arrays' bytes:
# a count of entries says nothing about memory (a randomisation check of a 448 px model holds
# hundreds of maps). The leading-underscore arguments are inputs, not part of the key. ``target``
# is a class index or "similarity"; ``reference`` names the second photo ("" = the photo itself).
def cached_map(spec: ModelSpec, image_key: str, target: int | str, reference: str, fill: str, method: str,
               _loaded: LoadedModel, _x: torch.Tensor, _target: Any):
    return shared_cache().get_or_compute(("trust_map", spec, image_key, target, reference, fill, method),
                                         lambda: T.method_map(_loaded, _x, _target, method, fill), deep_nbytes)


def cached_curves(spec: ModelSpec, image_key: str, target: int | str, reference: str, method: str, fill: str,
                  steps: int, _loaded: LoadedModel, _x: torch.Tensor, _relevance: np.ndarray, _target: Any):
    return shared_cache().get_or_compute(
        ("trust_curves", spec, image_key, target, reference, method, fill, int(steps)),
        lambda: T.method_curves(_loaded, _x, _target, method, _relevance, steps, fill), deep_nbytes)


def cached_randomization(spec: ModelSpec, image_key: str, target: int | str, reference: str, method: str,
                         _loaded: LoadedModel, _x: torch.Tensor, _target: Any, _progress: Any = None):
    return shared_cache().get_or_compute(("trust_randomization", spec, image_key, target, reference, method),
                                         lambda: T.method_randomization(_loaded, _x, _target, method, _progress),
                                         deep_nbytes)


def use_taught(name: str) -> None:
    st.session_state[S.SESSION_MODEL_NAME] = name
    st.session_state[S.MODEL_KIND] = "session"


# ----------------------------------------------------------------------------- layout
spec, loaded, key, image, mask = page_inputs("trust")
x = model_input(loaded, image)  # the model's own preprocessing record
names = loaded.class_names
headless = loaded.config.num_classes == 0
taught = T.taught_model_name(st.session_state.get(S.SESSION_MODELS))
if taught is not None and spec.kind != "session":
    st.button(f"Explain the model taught on {page_name('teach', markdown=False)} ({taught})", key=S.TRUST_USE_TAUGHT,
              on_click=use_taught, args=(taught,))
st.markdown(T.INTRO)
with st.expander("What each method computes"):
    st.markdown(T.METHODS_TEXT)

left, mid, right = st.columns([2, 1, 1])
reference_name, reference = "", None
if headless:
    left.markdown(T.SIMILARITY_TEXT)
    if taught is None:
        left.caption(f"Teach it classes on {page_name('teach')} to explain a class instead.")
    target = T.SIMILARITY
else:
    probs = trace_for(spec, loaded, key, image).logits[0].softmax(-1).double().numpy()  # cached with the trace
    choices = [*range(len(names)), T.SIMILARITY]
    if st.session_state.get(S.TRUST_CLASS) not in choices:
        st.session_state.pop(S.TRUST_CLASS, None)
    target = left.selectbox("Explain", choices, index=int(np.argmax(probs)), key=S.TRUST_CLASS,
                            format_func=lambda i: "similarity of the features to the clean photo's"
                            if i == T.SIMILARITY else f"class {names[i]} ({probs[i]:.1%})")
if target == T.SIMILARITY:
    photos = sample_images()
    options = ["", *(n for n in photos if f"sample:{n}" != key)]
    reference_name = left.selectbox("Compared with", options, key=S.TRUST_REFERENCE,
                                    format_func=lambda n: n or "the photo itself (why does it look like itself?)")
    if reference_name:
        reference = model_input(loaded, photos[reference_name])
goal = T.make_target(target, reference)
fill = mid.radio("Removed patches show", T.FILLS, horizontal=True, key=S.TRUST_FILL, format_func=T.FILL_LABELS.get)
steps = int(right.slider("Steps per curve", 2, 32, 10, key=S.TRUST_STEPS))
methods, unavailable = T.available_methods(loaded)
for reason in unavailable.values():
    st.caption(f"Not for this model: {reason}")

run = (spec, key, target, reference_name, fill, steps)
if st.button("Compute every map and its curves", type="primary", key=S.TRUST_COMPUTE):
    st.session_state[S.TRUST_RUN] = run

explained = "the similarity" if target == T.SIMILARITY else f"'{names[target]}'"
if st.session_state.get(S.TRUST_RUN) == run:
    bar = st.progress(0.0, text="Computing the maps…")
    maps, curves = {}, {}
    try:
        for i, method in enumerate(methods):
            bar.progress(i / len(methods), text=f"{method}: computing the map and its curves…")
            maps[method] = cached_map(spec, key, target, reference_name, fill, method, loaded, x, goal)
            curves[method] = cached_curves(spec, key, target, reference_name, method, fill, steps, loaded, x,
                                           maps[method], goal)
    except ValueError as exc:
        show_error(exc, "Trust")
        st.stop()
    bar.empty()
    st.subheader(f"Every method's map for {explained}")
    st.plotly_chart(T.maps_figure(maps), key=S.TRUST_MAPS_FIG)
    st.subheader("Deletion and insertion")
    st.markdown(T.CURVES_TEXT)
    st.plotly_chart(T.curves_figure(curves), key=S.TRUST_CURVES_FIG)
    st.dataframe(T.area_rows(curves, fill), hide_index=True, key=S.TRUST_AREAS_TABLE)
    if mask is not None:
        st.subheader("Is the map on the object?")
        st.dataframe(T.localisation_rows(maps, mask), hide_index=True, key=S.TRUST_LOCALISATION_TABLE)
        st.caption(f"The object covers {float(np.mean(mask)):.0%} of the image: a map spread evenly would put "
                   "that share inside it.")
else:
    st.info("Maps, curves and areas are computed on demand (a few seconds on small models, about a minute for "
            "DINOv2 on two cores): press the button.")

st.subheader("Sanity check: randomise the model")
st.markdown(T.RANDOMIZATION_TEXT)
check_run = (spec, key, target, reference_name)
if st.button("Run the randomisation check", key=S.TRUST_RANDOMIZE_BUTTON):
    st.session_state[S.TRUST_RANDOMIZE] = check_run
if st.session_state.get(S.TRUST_RANDOMIZE) == check_run:
    bar = st.progress(0.0, text="Randomising the model block by block…")
    checks = {}
    try:
        for i, method in enumerate(methods):
            def report(share: float, stage: str, i: int = i, method: str = method) -> None:
                bar.progress((i + share) / len(methods), text=f"{method}: {stage}")

            checks[method] = cached_randomization(spec, key, target, reference_name, method, loaded, x, goal, report)
    except ValueError as exc:
        show_error(exc, "Randomisation check")
        st.stop()
    bar.empty()
    first = "gradient-rollout" if "gradient-rollout" in checks else next(iter(checks))
    shown = st.selectbox("Strip of maps for", list(checks), index=list(checks).index(first),
                         key=S.TRUST_STRIP_METHOD)
    st.plotly_chart(T.randomization_figure(checks[shown], shown), key=S.TRUST_STRIP_FIG)
    st.dataframe(T.randomization_rows(checks), hide_index=True, key=S.TRUST_RANDOMIZATION_TABLE)
