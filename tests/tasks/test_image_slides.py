"""The DAG's steps on whole-slide scans, against a real S3 server: a slide analysed at full
resolution is read in place, tile by tile; at a reduced level, ``prepare`` stages that level
once (read tile by tile over ranged GETs) and the result is the one ``tilescope predict``
gives, boxes in level-0 pixels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.blob_model import BrightBlobModel
from support.slides import SLIDE_SIZE, slide_pixels, write_svs

from tilescope.cli import main
from tilescope.handoffs import Prepared
from tilescope.models import register_model
from tilescope.params import InferenceParams
from tilescope.tasks.image import analyze, combine, prepare

register_model("bright-blobs", BrightBlobModel)
BUCKET = "slides"


@pytest.fixture
def slide(s3_client, tmp_path: Path) -> tuple[str, Path]:
    s3_client.create_bucket(Bucket=BUCKET)
    path = write_svs(tmp_path / "slide.svs", slide_pixels())
    s3_client.put_object(Bucket=BUCKET, Key="incoming/slide.svs", Body=path.read_bytes())
    return f"s3://{BUCKET}/incoming/slide.svs", path


def run_steps(uri: str, client, params: InferenceParams):
    """prepare → analyze → combine, as the DAG runs them (the hand-off through its XCom
    form: the slide's scale must survive it)."""
    regions, prepared = prepare(uri, params, client=client, run="r-slide",
                                model_slice_size=256)
    prepared = Prepared.from_dict(json.loads(json.dumps(prepared.to_dict())))
    model = BrightBlobModel()
    findings = [analyze(r, prepared.source_uri, params, model, client=client,
                        scratch_prefix=prepared.scratch_prefix) for r in regions]
    return prepared, combine(prepared, findings, params, "bright-blobs", client=client)


@pytest.mark.parametrize("magnification", [0.0, 20.0])
def test_the_dag_gives_what_the_cli_gives_at_any_level(slide, s3_client, tmp_path: Path,
                                                       magnification: float):
    uri, path = slide
    params = InferenceParams(model="bright-blobs", slice_size=256, overlap=0.2, grid="2x2",
                             magnification=magnification)
    prepared, result = run_steps(uri, s3_client, params)
    if magnification:  # the level is staged once: region tasks read plain tiles
        assert prepared.source_uri.endswith("/pixels.tif")
    else:  # full resolution: read in place, over ranged GETs
        assert prepared.source_uri == uri
    image = result.to_dict()["image"]
    assert (image["width"], image["height"]) == SLIDE_SIZE
    assert image["microscopy"]["level"] == (1 if magnification else 0)
    out = tmp_path / "cli.json"
    extra = ["--magnification", f"{magnification:g}"] if magnification else []
    assert main(["predict", str(path), "--model", "bright-blobs", "--slice", "256",
                 "--grid", "2x2", "--quiet", "--out", str(out), *extra]) == 0
    cli = json.loads(out.read_text())
    assert result.to_dict()["detections"] == cli["detections"]
    assert len(cli["detections"]) == 4
