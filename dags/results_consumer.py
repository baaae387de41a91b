"""
### results_consumer — an example downstream DAG, started by every stored result

Scheduled on the asset `s3://<bucket>/results/` that `tiled_inference`'s **store** task
updates: each stored result is an asset event whose extra carries `image_id`, `image_uri`,
`status`, `detections`, `counts` (per class) and `result` (the `result.json` key), so a
consumer needs neither XComs nor S3 reads to react to it.

A batch run announces each stored image the same way, or — past
`TILESCOPE_IMAGE_EVENTS_PER_RUN` images — one event pointing at its `outcomes.json`, which
the consumer reads. **tally_classes** reads the events that triggered the run (several,
when results arrive faster than runs start), logs one line per result, and writes one row
per result and class to `tilescope_class_tallies` in the SQL catalog (`tilescope_catalog`
connection; without it the tally is only logged). Re-stored results replace their rows, so
`SELECT category, SUM(count) FROM tilescope_class_tallies GROUP BY category` counts every
image once. Copy this DAG to start your own consumer (alerts on a class, exports, …).

New DAGs start paused: unpause it to start consuming. Logic: `include/tilescope/outputs/tallies.py`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import dag, get_current_context, task

from tilescope import settings
from tilescope.airflow.adapters import results_asset

RESULTS_ASSET = results_asset(settings.BUCKET.get())


@dag(
    schedule=[RESULTS_ASSET],
    catchup=False,
    doc_md=__doc__,
    tags=["tilescope", "consumer"],
    max_active_runs=1,  # one writer at a time: re-recording a result replaces its rows
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
)
def results_consumer() -> None:
    @task
    def tally_classes() -> list[dict[str, Any]]:
        """The triggering results' per-class counts → log lines and catalog rows."""
        from tilescope.airflow.adapters import catalog_engine
        from tilescope.outputs.tallies import record_tallies, tallies_from_events

        # A manual run has no triggering events: nothing to tally.
        events = get_current_context()["triggering_asset_events"].get(RESULTS_ASSET, [])
        tallies, skipped = tallies_from_events(events, load_outcomes=_outcomes)
        for reason in skipped:
            print(f"skipped an event: {reason}")
        for tally in tallies:
            print(f"result {tally.describe()}")
        engine = catalog_engine()
        if engine is not None:
            try:
                print(f"{record_tallies(engine, tallies)} tally rows written")
            finally:
                engine.dispose()
        return [{"image_id": t.image_id, "result": t.result_key, "counts": t.counts}
                for t in tallies]

    tally_classes()


def _outcomes(uri: str) -> list[dict[str, Any]]:
    """A batch run's per-image outcomes (its one asset event points at them)."""
    import json

    from tilescope.airflow.connections import s3_client
    from tilescope.storage import read_bytes

    return list(json.loads(read_bytes(uri, s3_client()))["outcomes"])


results_consumer()
