"""How many script runs this server process has done, by kind: a full page run or a fragment's own rerun.

The browser-side attention maps promise that hovering costs the server nothing; this counter is
how tests and benchmarks check it. The app counts every full run (``streamlit_app.py``) and every
rerun of the fragments that hold the maps; ``app_pages/_ui.py`` publishes the counts on Streamlit's
metrics endpoint: ``GET /_stcore/metrics?families=explorer_script_runs`` answers lines such as
``explorer_script_runs_total{kind="full"} 12``.
"""

from __future__ import annotations

import re
import threading
from collections import Counter

FAMILY = "explorer_script_runs"
KINDS = ("full", "fragment")

_lock = threading.Lock()
_counts: Counter[str] = Counter()


def record(kind: str) -> None:
    """Count one script run of ``kind`` ("full" or "fragment")."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: use one of {KINDS}")
    with _lock:
        _counts[kind] += 1


def counts() -> dict[str, int]:
    """Runs so far by kind (every kind present, 0 when none)."""
    with _lock:
        return {kind: _counts[kind] for kind in KINDS}


def parse_metrics(text: str) -> dict[str, int]:
    """The counts from the metrics endpoint's OpenMetrics text (what a test reads from a running server)."""
    found = dict.fromkeys(KINDS, 0)
    for kind, value in re.findall(rf'^{FAMILY}_total\{{kind="(\w+)"\}} (\d+)$', text, flags=re.MULTILINE):
        found[kind] = int(value)
    return found
