"""AnalyzeRegionOperator's two paths called directly: ``execute`` defers for sagemaker-async
(the trigger it hands Airflow really fires against the local endpoint and moto's S3) and
``execute_complete`` finishes the same finding as the in-worker path; other models run in
``execute``; errors map as in every task (4xx → fail at once, timeout → retry)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from support.async_blobs import MODEL_OPTIONS, blob_endpoint, prepared_blobs
from support.blob_model import BrightBlobModel

from tilescope.airflow.operators import DEFER_MARGIN_SECONDS, AnalyzeRegionOperator, region_label
from tilescope.airflow.triggers import AsyncInferenceTrigger
from tilescope.errors import ModelThrottledError
from tilescope.models import register_model
from tilescope.params import InferenceParams

pytestmark = pytest.mark.contract


register_model("embedded-blobs", BrightBlobModel)  # an embedded model (takes the threshold)
PARAMS = InferenceParams(model="sagemaker-async", slice_size=256, overlap=0.2, grid="2x1",
                         score_threshold=0.1, model_options=MODEL_OPTIONS)


@pytest.fixture
def endpoint(s3_client, s3_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({  # the run's S3
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}))
    with blob_endpoint(s3_client, s3_server, monkeypatch) as server:
        yield server


@pytest.fixture
def prepared(endpoint, s3_client):
    return prepared_blobs(s3_client, PARAMS, width=500, height=600, count=40, seed=5,
                          run="manual__operator")


def context(params: InferenceParams, try_number: int = 1) -> dict:
    """What the operator reads from Airflow's context: the run's params and its instance."""
    return {"params": params.to_dict(), "ti": SimpleNamespace(try_number=try_number,
                                                              start_date=None)}


def operator(prepared: tuple, index: int = 0) -> AnalyzeRegionOperator:
    """The operator as the DAG maps it: a region and the ``prepared`` XCom (a dict)."""
    regions, handoff = prepared
    return AnalyzeRegionOperator(task_id="analyze", region=regions[index],
                                 prepared=handoff.to_dict())


def fire(trigger: AsyncInferenceTrigger) -> dict:
    """The trigger as the triggerer runs it: rebuilt from its serialized form, first event."""
    classpath, kwargs = trigger.serialize()
    assert classpath == "tilescope.airflow.triggers.AsyncInferenceTrigger"

    async def first():
        async for event in AsyncInferenceTrigger(**kwargs).run():
            return event.payload

    return asyncio.run(first())


def test_execute_defers_and_execute_complete_finishes_the_region(prepared):
    task, ctx = operator(prepared, 1), context(PARAMS)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(ctx)
    assert ctx["region_label"] == region_label(task.region) == "r1c0 · 3 slices"
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == timedelta(seconds=30 + DEFER_MARGIN_SECONDS)
    trigger = deferred.value.trigger
    assert isinstance(trigger, AsyncInferenceTrigger) and len(trigger.invocations) == 3
    assert trigger.aws_conn_id == "moto_aws" and trigger.poll_interval == 0.05

    resumed = context(PARAMS)  # a fresh context, as on resume
    finding = task.execute_complete(resumed, event=fire(trigger))
    assert resumed["region_label"] == "r1c0 · 3 slices"
    assert finding["status"] == "success" and finding["name"] == "r1c0"

    in_worker = operator(prepared, 1).execute(context(
        InferenceParams.from_dict({**PARAMS.to_dict(), "model_options": {
            **MODEL_OPTIONS, "deferrable": False}})))
    assert finding["detections"]["scores"]
    assert finding["detections"] == in_worker["detections"]
    assert finding["category_names"] == in_worker["category_names"]
    blobs = operator(prepared, 1).execute(context(InferenceParams.from_dict(
        {**PARAMS.to_dict(), "model": "embedded-blobs", "model_options": {}})))
    assert len(blobs["detections"]["scores"]) == len(finding["detections"]["scores"])


def test_execute_complete_maps_errors_like_every_task(prepared, endpoint):
    task = operator(prepared)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context(PARAMS))
    event = fire(deferred.value.trigger)
    timed_out = {**event, "status": "timeout", "pending": ["s3://x/y"]}
    with pytest.raises(ModelThrottledError, match="r0c0"):  # retryable: Airflow retries
        task.execute_complete(context(PARAMS), event=timed_out)

    endpoint.handler.fail_with = "Received client error (400) from primary: bad image"
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context(PARAMS, try_number=2))
    with pytest.raises(AirflowFailException, match=r"ModelRequestError: .*client error"):
        task.execute_complete(context(PARAMS, try_number=2), event=fire(deferred.value.trigger))


def test_each_mapped_task_shares_the_cores(monkeypatch):
    """Tasks of one run side by side share the machine's cores: an embedded model gets
    ``share_cores`` (core slots, see tests/models/test_onnx_cpu.py); one that only knows
    ``parallel_slices`` gets a fixed share (seen red with the share removed: two tasks on two
    cores got two threads each); a run's own setting and a remote model are left alone."""
    import os

    from tilescope.airflow.operators import _model_options
    from tilescope.models import registry
    from tilescope.models.onnx_cpu import shared_slice_workers
    from tilescope.params import InferenceParams

    assert [shared_slice_workers(n, cores=2) for n in (1, 2, 9)] == [2, 1, 1]
    assert shared_slice_workers(2, cores=16) == 8
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    nanodet = InferenceParams(model="nanodet-coco")
    options = _model_options(nanodet, tasks=2, video=False)
    assert options["share_cores"] is True and "parallel_slices" not in options
    mine = InferenceParams(model="nanodet-coco", model_options={"parallel_slices": 2})
    options = _model_options(mine, tasks=4, video=False)
    assert options["parallel_slices"] == 2 and "share_cores" not in options
    assert _model_options(nanodet, tasks=3, video=True)[
        "share_cores"] is True  # a video's units share the cores as well
    remote = InferenceParams(model="http", model_options={"url": "http://127.0.0.1:1/"})
    assert "share_cores" not in _model_options(remote, tasks=3, video=False)

    def older(parallel_slices: int | None = None) -> None: ...

    real = registry.model_factory
    monkeypatch.setattr(registry, "model_factory",
                        lambda name: older if name == "nanodet-coco" else real(name))
    assert _model_options(nanodet, tasks=2, video=False)["parallel_slices"] == 1
    assert _model_options(nanodet, tasks=1, video=False)["parallel_slices"] == 2
    assert "parallel_slices" not in _model_options(nanodet, tasks=3, video=True)


def test_the_mapped_task_count_is_the_runs_units_else_its_regions():
    """What ``_model_options`` shares the cores by, read from the ``prepared`` hand-off."""
    from dataclasses import replace

    from test_handoffs import BATCH_XCOM, IMAGE_XCOM

    from tilescope.airflow.operators import _mapped_tasks
    from tilescope.handoffs import BatchPrepared, Prepared

    assert _mapped_tasks(BatchPrepared.from_dict(BATCH_XCOM)) == 2  # the batch's units
    one = Prepared.from_dict(IMAGE_XCOM)
    assert _mapped_tasks(one) == 2  # its plan's regions
    assert _mapped_tasks(replace(one, units=5)) == 5
