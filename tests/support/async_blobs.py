"""A SageMaker asynchronous endpoint that runs the bright-blob detector, for tests of the
deferred ``analyze`` (library and operator): the local SageMaker runtime server (SigV4
checked) stages nothing itself — it reads each slice from moto's S3 and writes the answer
there later, as SageMaker does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from support.blob_model import BrightBlobModel
from support.cloud_wire import AsyncInferenceEndpoint, LocalServer, aws_connection

BUCKET = "deferred"
INPUT_PREFIX = "async-in/"
#: ``model_options`` of the ``sagemaker-async`` model against :func:`blob_endpoint`
MODEL_OPTIONS = {"endpoint_name": "blobs", "conn_id": "sagemaker_test",
                 "s3_conn_id": "moto_aws", "input_uri": f"s3://{BUCKET}/{INPUT_PREFIX}",
                 "poll_interval": 0.05, "max_wait": 30, "base_delay": 0.01,
                 "max_delay": 0.05}


def blob_answer(pixels: np.ndarray) -> dict[str, Any]:
    """The bright-blob detector's detections as the endpoint's JSON answer."""
    (dets,) = BrightBlobModel().predict([pixels])
    names = BrightBlobModel.CATEGORY_NAMES
    return {"detections": [{"box": b, "score": s, "label": names[c]} for b, s, c in
                           zip(dets.boxes.tolist(), dets.scores.tolist(),
                               dets.category_ids.tolist(), strict=True)]}


@contextmanager
def blob_endpoint(s3_client: Any, s3_server: str, monkeypatch: Any,
                  delay: float = 0.1) -> Iterator[LocalServer]:
    """The endpoint's server (its ``handler`` is the :class:`AsyncInferenceEndpoint`), the
    bucket, and the connections ``sagemaker_test`` / ``moto_aws``."""
    monkeypatch.setenv("AIRFLOW_CONN_MOTO_AWS", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}))
    s3_client.create_bucket(Bucket=BUCKET)
    endpoint = AsyncInferenceEndpoint(s3_client, BUCKET, blob_answer, delay=delay)
    with LocalServer(endpoint, signing_service="sagemaker") as server:
        aws_connection(monkeypatch, "sagemaker_test", server.url)
        try:
            yield server
        finally:
            server.handler.close()  # the test may have swapped in another endpoint
            endpoint.close()


def prepared_blobs(s3_client: Any, params: Any, *, width: int, height: int, count: int,
                   seed: int, run: str) -> tuple[list[dict[str, Any]], Any]:
    """A blob image put under ``incoming/`` and prepared as preprocess does (256-px slices):
    the regions and the ``Prepared`` the deferred path's tests start from."""
    import io

    from PIL import Image

    from support.blob_model import blob_image
    from tilescope.tasks.image import prepare

    pixels, _ = blob_image(width, height, count, seed=seed)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    s3_client.put_object(Bucket=BUCKET, Key="incoming/blobs.png", Body=out.getvalue())
    return prepare(f"s3://{BUCKET}/incoming/blobs.png", params, client=s3_client, run=run,
                   model_slice_size=256)
