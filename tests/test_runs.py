"""The server's script-run counter (explorer.runs) and its line on Streamlit's metrics endpoint."""

from __future__ import annotations

import pytest

from explorer import runs


def test_runs_are_counted_by_kind_and_read_back_from_streamlits_own_metric_lines():
    from streamlit.runtime.stats import CounterStat

    before = runs.counts()
    runs.record("full")
    runs.record("fragment")
    runs.record("fragment")
    now = runs.counts()
    assert now == {"full": before["full"] + 1, "fragment": before["fragment"] + 2}
    text = "\n".join(CounterStat(runs.FAMILY, n, {"kind": k}).to_metric_str() for k, n in now.items())
    assert runs.parse_metrics("# TYPE other counter\nother_total 3\n" + text) == now


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="full"):
        runs.record("hover")
