"""Slices that are entirely nodata are not sent to the model (issue 15, item 2).

A GeoTIFF read in place (8-bit, no bands chosen, no stretch) with a nodata collar: the
slices wholly inside the collar — counted here from the collar's geometry and the plan's
slice boxes, not by the code under test — get no model call, the detections inside the
valid area are those of a run that skips nothing, and the CLI's path (``run_image``) and the
DAG's (``run_unit``, batched or banded) skip the same slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.blob_model import BrightBlobModel
from support.geotiffs import (
    BLACK,
    BOXES,
    COLLAR_X,
    COLLAR_Y,
    collar_scene,
    collar_validity_scene,
)

from tilescope.models.sagemaker import AsyncInvocation
from tilescope.params import InferenceParams
from tilescope.pipeline import plan_image, run_image
from tilescope.readers import open_image
from tilescope.results import RegionFinding
from tilescope.slicing import Box
from tilescope.units import SourcePlan, pack_units, run_unit

PARAMS = InferenceParams(model="bright-blobs", slice_size=256)


class CountingModel(BrightBlobModel):
    """The blob detector, remembering every slice it was given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[np.ndarray] = []

    def predict(self, images):
        self.seen.extend(np.array(i) for i in images)
        return super().predict(images)


def in_collar(s: Box) -> bool:
    return s.x2 <= COLLAR_X or s.y2 <= COLLAR_Y


def plan_slices_of(path: Path) -> list[Box]:
    reader, image = open_image(str(path))
    with reader:
        plan = plan_image(image.width, image.height, PARAMS, 256)
    return [s for region in plan.regions for s in region.slices()]


def run(path: Path, *, skip_nodata: bool = True):
    model = CountingModel()
    reader, image = open_image(str(path))
    with reader:
        result = run_image(reader, image, PARAMS, model, skip_nodata=skip_nodata)
    return result, model


def boxes_of(result) -> list[list[float]]:
    return sorted(result.detections.boxes.tolist())


def test_collar_slices_are_skipped_exactly_and_detections_do_not_move(tmp_path: Path):
    scene = collar_scene(tmp_path)
    slices = plan_slices_of(scene)
    expected = sum(in_collar(s) for s in slices)
    assert 0 < expected < len(slices)  # the scene is worth testing: some skipped, some not

    result, model = run(scene)
    everything, full = run(scene, skip_nodata=False)
    assert result.skipped_slices == expected
    assert result.summary()["skipped_slices"] == expected
    assert sum(r.to_dict().get("skipped_slices", 0) for r in result.regions) == expected
    assert len(model.seen) == len(slices) - expected and len(full.seen) == len(slices)
    assert everything.skipped_slices == 0 and "skipped_slices" not in everything.summary()
    # the same detections as analysing every slice: the painted boxes of the valid area
    assert boxes_of(result) == boxes_of(everything)
    assert result.detections.scores.tolist() == everything.detections.scores.tolist()
    valid = [b for b in BOXES if b[0] >= COLLAR_X and b[1] >= COLLAR_Y]
    assert boxes_of(result) == sorted([float(v) for v in b] for b in valid)


def test_a_black_slice_in_a_scene_whose_nodata_is_not_black_is_analysed(tmp_path: Path):
    scene = collar_scene(tmp_path)
    black = [s for s in plan_slices_of(scene) if BLACK.x1 <= s.x1 and s.x2 <= BLACK.x2
             and BLACK.y1 <= s.y1 and s.y2 <= BLACK.y2]
    assert black  # a whole slice of value 0 (the collar is 1)
    _, model = run(scene)
    assert sum(not view.any() for view in model.seen) == len(black)


@pytest.mark.parametrize("nodata", [None, 0])
def test_nothing_is_skipped_without_a_matching_nodata(tmp_path: Path, nodata):
    """No nodata at all, or a nodata value (0) the collar does not have: every slice runs
    (with nodata 0 the black block's slice is nodata — and then skipped, alone)."""
    scene = collar_scene(tmp_path, nodata=nodata)
    slices = plan_slices_of(scene)
    result, model = run(scene)
    black = sum(BLACK.x1 <= s.x1 and s.x2 <= BLACK.x2 and BLACK.y1 <= s.y1
                and s.y2 <= BLACK.y2 for s in slices)
    skipped = 0 if nodata is None else black
    assert result.skipped_slices == skipped and len(model.seen) == len(slices) - skipped


@pytest.mark.parametrize("how", ["uint16x4", "mask", "alpha", "sidecar"])
def test_a_collar_said_by_stretched_nodata_a_mask_or_alpha_is_skipped(tmp_path: Path,
                                                                      how: str):
    """The decision is made on the source's validity, not on the RGB the model sees: a
    16-bit 4-band scene is stretched (its nodata becomes black, like real black), and the
    collar of a masked or alpha scene holds photo pixels; each skips exactly the collar's
    slices, with the detections of a run that skips nothing. ``sidecar``: the mask is
    GDAL's external ``<scene>.msk`` beside the scene, read like an internal one."""
    scene = collar_validity_scene(tmp_path, how)
    reader, image = open_image(str(scene))
    with reader:
        assert reader.rgb_nodata is None  # not the in-place 8-bit nodata path
        assert (image.pixels is not None) == (how == "uint16x4")
    slices = plan_slices_of(scene)
    expected = sum(in_collar(s) for s in slices)
    result, model = run(scene)
    everything, full = run(scene, skip_nodata=False)
    assert result.skipped_slices == expected > 0
    assert len(model.seen) == len(slices) - expected and len(full.seen) == len(slices)
    # inside the valid area, the detections of a run that skips nothing (the mask and alpha
    # scenes' collars hold bright boxes, which only that run finds)
    inside = [b for b in boxes_of(everything) if b[2] > COLLAR_X and b[3] > COLLAR_Y]
    assert boxes_of(result) == inside and inside


