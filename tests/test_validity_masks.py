"""A scene's GDAL mask or alpha band in the 8-bit stretch, and GDAL's external ``.msk``
mask sidecar (the gaps issue 15 left).

Scenes are written by GDAL (through rasterio): a 16-bit scene whose collar is a fill value
said to hold no data only by an internal mask, an alpha band or a ``.msk`` sidecar; and the
8-bit collar scene of ``tests/test_nodata_skip.py`` with its mask beside it. Expected
percentiles are computed here with numpy from the pixels written (or, for an overview,
from what GDAL reads back of it), never by the reader under test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from support.blob_model import BrightBlobModel
from support.geotiffs import (
    BOXES,
    COLLAR_X,
    COLLAR_Y,
    MASKED_FILL,
    collar_validity_scene,
    masked_16bit_scene,
)

from tilescope.errors import BadImageError
from tilescope.models import register_model
from tilescope.params import InferenceParams
from tilescope.pipeline import run_image
from tilescope.readers import open_image
from tilescope.slicing import Box

register_model("bright-blobs", BrightBlobModel)
PARAMS = InferenceParams(model="bright-blobs", slice_size=256)
#: what the result's stretch says it left out, per way of hiding the collar
EXCLUDED = {"mask": ["internal_mask"], "alpha": ["alpha"], "sidecar": ["sidecar_mask"]}


def stretched(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The 8-bit stretch as documented, computed independently of the reader."""
    return np.clip(np.rint((values.astype(np.float64) - low) * 255.0 / (high - low)), 0, 255)


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "strips"])
@pytest.mark.parametrize("how", ["mask", "alpha", "sidecar"])
def test_the_stretch_is_found_on_the_valid_pixels_alone(tmp_path: Path, how: str,
                                                        tiled: bool):
    """A 40 % collar of fill 0 hidden by a mask, an alpha band or a sidecar: the
    percentiles are those of the valid pixels, so the valid area is stretched as if the
    collar were not there — not flattened by a low percentile of 0. Tiled (read tile by
    tile) or in strips (decoded whole, its mask too)."""
    scene, pixels, valid = masked_16bit_scene(tmp_path, how, tiled=tiled)
    low, high = np.percentile(pixels[valid].astype(float), [2, 98], axis=0)
    everything = np.percentile(pixels.reshape(-1, 3).astype(float), [2, 98], axis=0)
    assert (everything[0] == MASKED_FILL).all() and (low >= 1000).all()  # the collar drags
    reader, image = open_image(str(scene))
    with reader:
        assert reader.header.tiled == tiled
        stretch = image.pixels["stretch"]
        out = reader.read_all()
        assert np.array_equal(reader.valid_mask(Box(0, 0, reader.width, reader.height)),
                              valid)
    assert np.allclose(stretch["low"], low) and np.allclose(stretch["high"], high)
    assert stretch["excluded"] == EXCLUDED[how]
    assert ("mask" in stretch) == (how == "sidecar")
    expected = stretched(pixels, low, high)
    assert np.abs(out[valid].astype(int) - expected[valid]).max() <= 1
    # and not what a stretch over every pixel made of the valid area (the old behaviour)
    old = stretched(pixels, *everything)
    assert np.abs(out[valid].astype(int) - old[valid]).mean() > 20


@pytest.mark.parametrize("how", ["mask", "sidecar"])
def test_on_a_scene_with_overviews_the_level_sampled_is_masked_by_its_own_mask(
        tmp_path: Path, how: str):
    """A 2048 × 1536 scene with a 2× overview: the stretch samples the overview (a few
    tiles, not the scene) with the mask's overview — GDAL's own read of that level and
    its mask gives the same percentiles."""
    import rasterio

    scene, _, _ = masked_16bit_scene(tmp_path, how, width=2048, height=1536,
                                     overviews=(2,))
    with rasterio.open(scene, overview_level=0) as level:
        assert (level.width, level.height) == (1024, 768)
        values = np.moveaxis(level.read(), 0, 2)
        shown = level.read_masks(1) != 0
    low, high = np.percentile(values[shown].astype(float), [2, 98], axis=0)
    reader, image = open_image(str(scene))
    with reader:
        stretch = image.pixels["stretch"]
        assert reader.tiles_read <= 3 * 4 * 2  # the level's tiles and its mask's, no more
    assert np.allclose(stretch["low"], low) and np.allclose(stretch["high"], high)


def test_the_dag_stages_the_stretch_the_cli_finds_with_a_sidecar_in_s3(tmp_path: Path,
                                                                         s3_client):
    """Over S3 the sidecar is found by its key (``<key>.msk``) and read by ranged GETs: the
    DAG's ``prepare`` stages the pixels the CLI shows — the same stretch, recorded the same
    — with the sidecar's validity as the staged alpha."""
    from tilescope.layout import open_source
    from tilescope.tasks.image import prepare

    scene, _, valid = masked_16bit_scene(tmp_path, "sidecar")
    cli, image = open_image(str(scene))
    with cli:
        expected = cli.read_all()
    s3_client.create_bucket(Bucket="scenes")
    uri = "s3://scenes/incoming/masked16.tif"
    s3_client.upload_file(str(scene), "scenes", "incoming/masked16.tif")
    s3_client.upload_file(f"{scene}.msk", "scenes", "incoming/masked16.tif.msk")
    _, prepared = prepare(uri, PARAMS, client=s3_client, run="r-msk", model_slice_size=256)
    assert prepared.source_uri.endswith("pixels.tif")  # stretched: staged once
    stretch = prepared.image.pixels["stretch"]
    assert stretch["low"] == image.pixels["stretch"]["low"]
    assert stretch["high"] == image.pixels["stretch"]["high"]
    assert stretch["excluded"] == ["sidecar_mask"] and stretch["mask"] == f"{uri}.msk"
    with open_source(prepared.source_uri, s3_client) as staged:
        assert np.array_equal(staged.read_all(), expected)
        assert np.array_equal(staged.valid_mask(Box(0, 0, staged.width, staged.height)),
                              valid)


