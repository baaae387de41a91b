"""Whole-slide scans end to end (issue 15, item 4): ``tilescope predict --magnification`` on an
SVS layout and a pyramidal OME-TIFF analyses the reduced level and reports its boxes in level-0
pixels, with the slide's µm per pixel and objective power in the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.blob_model import BrightBlobModel
from support.slides import OME_SIZE, SLIDE_BOXES, SLIDE_SIZE, slide_pixels, write_ome, write_svs

from tilescope.cli import main
from tilescope.models import register_model

register_model("bright-blobs", BrightBlobModel)
PREDICT = ["--model", "bright-blobs", "--slice", "256", "--quiet"]


def predict(slide: Path, out: Path, *extra: str) -> dict:
    assert main(["predict", str(slide), *PREDICT, "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def xywh(result: dict) -> np.ndarray:
    """The result's boxes (x, y, w, h), left to right."""
    boxes = np.array([d["bbox"] for d in result["detections"]], float).reshape(-1, 4)
    return boxes[np.argsort(boxes[:, 0])]


def write_slide(kind: str, tmp_path: Path) -> tuple[Path, str, tuple[int, int]]:
    """(slide, its 1-level-down magnification, its level-0 size)."""
    if kind == "svs":  # 40×: levels at 20× (÷2) and 5× (÷8)
        return write_svs(tmp_path / "slide.svs", slide_pixels()), "20", SLIDE_SIZE
    # 20×: 2047 × 1535 → 1024 × 768 at ~10×, a downsample a little different per axis
    return write_ome(tmp_path / "slide.ome.tif", slide_pixels(*OME_SIZE)), "10", OME_SIZE


@pytest.mark.parametrize("kind", ["svs", "ome"])
def test_boxes_found_one_level_down_are_level0_boxes(tmp_path: Path, kind: str):
    slide, power, size = write_slide(kind, tmp_path)
    full = predict(slide, tmp_path / "full.json")
    reduced = predict(slide, tmp_path / "reduced.json", "--magnification", power)
    scale = reduced["image"]["microscopy"]
    sx, sy = scale["downsample"]
    assert (sx, sy) == (size[0] / 1024, size[1] / 768)
    level0, level1 = xywh(full), xywh(reduced)
    # level 0 finds the painted boxes (JPEG blurs an SVS's edges by at most a pixel)
    truth = np.array([[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in SLIDE_BOXES], float)
    assert level0.shape == truth.shape and np.abs(level0 - truth).max() <= 1
    # level 1's boxes, in level-0 pixels, agree within the downsample's rounding...
    assert level1.shape == level0.shape
    assert np.all(np.abs(level1 - level0) <= np.array([sx, sy, sx, sy]) + 1), level1 - level0
    # ...and are level-1 pixel edges times the downsample, exactly, per axis
    in_level1 = level1 / np.array([sx, sy, sx, sy])
    assert np.abs(in_level1 - np.round(in_level1)).max() < 0.004, in_level1
    # the result is of the slide: level-0 size, its scale, the level analysed
    image = reduced["image"]
    assert (image["width"], image["height"]) == size
    assert scale["level"] == 1 and (scale["level_width"], scale["level_height"]) == (1024, 768)
    assert scale["level_magnification"] == pytest.approx(float(power), rel=0.01)
    if kind == "svs":
        assert scale["mpp"] == [0.252, 0.252] and scale["objective_power"] == 40
    else:
        assert scale["mpp"] == [0.5, 0.5] and scale["objective_power"] == 20
    assert scale["level_mpp"] == [scale["mpp"][0] * sx, scale["mpp"][1] * sy]
    assert full["image"]["microscopy"]["level"] == 0  # the scale is there at level 0 too
    # the slices were cut from the level analysed: a quarter of level 0's pixels
    assert reduced["plan"]["slices"] < full["plan"]["slices"]
    assert reduced["params"]["magnification"] == float(power)


def test_a_corrupt_pyramid_exits_2_naming_the_level_and_writes_nothing(tmp_path: Path,
                                                                       capsys):
    slide = write_ome(tmp_path / "bad.ome.tif", slide_pixels(*OME_SIZE),
                      sizes=[(1024, 300)])
    out = tmp_path / "result.json"
    assert main(["predict", str(slide), *PREDICT, "--out", str(out)]) == 2
    assert "pyramid level 1 is 1024×300" in capsys.readouterr().err
    assert not out.exists()


def test_a_magnification_the_slide_lacks_exits_2_before_the_model_runs(tmp_path: Path,
                                                                       capsys):
    slide = write_svs(tmp_path / "slide.svs", slide_pixels())
    out = tmp_path / "result.json"
    assert main(["predict", str(slide), *PREDICT, "--out", str(out),
                 "--magnification", "10"]) == 2
    assert "has no 10× level (its levels are at 40×, 20×, 5×)" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_of_slides_is_analysed_at_the_magnification_each_has(tmp_path: Path,
                                                                      capsys):
    """Many inputs in one process (``predict_many``): `.svs` files are found in folders, each
    slide is planned and re-read at its level, and gives what it gives alone."""
    folder = tmp_path / "slides"
    folder.mkdir()
    write_svs(folder / "a.svs", slide_pixels())  # 40×: 20× is level 1
    write_ome(folder / "b.ome.tif", slide_pixels(*OME_SIZE))  # 20×: level 0
    out = tmp_path / "out"
    assert main(["predict", str(folder), *PREDICT, "--out-dir", str(out),
                 "--magnification", "20"]) == 0
    capsys.readouterr()
    for name, level in (("a.svs", 1), ("b.ome.tif", 0)):
        doc = json.loads((out / f"{name}.json").read_text())
        assert doc["image"]["microscopy"]["level"] == level, name
        alone = predict(folder / name, tmp_path / f"{name}.json", "--magnification", "20")
        assert doc["detections"] == alone["detections"], name
        assert len(doc["detections"]) == len(SLIDE_BOXES)


def test_tune_searches_a_slide_at_the_magnification_asked(tmp_path: Path, capsys):
    """``tilescope tune --magnification 20``: slices cut from level 1 (20 of 256 px at
    1024 × 768, not level 0's 80), scored against level-0 ground truth."""
    slide = write_svs(tmp_path / "slide.svs", slide_pixels())
    truth = tmp_path / "gt.json"
    truth.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "slide.svs", "width": SLIDE_SIZE[0],
                    "height": SLIDE_SIZE[1]}],
        "annotations": [{"id": n, "image_id": 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
                        for n, (x1, y1, x2, y2) in enumerate(SLIDE_BOXES, start=1)],
        "categories": [{"id": 1, "name": "white"}]}))
    report = tmp_path / "report.json"
    assert main(["tune", str(slide), str(truth), *PREDICT, "--slice-sizes", "256",
                 "--overlaps", "0.2", "--thresholds", "0.5", "--budget", "300",
                 "--json", str(report), "--magnification", "20"]) == 0
    capsys.readouterr()
    first = json.loads(report.read_text())["trials"][0]
    assert (first["slicing"], first["slices"]) == ("256/0.2", 20)
    assert first["AP50"] == 1.0  # level-1 boxes back in level-0 pixels match the truth
