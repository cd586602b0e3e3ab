"""Trust: is the map faithful? Every method's map, deletion/insertion curves, areas, randomisation check.

The maps, curves and the randomisation check run as jobs in a worker process (explorer.trust_jobs);
this page submits them, shows each method's progress while it polls, and draws the results.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import numpy as np
import streamlit as st

from app_pages._ui import current_spec, model_input, page_inputs, show_error, trace_for
from explorer import state as S
from explorer import trust as T
from explorer import trust_jobs as TJ
from explorer.budget import deep_nbytes, shared_cache
from explorer.jobs import FINISHED
from explorer.samples import sample_images
from explorer.texts import page_name

ss = st.session_state
manager = TJ.trust_manager()
owner = ss.setdefault(S.OWNER, uuid.uuid4().hex)


def use_taught(name: str) -> None:
    ss[S.SESSION_MODEL_NAME] = name
    ss[S.MODEL_KIND] = "session"


# ----------------------------------------------------------------------------- results of finished jobs
# In the server's byte cache (EXPLORER_CACHE_MB, explorer.budget), counted by their arrays' bytes: one entry per
# (model, image, target, reference[, fill, steps]) and part, shared by every session that asks the same question.
def result_key(part: str, run: tuple) -> tuple:
    return ("trust_result", part, *run)


def job_for(part: str, run: tuple):
    """This session's job of ``part`` for exactly this ``run``, or None."""
    entry = (ss.get(S.TRUST_JOBS) or {}).get(part)
    if not entry or entry[0] != run:
        return None
    return manager.get(entry[1])


def submit(part: str, run: tuple, request: TJ.TrustRequest) -> None:
    jobs = dict(ss.get(S.TRUST_JOBS) or {})
    old = manager.get(jobs[part][1]) if part in jobs else None
    if old is not None:
        old.stop("replaced by a new request")
    job = TJ.submit_trust(manager, owner, request, max_seconds=3600.0)
    jobs[part] = (run, job.id)
    ss[S.TRUST_JOBS] = jobs


def forget(part: str) -> None:
    jobs = dict(ss.get(S.TRUST_JOBS) or {})
    jobs.pop(part, None)
    ss[S.TRUST_JOBS] = jobs


def take(part: str, run: tuple, artifacts: dict[str, Any]) -> None:
    """A finished job's results into the shared cache (the page draws them from there)."""
    if part == "maps":
        value = {"maps": TJ.maps_from(artifacts), "curves": TJ.curves_from(artifacts)}
    else:
        value = TJ.checks_from(artifacts)
    shared_cache().put(result_key(part, run), value, deep_nbytes(value))


def watch(part: str, run: tuple, stop_key: str, table_key: str) -> None:
    """Poll this session's job of ``part`` once: progress per method, or the error; results when done."""
    job = job_for(part, run)
    if job is None:
        return
    job.touch()
    manager.sweep()
    snap = job.snapshot()
    status = snap["status"]
    if status == "done":
        take(part, run, snap["artifacts"])
        st.rerun(scope="app")
    if status == "failed":
        what = "Maps and curves" if part == "maps" else "Randomisation check"
        show_error(ValueError(snap["message"]), what)
        st.caption("Nothing crashed: change the settings and press the button again.")
        return
    if status == "stopped":
        st.warning(f"Stopped: {snap['message']}. Press the button to start again.")
        return
    if status == "queued":
        st.info(f"Waiting for the explanation worker: place {manager.position(job)} in line.")
    st.progress(snap["progress"], text=f"{snap['message'] or status} ({snap['elapsed']:.0f} s)")
    rows = TJ.method_rows(snap)
    if rows:
        st.dataframe(rows, hide_index=True, key=table_key)
    if status not in FINISHED and st.button("Stop", key=stop_key):
        job.stop()


