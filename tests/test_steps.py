"""The DAG's steps without Airflow, against a real S3 server: staging, small XComs, cleanup."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from blob_model import BrightBlobModel, blob_image
from PIL import Image

from tilescope.errors import BadImageError, ImageTooLargeError
from tilescope.models import register_model
from tilescope.params import InferenceParams
from tilescope.steps import XCOM_BUDGET_BYTES, analyze, combine, delete_prefix, prepare, store

register_model("bright-blobs", BrightBlobModel)
BUCKET = "steps"


@pytest.fixture
def bucket(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


def put_png(client, key: str, pixels: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    client.put_object(Bucket=BUCKET, Key=key, Body=out.getvalue())
    return f"s3://{BUCKET}/{key}"


def test_crowded_region_offloads_detections_and_keeps_xcom_small(bucket, tmp_path):
    pixels, truth = blob_image(1200, 1200, 2500, seed=1, max_side=12)  # ~2,500 objects
    uri = put_png(bucket, "incoming/crowded.png", pixels)
    params = InferenceParams(model="bright-blobs", slice_size=256, overlap=0.3, grid="1x1",
                             score_threshold=0.1)
    prepared = prepare(uri, params, client=bucket, run="manual__2026-01-01T00:00:00+00:00",
                       model_slice_size=256)
    assert len(json.dumps(prepared)) < 64 * 1024
    assert prepared["source_uri"].endswith("pixels.tif") and "scratch/" in prepared["source_uri"]
    finding = analyze(prepared["regions"][0], prepared["source_uri"], params, BrightBlobModel(),
                      client=bucket, scratch_prefix=prepared["scratch_prefix"])
    assert len(json.dumps(finding)) < XCOM_BUDGET_BYTES
    assert finding["detections"] is None and finding["detections_uri"].startswith("s3://")
    result = combine(prepared, [finding], params, "bright-blobs", client=bucket)
    assert len(result.detections) == len(truth)
    summary = store(_save(result, prepared, bucket), prepared, params, client=bucket,
                    catalog_url=f"sqlite:///{tmp_path / 'c.sqlite'}")
    assert summary["detections"] == len(truth) and summary["status"] == "complete"
    left = bucket.list_objects_v2(Bucket=BUCKET, Prefix="scratch/").get("KeyCount", 0)
    assert left == 0


def _save(result, prepared, client) -> str:
    from tilescope.steps import save_result

    return save_result(result, prepared["scratch_prefix"], client)


def test_region_tasks_read_only_their_tiles(bucket):
    from tilescope.slicing import Region
    from tilescope.steps import open_source

    # noise: the staged TIFF is compressed, and only incompressible pixels keep its tiles big
    # enough for byte counts to tell one region's tiles from all of them
    pixels = np.random.default_rng(2).integers(0, 256, (2000, 3000, 3), np.uint8)
    uri = put_png(bucket, "incoming/wide.png", pixels)
    params = InferenceParams(model="bright-blobs", slice_size=256, overlap=0.2, grid="3x4")
    prepared = prepare(uri, params, client=bucket, run="r1", model_slice_size=256)
    region = Region.from_dict(prepared["regions"][5])
    reader = open_source(prepared["source_uri"], bucket)
    crop = reader.read(region.box)
    box = region.box
    assert np.array_equal(crop, pixels[box.y1:box.y2, box.x1:box.x2])
    staged = bucket.head_object(Bucket=BUCKET, Key=prepared["source_uri"].split(
        f"{BUCKET}/", 1)[1])["ContentLength"]
    handle = reader._tiff.filehandle._fh
    raw = getattr(handle, "raw", handle)  # under the read buffer: the ranged S3 file
    assert raw.bytes_read < staged / 3  # a region's tiles, not all
    assert raw.requests <= 12  # header + one GET per tile row, not one per tile


def test_prepare_refuses_empty_and_oversized_objects(bucket):
    bucket.put_object(Bucket=BUCKET, Key="incoming/empty.jpg", Body=b"")
    params = InferenceParams()
    with pytest.raises(BadImageError, match="empty"):
        prepare(f"s3://{BUCKET}/incoming/empty.jpg", params, client=bucket, run="r",
                model_slice_size=416)
    uri = put_png(bucket, "incoming/x.png", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ImageTooLargeError, match="bytes"):
        prepare(uri, params, client=bucket, run="r", model_slice_size=416, max_bytes=10)
    with pytest.raises(ImageTooLargeError, match="pixel"):
        prepare(uri, params, client=bucket, run="r", model_slice_size=416, max_pixels=100)
    with pytest.raises(BadImageError, match="no such object"):
        prepare(f"s3://{BUCKET}/incoming/missing.png", params, client=bucket, run="r",
                model_slice_size=416)


def test_delete_prefix_refuses_anything_outside_scratch(bucket):
    with pytest.raises(ValueError, match="scratch"):
        delete_prefix(f"s3://{BUCKET}/incoming/", bucket)
