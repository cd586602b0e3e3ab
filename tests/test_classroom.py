"""A small class in real Chromium pages: 5 students clicking patches for 20 s on one server.

No timing is asserted (the machine's load decides that; ``benchmarks/classroom_browser.py`` prints
the table): every click must be answered, no page may show an exception, and every page must show
its own student's patch, never another session's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_five_students_click_for_twenty_seconds_without_errors_or_leaks(tmp_path):
    import classroom_browser as C

    if not Path(C.CHROMIUM).exists():
        pytest.skip("chromium is not installed (.ci/run installs it with apt-get)")
    pytest.importorskip("playwright")
    server = C.Server(log=tmp_path / "server.log")
    try:
        cell = C.run_classroom(server, "shapes", think=1.0, students=5, seconds=20)
    finally:
        server.stop()
    print(C.HEADER, cell.row(), sep="\n")
    assert not cell.errors, cell.errors
    assert not cell.leaks, cell.leaks
    assert len(cell.latencies) >= 5  # every student got answers