@pytest.mark.parametrize("how", ["uint16x4", "mask", "sidecar"])
def test_a_staged_scene_keeps_its_validity_as_alpha(tmp_path: Path, s3_client, how: str):
    """The DAG stages a stretched scene as 8-bit pixels (and would stage any converted
    scene): the staged TIFF carries the source's validity as alpha, so regions reading it
    skip what the CLI skips, with the same detections."""
    from tilescope.layout import open_source, upload_tiled_tiff

    scene = collar_validity_scene(tmp_path, how)
    cli, _ = run(scene)
    s3_client.create_bucket(Bucket="stage")
    reader, image = open_image(str(scene))
    with reader:
        upload_tiled_tiff(reader, "s3://stage/scratch/pixels.tif", s3_client)
    staged = open_source("s3://stage/scratch/pixels.tif", s3_client)
    model = CountingModel()
    with staged:
        result = run_image(staged, image, PARAMS, model)
    assert result.skipped_slices == cli.skipped_slices > 0
    assert boxes_of(result) == boxes_of(cli)


@pytest.mark.parametrize("whole", [True, False], ids=["batched", "banded"])
def test_the_dag_units_skip_what_the_cli_skips(tmp_path: Path, whole: bool):
    scene = collar_scene(tmp_path)
    cli, cli_model = run(scene)
    reader, image = open_image(str(scene))
    with reader:
        plan = plan_image(image.width, image.height, PARAMS, 256)
    plans = {0: plan}
    model = CountingModel()
    findings = []
    for unit in pack_units([SourcePlan(0, plan)], max_slices=1000):
        outcome = run_unit(unit, plans, {0: whole},
                           lambda _source: open_image(str(scene))[0], model, PARAMS)
        findings.extend(outcome.findings[0])
    assert [f.skipped_slices for f in findings] == [r.skipped_slices for r in cli.regions]
    assert len(model.seen) == len(cli_model.seen)
    for mine, theirs in zip(findings, cli.regions, strict=True):
        assert mine.detections.boxes.tolist() == theirs.detections.boxes.tolist()
    # and the count survives the hand-off between tasks (the finding's JSON)
    again = [RegionFinding.from_dict(f.to_dict()) for f in findings]
    assert [f.skipped_slices for f in again] == [f.skipped_slices for f in findings]


class FakeAsyncEndpoint:
    """Just enough of a SageMaker asynchronous endpoint for :mod:`tilescope.deferred`:
    ``submit`` keeps the slice, ``finish`` runs the blob detector on the submitted ones."""

    keep_objects = True
    open_vocabulary = False
    CATEGORY_NAMES = BrightBlobModel.CATEGORY_NAMES

    def __init__(self) -> None:
        self.model = CountingModel()
        self.submitted: list[np.ndarray] = []

    def submit(self, pixels: np.ndarray) -> AsyncInvocation:
        self.submitted.append(np.array(pixels))
        at = f"s3://endpoint/{len(self.submitted) - 1}"
        return AsyncInvocation(at, at, at, None, pixels.shape[1], pixels.shape[0])

    def finish(self, calls, outcomes):
        return self.model.predict([self.submitted[int(c.inference_id.rsplit("/", 1)[1])]
                                   for c in calls])


def test_the_deferred_path_skips_what_the_synchronous_one_skips(tmp_path: Path):
    """A region sent to an asynchronous endpoint (the DAG defers on it) submits only the
    slices with data; the skipped ones survive the trigger's JSON round trip."""
    import json

    from tilescope.deferred import SubmittedRegion, finish_region, submit_region
    from tilescope.pipeline import analyze_region

    scene = collar_scene(tmp_path)
    params = InferenceParams(model="bright-blobs", slice_size=256, grid="2x2")
    reader, image = open_image(str(scene))
    with reader:
        plan = plan_image(image.width, image.height, params, 256)
        for region in plan.regions:
            endpoint = FakeAsyncEndpoint()
            submitted = submit_region(reader, region, endpoint)  # type: ignore[arg-type]
            expected = sum(in_collar(s) for s in region.slices())
            assert len(submitted.invocations) == region.slice_count - expected
            event = json.loads(json.dumps({  # what the trigger's event hands back
                "invocations": [c.to_dict() for c in submitted.invocations],
                "carry": submitted.carry}))
            again = SubmittedRegion.from_parts(event["invocations"], event["carry"])
            deferred = finish_region(region, again, [], endpoint,  # type: ignore[arg-type]
                                     params)
            synchronous = analyze_region(reader, region, BrightBlobModel(), params)
            assert deferred.skipped_slices == synchronous.skipped_slices == expected
            assert deferred.detections.boxes.tolist() == synchronous.detections.boxes.tolist()