class CountingClient:
    """An S3 client that counts its HEAD requests by key."""

    def __init__(self, client) -> None:
        self._client = client
        self.heads: dict[str, int] = {}

    def head_object(self, **kwargs):
        self.heads[kwargs["Key"]] = self.heads.get(kwargs["Key"], 0) + 1
        return self._client.head_object(**kwargs)

    def __getattr__(self, name: str):
        return getattr(self._client, name)


def in_collar(s: Box) -> bool:
    return s.x2 <= COLLAR_X or s.y2 <= COLLAR_Y


def test_over_s3_the_sidecar_is_found_by_key_once_and_both_paths_skip_alike(
        tmp_path: Path, s3_client):
    """An 8-bit scene (read in place by the DAG) with its mask in ``<key>.msk``: one HEAD
    per opening of the image finds it; the CLI over S3 and the DAG's prepare → analyze →
    combine skip exactly the collar's slices, with the detections of the valid area."""
    from tilescope.layout import open_source
    from tilescope.tasks.image import analyze, combine, prepare

    scene = collar_validity_scene(tmp_path, "sidecar")
    s3_client.create_bucket(Bucket="scenes")
    key = "incoming/with mask.tif"
    uri = f"s3://scenes/{key}"
    s3_client.upload_file(str(scene), "scenes", key)
    s3_client.upload_file(f"{scene}.msk", "scenes", f"{key}.msk")
    client = CountingClient(s3_client)

    with open_source(uri, client) as reader:  # how the DAG's tasks open a tiled TIFF
        reader.read_all()
        reader.valid_mask(Box(0, 0, 512, 512))
    assert client.heads.get(f"{key}.msk") == 1

    reader, image = open_image(uri, client=client)  # the CLI's path, over S3
    with reader:
        cli = run_image(reader, image, PARAMS, BrightBlobModel())
    assert client.heads[f"{key}.msk"] == 2
    params = InferenceParams(model="bright-blobs", slice_size=256, grid="2x2")
    regions, prepared = prepare(uri, params, client=client, run="r-msk",
                                model_slice_size=256)
    assert prepared.source_uri == uri  # 8-bit RGB: its tiles (and its mask's) read in place
    findings = [analyze(r, prepared.source_uri, params, BrightBlobModel(), client=client,
                        scratch_prefix=prepared.scratch_prefix) for r in regions]
    dag = combine(prepared, findings, params, "bright-blobs", client=client)

    slices = [s for region in _plan(image, params).regions for s in region.slices()]
    expected = sum(in_collar(s) for s in slices)
    assert 0 < expected < len(slices)
    assert dag.skipped_slices == cli.skipped_slices == expected
    valid = sorted([float(v) for v in b] for b in BOXES if b[0] >= COLLAR_X
                   and b[1] >= COLLAR_Y)
    assert sorted(dag.detections.boxes.tolist()) == sorted(cli.detections.boxes.tolist()) \
        == valid


def _plan(image, params: InferenceParams):
    from tilescope.pipeline import plan_image

    return plan_image(image.width, image.height, params, 256)


def test_the_sidecar_is_not_looked_for_when_the_scene_says_its_validity(tmp_path: Path,
                                                                          s3_client):
    """A nodata value, an alpha band or an internal mask says where the scene has data:
    no HEAD for a sidecar is made for it (a sidecar there would be ignored)."""
    s3_client.create_bucket(Bucket="scenes")
    client = CountingClient(s3_client)
    for how in ("uint16x4", "alpha", "mask"):
        scene = collar_validity_scene(tmp_path, how)
        s3_client.upload_file(str(scene), "scenes", scene.name)
        reader, _ = open_image(f"s3://scenes/{scene.name}", client=client)
        reader.close()
    assert not [k for k in client.heads if k.endswith(".msk")]


def test_a_sidecar_of_another_size_is_a_bad_input_and_a_missing_one_changes_nothing(
        tmp_path: Path, capsys):
    from tilescope.cli import main

    scene = collar_validity_scene(tmp_path, "sidecar")
    small, _, _ = masked_16bit_scene(tmp_path, "sidecar", width=512, height=384)
    mask = Path(f"{scene}.msk")
    kept = mask.read_bytes()
    shutil.copy(f"{small}.msk", mask)
    with pytest.raises(BadImageError, match=r"mask sidecar .*\.msk is 512×384, the image "
                                            r"1024×768"):
        open_image(str(scene))
    code = main(["predict", str(scene), "--model", "bright-blobs", "--slice", "256",
                 "--quiet", "--out", str(tmp_path / "r.json")])
    assert code == 2 and "is 512×384, the image 1024×768" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()

    mask.write_bytes(b"not a tiff")
    with pytest.raises(BadImageError, match=r"mask sidecar .* is not a readable TIFF"):
        open_image(str(scene))

    mask.write_bytes(kept)
    reader, image = open_image(str(scene))
    with reader:
        with_mask = run_image(reader, image, PARAMS, BrightBlobModel())
    mask.unlink()
    reader, image = open_image(str(scene))
    with reader:
        assert reader.valid_mask(Box(0, 0, 10, 10)) is None
        without = run_image(reader, image, PARAMS, BrightBlobModel())
    assert with_mask.skipped_slices > 0 and without.skipped_slices == 0
