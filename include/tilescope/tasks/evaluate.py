"""The DAG's optional ``evaluate`` step: a stored result scored against ground truth.

Where the ground truth is: the run's ``ground_truth`` parameter (an ``s3://`` URI of COCO
annotations), or else — the convention — a COCO file beside the image,
``<image key>.gt.json`` (``s3://b/scenes/a.png`` → ``s3://b/scenes/a.png.gt.json``). With
neither there is nothing to do: most images arrive unlabelled, and that is not an error. A
``ground_truth`` that is named but missing or not COCO *is* one (the user asked for it).

Who decides: preprocess (:func:`ground_truth_for`, one HEAD when no parameter names a file),
into the ``prepared`` hand-off; ``evaluate`` is mapped over :func:`evaluations` of it — one
entry or none. A task mapped over an empty list is skipped by the scheduler when it expands
it, without a worker: an unlabelled run pays nothing for the step (a started task costs
~0.4 CPU-s of Airflow overhead, a real share of a burst of small photos).

What it writes, beside the result (keys from :mod:`tilescope.layout`):
``results/<image-id>/<params digest>/evaluation.json`` (:meth:`Evaluation.to_dict`) and
``evaluation-pr.png`` (the precision–recall curves). The image is matched to the ground
truth's images by file name, as ``tilescope evaluate`` does. A batch run and a video are
never evaluated (the log says so): a batch's images would each need their own ground truth,
and a video's frames share one file name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tilescope.errors import BadImageError, ConfigError
from tilescope.evaluation import evaluate, load_json
from tilescope.handoffs import BatchPrepared, Prepared, StoreSummary, prepared_from_xcom
from tilescope.layout import EVALUATION_ARTIFACTS, ResultsLayout
from tilescope.outputs.pr_plot import pr_curve_png
from tilescope.storage import S3Client, object_size, write_bytes

log = logging.getLogger(__name__)

#: the ground truth beside an image: ``<image key>`` + this
GROUND_TRUTH_SUFFIX = ".gt.json"


@dataclass(frozen=True)
class EvaluationOutcome:
    """What the step did: the figures and where they were written."""

    ground_truth: str
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


def ground_truth_for(run: Prepared, named: str | None, client: S3Client) -> str | None:
    """preprocess's decision for a one-image run: the ground truth its result will be scored
    against, or ``None`` (why is logged) — a video never, else :func:`find_ground_truth`."""
    if run.video:
        log.info("evaluate will not run: a video's frames share one file name, so they "
                 "cannot be matched to ground-truth images")
        return None
    uri = find_ground_truth(run.image.uri, named, client)
    if uri is None:
        log.info("evaluate will not run: no ground truth (neither a ground_truth parameter "
                 "nor %s)", ground_truth_beside(run.image.uri))
    return uri


def evaluations(prepared: Mapping[str, Any]) -> list[str]:
    """What ``evaluate`` is mapped over, from preprocess's ``prepared`` XCom: the ground truth
    it found, or nothing — and then Airflow skips the task without starting it."""
    run = prepared_from_xcom(prepared)
    if isinstance(run, BatchPrepared):
        log.info("evaluate will not run: a batch run (each image would need its own ground "
                 "truth): score its images with tilescope evaluate")
        return []
    return [run.ground_truth] if run.ground_truth else []


def evaluate_stored(store_summary: Mapping[str, Any], ground_truth: str, *,
                    client: S3Client) -> EvaluationOutcome:
    """Score a one-image run's stored result (``store``'s XCom) against ``ground_truth``,
    writing ``evaluation.json`` and the PR plot beside the result."""
    summary = StoreSummary.from_dict(store_summary)
    gt = load_json(ground_truth, "ground truth", client)  # a named one that is missing: an error
    layout = ResultsLayout.of_result(summary.keys["result"])
    if layout is None:  # store always writes through the layout; guard a hand-made XCom
        raise ConfigError(f"not a stored result key: {summary.keys['result']}")
    evaluation = evaluate(load_json(summary.keys["result"], "result", client), gt)
    keys = {role: layout.uri(name) for role, name in EVALUATION_ARTIFACTS.items()}
    write_bytes(keys["evaluation"], json.dumps({"ground_truth": ground_truth,
                                                **evaluation.to_dict()},
                                               indent=1).encode(), "application/json", client)
    write_bytes(keys["pr_plot"], pr_curve_png(evaluation), "image/png", client)
    return EvaluationOutcome(ground_truth=ground_truth, figures=evaluation.to_dict(),
                             keys=keys)
