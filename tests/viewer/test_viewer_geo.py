"""The viewer on georeferenced results: the georeference and lon/lat control points in the
result payload (checked against PROJ through rasterio), and GeoJSON served from the run's
own stored results only."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.warp import transform as proj_transform
from viewer.test_viewer_batch import (
    HASH,
    A,
    outcomes_doc,
    prepared_for,
)
from viewer.test_viewer_batch import (
    RUN_ID as BATCH_RUN_ID,
)

from tilescope.georef import Georeference, interpolate_lonlat, lonlat_grid
from tilescope.layout import ScratchLayout, safe_key_part
from tilescope.viewer.keys import (
    ViewerInputError,
    batch_prefixes,
    batch_run,
    resolve_key,
    run_prefixes,
)
from tilescope.viewer.shaping import georef_payload, has_crs, result_payload

UTM33N = CRS.from_epsg(32633)
#: a 0.5 m UTM 33N scene (as tests/support/geotiffs.py), 1024 × 768 pixels
SMALL = Georeference(UTM33N.to_wkt(), (0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0), 32633)
#: a 200 km Sentinel-2-like scene: 20,000² pixels of 10 m, rotated by a few degrees
COS, SIN = np.cos(np.radians(3.0)), np.sin(np.radians(3.0))
LARGE = Georeference(UTM33N.to_wkt(),
                     (10 * COS, 10 * SIN, 400_000.0, 10 * SIN, -10 * COS, 5_100_000.0), 32633)
#: the documented bound for LARGE (docs/geospatial.md): ~3 m on the ground
LARGE_BOUND_DEG = 5e-5


def gdal_lonlat(geo: Georeference, cols: np.ndarray, rows: np.ndarray):
    """lon/lat straight from rasterio/GDAL+PROJ for pixel corners, without tilescope."""
    a, b, c0, d, e, f = geo.transform
    xs, ys = a * cols + b * rows + c0, d * cols + e * rows + f
    lon, lat = proj_transform(UTM33N, CRS.from_user_input("OGC:CRS84"),
                              xs.ravel().tolist(), ys.ravel().tolist())
    return np.reshape(lon, xs.shape), np.reshape(lat, ys.shape)


@pytest.mark.parametrize("geo, width, height", [(SMALL, 1024, 768), (LARGE, 20_000, 20_000)])
def test_control_points_are_where_gdal_puts_those_pixels(geo, width, height):
    grid = lonlat_grid(geo, width, height)
    assert grid["cols"][0] == 0 and grid["cols"][-1] == width
    assert grid["rows"][0] == 0 and grid["rows"][-1] == height
    cols, rows = np.meshgrid(grid["cols"], grid["rows"])
    lon, lat = gdal_lonlat(geo, cols, rows)
    assert np.max(np.abs(np.asarray(grid["lon"]) - lon)) < 1e-6
    assert np.max(np.abs(np.asarray(grid["lat"]) - lat)) < 1e-6
    # the page's interpolation returns the control points themselves
    here = interpolate_lonlat(grid, cols, rows)
    assert np.max(np.abs(here[0] - lon)) < 1e-6 and np.max(np.abs(here[1] - lat)) < 1e-6


@pytest.mark.parametrize("geo, width, height, bound", [
    (SMALL, 1024, 768, 1e-8), (LARGE, 20_000, 20_000, LARGE_BOUND_DEG)])
def test_between_control_points_the_error_stays_within_the_stated_bound(geo, width, height,
                                                                       bound):
    grid = lonlat_grid(geo, width, height)
    assert 0 < grid["max_error_deg"] <= bound
    rng = np.random.default_rng(15)
    cols, rows = rng.uniform(0, width, 3000), rng.uniform(0, height, 3000)
    lon, lat = gdal_lonlat(geo, cols, rows)
    est_lon, est_lat = interpolate_lonlat(grid, cols, rows)
    error = max(np.max(np.abs(est_lon - lon)), np.max(np.abs(est_lat - lat)))
    assert error <= grid["max_error_deg"]  # the figure the page quotes holds
    assert error > grid["max_error_deg"] / 10  # ... and is not a loose overstatement


def test_a_geographic_crs_interpolates_exactly():
    geo = Georeference(CRS.from_epsg(4326).to_wkt(), (1e-4, 0.0, 13.0, 0.0, -1e-4, 52.0), 4326)
    grid = lonlat_grid(geo, 5000, 4000)
    assert grid["max_error_deg"] < 1e-9
    lon, lat = interpolate_lonlat(grid, np.array([1234.5]), np.array([3210.25]))
    assert lon[0] == pytest.approx(13.0 + 1234.5e-4, abs=1e-9)
    assert lat[0] == pytest.approx(52.0 - 3210.25e-4, abs=1e-9)


def _result_doc(image: dict) -> dict:
    return {"status": "complete", "image": image, "category_names": ["person"],
            "detections": [{"bbox": [1, 2, 3, 4], "score": 0.9, "category_id": 0}]}


def test_the_result_payload_carries_the_georeference_and_lon_lat_grid():
    image = {"width": 1024, "height": 768, **SMALL.to_dict()}
    payload = result_payload(_result_doc(image))
    geo = payload["georef"]
    assert geo["crs"] == "EPSG:32633" and geo["epsg"] == 32633
    assert geo["transform"] == [0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0]
    assert len(geo["lonlat"]["lon"]) == 17 and len(geo["lonlat"]["lon"][0]) == 17
    lon, lat = gdal_lonlat(SMALL, np.array([0.0]), np.array([0.0]))
    assert geo["lonlat"]["lon"][0][0] == pytest.approx(lon[0], abs=1e-6)
    assert geo["lonlat"]["lat"][0][0] == pytest.approx(lat[0], abs=1e-6)
    assert has_crs(payload)


def test_a_plain_image_gets_nothing_new():
    payload = result_payload(_result_doc({"width": 640, "height": 480, "crs": None,
                                          "transform": None}))
    assert payload["georef"] is None and not has_crs(payload)
    assert result_payload(_result_doc({"width": 640, "height": 480}))["georef"] is None
    # a geotransform without a CRS: the affine is passed on, but nothing to place on Earth
    no_crs = georef_payload({"width": 8, "height": 8, "crs": None, "crs_wkt": None,
                             "transform": [1, 0, 10, 0, -1, 20]})
    assert no_crs == {"crs": None, "epsg": None, "transform": [1, 0, 10, 0, -1, 20],
                      "lonlat": None}


# --- GeoJSON is served from the run's own results prefix, nowhere else --------------------

IMAGE_ID = "0123456789abcdef"
RUN_ID = "manual__2026-12-01T23:00:00+00:00"
SCRATCH = ScratchLayout("tilescope", IMAGE_ID, RUN_ID).prefix
RESULTS = f"results/{IMAGE_ID}/{HASH}/"


@pytest.fixture
def run():
    return run_prefixes(RUN_ID, {"image": {"image_id": IMAGE_ID},
                                 "scratch_prefix": f"s3://tilescope/{SCRATCH}"},
                        {"keys": {"result": f"s3://tilescope/{RESULTS}result.json"}})


@pytest.mark.parametrize("name", ["detections.geojson", "detections.native.geojson",
                                  "item.json"])
def test_the_runs_geo_files_are_served(run, name):
    assert resolve_key(RESULTS + name, run).uri == f"s3://tilescope/{RESULTS}{name}"
    assert resolve_key(f"s3://tilescope/{RESULTS}{name}", run).key == RESULTS + name


@pytest.mark.parametrize("key", [
    f"{SCRATCH}detections.geojson",  # the run's own scratch: results only
    f"results/{'1' * 16}/{HASH}/detections.geojson",  # another image's results
    f"results/{IMAGE_ID}/ffffffff/detections.geojson",  # this image, other parameters
    "results/detections.geojson", "detections.geojson",
    f"{RESULTS}../{HASH}/detections.geojson",  # traversal
    "s3://other-bucket/" + RESULTS + "detections.geojson",
    f"{RESULTS}detections.geojson.exe", f"{RESULTS}detections.kml",
])
def test_geojson_outside_the_runs_results_is_refused(run, key):
    with pytest.raises(ViewerInputError):
        resolve_key(key, run)


def test_a_run_without_a_stored_result_serves_no_geojson():
    before_store = run_prefixes(RUN_ID, {"image": {"image_id": IMAGE_ID},
                                         "scratch_prefix": f"s3://tilescope/{SCRATCH}"}, None)
    assert resolve_key(f"{SCRATCH}thumbnail.png", before_store)  # scratch still served
    with pytest.raises(ViewerInputError):
        resolve_key(f"{SCRATCH}detections.geojson", before_store)


def test_a_batch_serves_geojson_of_its_stored_images_only():
    prefixes = batch_prefixes(batch_run(BATCH_RUN_ID, prepared_for()), outcomes_doc())
    key = f"results/{A}/{HASH}/detections.geojson"
    assert resolve_key(key, prefixes).key == key
    with pytest.raises(ViewerInputError):  # the batch's own prefix: outcomes only
        resolve_key(f"results/batches/{safe_key_part(BATCH_RUN_ID)}/x.geojson", prefixes)
    assert set(prefixes.artifacts(0, geo=True)) == {
        "result.json", "coco.json", "overlay.png", "detections.geojson",
        "detections.native.geojson", "item.json"}
    assert "detections.geojson" not in prefixes.artifacts(0)


# --- the page's arithmetic is the tested one -------------------------------------------

VIEWER_JS = Path(__file__).parents[2] / "plugins" / "tilescope_viewer_ui" / "viewer.js"


@pytest.mark.skipif(shutil.which("node") is None, reason="node (to run viewer.js) missing")
def test_the_pages_lonlat_is_the_tested_interpolation():
    """``lonlatAt`` cut out of viewer.js and run by node on LARGE's grid gives what
    :func:`interpolate_lonlat` gives (and so what PROJ gives, within the stated bound)."""
    source = VIEWER_JS.read_text()
    match = re.search(r"\n  function lonlatAt\(.*?\n  }\n", source, re.S)
    assert match, "viewer.js has no lonlatAt"
    grid = lonlat_grid(LARGE, 20_000, 20_000)
    rng = np.random.default_rng(7)
    points = np.column_stack([rng.uniform(0, 20_000, 200), rng.uniform(0, 20_000, 200)])
    points = np.vstack([points, [[0, 0], [20_000, 20_000], [1250, 1250]]])
    script = (match.group(0) + f"const grid = {json.dumps(grid)};\n"
              f"const pts = {json.dumps(points.tolist())};\n"
              "console.log(JSON.stringify(pts.map(([c, r]) => lonlatAt(grid, c, r))));")
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True)
    page = np.asarray(json.loads(out.stdout))
    lon, lat = interpolate_lonlat(grid, points[:, 0], points[:, 1])
    assert np.max(np.abs(page[:, 0] - lon)) < 1e-9 and np.max(np.abs(page[:, 1] - lat)) < 1e-9
    true_lon, true_lat = gdal_lonlat(LARGE, points[:, 0], points[:, 1])
    assert np.max(np.abs(page[:, 0] - true_lon)) <= grid["max_error_deg"]
    assert np.max(np.abs(page[:, 1] - true_lat)) <= grid["max_error_deg"]
