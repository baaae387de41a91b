"""
### s3_arrivals — start one `tiled_inference` run per image arriving under `incoming/`

Every tick (default each minute, `max_active_runs=1`, no catch-up) a **deferrable**
`S3KeySensor` waits for any key under `s3://<bucket>/incoming/` — in the triggerer, holding
no worker slot; a time-out ends the tick quietly (skipped). Then `claim_arrivals` lists the
prefix and **claims** each object version (bucket, key, ETag) under a unique key in the SQL
catalog, so overlapping ticks, retries and restarts never start two pipelines for one
version. Non-images (by suffix or by their first bytes) and empty objects are moved to
`quarantine/` at once with a `<key>.error.json`. At most `TILESCOPE_ARRIVALS_PER_TICK`
claims per tick (back-pressure); the rest wait, unclaimed.

`start_pipelines` is a mapped `TriggerDagRunOperator` with **deterministic run ids** derived
from the claim, so a retry after a crash between claim and trigger finds the existing run
instead of starting a second one. Each `tiled_inference` run then moves its original to
`processed/` when the result is stored, to `quarantine/` when the input is bad, or releases
the claim for another attempt (after `TILESCOPE_ARRIVALS_RETRY_AFTER_SECONDS`, up to
`TILESCOPE_ARRIVALS_MAX_ATTEMPTS`) when something transient failed.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import dag, get_current_context, task

from tilescope.airflow_adapters import start_claimed_pipelines
from tilescope.arrivals import DEFAULT_SUFFIXES

_BUCKET = os.getenv("TILESCOPE_BUCKET", "tilescope")
_PREFIX = os.getenv("TILESCOPE_INCOMING_PREFIX", "incoming/")
# "none" turns the schedule off (event-driven deployments, tests that trigger by hand).
_SCHEDULE = os.getenv("TILESCOPE_ARRIVALS_SCHEDULE", "* * * * *")
_SCHEDULE = None if _SCHEDULE.strip().lower() in ("", "none") else _SCHEDULE
_SUFFIXES = tuple(os.getenv("TILESCOPE_IMAGE_SUFFIXES", ",".join(DEFAULT_SUFFIXES)).split(","))
_PER_TICK = int(os.getenv("TILESCOPE_ARRIVALS_PER_TICK", "50"))
_MAX_ATTEMPTS = int(os.getenv("TILESCOPE_ARRIVALS_MAX_ATTEMPTS", "3"))
_RETRY_AFTER = float(os.getenv("TILESCOPE_ARRIVALS_RETRY_AFTER_SECONDS", "300"))
_WAIT_TIMEOUT = float(os.getenv("TILESCOPE_ARRIVALS_WAIT_SECONDS", "50"))
_POKE_INTERVAL = float(os.getenv("TILESCOPE_ARRIVALS_POKE_SECONDS", "5"))
_AWS_CONN_ID = os.getenv("TILESCOPE_AWS_CONN_ID", "aws_default")


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
        poke_interval=_POKE_INTERVAL,
        timeout=_WAIT_TIMEOUT,
        soft_fail=True,  # nothing arrived this tick: skipped, not failed
    )

    @task
    def claim_arrivals() -> list[dict[str, Any]]:
        """Claim new image versions (and re-offer unfinished claims); quarantine non-images."""
        from tilescope.airflow_adapters import catalog_engine, s3_client
        from tilescope.intake import IntakePolicy, trigger_requests
        from tilescope.intake import claim_arrivals as claim_step

        policy = IntakePolicy(prefix=_PREFIX, suffixes=_SUFFIXES, per_tick_limit=_PER_TICK,
                              max_attempts=_MAX_ATTEMPTS, retry_after_seconds=_RETRY_AFTER)
        claims, rejected = claim_step(s3_client(_AWS_CONN_ID), catalog_engine(required=True),
                                      _BUCKET, policy, run_id=get_current_context()["run_id"])
        for item in rejected:
            print(f"quarantined {item['key']}: {item['reason']}")
        return trigger_requests(claims)

    requests = claim_arrivals()
    wait >> requests
    start_claimed_pipelines(requests)


s3_arrivals()
