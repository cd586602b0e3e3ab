"""Small pieces of the app's prose: notes as sentences, and page names as the navigation shows them.

A message that sends the reader to another page names it by its registered label
("7 · Teach it your classes"), so renaming or reordering a page in :mod:`explorer.registry`
changes every message with it.
"""

from __future__ import annotations

from collections.abc import Iterable

from explorer import registry

__all__ = ["page_name", "sentences"]


def page_name(slug: str, markdown: bool = True) -> str:
    """The page's navigation label, bold for Markdown (``**7 · Teach it your classes**``) or in quotes."""
    label = registry.page(slug).label
    return f"**{label}**" if markdown else f"“{label}”"


def sentences(parts: str | Iterable[object]) -> str:
    """Notes as prose: each part starts with a capital letter and ends with a full stop.

    ``["a note", "another (with detail)"]`` -> ``"A note. Another (with detail)."``; parts that
    already end in ".", "!" or "?" keep their own ending; empty parts are dropped.
    """
    items = [parts] if isinstance(parts, str) else list(parts)
    out = []
    for part in items:
        text = str(part).strip()
        if not text:
            continue
        text = text[0].upper() + text[1:]
        if text[-1] not in ".!?":
            text += "."
        out.append(text)
    return " ".join(out)
