"""
### tiled_inference — sliced object detection on one image in S3

One run per image: **preprocess** validates the object and plans a grid of regions (each a
block of model-sized, overlapping slices), staging the decoded pixels once as a tiled TIFF
in `scratch/`; **analyze** is mapped over the regions — one task instance per region,
bounded by the `tilescope` pool, retried per region — and reads only its region's tiles
(with `grid=auto` and an embedded model, consecutive regions are packed into work units of
~`TILESCOPE_UNIT_SECONDS` of model time, at least one per worker core: one task each);
**synthesize** merges detections across slice and region borders, tolerating failed regions
down to `min_success_ratio`; **store** first transforms (only when `anonymize` names
classes, or `face`): it writes an anonymized copy of the full-resolution image beside the
result (`anonymized.<ext>`, blurred or pixelated boxes) and records it in the result; then
it writes
`results/<image-id>/<params-hash>/` (`result.json`, `coco.json`, `overlay.webp`), upserts the
SQL catalog row, emits an Asset event on `s3://<bucket>/results/`, and removes the run's
scratch objects; **finalize** (last, `all_done`) moves an arrival's original to `processed/` —
or leaves it in `quarantine/`, or releases its claim for another attempt — and fails whenever
no result was stored; its callbacks emit the image's StatsD metrics and send one SNS message
per image to the success or error topic (`tilescope_success_topic_arn` /
`tilescope_error_topic_arn` Variables, or `TILESCOPE_SUCCESS_TOPIC_ARN` /
`TILESCOPE_ERROR_TOPIC_ARN`; none set → no message). **evaluate** (optional, after
finalize) scores the stored result against COCO ground truth — the `ground_truth` param, or
`<image key>.gt.json` beside the image, looked for once by preprocess — and writes
`evaluation.json` and `evaluation-pr.png` beside the result; without ground truth it is
mapped over nothing, so it is skipped without ever starting and the run succeeds.

A **video** (AVI, MP4/MOV, MKV/WebM — recognised by its bytes) runs through the same tasks:
preprocess samples `video_fps` frames per second and stages each frame; analyze is mapped
over work units of the frames' regions (each frame a source, like a batch's images);
synthesize merges per frame, never across frames; the overlay is a contact sheet of
annotated frames.

Trigger it from the UI form, the REST API (`conf: {"image_uri": "s3://bucket/key", ...}`)
or the `s3_arrivals` DAG. Clearing a failed `analyze` instance (with downstream) re-runs
just that region and completes the result: scratch is kept until `store` succeeds.

Connections: `aws_default` (S3; `endpoint_url` in extra for local servers) and
`tilescope_catalog` (sqlite file path as host, or postgres). Logic lives in
`include/tilescope/tasks/image.py` (analyze's operator in
`include/tilescope/airflow/operators.py`: with
the `sagemaker-async` model it defers while the endpoint works); this file only wires it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import timedelta
from typing import Any

from airflow.sdk import AssetAlias, Param, TriggerRule, dag, get_current_context, task

from tilescope import settings
from tilescope.airflow.adapters import results_asset
from tilescope.airflow.callbacks import finalize_callbacks, record_failure
from tilescope.airflow.operators import AnalyzeRegionOperator
from tilescope.airflow.params import archive_params, dag_params
from tilescope.moderation import BACKENDS
from tilescope.params import is_batch

# Above TILESCOPE_IMAGE_EVENTS_PER_RUN stored images a batch announces one results event, not
# one per image: Airflow's API server registers ~25 events a second, and 1,000 made the store
# task's success report time out (measured).
_IMAGE_EVENTS_PER_RUN = settings.IMAGE_EVENTS_PER_RUN.get()
# High enough that the pool, not Airflow's per-DAG default of 16, caps mapped concurrency.
_MAX_ACTIVE_TASKS = settings.MAX_ACTIVE_TASKS.get()

RESULTS_ASSET = results_asset(settings.BUCKET.get())
#: a batch's store emits one results-asset event per image through this alias
RESULTS_ALIAS = AssetAlias("tilescope-results")
_S3_URI = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+"
log = logging.getLogger(__name__)


def _quarantine_claimed(error: Exception) -> None:
    """Bad input from s3_arrivals: set the original aside with the reason, then fail."""
    from tilescope.airflow.adapters import catalog_engine
    from tilescope.airflow.connections import s3_client
    from tilescope.intake.claims import Claim
    from tilescope.intake.flow import quarantine_claimed

    _record_blocked(error)  # a moderation block is recorded as the image's result
    context = get_current_context()
    claim = context["params"].get("claim")
    if claim:
        quarantine_claimed(s3_client(), catalog_engine(required=True), Claim.from_dict(claim),
                           reason=str(error), error_class=type(error).__name__,
                           run_id=context["run_id"])


def _record_blocked(error: Exception) -> None:
    """An image the moderation gate refused gets a ``blocked`` result.json and catalog row."""
    from tilescope.errors import ImageBlockedError

    if isinstance(error, ImageBlockedError):
        from tilescope.airflow.adapters import catalog_url
        from tilescope.airflow.connections import s3_client
        from tilescope.tasks.image import record_blocked

        record_blocked(error, _params(), client=s3_client(), catalog_url=catalog_url(),
                       run_id=get_current_context()["run_id"])


def _moderation() -> Any:
    from tilescope.moderation import ModerationPolicy

    params = get_current_context()["params"]
    return ModerationPolicy.from_options(params.get("moderation"),
                                         params.get("moderation_options"))


def _reuse(params: Any, client: Any) -> Any:
    """The run's lookup of stored results (``None``: the ``reuse`` Param is off, no catalog,
    or a moderation gate) — see tilescope.tasks.reuse."""
    from tilescope.airflow.adapters import catalog_url
    from tilescope.tasks.reuse import reuse_index

    return reuse_index(catalog_url(), params, client, moderation=_moderation(),
                       enabled=bool(get_current_context()["params"].get("reuse", True)))


def _archive() -> Any:
    from tilescope.archival import ArchivePolicy

    return ArchivePolicy.from_options(get_current_context()["params"])


def _params() -> Any:
    from tilescope.params import InferenceParams

    return InferenceParams.from_dict(get_current_context()["params"])


@dag(
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["tilescope", "inference"],
    max_active_runs=settings.MAX_ACTIVE_RUNS.get(),
    max_active_tasks=_MAX_ACTIVE_TASKS,
    # A task that fails for good leaves its reason for finalize's notification.
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30),
                  "on_failure_callback": record_failure},
    # The run parameters (model … synthesis_options) come from InferenceParams, between what
    # the run is about and the moderation gate.
    params=dag_params({
        "image_uri": Param("s3://tilescope/incoming/kite.jpg", type="string",
                           pattern=_S3_URI,
                           title="Image", description="s3://bucket/key of the image"),
        "images": Param([], type="array", items={"type": "string", "pattern": _S3_URI},
                        title="Images (batch)",
                        description="a batch: s3:// URIs of images, or prefixes ending in / "
                                    "(every object under them); set, it replaces Image"),
        "manifest": Param("", type="string", pattern=rf"^$|{_S3_URI}",
                          title="Manifest (batch)",
                          description="s3:// URI of a JSON list of images (or one URI per "
                                      "line); s3_arrivals writes these"),
    }, {
        "moderation": Param("none", enum=list(BACKENDS),
                            title="Moderation gate",
                            description="checked before any region runs; blocks "
                                        "(fail-closed) unless moderation_options.fail_open"),
        "moderation_options": Param({}, type="object", title="Moderation options"),
        "reuse": Param(True, type="boolean", title="Reuse stored results",
                       description="an image whose bytes, model weights and parameters "
                                   "match a stored result is not analysed again (a reused "
                                   "catalog row); off forces recomputation"),
        **archive_params(),  # an archival copy, and what becomes of the original
        "claim": Param(None, type=["null", "object"], title="Claim (set by s3_arrivals)",
                       description="the claimed object version; its original is moved to "
                                   "processed/ or quarantine/ when the run ends"),
        "ground_truth": Param("", type="string", pattern=rf"^$|{_S3_URI}",
                              title="Ground truth (optional)",
                              description="s3:// URI of COCO annotations to score the result "
                                          "against; empty = <image key>.gt.json beside the "
                                          "image if there is one, else no evaluation"),
    }),
)
def tiled_inference() -> None:
    @task
    def preprocess() -> list[dict[str, Any]]:
        """Validate, plan, stage pixels. Returns the region list (what analyze maps over);
        everything else goes to the ``prepared`` XCom."""
        from tilescope.airflow.adapters import run_limits, task_outcome
        from tilescope.airflow.connections import s3_client
        from tilescope.models import load_model, model_slice_size
        from tilescope.models.registry import model_slice_seconds
        from tilescope.tasks.evaluate import ground_truth_for
        from tilescope.tasks.image import image_units, prepare
        from tilescope.tasks.transform import check_transform

        context = get_current_context()
        # A placeholder first (not None: Airflow reads a None XCom as missing): when this task
        # fails, synthesize (all_done) still renders its argument and fails at once, instead
        # of retrying an XComNotFound.
        context["ti"].xcom_push(key="prepared", value={})
        # e.g. anonymize naming a class the model does not have, or bad archive options
        with task_outcome():
            check_transform(_params())
            _archive()
        if is_batch(context["params"]):
            from tilescope.tasks.batch import batch_entries, prepare_batch

            with task_outcome():
                params, client = _params(), s3_client()
                units, prepared = prepare_batch(
                    batch_entries(context["params"], client=client), params, client=client,
                    run=context["run_id"],
                    model_slice_size=model_slice_size(params.model, params.model_options),
                    slice_seconds=model_slice_seconds(params.model), limits=run_limits(),
                    moderation=_moderation(), reuse=_reuse(params, client))
            context["ti"].xcom_push(key="prepared", value=prepared.to_dict())
            return units
        with task_outcome(on_bad_input=_quarantine_claimed):
            params, limits, client = _params(), run_limits(), s3_client()
            model = None
            if params.full_image_pass:
                model = load_model(params.model, **params.model_arguments())
            regions, prepared = prepare(
                context["params"]["image_uri"], params, client=client,
                run=context["run_id"], moderation=_moderation(),
                model_slice_size=model_slice_size(params.model, params.model_options),
                full_image_model=model, limits=limits, reuse=_reuse(params, client))
            # decided here (one HEAD at most) so that evaluate never starts without it
            prepared = replace(prepared, ground_truth=ground_truth_for(
                prepared, context["params"].get("ground_truth"), client))
        # grid=auto with an embedded model: regions packed into fewer tasks (work units)
        units = image_units(prepared, params, workers=os.cpu_count() or 1,
                            slice_seconds=model_slice_seconds(params.model),
                            max_units=limits.max_regions)
        if units:
            prepared = replace(prepared, units=len(units))
        context["ti"].xcom_push(key="prepared", value=prepared.to_dict())
        return units or regions

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def synthesize(prepared: dict[str, Any], findings: Any) -> str:
        from tilescope.airflow.adapters import fail, task_outcome
        from tilescope.airflow.connections import s3_client
        from tilescope.handoffs import BatchPrepared, prepared_from_xcom
        from tilescope.tasks.image import combine, save_result

        if not prepared:  # preprocess failed: nothing to merge, and no retry can help
            fail("preprocess did not finish: nothing to synthesize")
        params = _params()
        client = s3_client()
        run = prepared_from_xcom(prepared)
        if isinstance(run, BatchPrepared):  # every image merged on its own; results in scratch
            from tilescope.tasks.batch import combine_batch

            with task_outcome():
                return combine_batch(run, list(findings[:]), params, params.model,
                                     client=client, run_started=get_current_context()[
                                         "dag_run"].start_date.timestamp())
        if run.reused:  # a stored result stands in: analyze ran on nothing
            from tilescope.tasks.reuse import stored_result_uri

            return stored_result_uri(run)
        with task_outcome():
            # findings[:] is one bulk XCom read; failed regions simply have no entry.
            result = combine(run, list(findings[:]), params, params.model, client=client,
                             run_started=get_current_context()["dag_run"].start_date.timestamp())
            return save_result(result, run.scratch_prefix, client)

    @task(outlets=[RESULTS_ASSET, RESULTS_ALIAS])
    def store(result_uri: str, prepared: dict[str, Any]) -> dict[str, Any]:
        from tilescope.airflow.adapters import catalog_url, task_outcome
        from tilescope.airflow.connections import s3_client
        from tilescope.handoffs import BatchPrepared, prepared_from_xcom
        from tilescope.tasks.image import store as store_step
        from tilescope.tasks.transform import transform as transform_step

        context = get_current_context()
        run = prepared_from_xcom(prepared)
        if isinstance(run, BatchPrepared):
            from tilescope.tasks.batch import batch_event, store_batch

            totals, outcomes = store_batch(result_uri, run, _params(), client=s3_client(),
                                           catalog_url=catalog_url(),
                                           run_id=context["run_id"], archive=_archive())
            extras = [o.asset_extra() for o in outcomes if o.status == "stored"]
            if len(extras) > _IMAGE_EVENTS_PER_RUN:  # one event for the batch (see README)
                context["outlet_events"][RESULTS_ASSET].extra = batch_event(run, totals)
            elif extras:  # one event per image: the first as the asset's own, the rest aliased
                context["outlet_events"][RESULTS_ASSET].extra = extras[0]
                for extra in extras[1:]:
                    context["outlet_events"][RESULTS_ALIAS].add(RESULTS_ASSET, extra=extra)
            return totals.to_dict()
        if run.reused:  # the arrival's own catalog row, pointing at the stored result
            from tilescope.tasks.reuse import store_reused

            summary = store_reused(run, catalog_url=catalog_url(), run_id=context["run_id"])
            context["outlet_events"][RESULTS_ASSET].extra = summary.asset_extra()
            return summary.to_dict()
        # transform (an anonymized copy, when asked for) runs here, before the result is
        # kept: a task of its own would cost every run a worker process for nothing
        with task_outcome():
            transform_step(result_uri, run, _params(), client=s3_client())
        summary = store_step(result_uri, run, _params(), client=s3_client(),
                             catalog_url=catalog_url(), run_id=context["run_id"],
                             archive=_archive())
        context["outlet_events"][RESULTS_ASSET].extra = summary.asset_extra()
        return summary.to_dict()

    regions = preprocess()
    prepared = regions["prepared"]
    # analyze: one region per mapped instance; with sagemaker-async it defers (waits in the
    # triggerer, holding no worker or pool slot) — see tilescope.airflow.operators.
    findings = AnalyzeRegionOperator.partial(
        task_id="analyze",
        map_index_template="{{ region_label }}",
        pool=settings.POOL.get(),
        retries=settings.REGION_RETRIES.get(),
        retry_delay=timedelta(seconds=settings.RETRY_DELAY_SECONDS.get()),
        retry_exponential_backoff=True,
        max_active_tis_per_dagrun=_MAX_ACTIVE_TASKS,
        prepared=prepared,
    ).expand(region=regions).output
    @task(trigger_rule=TriggerRule.ALL_DONE, **finalize_callbacks())  # metrics, SNS message
    def finalize() -> list[str]:
        """Settle the run: move a claimed original to processed/ (or leave it quarantined or
        claimable again), and fail whenever no result was stored. Returns what evaluate is
        mapped over: the ground truth preprocess found, or nothing."""
        from tilescope.airflow.adapters import catalog_engine, fail
        from tilescope.airflow.connections import s3_client
        from tilescope.intake.claims import Claim
        from tilescope.intake.flow import settle
        from tilescope.tasks.evaluate import evaluations

        context = get_current_context()
        prepared = context["ti"].xcom_pull(task_ids="preprocess", key="prepared") or {}
        if prepared.get("batch"):
            from tilescope.handoffs import BatchPrepared
            from tilescope.outputs.notifications import (
                NOT_STORED_MARK,  # the notifier reads it back
            )
            from tilescope.tasks.batch import settle_batch

            outcomes = settle_batch(BatchPrepared.from_dict(prepared), client=s3_client(),
                                    engine=catalog_engine(), run_id=context["run_id"])
            missed = [o for o in outcomes if o.status != "stored"]
            if missed:
                listed = "; ".join(f"{o.uri}: {o.status} ({o.error})" for o in missed[:20])
                fail(f"{len(missed)} of {len(outcomes)}{NOT_STORED_MARK}: {listed}"
                     + (" …" if len(missed) > 20 else ""))
            log.info("%d images stored", len(outcomes))
            return evaluations(prepared)
        stored = context["ti"].xcom_pull(task_ids="store") is not None
        claim = context["params"].get("claim")
        outcome = "stored" if stored else "failed"
        if claim:
            outcome = settle(s3_client(), catalog_engine(required=True),
                             Claim.from_dict(claim), stored=stored).value
        if not stored:
            fail(f"no result stored ({outcome}); see the failed task's log")
        log.info("outcome: %s", outcome)
        return evaluations(prepared)

    @task
    def evaluate(ground_truth: str, summary: dict[str, Any]) -> dict[str, Any]:
        """Score the stored result against the ground truth preprocess found (the
        ``ground_truth`` param or ``<image key>.gt.json``)."""
        from tilescope.airflow.adapters import task_outcome
        from tilescope.airflow.connections import s3_client
        from tilescope.tasks.evaluate import evaluate_stored

        with task_outcome():
            return evaluate_stored(summary, ground_truth, client=s3_client()).to_dict()

    stored = store(synthesize(prepared, findings), prepared)
    settled = finalize()
    stored >> settled
    # Mapped over finalize's list — one ground truth or none: without one the scheduler skips
    # evaluate as it expands it, and no worker starts (a started task costs ~0.4 CPU-s).
    # The list is finalize's return because Airflow keeps one map length per upstream task
    # and preprocess's is the region count.
    evaluate.partial(summary=stored).expand(ground_truth=settled)


tiled_inference()
