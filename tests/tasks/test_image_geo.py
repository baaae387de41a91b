"""The DAG's steps on GeoTIFF/COG scenes, against a real S3 server: a COG's regions read its
tiles in place over ranged GETs, ``store`` puts the GeoJSON files and the STAC Item beside
``coco.json``, and they say what ``tilescope predict`` says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from affine import Affine
from support.blob_model import BrightBlobModel
from support.geotiffs import (
    BOXES,
    UTM_ORIGIN,
    dark_photo_scene,
    needs_gdal_tools,
    unknown_crs_geotiff,
    write_cog,
    write_with_rasterio,
)

from tilescope.cli import main
from tilescope.georef import GeoreferenceError
from tilescope.layout import GEO_ARTIFACTS
from tilescope.models import register_model
from tilescope.params import InferenceParams
from tilescope.storage import read_bytes
from tilescope.tasks.image import analyze, combine, prepare, save_result, store

register_model("bright-blobs", BrightBlobModel)
BUCKET = "geo"
PARAMS = InferenceParams(model="bright-blobs", slice_size=256, overlap=0.2, grid="2x2")


@pytest.fixture
def bucket(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


def put_file(client, key: str, path: Path) -> str:
    client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    return f"s3://{BUCKET}/{key}"


def run_steps(uri: str, client, tmp_path: Path, params: InferenceParams = PARAMS) -> tuple:
    """prepare → analyze → combine → store, as the DAG runs them; the XCom dicts back."""
    regions, prepared = prepare(uri, params, client=client, run="r-geo", model_slice_size=256)
    model = BrightBlobModel()
    findings = [analyze(r, prepared.source_uri, params, model, client=client,
                        scratch_prefix=prepared.scratch_prefix) for r in regions]
    result = combine(prepared, findings, params, "bright-blobs", client=client)
    summary = store(save_result(result, prepared.scratch_prefix, client), prepared, params,
                    client=client, catalog_url=f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    return prepared.to_dict(), summary.to_dict()


@needs_gdal_tools
def test_a_cog_is_read_in_place_and_stored_with_geojson_and_stac_beside_coco(bucket,
                                                                            tmp_path: Path):
    scene = write_cog(dark_photo_scene(), tmp_path / "scene.tif")
    uri = put_file(bucket, "incoming/scene.tif", scene)
    prepared, summary = run_steps(uri, bucket, tmp_path)
    assert prepared["source_uri"] == uri  # tiled 8-bit RGB: regions read its tiles directly
    assert prepared["image"]["crs"] == "EPSG:32633"
    keys = summary["keys"]
    assert set(keys) == {"result", "coco", "overlay", "thumbnail", *GEO_ARTIFACTS}
    prefix = keys["coco"].rsplit("/", 1)[0]
    assert all(keys[role] == f"{prefix}/{name}" for role, name in GEO_ARTIFACTS.items())
    stored = json.loads(read_bytes(keys["geojson"], bucket))
    assert sorted(f["properties"]["pixel_box"] for f in stored["features"]) == sorted(
        [float(v) for v in box] for box in BOXES)
    item = json.loads(read_bytes(keys["stac"], bucket))
    assert item["assets"]["labels"]["href"] == keys["geojson"]
    assert item["assets"]["scene"]["href"] == uri
    assert item["assets"]["result"]["href"] == keys["result"]
    native = json.loads(read_bytes(keys["geojson_native"], bucket))
    assert native["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"

    # the CLI on the same scene writes the same features
    assert main(["predict", str(scene), "--model", "bright-blobs", "--slice", "256",
                 "--quiet", "--geojson", str(tmp_path / "cli.geojson")]) == 0
    cli = json.loads((tmp_path / "cli.geojson").read_text())
    key = lambda f: f["properties"]["pixel_box"]  # noqa: E731
    assert [f["geometry"] for f in sorted(cli["features"], key=key)] == [
        f["geometry"] for f in sorted(stored["features"], key=key)]


def test_a_plain_image_keeps_todays_outputs(bucket, tmp_path: Path):
    from PIL import Image

    Image.fromarray(dark_photo_scene(512, 384)).save(tmp_path / "plain.png")
    uri = put_file(bucket, "incoming/plain.png", tmp_path / "plain.png")
    _, summary = run_steps(uri, bucket, tmp_path)
    assert set(summary["keys"]) == {"result", "coco", "overlay", "thumbnail"}
    image = json.loads(read_bytes(summary["keys"]["result"], bucket))["image"]
    assert image["crs"] is None and image["transform"] is None


def test_a_16_bit_scene_is_staged_as_the_stretched_pixels_the_model_sees(bucket,
                                                                         tmp_path: Path):
    import numpy as np

    pixels = dark_photo_scene(512, 384).astype(np.uint16) * 257
    pixels = np.dstack([pixels, pixels[:, :, :1]])  # 4 bands
    scene = write_with_rasterio(pixels, tmp_path / "rgbn.tif",
                                Affine.translation(*UTM_ORIGIN) @ Affine.scale(0.5, -0.5))
    uri = put_file(bucket, "incoming/rgbn.tif", scene)
    params = InferenceParams.from_dict({**PARAMS.to_dict(), "bands": "1,2,3"})
    prepared, summary = run_steps(uri, bucket, tmp_path, params)
    assert prepared["source_uri"].endswith("pixels.tif")  # converted once, in prepare
    result = json.loads(read_bytes(summary["keys"]["result"], bucket))
    assert result["image"]["pixels"]["stretch"]["method"] == "percentile"
    assert "geojson" in summary["keys"]


def test_a_crs_that_cannot_be_parsed_fails_prepare_and_loses_nothing(bucket, tmp_path: Path):
    scene = unknown_crs_geotiff(tmp_path / "unknown.tif", dark_photo_scene(512, 384))
    uri = put_file(bucket, "incoming/unknown.tif", scene)
    with pytest.raises(GeoreferenceError, match="CRS cannot be read"):
        prepare(uri, PARAMS, client=bucket, run="r-bad", model_slice_size=256)
    assert read_bytes(uri, bucket) == scene.read_bytes()
    listed = bucket.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    assert [o["Key"] for o in listed] == ["incoming/unknown.tif"]


@needs_gdal_tools
def test_a_cogs_georeference_costs_a_few_ranged_gets_not_the_scene(bucket, tmp_path: Path):
    from tilescope.layout import open_source
    from tilescope.samples import build_mosaic

    scene = write_cog(build_mosaic(3072), tmp_path / "big.tif")
    uri = put_file(bucket, "incoming/big.tif", scene)
    size = scene.stat().st_size
    with open_source(uri, bucket) as reader:  # tifffile's header, then GDAL's georeference
        assert reader.georeference is not None and reader.georeference.epsg == 32633
        raw = reader._tiff.filehandle._fh.raw  # the ranged S3 file under the read buffer
        assert raw.bytes_read < size / 20, (raw.bytes_read, size)
        assert raw.requests <= 8, raw.requests
