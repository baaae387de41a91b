"""The DAG's mapped ``analyze`` as an operator, so a region can wait for its model deferred.

A TaskFlow ``@task`` cannot defer: a resumed task calls a named method of its operator, and
a decorated function has none. ``AnalyzeRegionOperator`` runs a region exactly as the
TaskFlow task did (:func:`tilescope.tasks.image.analyze`) for every model that answers in the call.
For a model that answers later (``sagemaker-async``, see :func:`tilescope.deferred.is_deferrable`)
it submits the region's slices, defers on
:class:`~tilescope.airflow.triggers.AsyncInferenceTrigger` — the triggerer waits
for the output objects; no worker or pool slot is held (pools do not count deferred tasks
unless the pool sets ``include_deferred``) — and :meth:`execute_complete` finishes the same
finding dict, with the same XCom size rule, error mapping and metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from airflow.sdk import BaseOperator

if TYPE_CHECKING:  # the DAG file imports this module: models load in the task only
    from tilescope.handoffs import BatchPrepared, Prepared
    from tilescope.models.sagemaker import SageMakerAsyncModel

#: extra seconds past the model's ``max_wait`` before Airflow itself gives up on the trigger
#: (the trigger reports its own timeout first; this covers a triggerer that is down)
DEFER_MARGIN_SECONDS = 120.0


def region_label(region: Mapping[str, Any]) -> str:
    """The mapped instance's name in the UI, e.g. ``r2c5 · 48 slices``."""
    return f"{region['name']} · {region['slice_count']} slices"


