"""
### s3_arrivals — start `tiled_inference` runs, one per batch of images arriving under `incoming/`

Every tick (default each minute, `max_active_runs=1`, no catch-up) a **deferrable**
`S3KeySensor` waits for any key under `s3://<bucket>/incoming/` — in the triggerer, holding
no worker slot; a time-out ends the tick quietly (skipped). Then `claim_arrivals` lists the
prefix and **claims** the new object versions (bucket, key, ETag) under a unique key in the
SQL catalog — up to `TILESCOPE_ARRIVALS_PER_TICK` (2000) per tick, in one transaction — so
overlapping ticks, retries and restarts never start two pipelines for one version; the rest
wait, unclaimed (back-pressure). Each claimed object is **screened** by one ranged GET of its
first 64 KB (on a small thread pool): non-images (by suffix or by their first bytes) and empty
objects are moved to `quarantine/` at once with a `<key>.error.json`; for images the header
gives the pixel size, hence the estimated slice count (unknown: a conservative estimate from
the byte size).

The claims are cut into **batches** of at most `TILESCOPE_ARRIVALS_IMAGES_PER_RUN` (1000)
images and `TILESCOPE_ARRIVALS_SLICES_PER_RUN` (20000) estimated slices. A batch's run id is
derived from its claims (`arrivals__<hash of bucket/key/etag/attempt>`) and **stored in the
claim rows** before its manifest (`s3://<bucket>/manifests/<run_id>.json`, `{"images": [{"uri",
"claim"}]}`) is written and the run started. `start_pipelines` is a mapped
`TriggerDagRunOperator` over the batches (`conf={"manifest": uri}`, `skip_when_already_exists`)
and `mark_triggered` marks every claim of the started batches. Claims left unfinished by a
crash anywhere between claim and trigger are re-offered by the next tick grouped by their
stored run id — the same run id, the same manifest, so a run that already started is found,
not doubled; claims that never got a run id are simply batched anew.

Each `tiled_inference` run then settles every image of its batch on its own: the original to
`processed/` when its result is stored, to `quarantine/` when the input is bad, or the claim
released for another attempt (after `TILESCOPE_ARRIVALS_RETRY_AFTER_SECONDS`, up to
`TILESCOPE_ARRIVALS_MAX_ATTEMPTS`) when something transient failed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import dag, get_current_context, task

from tilescope import settings
from tilescope.airflow.adapters import start_claimed_pipelines

_BUCKET = settings.BUCKET.get()
_PREFIX = settings.INCOMING_PREFIX.get()
# "none" turns the schedule off (event-driven deployments, tests that trigger by hand).
_SCHEDULE = settings.ARRIVALS_SCHEDULE.get()
_SCHEDULE = None if _SCHEDULE.lower() == "none" else _SCHEDULE
_AWS_CONN_ID = settings.AWS_CONN_ID.get()


@dag(
    schedule=_SCHEDULE,
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["tilescope", "arrivals"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
)
def s3_arrivals() -> None:
    wait = S3KeySensor(
        task_id="wait_for_arrivals",
        bucket_key=f"s3://{_BUCKET}/{_PREFIX}*",
        wildcard_match=True,
        aws_conn_id=_AWS_CONN_ID,
        deferrable=True,
        poke_interval=settings.ARRIVALS_POKE_SECONDS.get(),
        timeout=settings.ARRIVALS_WAIT_SECONDS.get(),
        soft_fail=True,  # nothing arrived this tick: skipped, not failed
    )

    @task
    def claim_arrivals() -> list[dict[str, Any]]:
        """Claim new image versions (and re-offer unfinished claims); quarantine non-images;
        batch the rest (run ids stored, manifests written). One small request per batch."""
        from tilescope.airflow.adapters import catalog_engine
        from tilescope.airflow.connections import s3_client
        from tilescope.intake.flow import IntakePolicy, batch_requests, take_arrivals

        policy = IntakePolicy.from_settings(settings.ARRIVALS_PER_TICK)
        intake = take_arrivals(s3_client(_AWS_CONN_ID), catalog_engine(required=True),
                               _BUCKET, policy, run_id=get_current_context()["run_id"])
        for item in intake.rejected:
            print(f"quarantined {item['key']}: {item['reason']}")
        for batch in intake.batches:
            print(f"batch {batch.run_id}: {len(batch.claims)} image(s), ~{batch.slices} "
                  f"slices, {batch.manifest_uri}")
        return batch_requests(intake.batches)

    requests = claim_arrivals()
    wait >> requests
    start_claimed_pipelines(requests)


s3_arrivals()
