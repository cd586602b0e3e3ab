"""A Streamlit component that redraws every head's attention map in the browser on hover.

Plain HTML, CSS and JavaScript in ``frontend/`` (no build step, no CDN: it works offline),
declared with ``streamlit.components.v1.declare_component(path=...)``. The page packs one view
with :mod:`explorer.attention_payload` and sends it once; hovering a patch redraws all panels
in the browser with no script run on the server. A click pins the query; only a page that needs
the pinned patch (``on_pick``) or a view over the byte budget (fallback) hears about it, debounced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import streamlit as st
import streamlit.components.v1 as components

from explorer import state as S
from explorer.attention_payload import MapPayload, next_selection

FRONTEND = Path(__file__).resolve().parent / "frontend"
_grid = components.declare_component("attention_grid", path=str(FRONTEND))


def picked(key: str) -> tuple[int, int] | None:
    """The (query, head) the component with ``key`` last reported, or None."""
    value = st.session_state.get(key)
    if isinstance(value, dict):
        try:
            return int(value["query"]), int(value["head"])
        except (KeyError, TypeError, ValueError):
            return None
    return None


def attention_grid(
    payload: MapPayload,
    *,
    key: str,
    panel_labels: Sequence[str],
    query: int = 0,
    head: int = 0,
    big_title: str = "{panel}: where patch {query} looks",
    status: str = "query patch {query} (row {row}, column {col})",
    caption: str = "",
    query_title: str = "",
    big: bool = True,
    cols: int = 4,
    cls_title: str | None = None,
    cls_cols: int = 6,
    colour: str = "inferno",
    shared_scale: bool = False,
    on_pick: Callable[[int, int], None] | None = None,
) -> None:
    """Draw ``payload``'s panels in the browser, once; hovering and clicking there need no script run.

    ``query``/``head``: what the page wants shown; the browser adopts them when they differ from
    what it shows already. ``on_pick(query, head)`` runs (in a callback, before the page's next
    run) when the user pins a patch; without it the browser keeps clicks to itself unless the
    view is over the budget. Labels and titles are shown as text: ``{query}``, ``{panel}``,
    ``{row}`` and ``{col}`` are filled in by the browser, and nothing is read as HTML.
    """
    if len(panel_labels) != payload.panels:
        raise ValueError(f"{payload.panels} panels need {payload.panels} labels, got {len(panel_labels)}")
    if colour not in ("inferno", "rdbu"):
        raise ValueError(f"colour={colour!r}: use 'inferno' (sequential) or 'rdbu' (diverging)")
    record_key = S.component_record_key(key)
    record = next_selection(st.session_state.get(record_key), (query, head), st.session_state.get(key))
    st.session_state[record_key] = record

    def changed() -> None:
        value = picked(key)
        if value is not None and on_pick is not None:
            on_pick(*value)

    sections: list[dict[str, Any]] = [{"kind": "query", "title": query_title, "big": big, "cols": cols}]
    if cls_title is not None and -1 in payload.rows:
        sections.append({"kind": "cls", "title": cls_title, "big": False, "cols": cls_cols})
    meta, blobs = payload.args()
    _grid(
        meta=meta, **blobs,
        selection={"query": record["query"], "head": record["head"], "nonce": record["nonce"]},
        labels={"panels": [str(x) for x in panel_labels], "big_title": big_title, "status": status,
                "caption": caption},
        sections=sections, colour={"map": colour, "shared": shared_scale},
        notice=payload.fallback_note() or "", report=on_pick is not None,
        key=key, default=None, on_change=changed,
    )
