"""The first page before PyTorch: what the entry needs to draw it, and the warm-up that follows it.

Importing PyTorch takes seconds (more on a busy server), and so does the first forward pass of
the default model. So the first page after a server start is drawn without them: the entry
(``streamlit_app.py``), the sidebar (``app_pages/_sidebar.py``) and the Home page's text and tour
import only this module and PyTorch-free ones (``explorer.registry``, ``state``, ``specs``,
``samples``, ``runs``, ``warmup``); ``tests/test_first_paint.py`` checks that ``torch`` is not
imported when they have been drawn. Then :data:`WARMUP`, a background thread started by the first
page that waits for it (:func:`wait_for`, once that page's first paint is on its way to the
browser, so that PyTorch's import does not compete with the browser drawing it), imports PyTorch
and the app's modules, builds the gallery, loads the default model and runs the Home page's
forward pass on the default photo: the page fills in, and the next visitor finds everything ready.

Pages other than Home import PyTorch at their top: the entry waits for the warm-up's imports
before running them (one import at a time, a spinner meanwhile). More work for after the first
paint (e.g. compiling the default model) is added with :func:`warmup_step`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import streamlit as st

from explorer import runs, samples, specs, warmup
from explorer import state as S

__all__ = ["WARMUP", "RunStats", "cached_sample_names", "count_run", "default_choice", "start", "wait_for",
           "warmup_step"]


def default_choice() -> tuple[specs.ModelSpec, bytes | None, str]:
    """(model spec, its bytes, gallery sample name) of a first visit: the sidebar's defaults."""
    state: dict[str, Any] = {}
    S.init(state)
    spec, data = specs.spec_from_state(state)
    return spec, data, state[S.SAMPLE_NAME]


def _import_app() -> None:
    import app_pages._ui  # noqa: F401  PyTorch, vitcore, the model code, the shared caches


def _gallery() -> None:
    from app_pages._cache import cached_samples

    cached_samples()


def _default_model() -> None:
    from app_pages._cache import cached_model

    spec, data, _ = default_choice()
    cached_model(spec, data)


def _default_home() -> None:
    """The Home page's data flow of the default photo through the default model (one forward pass, cached)."""
    from app_pages._cache import cached_model, cached_samples, cached_shape_flow
    from app_pages._ui import model_input

    spec, data, name = default_choice()
    loaded = cached_model(spec, data)
    image = cached_samples()[name].image
    cached_shape_flow(spec, samples.sample_key(name), tuple(loaded.preprocessing.crop_size), loaded,
                      lambda: model_input(loaded, image))


def _fast_path() -> None:
    """The default model's fast trace path (explorer.fastpath, ``$EXPLORER_FAST_PATH``), checked on the gallery."""
    import torch

    from app_pages._cache import cached_model, cached_samples
    from app_pages._ui import model_input
    from explorer import fastpath

    mode = fastpath.env_mode()
    if mode is None:
        return
    spec, data, name = default_choice()
    loaded = cached_model(spec, data)
    gallery = cached_samples()
    x = model_input(loaded, gallery[name].image)  # (1, C, H, W) the shape traces of the default photo have
    photos = torch.cat([model_input(loaded, item.image) for item in list(gallery.values())[:8]])
    path = fastpath.fast_path(loaded, mode)
    path.shape = tuple(x.shape)
    path.start(photos, wait=True)


# one per server process (this module is imported once; the entry script is re-run per visit)
WARMUP = warmup.Warmup(
    [("imports", _import_app), ("gallery", _gallery), ("model", _default_model), ("home", _default_home),
     ("fast path", _fast_path)],
    name="explorer-warmup",
)


def start() -> None:
    """Start the warm-up now (:func:`wait_for` does it when a page first needs it; later calls do nothing)."""
    WARMUP.start()


def warmup_step(name: str, fn: Callable[[], Any]) -> None:
    """Queue ``fn`` in the warm-up thread after the steps above (e.g. ``vitcore.optimize`` of the default model)."""
    WARMUP.add(name, fn)


def wait_for(step: str, message: str) -> None:
    """Return once warm-up step ``step`` has finished, with a spinner saying ``message`` meanwhile.

    The first call of the process starts the warm-up. A failed step is not reported here: the code
    that needs it runs it again and shows its error.
    """
    if WARMUP.done(step):
        return
    with st.spinner(message):
        WARMUP.wait(step)


@st.cache_resource(show_spinner=False)
def cached_sample_names() -> list[str]:
    """The gallery's names for the sidebar, without making an image (:func:`explorer.samples.sample_names`)."""
    return samples.sample_names()


# ------------------------------------------------------------------ script runs (explorer.runs on /_stcore/metrics)
_REGISTERING = threading.Lock()


class RunStats:
    """The script-run counts of :mod:`explorer.runs` as a Streamlit metrics family (``/_stcore/metrics``)."""

    stats_families = (runs.FAMILY,)

    def get_stats(self, family_names=None):
        from streamlit.runtime.stats import CounterStat

        return {runs.FAMILY: [CounterStat(runs.FAMILY, n, {"kind": kind}, help="script runs of the app by kind")
                              for kind, n in runs.counts().items()]}


def count_run(fragment: bool = False) -> None:
    """Count this script run for :mod:`explorer.runs`: call at the top of the app and of a fragment.

    In a fragment (``fragment=True``) only the fragment's own reruns count: during a full run the
    app has counted it already.
    """
    from streamlit.runtime import Runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    fragment_run = bool(ctx is not None and ctx.fragment_ids_this_run)
    if fragment and not fragment_run:
        return
    runs.record("fragment" if fragment_run else "full")
    if Runtime.exists():  # each server (and each AppTest) has its own metrics registry
        manager = Runtime.instance().stats_mgr
        with _REGISTERING:
            if runs.FAMILY not in manager.registered_families():
                manager.register_provider(RunStats())