@st.fragment(run_every=timedelta(seconds=1))
def live(part: str, run: tuple, stop_key: str, table_key: str) -> None:
    if shared_cache().get(result_key(part, run)) is not None:
        st.rerun(scope="app")  # another session (or this one) already has the answer
    watch(part, run, stop_key, table_key)


# ----------------------------------------------------------------------------- layout
spec, loaded, key, image, mask = page_inputs("trust")
x = model_input(loaded, image)  # the model's own preprocessing record
names = loaded.class_names
headless = loaded.config.num_classes == 0
taught = T.taught_model_name(ss.get(S.SESSION_MODELS))
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
    if ss.get(S.TRUST_CLASS) not in choices:
        ss.pop(S.TRUST_CLASS, None)
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
fill = mid.radio("Removed patches show", T.FILLS, horizontal=True, key=S.TRUST_FILL, format_func=T.FILL_LABELS.get)
steps = int(right.slider("Steps per curve", 2, 32, T.STEPS, key=S.TRUST_STEPS))
methods, unavailable = T.available_methods(loaded)
for reason in unavailable.values():
    st.caption(f"Not for this model: {reason}")


def request(part: str) -> TJ.TrustRequest:
    """The job's request: the model by reference (a checkpoint file for session-only models), the inputs."""
    _, data = current_spec()
    return TJ.TrustRequest(spec=spec, checkpoint=TJ.checkpoint_reference(spec, data), image=x, target=target,
                           reference=reference, methods=methods, part=part, fill=fill, steps=steps, labels=names)


def result_or_submit(part: str, run: tuple, title: str) -> Any:
    """The finished result of ``part`` for ``run``, or None after making sure this session's job for it runs."""
    result = shared_cache().get(result_key(part, run))
    if result is None and job_for(part, run) is None:
        try:
            submit(part, run, request(part))
        except (ValueError, OSError, RuntimeError) as exc:
            show_error(exc, title)
            st.stop()
    return result


run = (spec, key, target, reference_name, fill, steps)
if st.button("Compute every map and its curves", type="primary", key=S.TRUST_COMPUTE):
    ss[S.TRUST_RUN] = run
    forget("maps")  # a click always asks again (e.g. after a failed or stopped job)

explained = "the similarity" if target == T.SIMILARITY else f"'{names[target]}'"
if ss.get(S.TRUST_RUN) == run:
    result = result_or_submit("maps", run, "Trust")
    if result is None:
        st.caption("Computed by the explanation worker (its own process): this page stays responsive, and "
                   "closing it stops the job.")
        live("maps", run, S.TRUST_STOP_MAPS, S.TRUST_PROGRESS_MAPS)
    else:
        maps, curves = result["maps"], result["curves"]
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
    st.info("Maps, curves and areas are computed on demand by the explanation worker (a few seconds on small "
            "models, about a minute for DINOv2 on two cores): press the button.")

st.subheader("Sanity check: randomise the model")
st.markdown(T.RANDOMIZATION_TEXT)
check_run = (spec, key, target, reference_name)
if st.button("Run the randomisation check", key=S.TRUST_RANDOMIZE_BUTTON):
    ss[S.TRUST_RANDOMIZE] = check_run
    forget("randomization")
if ss.get(S.TRUST_RANDOMIZE) == check_run:
    checks = result_or_submit("randomization", check_run, "Randomisation check")
    if checks is None:
        live("randomization", check_run, S.TRUST_STOP_RANDOMIZATION, S.TRUST_PROGRESS_RANDOMIZATION)
    else:
        first = "gradient-rollout" if "gradient-rollout" in checks else next(iter(checks))
        shown = st.selectbox("Strip of maps for", list(checks), index=list(checks).index(first),
                             key=S.TRUST_STRIP_METHOD)
        st.plotly_chart(T.randomization_figure(checks[shown], shown), key=S.TRUST_STRIP_FIG)
        st.dataframe(T.randomization_rows(checks), hide_index=True, key=S.TRUST_RANDOMIZATION_TABLE)
