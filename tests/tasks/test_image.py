"""The DAG's steps without Airflow, against a real S3 server: staging, small XComs, cleanup."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from support.blob_model import BrightBlobModel, WholeBlobModel, big_object_image, blob_image

from tilescope.errors import BadImageError, ImageTooLargeError
from tilescope.limits import RunLimits
from tilescope.models import register_model
from tilescope.params import InferenceParams
from tilescope.tasks.image import XCOM_BUDGET_BYTES, analyze, combine, delete_prefix, prepare, store

register_model("bright-blobs", BrightBlobModel)
register_model("whole-blobs", WholeBlobModel)
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
    regions, prepared = prepare(uri, params, client=bucket, run="manual__2026-01-01T00:00:00+00:00",
                                model_slice_size=256)
    assert len(json.dumps(prepared.to_dict())) < 64 * 1024
    assert prepared.source_uri.endswith("pixels.tif") and "scratch/" in prepared.source_uri
    finding = analyze(regions[0], prepared.source_uri, params, BrightBlobModel(),
                      client=bucket, scratch_prefix=prepared.scratch_prefix)
    assert len(json.dumps(finding)) < XCOM_BUDGET_BYTES
    assert finding["detections"] is None and finding["detections_uri"].startswith("s3://")
    result = combine(prepared, [finding], params, "bright-blobs", client=bucket)
    assert len(result.detections) == len(truth)
    summary = store(_save(result, prepared, bucket), prepared, params, client=bucket,
                    catalog_url=f"sqlite:///{tmp_path / 'c.sqlite'}")
    assert summary.detections == len(truth) and summary.status == "complete"
    left = bucket.list_objects_v2(Bucket=BUCKET, Prefix="scratch/").get("KeyCount", 0)
    assert left == 0


def _save(result, prepared, client) -> str:
    from tilescope.tasks.image import save_result

    return save_result(result, prepared.scratch_prefix, client)


def test_region_tasks_read_only_their_tiles(bucket):
    from tilescope.slicing import Region
    from tilescope.tasks.image import open_source

    # noise: the staged TIFF is compressed, and only incompressible pixels keep its tiles big
    # enough for byte counts to tell one region's tiles from all of them
    pixels = np.random.default_rng(2).integers(0, 256, (2000, 3000, 3), np.uint8)
    uri = put_png(bucket, "incoming/wide.png", pixels)
    params = InferenceParams(model="bright-blobs", slice_size=256, overlap=0.2, grid="3x4")
    regions, prepared = prepare(uri, params, client=bucket, run="r1", model_slice_size=256)
    region = Region.from_dict(regions[5])
    reader = open_source(prepared.source_uri, bucket)
    crop = reader.read(region.box)
    box = region.box
    assert np.array_equal(crop, pixels[box.y1:box.y2, box.x1:box.x2])
    staged = bucket.head_object(Bucket=BUCKET, Key=prepared.source_uri.split(
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
        prepare(uri, params, client=bucket, run="r", model_slice_size=416,
                limits=RunLimits(max_bytes=10))
    with pytest.raises(ImageTooLargeError, match="pixel"):
        prepare(uri, params, client=bucket, run="r", model_slice_size=416, max_pixels=100)
    with pytest.raises(BadImageError, match="no such object"):
        prepare(f"s3://{BUCKET}/incoming/missing.png", params, client=bucket, run="r",
                model_slice_size=416)


def test_full_image_pass_goes_from_prepare_through_combine(bucket):
    """The DAG's path: ``prepare`` runs the whole-image pass, ``combine`` merges it in, so
    the object every region task sees cut is in the result only with the pass."""
    pixels, small, big = big_object_image()
    uri = put_png(bucket, "incoming/big.png", pixels)
    params = InferenceParams(model="whole-blobs", slice_size=256, overlap=0.2,
                             full_image_pass=True)
    model = WholeBlobModel()

    def run(full_image_model: WholeBlobModel | None) -> list[list[float]]:
        regions, prepared = prepare(uri, params, client=bucket, run="r-full", model_slice_size=256,
                                    full_image_model=full_image_model)
        findings = [analyze(r, prepared.source_uri, params, model, client=bucket,
                            scratch_prefix=prepared.scratch_prefix)
                    for r in regions]
        result = combine(prepared, findings, params, "whole-blobs", client=bucket)
        return sorted(result.detections.boxes.tolist())

    as_floats = [[float(v) for v in box] for box in small]
    assert run(None) == sorted(as_floats)
    assert run(model) == sorted([*as_floats, [float(v) for v in big]])


def test_delete_prefix_refuses_anything_outside_scratch(bucket):
    with pytest.raises(ValueError, match="scratch"):
        delete_prefix(f"s3://{BUCKET}/incoming/", bucket)


def test_an_images_regions_packed_into_units_give_the_region_tasks_result(bucket):
    from tilescope.results import detections_to_compact
    from tilescope.slicing import SlicePlan
    from tilescope.tasks.image import analyze_unit
    from tilescope.units import region_units

    pixels, truth = blob_image(1500, 1100, 300, seed=4, max_side=12)
    uri = put_png(bucket, "incoming/units.png", pixels)
    params = InferenceParams(model="bright-blobs", slice_size=128, overlap=0.25, grid="3x3",
                             score_threshold=0.1)
    regions, prepared = prepare(uri, params, client=bucket, run="r-units", model_slice_size=128)
    model = BrightBlobModel()
    by_region = [analyze(r, prepared.source_uri, params, model, client=bucket,
                         scratch_prefix=prepared.scratch_prefix)
                 for r in regions]
    expected = combine(prepared, by_region, params, "bright-blobs", client=bucket)
    assert len(expected.detections) == len(truth)

    units = region_units(SlicePlan.from_summary(prepared.plan), 40, workers=2)
    assert 2 <= len(units) < 9
    # one unit's finding offloaded to S3 (a tiny budget), the others inline
    payloads = [analyze_unit(u.to_dict(), prepared, params, model, client=bucket,
                             budget=1 if u.index == 0 else XCOM_BUDGET_BYTES)
                for u in units]
    assert payloads[0].get("finding_uri") and "sources" not in payloads[0]
    assert all("sources" in p for p in payloads[1:])
    got = combine(prepared, payloads, params, "bright-blobs", client=bucket)
    assert detections_to_compact(got.detections) == detections_to_compact(expected.detections)
    assert [r.name for r in got.regions] == [r.name for r in expected.regions]
    assert got.status == "complete"

    # a unit whose task failed for good: its regions count as failed, the rest merge
    partial = combine(prepared, [None, *payloads[1:]],
                      InferenceParams.from_dict({**params.to_dict(), "min_success_ratio": 0.1}),
                      "bright-blobs", client=bucket)
    first = units[0].parts[0]
    failed = {r.index for r in partial.regions if r.status != "success"}
    assert failed == set(range(first.first, first.stop))
    assert partial.status == "partial"


def test_only_an_auto_grid_with_an_embedded_model_packs_regions():
    from dataclasses import replace

    from tilescope.handoffs import Prepared
    from tilescope.results import ImageInfo
    from tilescope.slicing import plan_slices
    from tilescope.tasks.image import image_units

    plan = plan_slices(4000, 4000, 100, 100, 0, 0, grid=(4, 4))  # 1,600 slices, 16 regions
    prepared = Prepared(ImageInfo("s3://b/a.png", 4000, 4000, "0" * 64, "PNG", 1),
                        plan.summary(), "s3://b/s.tif", "s3://b/t.png", "s3://b/scratch/", 0.0)
    auto = InferenceParams(grid="auto")
    units = image_units(prepared, auto, slice_seconds=0.04, workers=2)
    assert units and len(units) == 4  # 1,600 × 0.04 s over 30 s a unit: 3, rounded up to 4
    assert {u["name"] for u in units} >= {"r0c0–r0c3"}
    assert image_units(prepared, InferenceParams(grid="4x4"), slice_seconds=0.04,
                       workers=2) is None  # the user chose one task a region
    assert image_units(prepared, auto, slice_seconds=None, workers=2) is None  # remote
    assert image_units(replace(prepared, video={"frames": [[0, 0.0]]}), auto,
                       slice_seconds=0.04, workers=2) is None  # a video's frames are units already
