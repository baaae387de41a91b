"""Run budgets: a request over the pixel, slice or region budget is refused with its numbers,
from the image header, before any pixel is decoded or any region task exists."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from tilescope.errors import ConfigError, ImageTooLargeError
from tilescope.limits import (
    DEFAULT_MAX_SLICES,
    GRID_PATTERN,
    SLICE_SIZE_PATTERN,
    RunLimits,
)
from tilescope.params import InferenceParams
from tilescope.readers.base import DEFAULT_MAX_PIXELS
from tilescope.slicing import MAX_MAP_LENGTH, plan_slices
from tilescope.tasks.image import prepare

BUCKET = "limits"


@pytest.fixture
def bucket(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


def put_jpeg(client, key: str, width: int, height: int, *, truncate: bool = False) -> str:
    out = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(out, format="JPEG")
    data = out.getvalue()
    client.put_object(Bucket=BUCKET, Key=key, Body=data[: len(data) // 2] if truncate else data)
    return f"s3://{BUCKET}/{key}"


def test_budgets_come_from_the_environment():
    assert RunLimits.from_environment({}) == RunLimits(DEFAULT_MAX_PIXELS, DEFAULT_MAX_SLICES,
                                                      MAX_MAP_LENGTH)
    limits = RunLimits.from_environment({"TILESCOPE_MAX_PIXELS": "40_000_000",
                                         "TILESCOPE_MAX_SLICES": "500"}, max_regions=64)
    assert limits == RunLimits(40_000_000, 500, 64)
    with pytest.raises(ConfigError, match="TILESCOPE_MAX_SLICES must be a whole number"):
        RunLimits.from_environment({"TILESCOPE_MAX_SLICES": "lots"})
    with pytest.raises(ConfigError, match="TILESCOPE_MAX_PIXELS must be at least 1"):
        RunLimits.from_environment({"TILESCOPE_MAX_PIXELS": "0"})


def test_slice_budget_refusal_names_the_numbers():
    plan = plan_slices(2000, 2000, 32, 32, 0, 0)  # 63 × 63 slices
    RunLimits(max_slices=3969).check_plan(plan)
    with pytest.raises(ConfigError) as refused:
        RunLimits(max_slices=1000).check_plan(plan)
    assert str(refused.value) == (
        "2000×2000 image in 32×32 slices (overlap 0×0 px) makes 3,969 slices, over the budget "
        "of 1,000 (TILESCOPE_MAX_SLICES); use larger slices or less overlap")


def test_prepare_refuses_over_budget_before_decoding(bucket):
    # The JPEG is truncated: had it been decoded, the error would be BadImageError.
    uri = put_jpeg(bucket, "incoming/big.jpg", 2000, 1500, truncate=True)
    params = InferenceParams(slice_size=64, overlap=0.5)
    with pytest.raises(ConfigError, match=r"makes 2,852 slices, over the budget of 2,000"):
        prepare(uri, params, client=bucket, run="r1", model_slice_size=416,
                limits=RunLimits(max_slices=2000))
    assert bucket.list_objects_v2(Bucket=BUCKET, Prefix="scratch/")["KeyCount"] == 0


def test_pixel_budget_refuses_with_the_declared_size(bucket):
    uri = put_jpeg(bucket, "incoming/wide.jpg", 3000, 2000)
    with pytest.raises(ImageTooLargeError,
                       match=r"declares 3000×2000 = 6,000,000 pixels, over the limit of "
                             r"5,000,000"):
        prepare(uri, InferenceParams(), client=bucket, run="r2", model_slice_size=416,
                limits=RunLimits(max_pixels=5_000_000))


def test_an_explicit_grid_over_max_map_length_is_refused(bucket):
    uri = put_jpeg(bucket, "incoming/grid.jpg", 3200, 3200)
    params = InferenceParams(slice_size=64, overlap=0.0, grid="20x20")  # 50 × 50 slices
    with pytest.raises(ConfigError, match=r"grid 20×20 makes 400 regions, more than the 100"):
        prepare(uri, params, client=bucket, run="r3", model_slice_size=416,
                limits=RunLimits(max_regions=100))
    # an auto grid is sized under the cap instead of being refused
    regions, prepared = prepare(uri, InferenceParams(slice_size=64, overlap=0.0), client=bucket,
                                run="r4", model_slice_size=416,
                                limits=RunLimits(max_regions=3))
    assert 1 <= len(regions) <= 3 and prepared.plan["slices"] == 2500


def test_airflow_max_map_length_is_the_region_cap(monkeypatch):
    from tilescope.airflow.adapters import run_limits

    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "77")
    monkeypatch.setenv("TILESCOPE_MAX_SLICES", "1234")
    assert run_limits() == RunLimits(DEFAULT_MAX_PIXELS, 1234, 77)


def test_trigger_time_patterns_accept_exactly_the_valid_range():
    accepted = [n for n in range(0, 10_000) if re.match(SLICE_SIZE_PATTERN, str(n))]
    assert accepted == list(range(32, 8193))  # what validate_slicing accepts
    for text in ("model", "auto"):
        assert re.match(SLICE_SIZE_PATTERN, text)
    for text in ("032", "8193", "-64", "64px", "", "Auto"):
        assert not re.match(SLICE_SIZE_PATTERN, text)
    sides = [n for n in range(0, 2000) if re.match(GRID_PATTERN, f"{n}x1")]
    assert sides == list(range(1, 1025))
    for text in ("auto", "3x4", "1024x1024"):
        assert re.match(GRID_PATTERN, text)
    for text in ("0x4", "3x", "3x4x5", "1025x1", "01x2", "3×4"):
        assert not re.match(GRID_PATTERN, text)
