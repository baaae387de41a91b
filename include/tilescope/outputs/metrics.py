"""StatsD metrics of tilescope runs, sent through Airflow's own stats client.

Airflow already owns the metrics configuration (``[metrics] statsd_on``, ``statsd_host``,
``statsd_port``, ``statsd_prefix``, allow/block lists, Datadog or OpenTelemetry instead of
StatsD): emitting through its client (``airflow.sdk.observability.stats``, the Task SDK's
replacement for the deprecated ``airflow.stats.Stats``) means tilescope's metrics go wherever
Airflow's go, under the same prefix, and cost nothing when metrics are off.

Names (after Airflow's prefix, ``airflow.`` by default):

========================================  =======  =====================================
``tilescope.images``                      counter  images finished (any status)
``tilescope.images.<status>``             counter  … per status: succeeded/partial/failed
``tilescope.regions``                     counter  regions analyzed (successful attempts)
``tilescope.slices``                      counter  slices through the model
``tilescope.region_failures``             counter  region tasks failed for good
``tilescope.region``                      timer    one region: read + model + merge (ms)
``tilescope.model``                       timer    model time of one region (ms)
``tilescope.queue_wait``                  timer    region ready → its task started (ms)
``tilescope.image``                       timer    run start → image outcome (ms)
``tilescope.model_share``                 gauge    model time / wall time of the last run
========================================  =======  =====================================

A batch run (many images in one run) counts and times each of its images: one
``tilescope.images``/``tilescope.images.<status>`` per image, each image's
``tilescope.image`` being the run's start → its outcome (the images of a batch finish
together); a batch has no per-image model share, so no ``tilescope.model_share`` gauge.

Computing the metrics is pure (a list of :class:`Metric`); sending them is
:mod:`tilescope.airflow.metrics`, the one part that touches Airflow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from tilescope.outputs.notifications import ImageOutcome

IMAGES = "tilescope.images"
REGIONS = "tilescope.regions"
SLICES = "tilescope.slices"
REGION_FAILURES = "tilescope.region_failures"
REGION_TIMER = "tilescope.region"
MODEL_TIMER = "tilescope.model"
QUEUE_WAIT_TIMER = "tilescope.queue_wait"
IMAGE_TIMER = "tilescope.image"
MODEL_SHARE = "tilescope.model_share"


@dataclass(frozen=True)
class Metric:
    """One StatsD sample: a counter increment, a timing (seconds) or a gauge value."""

    kind: Literal["incr", "timing", "gauge"]
    name: str
    value: float
    tags: tuple[tuple[str, str], ...] = ()


def queue_wait_seconds(ready_at: float | None, started_at: datetime | None) -> float | None:
    """Seconds from "the region could run" (preprocess finished, epoch seconds) to "its task
    started" (the task instance's start date), or ``None`` when either is unknown.

    Airflow 3's Task SDK does not give a task its own ``queued_dttm``; and a pool holds
    waiting regions in *scheduled*, before *queued*, so ready → started is the wait that
    matters: scheduling, pool slot and executor pick-up together.
    """
    if ready_at is None or started_at is None:
        return None
    return max(0.0, started_at.timestamp() - float(ready_at))


def run_seconds(region_seconds: Iterable[Mapping[str, float]], run_started: float,
                now: float) -> dict[str, float]:
    """A DAG run's timings for its result: ``total`` (wall time, run start → now, the
    denominator of ``summary.model_share``), and the sums over regions of their task time
    (``regions``) and of their queue waits (``queue_wait``)."""
    timings = list(region_seconds)
    return {"total": max(0.0, now - run_started),
            "regions": float(sum(s.get("total", 0.0) for s in timings)),
            "queue_wait": float(sum(s.get("queue_wait", 0.0) for s in timings))}


def region_metrics(finding: Mapping[str, Any]) -> list[Metric]:
    """The metrics of one analyzed region (a finding dict from ``steps.analyze``)."""
    seconds = finding.get("seconds") or {}
    metrics = [Metric("incr", REGIONS, 1), Metric("incr", SLICES, int(finding["slice_count"]))]
    for name, key in ((REGION_TIMER, "total"), (MODEL_TIMER, "model"),
                      (QUEUE_WAIT_TIMER, "queue_wait")):
        if seconds.get(key) is not None:
            metrics.append(Metric("timing", name, float(seconds[key])))
    return metrics


def region_failure_metrics() -> list[Metric]:
    return [Metric("incr", REGION_FAILURES, 1)]


def image_metrics(outcome: ImageOutcome) -> list[Metric]:
    """The metrics of one finished image."""
    tags = (("status", outcome.status),)
    metrics = [Metric("incr", IMAGES, 1, tags), Metric("incr", f"{IMAGES}.{outcome.status}", 1)]
    if outcome.duration_seconds is not None:
        metrics.append(Metric("timing", IMAGE_TIMER, outcome.duration_seconds, tags))
    if outcome.model_share is not None:
        metrics.append(Metric("gauge", MODEL_SHARE, float(outcome.model_share)))
    return metrics
