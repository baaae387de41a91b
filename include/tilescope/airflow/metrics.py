"""Send tilescope's metrics (:mod:`tilescope.outputs.metrics`) through Airflow's stats client.

Airflow owns the metrics configuration (``[metrics]``); emitting through its client means
tilescope's metrics go wherever Airflow's go and cost nothing when metrics are off.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from tilescope.outputs.metrics import Metric, queue_wait_seconds, region_metrics


def emit(metrics: Iterable[Metric]) -> None:
    """Send through Airflow's stats client (a no-op unless ``[metrics]`` enables a backend)."""
    from airflow.sdk.observability import stats

    for metric in metrics:
        tags = dict(metric.tags) or None
        if metric.kind == "incr":
            stats.incr(metric.name, int(metric.value), tags=tags)
        elif metric.kind == "timing":
            stats.timing(metric.name, timedelta(seconds=metric.value), tags=tags)
        else:
            stats.gauge(metric.name, metric.value, tags=tags)


def observe_region(finding: dict[str, Any], ready_at: float | None, ti: Any
                   ) -> dict[str, Any]:
    """In the analyze task: add the region's queue wait to its timings (first attempt only —
    a retry's wait would include the failed attempts and the back-off), emit the region's
    metrics, and return the finding. ``ready_at``: when preprocess made the run's regions
    ready (:attr:`tilescope.handoffs.Prepared.ready_at`)."""
    if int(getattr(ti, "try_number", 1) or 1) == 1:
        wait = queue_wait_seconds(ready_at, getattr(ti, "start_date", None))
        if wait is not None:
            finding.setdefault("seconds", {})["queue_wait"] = round(wait, 4)
    emit(region_metrics(finding))
    return finding
