"""The viewer's evaluation panel data: what ``evaluation.json`` (the DAG's ``evaluate`` step)
holds, shaped for the page — from a real evaluation of tests/test_evaluation.py's hand-counted
case — and nothing at all when a run was not evaluated. The api-server side (the result
JSON carrying it, the PR plot served) is in tests/plugins/test_viewer_plugin.py."""

from __future__ import annotations

import json

from test_evaluation import ground_truth, results

from tilescope.evaluation import METRICS, evaluate
from tilescope.viewer.shaping import evaluation_payload, precision50

PLOT = "results/0123456789abcdef/a1b2c3d4e5f6/evaluation-pr.png"


def stored_evaluation() -> dict:
    """``evaluation.json`` as the evaluate step writes it (through JSON, as read back)."""
    doc = {"ground_truth": "s3://tilescope/labels/scenes.json",
           **evaluate(results(), ground_truth()).to_dict()}
    return json.loads(json.dumps(doc))


def test_the_page_gets_every_figure_the_file_holds_and_the_plot_key():
    """Seen red with precision50 summing objects instead of detections (8 in the
    denominator, 0.75)."""
    doc = stored_evaluation()
    payload = evaluation_payload(doc, PLOT)
    assert payload is not None
    figures = payload["figures"]
    assert {name: figures[name] for name in METRICS} == {name: doc[name] for name in METRICS}
    assert figures["AP50"] == doc["AP50"] and figures["recall50"] == 6 / 8
    # 6 detections matched an object at IoU 0.5, of the 11 of the ground truth's classes
    assert figures["precision50"] == 6 / 11
    assert payload["counts"] == {"images": 3, "objects": 8, "detections": 11}
    assert payload["ground_truth"] == "s3://tilescope/labels/scenes.json"
    assert payload["pr_plot"] == PLOT
    car = payload["per_class"]["car"]
    assert car == {"AP50": doc["per_class"]["car"]["AP50"], "recall50": 4 / 5, "objects": 5,
                   "detections": 8}
    assert payload["per_class"]["bus"]["AP50"] is None  # no bus anywhere: nothing counted
    json.dumps(payload, allow_nan=False)  # the page's JSON, as sent


def test_no_evaluation_shows_nothing():
    """Not evaluated (no file), or a document that is not one: ``None``, never an error.
    Seen red with ``evaluation_payload`` returning an empty panel for ``{}``."""
    assert evaluation_payload(None, PLOT) is None
    assert evaluation_payload([1, 2], PLOT) is None
    assert evaluation_payload({}, PLOT) is None
    assert evaluation_payload({"ground_truth": "s3://b/gt.json"}, PLOT) is None


def test_a_partial_or_odd_file_shows_what_it_holds():
    """Only the figures present, a non-number as ``None``; precision needs detections."""
    payload = evaluation_payload(json.loads(
        '{"AP50": 0.5, "recall50": "high", "dup_rate": true, "AP": NaN}'))
    assert payload is not None
    assert payload["figures"] == {"AP": None, "AP50": 0.5, "recall50": None, "dup_rate": None,
                                  "precision50": None}
    assert payload["pr_plot"] is None and payload["per_class"] == {}
    assert precision50({"car": {"counts": {"matched": 0, "detections": 0}}}) is None
    assert precision50({"car": {"counts": {"matched": 2, "detections": 4}},
                        "boat": {"counts": {"matched": 1, "detections": 2}},
                        "odd": "not a row"}) == 0.5
