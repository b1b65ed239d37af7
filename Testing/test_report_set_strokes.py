"""benchmarks/report_set.py's issue-24 targets table (stroke protocols), from a made-up report: no model run."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _report_set():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import report_set
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return report_set


def _latency(kind, first=None, later=None):
    return {kind: {"first": {"p50": None}, "first_without_encoder": {"p50": first}, "later": {"p50": later}}}


def test_targets_table_compares_strokes_with_clicks_from_scratch():
    report_set = _report_set()
    entry = {
        "lasso": {"mean": {"model": [0.8, 0.82, 0.85], "baseline": [0.5] * 3},
                  "latency_s": {**_latency("lasso", first=0.15), **_latency("click", later=0.1)}},
        "scribbles": {"mean": {"model": [0.6, 0.7, 0.75], "baseline": [0.4] * 3},
                      "latency_s": _latency("scribble", later=0.25)},
        "clicks_from_scratch": {"mean": {"model": [0.5, 0.6, 0.7, 0.75, 0.8], "baseline": [0.4] * 5}},
    }
    rows = {row[0]: row for row in report_set.targets_table(entry)}
    assert rows["lasso Dice before any click"][1:] == ["0.800", "≥ 0.75", "yes"]
    assert rows["lasso + 2 clicks"][1:] == ["0.850", "≥ 5 clicks from scratch (0.800)", "yes"]
    assert rows["3 scribbles"][1:] == ["0.750", "≥ 5 clicks from scratch (0.800)", "no"]
    lasso_latency = rows["lasso step (first prompt, encoder excluded) p50 latency"]
    assert "1.50× a click (100 ms)" in lasso_latency[1] and lasso_latency[3] == "yes"
    assert rows["correcting scribble step p50 latency"][3] == "no"  # 2.5× a click
    del entry["clicks_from_scratch"]
    assert report_set.targets_table(entry)[1][3] == "?"  # no reference: not judged
