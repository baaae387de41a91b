"""GeoTIFF/COG scenes in, georeferenced detections out (issue 15, items 1 and 3), checked
against GDAL's own command-line tools: ``gdal_translate -of COG`` makes the scenes,
``gdaltransform`` says where their pixels are, ``ogrinfo`` opens what tilescope writes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import tifffile
from affine import Affine
from PIL import Image
from support.blob_model import BrightBlobModel
from support.geotiffs import (
    BOXES,
    PIXEL_METRES,
    UTM_EPSG,
    UTM_ORIGIN,
    dark_photo_scene,
    gdaltransform_lonlat,
    needs_gdal_tools,
    ogrinfo_summary,
    unknown_crs_geotiff,
    write_cog,
    write_with_rasterio,
)

from tilescope.cli import main
from tilescope.errors import BadImageError, ConfigError, ModelError
from tilescope.georef import GeoreferenceError, box_corners
from tilescope.models import register_model
from tilescope.readers import open_image
from tilescope.samples import build_mosaic


class MustNotRunModel(BrightBlobModel):
    """A detector whose running is the bug: georeferenced outputs of a plain image are
    refused before the model is loaded or run."""

    def predict(self, images):
        raise ModelError("the model ran, but the image could never get its GeoJSON")


register_model("bright-blobs", BrightBlobModel)
register_model("must-not-run", MustNotRunModel)
NODATA = 65535
PREDICT = ["--model", "bright-blobs", "--slice", "256", "--quiet"]


def predict_geo(scene: Path, out: Path, *extra: str) -> int:
    """``tilescope predict`` on ``scene`` with every georeferenced output into ``out``."""
    return main(["predict", str(scene), *PREDICT, "--out", str(out / "result.json"),
                 "--geojson", str(out / "detections.geojson"),
                 "--geojson-native", str(out / "native.geojson"),
                 "--stac", str(out / "item.json"), *extra])


def features_by_box(path: Path) -> dict[tuple[float, ...], dict]:
    return {tuple(f["properties"]["pixel_box"]): f
            for f in json.loads(path.read_text())["features"]}


def assert_matches_gdaltransform(scene: Path, geojson: Path) -> None:
    """Every detection is one of :data:`BOXES`, and its polygon's corners are where
    ``gdaltransform`` puts the box's corner pixels, within 1e-7 degrees."""
    features = features_by_box(geojson)
    assert sorted(features) == sorted(tuple(map(float, b)) for b in BOXES)
    cols, rows = box_corners(np.array(BOXES, float))
    lon, lat = gdaltransform_lonlat(scene, cols, rows)
    for i, box in enumerate(BOXES):
        ring = np.array(features[tuple(map(float, box))]["geometry"]["coordinates"][0])
        assert len(ring) == 5 and np.array_equal(ring[0], ring[-1])
        expected = np.column_stack([lon[i], lat[i]])
        # the ring may start anywhere and run either way: match each corner to GDAL's
        for corner in expected:
            assert np.min(np.max(np.abs(ring[:4] - corner), axis=1)) < 1e-7, (box, corner)
        # RFC 7946: exterior rings counterclockwise
        x, y = ring[:4, 0], ring[:4, 1]
        assert np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0


@needs_gdal_tools
@pytest.mark.parametrize("bigtiff", [False, True], ids=["cog", "bigtiff-cog"])
def test_cog_detections_land_where_gdal_puts_their_pixels(tmp_path: Path, bigtiff: bool):
    scene = write_cog(dark_photo_scene(), tmp_path / "scene.tif", bigtiff=bigtiff)
    with tifffile.TiffFile(scene) as tif:
        assert tif.is_bigtiff == bigtiff and tif.pages.first.is_tiled
    assert predict_geo(scene, tmp_path) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    image = result["image"]
    assert image["crs"] == f"EPSG:{UTM_EPSG}" and image["epsg"] == UTM_EPSG
    assert "UTM zone 33N" in image["crs_wkt"]
    assert image["transform"] == [PIXEL_METRES, 0, UTM_ORIGIN[0], 0, -PIXEL_METRES,
                                  UTM_ORIGIN[1]]
    assert len(result["detections"]) == len(BOXES)
    assert_matches_gdaltransform(scene, tmp_path / "detections.geojson")
    # the native-CRS copy: the pixel box through the geotransform, exactly
    for box, feature in features_by_box(tmp_path / "native.geojson").items():
        ring = np.array(feature["geometry"]["coordinates"][0])
        x1, y1, x2, y2 = box
        assert ring[:, 0].min() == UTM_ORIGIN[0] + x1 * PIXEL_METRES
        assert ring[:, 1].max() == UTM_ORIGIN[1] - y1 * PIXEL_METRES
        assert ring[:, 0].max() == UTM_ORIGIN[0] + x2 * PIXEL_METRES
        assert ring[:, 1].min() == UTM_ORIGIN[1] - y2 * PIXEL_METRES


