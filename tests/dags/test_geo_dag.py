"""tiled_inference end to end with ``dag.test()`` on a COG made by ``gdal_translate``: the
GeoJSON files and the STAC Item are stored beside ``coco.json`` and the catalog row names
them; the GeoJSON equals the CLI's for the same scene."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.blob_model import BrightBlobModel
from support.geotiffs import (
    BOXES,
    collar_scene,
    collar_validity_scene,
    dark_photo_scene,
    needs_gdal_tools,
    write_cog,
)

from tilescope.cli import main
from tilescope.layout import GEO_ARTIFACTS
from tilescope.models import register_model
from tilescope.outputs.catalog import connect, find_results

pytestmark = [pytest.mark.slow, needs_gdal_tools]
BUCKET = "tilescope"
register_model("bright-blobs", BrightBlobModel)


def test_a_cog_scene_end_to_end_stores_geojson_and_stac(dag, airflow_env, tmp_path: Path):
    client = airflow_env["client"]
    scene = write_cog(dark_photo_scene(), tmp_path / "scene.tif")
    client.put_object(Bucket=BUCKET, Key="incoming/scene.tif", Body=scene.read_bytes())
    uri = f"s3://{BUCKET}/incoming/scene.tif"
    run = dag.test(run_conf={"image_uri": uri, "grid": "2x2", "model": "bright-blobs",
                             "slice_size": "256"})
    assert str(run.state) == "success"

    rows = find_results(connect(airflow_env["catalog"]))
    keys = rows[0]["result_keys"]
    assert set(keys) == {"result", "coco", "overlay", "thumbnail", *GEO_ARTIFACTS}
    prefix = keys["result"].rsplit("/", 1)[0] + "/"
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix.split(f"{BUCKET}/", 1)[1])
    names = sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"])
    assert names == sorted(["result.json", "coco.json", "overlay.webp", "thumbnail.webp",
                            *GEO_ARTIFACTS.values()])

    def stored(role: str) -> dict:
        key = keys[role].split(f"{BUCKET}/", 1)[1]
        return json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    assert stored("result")["image"]["crs"] == "EPSG:32633"
    geojson = stored("geojson")
    assert len(geojson["features"]) == len(BOXES)
    assert stored("stac")["assets"]["labels"]["href"] == keys["geojson"]

    assert main(["predict", str(scene), "--model", "bright-blobs", "--slice", "256",
                 "--quiet", "--geojson", str(tmp_path / "cli.geojson")]) == 0
    cli = json.loads((tmp_path / "cli.geojson").read_text())
    by_box = lambda doc: sorted(  # noqa: E731
        (f["properties"]["pixel_box"], f["geometry"]) for f in doc["features"])
    assert by_box(geojson) == by_box(cli)


@pytest.mark.parametrize("said_by", ["nodata", "sidecar"])
def test_the_dag_skips_the_nodata_slices_the_cli_skips(dag, airflow_env, tmp_path: Path,
                                                       said_by: str):
    """A scene with a nodata collar, read in place by the DAG: its regions skip the same
    slices as the CLI, the stored result counts them, and the detections are the CLI's.
    ``sidecar``: the collar holds photo pixels and only GDAL's ``<key>.msk`` beside the
    scene in S3 says it is empty."""
    client = airflow_env["client"]
    scene = collar_scene(tmp_path) if said_by == "nodata" else \
        collar_validity_scene(tmp_path, "sidecar")
    client.put_object(Bucket=BUCKET, Key="incoming/collar.tif", Body=scene.read_bytes())
    if said_by == "sidecar":
        client.put_object(Bucket=BUCKET, Key="incoming/collar.tif.msk",
                          Body=Path(f"{scene}.msk").read_bytes())
    run = dag.test(run_conf={"image_uri": f"s3://{BUCKET}/incoming/collar.tif",
                             "grid": "2x2", "model": "bright-blobs", "slice_size": "256"})
    assert str(run.state) == "success"
    key = find_results(connect(airflow_env["catalog"]))[0]["result_keys"]["result"]
    stored = json.loads(client.get_object(
        Bucket=BUCKET, Key=key.split(f"{BUCKET}/", 1)[1])["Body"].read())

    assert main(["predict", str(scene), "--model", "bright-blobs", "--slice", "256",
                 "--grid", "2x2", "--quiet", "--out", str(tmp_path / "cli.json")]) == 0
    cli = json.loads((tmp_path / "cli.json").read_text())
    assert stored["summary"]["skipped_slices"] == cli["summary"]["skipped_slices"] > 0
    assert [r.get("skipped_slices", 0) for r in stored["regions"]] == \
        [r.get("skipped_slices", 0) for r in cli["regions"]]
    assert stored["detections"] == cli["detections"]
