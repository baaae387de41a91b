"""The S3 key layout (tilescope.layout): pinned literally, since objects already stored and
runs in flight depend on it, and parsed back strictly, since the viewer trusts nothing else."""

from __future__ import annotations

import pytest

from tilescope.layout import (
    BatchLayout,
    ResultsLayout,
    ScratchLayout,
    finding_uri,
    preview_names,
    safe_key_part,
)
from tilescope.previews import preview_format

IMAGE = "0123456789abcdef"
RUN = "manual__2026-12-01T22:00:00+00:00"
SAFE = "manual__2026-12-01T22_00_00_00_00"


def test_keys_are_where_earlier_runs_put_them():
    assert safe_key_part(RUN) == SAFE
    scratch = ScratchLayout("b", IMAGE, RUN)
    assert scratch.prefix_uri == f"s3://b/scratch/{IMAGE}/{SAFE}/"
    assert finding_uri(scratch.prefix_uri, 7) == f"s3://b/scratch/{IMAGE}/{SAFE}/findings/region-0007.json"
    assert ResultsLayout("b", IMAGE, "a1b2c3d4").artifacts(preview_format("png")) == {
        "result": f"s3://b/results/{IMAGE}/a1b2c3d4/result.json",
        "coco": f"s3://b/results/{IMAGE}/a1b2c3d4/coco.json",
        "overlay": f"s3://b/results/{IMAGE}/a1b2c3d4/overlay.png",
        "thumbnail": f"s3://b/results/{IMAGE}/a1b2c3d4/thumbnail.png"}
    batch = BatchLayout("b", RUN)
    assert (batch.scratch_uri, batch.plan_uri, batch.outcomes_uri) == (
        f"s3://b/scratch/batch/{SAFE}/", f"s3://b/scratch/batch/{SAFE}/plan.json",
        f"s3://b/results/batches/{SAFE}/outcomes.json")


def test_a_result_key_parses_back_to_its_layout():
    layout = ResultsLayout("b", IMAGE, "a1b2c3d4")
    assert ResultsLayout.of_result(layout.artifacts(preview_format("webp"))["result"]) == layout


def test_previews_are_named_by_the_format_and_found_by_the_recorded_keys():
    """The previews take the run's format's extension; a result's recorded keys name them,
    and keys recorded before the format existed (no thumbnail key) mean the PNGs. Seen red
    with preview_names ignoring the keys (always the PNGs)."""
    layout = ResultsLayout("b", IMAGE, "a1b2c3d4")
    webp = layout.artifacts(preview_format("webp"))
    assert webp["overlay"].endswith("/overlay.webp")
    assert webp["thumbnail"].endswith("/thumbnail.webp")
    assert layout.artifacts(preview_format("jpeg"))["thumbnail"].endswith("/thumbnail.jpg")
    assert preview_names(webp) == {"overlay": "overlay.webp", "thumbnail": "thumbnail.webp"}
    old = {"result": webp["result"], "coco": webp["coco"], "overlay": layout.uri("overlay.png")}
    assert preview_names(old) == {"overlay": "overlay.png", "thumbnail": "thumbnail.png"}
    assert layout.is_preview("overlay", webp["overlay"])
    assert layout.is_preview("thumbnail", layout.uri("thumbnail.png"))
    assert not layout.is_preview("overlay", layout.uri("result.json"))
    assert not layout.is_preview("overlay", webp["overlay"].replace("a1b2c3d4", "ffffffff"))


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