@needs_gdal_tools
def test_geojson_files_open_in_ogr_with_their_crs_and_features(tmp_path: Path):
    scene = write_cog(dark_photo_scene(), tmp_path / "scene.tif")
    assert predict_geo(scene, tmp_path) == 0
    lonlat = ogrinfo_summary(tmp_path / "detections.geojson")
    assert f"Feature Count: {len(BOXES)}" in lonlat
    assert 'GEOGCRS["WGS 84"' in lonlat and 'ID["EPSG",4326]' in lonlat
    assert "class: String" in lonlat and "score: Real" in lonlat
    native = ogrinfo_summary(tmp_path / "native.geojson")
    assert f"Feature Count: {len(BOXES)}" in native
    assert 'PROJCRS["WGS 84 / UTM zone 33N"' in native and f'ID["EPSG",{UTM_EPSG}]' in native


@needs_gdal_tools
def test_stac_item_validates_offline_against_the_core_schema_pystac_ships(tmp_path: Path):
    import pystac
    from pystac.extensions.label import LabelExtension, LabelType
    from pystac.validation import validate_dict

    scene = write_cog(dark_photo_scene(), tmp_path / "scene.tif")
    assert predict_geo(scene, tmp_path) == 0
    doc = json.loads((tmp_path / "item.json").read_text())
    # pystac ships the STAC 1.1 core schemas; the label extension's schema is fetched from
    # stac-extensions.github.io (test_stac_item_validates_with_the_label_schema_online)
    core = dict(doc, stac_extensions=[])
    assert validate_dict(core) == [
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"]
    item = pystac.Item.from_dict(doc)
    label = LabelExtension.ext(item)
    assert label.label_type == LabelType.VECTOR and label.label_properties == ["class"]
    assert label.label_tasks == ["detection"] and label.label_description
    assert [c.classes for c in label.label_classes] == [["white"]]
    assert item.assets["labels"].href == "detections.geojson"
    assert item.assets["labels"].media_type == "application/geo+json"
    assert item.assets["scene"].href == "scene.tif" and item.assets["result"].href == "result.json"
    assert [link.href for link in item.links if link.rel == "source"] == ["scene.tif"]
    # the footprint is the scene's four corners, where GDAL puts them
    lon, lat = gdaltransform_lonlat(scene, np.array([0, 1024, 1024, 0.0]),
                                    np.array([0, 0, 768, 768.0]))
    ring = np.array(doc["geometry"]["coordinates"][0])
    for corner in np.column_stack([lon, lat]):
        assert np.min(np.max(np.abs(ring[:4] - corner), axis=1)) < 1e-7
    assert doc["bbox"] == [*ring.min(axis=0).tolist(), *ring.max(axis=0).tolist()]


def _schema_host_reachable() -> bool:
    try:
        socket.getaddrinfo("stac-extensions.github.io", 443)
    except OSError:
        return False
    return True


@needs_gdal_tools
@pytest.mark.skipif(not _schema_host_reachable(), reason="no network: pystac fetches the label "
                    "extension's schema from stac-extensions.github.io (the core schema is "
                    "checked offline by the test above)")
def test_stac_item_validates_with_the_label_schema_online(tmp_path: Path):
    import pystac

    scene = write_cog(dark_photo_scene(), tmp_path / "scene.tif")
    assert predict_geo(scene, tmp_path) == 0
    pystac.Item.from_file(str(tmp_path / "item.json")).validate()


@needs_gdal_tools
def test_a_rotated_geotransform_rotates_the_polygons_as_gdal_does(tmp_path: Path):
    transform = (Affine.translation(*UTM_ORIGIN) @ Affine.rotation(30.0)
                 @ Affine.shear(5.0, 0.0) @ Affine.scale(PIXEL_METRES, -PIXEL_METRES))
    scene = write_with_rasterio(dark_photo_scene(), tmp_path / "rotated.tif", transform,
                                photometric="rgb")
    assert predict_geo(scene, tmp_path) == 0
    image = json.loads((tmp_path / "result.json").read_text())["image"]
    assert np.allclose(image["transform"], list(transform)[:6], rtol=0, atol=1e-9)
    assert_matches_gdaltransform(scene, tmp_path / "detections.geojson")
    ring = np.array(next(iter(features_by_box(tmp_path / "native.geojson").values()))
                    ["geometry"]["coordinates"][0])
    assert len(set(np.round(ring[:4, 0], 3))) == 4  # no edge is north-south: rotated


def test_a_plain_image_says_it_has_no_crs_and_writes_no_geojson(tmp_path: Path, capsys):
    pixels = dark_photo_scene(512, 384)[:, :, :]
    png = tmp_path / "plain.png"
    Image.fromarray(pixels).save(png)
    plain_tiff = tmp_path / "plain.tif"
    tifffile.imwrite(plain_tiff, pixels, photometric="rgb", tile=(256, 256))
    for path in (png, plain_tiff):
        assert main(["predict", str(path), *PREDICT, "--out", str(tmp_path / "r.json")]) == 0
        image = json.loads((tmp_path / "r.json").read_text())["image"]
        assert image["crs"] is None and image["transform"] is None and "pixels" not in image
        code = main(["predict", str(path), "--model", "must-not-run", "--quiet",
                     "--geojson", str(tmp_path / "d.geojson"), "--stac", str(tmp_path / "i.json")])
        err = capsys.readouterr().err
        assert code == 2 and "has no CRS" in err and "GeoTIFF" in err  # before the model
        assert not (tmp_path / "d.geojson").exists() and not (tmp_path / "i.json").exists()


def test_the_writers_refuse_georeferenced_outputs_of_a_plain_result(tmp_path: Path):
    from tilescope.outputs.writers import OutputTargets, write_outputs
    from tilescope.params import InferenceParams
    from tilescope.pipeline import run_image

    png = tmp_path / "plain.png"
    Image.fromarray(dark_photo_scene(512, 384)).save(png)
    reader, image = open_image(str(png))
    result = run_image(reader, image, InferenceParams(model="bright-blobs", slice_size=256),
                       BrightBlobModel())
    targets = OutputTargets(result=str(tmp_path / "r.json"), geojson=str(tmp_path / "d.json"))
    with pytest.raises(ConfigError, match="has no CRS"):
        write_outputs(result, reader, targets)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.png"]  # nothing half-written


def test_a_crs_that_cannot_be_parsed_is_a_clear_error_and_nothing_is_lost(tmp_path: Path,
                                                                           capsys):
    scene = unknown_crs_geotiff(tmp_path / "unknown-crs.tif", dark_photo_scene(512, 384))
    before = scene.read_bytes()
    with pytest.raises(GeoreferenceError) as refused:
        open_image(str(scene))
    assert isinstance(refused.value, BadImageError)  # refused as a bad input: not retried
    assert "CRS cannot be read" in str(refused.value)
    assert "ProjectedCSTypeGeoKey=32768" in str(refused.value)
    code = main(["predict", str(scene), *PREDICT, "--out", str(tmp_path / "r.json"),
                 "--geojson", str(tmp_path / "d.geojson")])
    err = capsys.readouterr().err
    assert code == 2 and "CRS cannot be read" in err and "\n" not in err.strip()
    assert scene.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unknown-crs.tif"]


def sixteen_bit_four_band(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 16-bit 4-band (R, G, B, NIR-like) scene from real-photo pixels in a 12-bit range,
    with a nodata collar 40 px wide on the left (65535: it would stretch to white)."""
    photo = build_mosaic(512)[:384].astype(np.uint16)
    bands = np.dstack([photo * 16 + 7, 4095 - photo[:, :, 1] * 16]).astype(np.uint16)
    bands[:, :40] = NODATA
    transform = Affine.translation(*UTM_ORIGIN) @ Affine.scale(2.0, -2.0)
    return write_with_rasterio(bands, tmp_path / "rgbn16.tif", transform, nodata=NODATA), bands


def stretched(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The 8-bit stretch as documented, computed independently of the reader."""
    return np.clip(np.rint((values.astype(np.float64) - low) * 255.0 / (high - low)), 0, 255)


def test_16_bit_4_band_scene_is_stretched_per_band_and_bands_can_be_chosen(tmp_path: Path):
    scene, bands = sixteen_bit_four_band(tmp_path)
    valid = ~np.all(bands[:, :, :3] == NODATA, axis=2)
    reader, image = open_image(str(scene))
    low, high = np.percentile(bands[:, :, :3][valid].astype(float), [2, 98], axis=0)
    stretch = image.pixels["stretch"]
    assert image.pixels["dtype"] == "uint16" and image.pixels["band_count"] == 4
    assert image.pixels["bands"] == [1, 2, 3] and stretch["percentiles"] == [2.0, 98.0]
    assert np.allclose(stretch["low"], low) and np.allclose(stretch["high"], high)
    out = reader.read_all()
    expected = stretched(bands[:, :, :3], low, high)
    assert np.abs(out[valid].astype(int) - expected[valid]).max() <= 1
    assert not out[~valid].any()  # the nodata collar is black, not stretched to white
    assert image.georeference.nodata == NODATA and image.georeference.epsg == UTM_EPSG

    reader, image = open_image(str(scene), bands=[4, 3, 2])
    assert image.pixels["bands"] == [4, 3, 2]
    chosen = bands[:, :, [3, 2, 1]]
    low, high = np.percentile(chosen[valid].astype(float), [2, 98], axis=0)
    assert np.allclose(image.pixels["stretch"]["low"], low)
    out = reader.read_all()
    assert np.abs(out[valid].astype(int) - stretched(chosen, low, high)[valid]).max() <= 1


def test_16_bit_scene_through_the_cli_records_the_stretch(tmp_path: Path, capsys):
    scene, _ = sixteen_bit_four_band(tmp_path)
    assert main(["predict", str(scene), *PREDICT, "--bands", "4,3,2",
                 "--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["image"]["pixels"]["bands"] == [4, 3, 2]
    assert result["image"]["pixels"]["stretch"]["method"] == "percentile"
    assert result["params"]["bands"] == "4,3,2"
    assert main(["predict", str(scene), *PREDICT, "--bands", "5,3,2"]) == 2
    assert "bands must be 1 or 3 band numbers in 1..4" in capsys.readouterr().err


@pytest.mark.parametrize("bands", ["1,2", "1,2,3,4", "0,1,2", "red", "4;3;2"])
def test_bands_must_be_one_or_three_band_numbers(bands: str):
    from tilescope.params import InferenceParams

    with pytest.raises(ConfigError, match="band"):
        InferenceParams(bands=bands)
    assert InferenceParams(bands="4,3,2").band_list() == [4, 3, 2]
    assert InferenceParams().band_list() is None
    # unset, it leaves the parameter digest (the results' S3 keys) what it was before it
    # (pinned with the model of that time: the default model is part of the digest)
    assert InferenceParams(model="nanodet-coco").digest() == "1aa23f1139717f51"


def test_many_scenes_in_one_call_use_the_chosen_bands_like_one(tmp_path: Path):
    import shutil

    scene, _ = sixteen_bit_four_band(tmp_path)
    folder = tmp_path / "scenes"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):
        shutil.copy(scene, folder / name)
    assert main(["predict", str(scene), *PREDICT, "--bands", "4,3,2",
                 "--out", str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert main(["predict", str(folder), *PREDICT, "--bands", "4,3,2",
                 "--out-dir", str(tmp_path / "out")]) == 0
    docs = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.tif.json"))]
    assert len(docs) == 2
    for doc in docs:  # planned and re-opened by their unit with the same bands and stretch
        assert doc["image"]["pixels"] == one["image"]["pixels"]
        assert doc["detections"] == one["detections"]
