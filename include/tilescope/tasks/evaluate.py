"""The DAG's optional ``evaluate`` step: a stored result scored against ground truth.

Where the ground truth is: the run's ``ground_truth`` parameter (an ``s3://`` URI of COCO
annotations), or else — the convention — a COCO file beside the image,
``<image key>.gt.json`` (``s3://b/scenes/a.png`` → ``s3://b/scenes/a.png.gt.json``). With
neither the step is skipped: most images arrive unlabelled, and that is not an error. A
``ground_truth`` that is named but missing or not COCO *is* one (the user asked for it).

What it writes, beside the result (keys from :mod:`tilescope.layout`):
``results/<image-id>/<params digest>/evaluation.json`` (:meth:`Evaluation.to_dict`) and
``evaluation-pr.png`` (the precision–recall curves). The image is matched to the ground
truth's images by file name, as ``tilescope evaluate`` does. A batch run and a video are
skipped (saying so): a batch's images would each need their own ground truth, and a video's
frames share one file name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tilescope.errors import BadImageError, ConfigError
from tilescope.evaluation import evaluate, load_json
from tilescope.handoffs import BatchPrepared, StoreSummary, prepared_from_xcom
from tilescope.layout import EVALUATION_ARTIFACTS, ResultsLayout
from tilescope.outputs.pr_plot import pr_curve_png
from tilescope.storage import S3Client, object_size, write_bytes

#: the ground truth beside an image: ``<image key>`` + this
GROUND_TRUTH_SUFFIX = ".gt.json"


@dataclass(frozen=True)
class EvaluationOutcome:
    """What the step did: skipped (and why), or the figures and where they were written."""

    skipped: str | None = None
    ground_truth: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The task's XCom: the headline figures and the keys (the whole evaluation is in
        ``evaluation.json``)."""
        return {"ground_truth": self.ground_truth, "keys": dict(self.keys),
                **{k: self.figures.get(k) for k in ("AP", "AP50", "recall50", "dup_rate")}}


def ground_truth_beside(image_uri: str) -> str:
    """The conventional ground-truth URI of an image."""
    return image_uri + GROUND_TRUTH_SUFFIX


def find_ground_truth(image_uri: str, named: str | None, client: S3Client) -> str | None:
    """``named`` if given (it must exist: checked when read), else the file beside the image
    when there is one, else ``None``."""
    if named:
        return named
    beside = ground_truth_beside(image_uri)
    try:
        object_size(beside, client)
    except BadImageError:  # no such object: an unlabelled image
        return None
    return beside


def evaluate_run(store_summary: Mapping[str, Any], prepared: Mapping[str, Any],
                 ground_truth: str | None, *, client: S3Client) -> EvaluationOutcome:
    """Score the stored result of a run (``store``'s and preprocess's XComs) against its
    ground truth, writing ``evaluation.json`` and the PR plot beside the result."""
    run = prepared_from_xcom(prepared)
    if isinstance(run, BatchPrepared):
        return EvaluationOutcome(skipped="a batch run: score its images with "
                                         "tilescope evaluate (one ground truth per image)")
    if run.video:
        return EvaluationOutcome(skipped="a video: its frames share one file name, so they "
                                         "cannot be matched to ground-truth images")
    summary = StoreSummary.from_dict(store_summary)
    uri = find_ground_truth(summary.image_uri, ground_truth, client)
    if uri is None:
        return EvaluationOutcome(skipped=f"no ground truth: neither a ground_truth parameter "
                                         f"nor {ground_truth_beside(summary.image_uri)}")
    gt = load_json(uri, "ground truth", client)  # a named one that is missing: an error
    layout = ResultsLayout.of_result(summary.keys["result"])
    if layout is None:  # store always writes through the layout; guard a hand-made XCom
        raise ConfigError(f"not a stored result key: {summary.keys['result']}")
    evaluation = evaluate(load_json(summary.keys["result"], "result", client), gt)
    keys = {role: layout.uri(name) for role, name in EVALUATION_ARTIFACTS.items()}
    write_bytes(keys["evaluation"], json.dumps({"ground_truth": uri, **evaluation.to_dict()},
                                               indent=1).encode(), "application/json", client)
    write_bytes(keys["pr_plot"], pr_curve_png(evaluation), "image/png", client)
    return EvaluationOutcome(ground_truth=uri, figures=evaluation.to_dict(), keys=keys)

