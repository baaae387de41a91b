"""The S3 key layout (tilescope.layout): pinned literally, since objects already stored and
runs in flight depend on it, and parsed back strictly, since the viewer trusts nothing else."""

from __future__ import annotations

import pytest

from tilescope.layout import (
    BatchLayout,
    ResultsLayout,
    ScratchLayout,
    finding_uri,
    safe_key_part,
)

IMAGE = "0123456789abcdef"
RUN = "manual__2026-12-01T22:00:00+00:00"
SAFE = "manual__2026-12-01T22_00_00_00_00"


def test_keys_are_where_earlier_runs_put_them():
    assert safe_key_part(RUN) == SAFE
    scratch = ScratchLayout("b", IMAGE, RUN)
    assert scratch.prefix_uri == f"s3://b/scratch/{IMAGE}/{SAFE}/"
    assert finding_uri(scratch.prefix_uri, 7) == f"s3://b/scratch/{IMAGE}/{SAFE}/findings/region-0007.json"
    assert ResultsLayout("b", IMAGE, "a1b2c3d4").artifacts() == {
        "result": f"s3://b/results/{IMAGE}/a1b2c3d4/result.json",
        "coco": f"s3://b/results/{IMAGE}/a1b2c3d4/coco.json",
        "overlay": f"s3://b/results/{IMAGE}/a1b2c3d4/overlay.png"}
    batch = BatchLayout("b", RUN)
    assert (batch.scratch_uri, batch.plan_uri, batch.outcomes_uri) == (
        f"s3://b/scratch/batch/{SAFE}/", f"s3://b/scratch/batch/{SAFE}/plan.json",
        f"s3://b/results/batches/{SAFE}/outcomes.json")


def test_a_result_key_parses_back_to_its_layout():
    layout = ResultsLayout("b", IMAGE, "a1b2c3d4")
    assert ResultsLayout.of_result(layout.artifacts()["result"]) == layout


@pytest.mark.parametrize("uri", [
    f"s3://b/results/{IMAGE}/a1b2c3d4/coco.json",  # not the result
    f"s3://b/results/{IMAGE}/a1b2c3d4/x/result.json",  # extra segment
    f"s3://b/results/{IMAGE[:-1]}/a1b2c3d4/result.json",  # short image id
    f"s3://b/results/{IMAGE}/A1B2C3D4/result.json",  # digest not lower hex
    f"s3://b/scratch/{IMAGE}/a1b2c3d4/result.json",  # other prefix
    f"b/results/{IMAGE}/a1b2c3d4/result.json",  # not s3://
])
def test_anything_else_is_no_result_key(uri):
    assert ResultsLayout.of_result(uri) is None
