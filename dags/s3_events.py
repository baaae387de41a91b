"""
### s3_events — start `tiled_inference` runs as soon as S3 says images arrived

Event-driven twin of `s3_arrivals`: the bucket sends **S3 event notifications**
(`s3:ObjectCreated:*`, prefix `incoming/`) to an **SQS queue**; an `AssetWatcher` on the
asset `s3://<bucket>/incoming/` runs the common-messaging `MessageQueueTrigger`
(`scheme="sqs"`) in the **triggerer**, which long-polls the queue, deletes what it receives,
and turns each batch of messages (up to 10) into an asset event; each asset event starts a
run of this DAG at once. No listing, no worker slot held while waiting. Up to
`TILESCOPE_EVENTS_MAX_ACTIVE_RUNS` (default 4) runs overlap — claims make that safe, and a
run waiting behind a busy one would add that run's whole duration to the latency; events
recorded while that many are busy are batched into one run.

`claim_events` reads the run's `triggering_asset_events`, parses the S3 records (keys
URL-decoded; `s3:TestEvent`, non-creations, other buckets and keys outside `incoming/`
ignored), re-reads each object with HEAD (gone or superseded versions are skipped), and then
**claims, screens, batches and triggers exactly like `s3_arrivals`**: one claim per (bucket,
key, ETag) in the SQL catalog (all notified versions in one transaction), non-images to
`quarantine/` with a `<key>.error.json`, the images cut into batches (bounded by
`TILESCOPE_ARRIVALS_IMAGES_PER_RUN` and `TILESCOPE_ARRIVALS_SLICES_PER_RUN`) whose
deterministic run ids are stored in the claim rows before each batch's manifest is written
and its single `tiled_inference` run (`conf={"manifest": uri}`) is started. SQS delivers at
least once: a duplicate message finds the version already claimed and starts nothing. At
most `TILESCOPE_EVENTS_PER_RUN` (2000) images are started per run; the rest stay claimed and
`continue_backlog` emits an event on the same asset so another run picks them up (unfinished
claims are re-offered grouped by their stored run id: a batch that was stored but not
started is started under that same id).

Both DAGs share the claims, so they can run side by side: keep `s3_arrivals` on a slow
schedule as a sweep for what notifications cannot cover (objects uploaded before the
notification existed, failed claims due for another attempt, a message lost if the triggerer
died between deleting it and recording the event).

**Only defined when `TILESCOPE_SQS_QUEUE_URL` is set** (no queue, no watcher, no DAG).
Settings: `TILESCOPE_SQS_WAIT_SECONDS` (long poll, default 20), `TILESCOPE_SQS_IDLE_SECONDS`
(pause between empty polls, default 0), `TILESCOPE_EVENTS_REOFFER_AFTER_SECONDS` (when
another run's unfinished claim counts as abandoned, default 600), plus the `TILESCOPE_BUCKET`,
`TILESCOPE_INCOMING_PREFIX`, `TILESCOPE_IMAGE_SUFFIXES`, `TILESCOPE_ARRIVALS_*` and
`TILESCOPE_AWS_CONN_ID` settings of `s3_arrivals`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetWatcher, dag, get_current_context, task

from tilescope import settings
from tilescope.airflow.adapters import start_claimed_pipelines

_QUEUE_URL = settings.SQS_QUEUE_URL.get()
_BUCKET = settings.BUCKET.get()
_PREFIX = settings.INCOMING_PREFIX.get()
_BACKLOG = "tilescope_backlog"  # marks the DAG's own "claims left over" asset events
_AWS_CONN_ID = settings.AWS_CONN_ID.get()


def _events_asset(queue_url: str) -> Asset:
    """The asset "objects arriving under incoming/", watched through the SQS queue.

    Long polling (``wait_time_seconds`` up to 20) returns as soon as a message arrives and
    costs ~3 requests a minute when idle, so ``waiter_delay`` (the pause after an empty
    poll) defaults to 0. Ten messages per receive is SQS's maximum.
    """
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    trigger = MessageQueueTrigger(scheme="sqs", sqs_queue=queue_url, aws_conn_id=_AWS_CONN_ID,
                                  max_messages=10,
                                  wait_time_seconds=settings.SQS_WAIT_SECONDS.get(),
                                  waiter_delay=settings.SQS_IDLE_SECONDS.get())
    return Asset(name="tilescope_incoming_events", uri=f"s3://{_BUCKET}/{_PREFIX}",
                 watchers=[AssetWatcher(name="tilescope_sqs", trigger=trigger)])


def build(queue_url: str) -> Any:
    """The DAG, watching ``queue_url``."""
    events = _events_asset(queue_url)

    @dag(
        dag_id="s3_events",
        schedule=[events],
        catchup=False,
        # beyond it, waiting events batch into one run
        max_active_runs=settings.EVENTS_MAX_ACTIVE_RUNS.get(),
        doc_md=__doc__,
        tags=["tilescope", "arrivals", "events"],
        default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
    )
    def s3_events() -> None:
        @task
        def claim_events() -> list[dict[str, Any]]:
            """Claim the notified image versions; quarantine non-images."""
            from tilescope.airflow.adapters import catalog_engine
            from tilescope.airflow.connections import s3_client
            from tilescope.intake.events import read_notifications
            from tilescope.intake.flow import IntakePolicy, batch_requests, claim_notified

            context = get_current_context()
            asset_events = [e for evs in context["triggering_asset_events"].values()
                            for e in evs]
            notes = read_notifications(asset_events, prefix=_PREFIX, buckets={_BUCKET})
            for why in notes.skipped:
                print(f"ignored {why}")
            # Images per run (batched: a run starts a few tiled_inference runs, not one per
            # image).
            policy = IntakePolicy.from_settings(settings.EVENTS_PER_RUN)
            # A backlog event names no versions: it asks for every unfinished claim, now.
            backlog_run = any(_BACKLOG in (e.extra or {}) for e in asset_events)
            intake = claim_notified(s3_client(_AWS_CONN_ID), catalog_engine(required=True),
                                    notes.arrivals, policy, run_id=context["run_id"],
                                    reoffer_after_seconds=0.0 if backlog_run else
                                    settings.EVENTS_REOFFER_AFTER_SECONDS.get())
            for item in intake.skipped:
                print(f"skipped {item['key']} ({item['etag']}): {item['reason']}")
            for item in intake.rejected:
                print(f"quarantined {item['key']}: {item['reason']}")
            print(f"{len(asset_events)} asset event(s), {len(notes.arrivals)} notified "
                  f"version(s): starting {len(intake.claims)} in {len(intake.batches)} "
                  f"run(s), backlog {intake.backlog}")
            context["ti"].xcom_push(key="backlog", value=intake.backlog)
            return batch_requests(intake.batches)

        @task(outlets=[events])
        def continue_backlog() -> int:
            """This run left claims over its cap: emit an event on the watched asset so
            another run takes them (as unfinished claims) — no message will come for them.
            Skipped, emitting nothing, otherwise. Only this run's own backlog counts: claims
            of an overlapping run are that run's business, and counting them would make
            every busy run spawn an extra one."""
            from airflow.sdk.exceptions import AirflowSkipException

            context = get_current_context()
            backlog = int(context["ti"].xcom_pull(task_ids="claim_events", key="backlog") or 0)
            if not backlog:
                raise AirflowSkipException("no backlog")
            context["outlet_events"][events].extra = {_BACKLOG: backlog}
            return backlog

        requests = claim_events()
        start_claimed_pipelines(requests) >> continue_backlog()

    return s3_events()


if _QUEUE_URL:
    s3_events_dag = build(_QUEUE_URL)
