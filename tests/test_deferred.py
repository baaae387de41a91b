"""The deferred analyze without Airflow: a region's slices submitted to an asynchronous
SageMaker endpoint (local wire server, moto S3), the wait done by the real trigger in an event
loop, and the finding equal to the synchronous path's — plus clean-up on every failure."""

from __future__ import annotations

import asyncio
import json

import pytest
from support.async_blobs import BUCKET, INPUT_PREFIX, MODEL_OPTIONS, blob_endpoint, prepared_blobs
from support.blob_model import BrightBlobModel
from support.cloud_wire import aws_error

from tilescope.airflow.triggers import AsyncInferenceTrigger, outcomes_from_event
from tilescope.deferred import is_deferrable
from tilescope.errors import ModelRequestError, ModelThrottledError
from tilescope.models import load_model
from tilescope.params import InferenceParams
from tilescope.tasks.image import analyze, finish_region, submit_region

pytestmark = pytest.mark.contract
PARAMS = InferenceParams(model="sagemaker-async", slice_size=256, overlap=0.2, grid="1x2",
                         score_threshold=0.1, model_options=MODEL_OPTIONS)


@pytest.fixture
def endpoint(s3_client, s3_server, monkeypatch):
    with blob_endpoint(s3_client, s3_server, monkeypatch) as server:
        yield server


@pytest.fixture
def staged(endpoint, s3_client):
    """A blob image staged and planned as preprocess does (2 regions of 256-px slices)."""
    return prepared_blobs(s3_client, PARAMS, width=700, height=500, count=60, seed=3,
                          run="manual__deferred")


@pytest.fixture
def regions(staged):
    return staged[0]


@pytest.fixture
def prepared(staged):
    return staged[1]


def model(**options):
    return load_model("sagemaker-async", **{**PARAMS.model_arguments(), **options})


def wait_in_event_loop(calls) -> dict:
    """The trigger's event, run as the triggerer runs it (after a serialize round trip)."""
    _, kwargs = AsyncInferenceTrigger([c.to_dict() for c in calls], "moto_aws",
                                      poll_interval=0.05, max_wait=20).serialize()

    async def first_event():
        async for event in AsyncInferenceTrigger(**kwargs).run():
            return event.payload

    return asyncio.run(first_event())


def staged_keys(s3) -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET)
    return [o["Key"] for o in listing.get("Contents", [])
            if not o["Key"].startswith(("incoming/", "scratch/"))]


def named(finding: dict, names) -> list[tuple]:
    """(category name, box, score) of a finding's detections, sorted."""
    dets = finding["detections"]
    return sorted((names[c], b, s) for c, b, s in
                  zip(dets["category_ids"], dets["boxes"], dets["scores"], strict=True))


def test_deferred_finding_equals_the_synchronous_one(regions, prepared, s3_client):
    region = regions[1]
    args = (prepared.source_uri, PARAMS)
    scratch = prepared.scratch_prefix
    with model() as detector:
        assert is_deferrable(detector)
        submitted = submit_region(region, prepared.source_uri, detector, client=s3_client)
    assert len(submitted.invocations) == region["slice_count"] == 6
    inputs = [k for k in staged_keys(s3_client) if k.startswith(INPUT_PREFIX)]
    assert len(inputs) == 6  # the slices are staged in S3; nothing waited here
    event = wait_in_event_loop(submitted.invocations)
    with model() as detector:  # a fresh model, as in the resumed task
        deferred = finish_region(region, submitted, outcomes_from_event(event), PARAMS,
                                 detector, client=s3_client, scratch_prefix=scratch, attempt=2)
    assert staged_keys(s3_client) == []  # inputs and outputs removed once read

    with model(deferrable=False) as detector:  # the synchronous path: poll from the caller
        assert not is_deferrable(detector)
        synchronous = analyze(region, *args, detector, client=s3_client, scratch_prefix=scratch,
                              attempt=2)
    with BrightBlobModel() as embedded:
        assert not is_deferrable(embedded)
        local = analyze(region, *args, embedded, client=s3_client, scratch_prefix=scratch)
    assert deferred["detections"]["scores"]
    assert deferred["detections"] == synchronous["detections"]
    assert deferred["category_names"] == synchronous["category_names"]
    assert named(deferred, deferred["category_names"]) == named(
        local, BrightBlobModel.CATEGORY_NAMES)
    assert deferred["attempts"] == 2 and deferred["status"] == "success"
    seconds = deferred["seconds"]
    assert seconds["model"] >= 0.1 and seconds["total"] >= seconds["model"]  # includes the wait
    assert set(deferred) == set(synchronous)
    assert len(json.dumps(deferred)) < 48 * 1024


def test_timeout_is_retryable_and_removes_the_inputs(regions, prepared, endpoint, s3_client):
    endpoint.handler.delay = 30  # the outputs will not appear in time
    region = regions[0]
    with model() as detector:
        submitted = submit_region(region, prepared.source_uri, detector, client=s3_client)
    assert staged_keys(s3_client)
    with model() as detector, pytest.raises(ModelThrottledError, match=r"region r0c0: .*did not"):
        finish_region(region, submitted, None, PARAMS, detector, client=s3_client,
                      scratch_prefix=prepared.scratch_prefix)
    assert staged_keys(s3_client) == []


def test_failure_object_naming_a_4xx_fails_fast(regions, prepared, endpoint, s3_client):
    endpoint.handler.fail_with = "Received client error (400) from primary: bad image"
    region = regions[0]
    with model() as detector:
        submitted = submit_region(region, prepared.source_uri, detector, client=s3_client)
        event = wait_in_event_loop(submitted.invocations)
        assert all(o.failed for o in outcomes_from_event(event))
        with pytest.raises(ModelRequestError, match="client error"):
            finish_region(region, submitted, outcomes_from_event(event), PARAMS, detector,
                          client=s3_client, scratch_prefix=prepared.scratch_prefix)
    assert staged_keys(s3_client) == []


def test_refused_submission_removes_what_was_staged(regions, prepared, endpoint, s3_client):
    handler = endpoint.handler  # the first two submissions succeed, the third is refused
    answered: list[int] = []

    def third_refused(request):
        answered.append(1)
        if len(answered) == 3:
            return aws_error(400, "ValidationError", "Endpoint blobs is not async")
        return handler(request)

    endpoint.handler = third_refused
    with model() as detector, pytest.raises(ModelRequestError, match="not async"):
        submit_region(regions[0], prepared.source_uri, detector,
                      client=s3_client)
    endpoint.handler = handler
    handler.close()  # drop the two pending answers
    assert [k for k in staged_keys(s3_client) if k.startswith(INPUT_PREFIX)] == []