class AnalyzeRegionOperator(BaseOperator):
    """One region (or a work unit: an image's regions, a video's frames, a batch's images)
    through the run's model → a finding dict.

    ``region`` is what ``preprocess`` returned for this map index; ``prepared`` is its
    ``prepared`` XCom (source, scratch prefix, plan). Use with
    ``.partial(task_id="analyze", prepared=..., map_index_template="{{ region_label }}")
    .expand(region=...)``.
    """

    template_fields: Sequence[str] = ("region", "prepared")

    def __init__(self, *, region: dict[str, Any], prepared: dict[str, Any],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.region = region
        self.prepared = prepared

    def execute(self, context: Any) -> dict[str, Any]:
        from tilescope.airflow.adapters import task_outcome
        from tilescope.airflow.connections import s3_client
        from tilescope.airflow.triggers import AsyncInferenceTrigger
        from tilescope.deferred import is_deferrable
        from tilescope.handoffs import BatchPrepared, prepared_from_xcom
        from tilescope.models import load_model
        from tilescope.tasks.image import XCOM_BUDGET_BYTES, analyze, submit_region
        from tilescope.units import is_work_unit

        context["region_label"] = region_label(self.region)
        params = _params(context)
        client = s3_client()
        prepared = prepared_from_xcom(self.prepared)
        options = _model_options(params, tasks=_mapped_tasks(prepared),
                                 video=not isinstance(prepared, BatchPrepared)
                                 and bool(prepared.video))
        if isinstance(prepared, BatchPrepared):  # a batch's images and videos' frames
            from tilescope.airflow.adapters import run_limits
            from tilescope.tasks.batch import analyze_unit

            with task_outcome(), load_model(params.model, **options) as model:
                finding = analyze_unit(self.region, prepared, params, model, client=client,
                                       budget=XCOM_BUDGET_BYTES,
                                       attempt=int(context["ti"].try_number),
                                       max_pixels=run_limits().max_pixels)
            return _observed(finding, prepared.ready_at, context)
        if is_work_unit(self.region):  # a video's frames, or several regions of one image
            from tilescope.tasks.image import analyze_unit as analyze_image_unit
            from tilescope.tasks.video import analyze_frames

            # (tilescope.tasks.image.image_units)
            run = analyze_frames if prepared.video else analyze_image_unit
            with task_outcome(), load_model(params.model, **options) as model:
                finding = run(self.region, prepared, params, model, client=client,
                              budget=XCOM_BUDGET_BYTES, attempt=int(context["ti"].try_number))
            return _observed(finding, prepared.ready_at, context)
        with task_outcome(), load_model(params.model, **options) as model:
            if is_deferrable(model):
                submitted = submit_region(self.region, prepared.source_uri, model,
                                          client=client)
                self.log.info("Region %s: %d slices submitted to %s; deferring",
                              self.region["name"], len(submitted.invocations),
                              model.describe())
                self.defer(trigger=AsyncInferenceTrigger(
                               [c.to_dict() for c in submitted.invocations], model.s3_conn_id,
                               poll_interval=model.poll_interval, max_wait=model.max_wait,
                               carry=submitted.carry),
                           method_name="execute_complete",
                           timeout=timedelta(seconds=model.max_wait + DEFER_MARGIN_SECONDS))
            finding = analyze(self.region, prepared.source_uri, params, model,
                              client=client, scratch_prefix=prepared.scratch_prefix,
                              attempt=int(context["ti"].try_number))
        return _observed(finding, prepared.ready_at, context)

    def execute_complete(self, context: Any, event: Mapping[str, Any]) -> dict[str, Any]:
        """Resumed by the trigger's event: read the outputs and finish the region."""
        from tilescope.airflow.adapters import task_outcome
        from tilescope.airflow.connections import s3_client
        from tilescope.airflow.triggers import outcomes_from_event
        from tilescope.deferred import SubmittedRegion
        from tilescope.handoffs import Prepared
        from tilescope.models import load_model
        from tilescope.tasks.image import finish_region

        prepared = Prepared.from_dict(self.prepared)  # only a one-image run's region defers
        context["region_label"] = region_label(self.region)
        params = _params(context)
        submitted = SubmittedRegion.from_parts(event["invocations"], event["carry"])
        outcomes = outcomes_from_event(event) if event.get("status") == "done" else None
        with task_outcome(), load_model(params.model, **params.model_arguments()) as model:
            # resumed only from a deferral, and only a SageMakerAsyncModel defers
            finding = finish_region(self.region, submitted, outcomes, params,
                                    cast("SageMakerAsyncModel", model),
                                    client=s3_client(),
                                    scratch_prefix=prepared.scratch_prefix,
                                    attempt=int(context["ti"].try_number))
        return _observed(finding, prepared.ready_at, context)


def _mapped_tasks(prepared: Prepared | BatchPrepared) -> int | None:
    """How many mapped analyze tasks the run has: its work units, else its regions."""
    from tilescope.handoffs import BatchPrepared

    if isinstance(prepared, BatchPrepared):
        return prepared.units
    return prepared.units or prepared.plan.get("regions")


def _model_options(params: Any, *, tasks: int | None, video: bool) -> dict[str, Any]:
    """The model's options for this task: the run's, plus — for an embedded model whose slice
    threads the run does not set — sharing the machine's cores with the run's other mapped
    tasks running beside it (a batch's or a video's units, an image's regions): one core
    held, the free ones borrowed call by call (:class:`tilescope.models.onnx_cpu.CoreSlots`);
    a model without ``share_cores`` gets a fixed share of the cores instead (``tasks``: the
    run's mapped analyze tasks; ``video``: a video's, which run one frame's slices apiece)."""
    import inspect

    from tilescope.models.onnx_cpu import shared_slice_workers
    from tilescope.models.registry import model_factory

    options = dict(params.model_arguments())
    if "parallel_slices" in options:
        return options
    try:
        accepted = inspect.signature(model_factory(params.model)).parameters
    except (TypeError, ValueError):  # a factory without a signature: leave it alone
        return options
    if "share_cores" in accepted:
        options.setdefault("share_cores", True)
        return options
    if tasks and not video and "parallel_slices" in accepted:
        options["parallel_slices"] = shared_slice_workers(int(tasks))
    return options


def _params(context: Any) -> Any:
    from tilescope.params import InferenceParams

    return InferenceParams.from_dict(context["params"])


def _observed(finding: dict[str, Any], ready_at: float, context: Any) -> dict[str, Any]:
    from tilescope.airflow.metrics import observe_region

    return observe_region(finding, ready_at, context["ti"])  # queue wait, StatsD
