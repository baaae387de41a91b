"""Metrics: queue wait and run timings, the samples of a region and an image, and their
emission through Airflow's stats client to a real UDP socket (StatsD's wire format)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from tilescope.airflow.metrics import emit, observe_region
from tilescope.outputs.metrics import (
    IMAGES,
    MODEL_SHARE,
    Metric,
    image_metrics,
    queue_wait_seconds,
    region_metrics,
    run_seconds,
)
from tilescope.outputs.notifications import image_outcome

START = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
FINDING = {"index": 3, "name": "r1c1", "slice_count": 48,
           "seconds": {"read": 0.1, "model": 2.0, "merge": 0.05, "total": 2.15}}


def test_queue_wait_is_ready_to_started():
    ready = START.timestamp()
    assert queue_wait_seconds(ready, START + timedelta(seconds=3.5)) == pytest.approx(3.5)
    assert queue_wait_seconds(ready + 1, START) == 0.0  # clocks apart: never negative
    assert queue_wait_seconds(None, START) is None and queue_wait_seconds(ready, None) is None


def test_run_seconds():
    regions = [{"total": 2.0, "queue_wait": 1.0}, {"total": 3.0}, {"model": 1.0}]
    assert run_seconds(regions, 100.0, 112.5) == {"total": 12.5, "regions": 5.0,
                                                  "queue_wait": 1.0}


def test_region_metrics():
    metrics = region_metrics({**FINDING, "seconds": {**FINDING["seconds"], "queue_wait": 0.7}})
    assert metrics == [Metric("incr", "tilescope.regions", 1),
                       Metric("incr", "tilescope.slices", 48),
                       Metric("timing", "tilescope.region", 2.15),
                       Metric("timing", "tilescope.model", 2.0),
                       Metric("timing", "tilescope.queue_wait", 0.7)]
    assert [m.name for m in region_metrics({"slice_count": 1, "seconds": {}})] == [
        "tilescope.regions", "tilescope.slices"]


def test_image_metrics():
    outcome = image_outcome(dag_id="d", run_id="r", image_uri="s3://b/k",
                            finished_at=START + timedelta(seconds=20), started_at=START,
                            stored={"status": "complete", "model_share": 0.25})
    metrics = image_metrics(outcome)
    assert metrics == [Metric("incr", IMAGES, 1, (("status", "succeeded"),)),
                       Metric("incr", "tilescope.images.succeeded", 1),
                       Metric("timing", "tilescope.image", 20.0, (("status", "succeeded"),)),
                       Metric("gauge", MODEL_SHARE, 0.25)]


def test_emit_sends_statsd_lines(statsd_server):
    emit([Metric("incr", "tilescope.regions", 1), Metric("timing", "tilescope.model", 1.5),
          Metric("gauge", "tilescope.model_share", 0.25, (("status", "succeeded"),)),
          Metric("incr", "tilescope.slices", 48)])
    assert statsd_server.take() == ["airflow.tilescope.regions:1|c",
                                     "airflow.tilescope.model:1500.000000|ms",
                                     "airflow.tilescope.model_share:0.25|g",
                                     "airflow.tilescope.slices:48|c"]


def test_observe_region_adds_queue_wait_on_first_attempt_and_emits(statsd_server):
    ready_at = START.timestamp()
    first = SimpleNamespace(try_number=1, start_date=START + timedelta(seconds=2))
    finding = observe_region({**FINDING, "seconds": dict(FINDING["seconds"])}, ready_at, first)
    assert finding["seconds"]["queue_wait"] == 2.0
    lines = statsd_server.take()
    assert len(lines) == 5
    assert lines[0] == "airflow.tilescope.regions:1|c"
    assert lines[-1] == "airflow.tilescope.queue_wait:2000.000000|ms"

    retry = SimpleNamespace(try_number=2, start_date=START + timedelta(seconds=60))
    finding = observe_region({**FINDING, "seconds": dict(FINDING["seconds"])}, ready_at, retry)
    assert "queue_wait" not in finding["seconds"]  # would include the failed attempt


def test_a_batch_run_counts_and_times_every_image():
    from tilescope.outputs.notifications import batch_image_outcomes

    entries = [{"index": i, "uri": f"s3://b/{i}.jpg", "status": status,
                "result_status": "partial" if i == 1 else "complete"}
               for i, status in enumerate(["stored", "stored", "bad", "failed"])]
    outcomes = batch_image_outcomes(dag_id="d", run_id="r", outcomes=entries,
                                    finished_at=START + timedelta(seconds=9), started_at=START)
    metrics = [m for o in outcomes for m in image_metrics(o)]
    assert [m.name for m in metrics if m.name.startswith(f"{IMAGES}.")] == [
        "tilescope.images.succeeded", "tilescope.images.partial", "tilescope.images.failed",
        "tilescope.images.failed"]
    assert sum(m.value for m in metrics if m.name == IMAGES) == 4
    assert [m.value for m in metrics if m.name == "tilescope.image"] == [9.0] * 4
    assert not [m for m in metrics if m.name == MODEL_SHARE]
