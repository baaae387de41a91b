"""Anonymization on real photos with people (Debian darknet's person and horses, scikit-image's
astronaut), with the real NanoDet model: inside every anonymized box the detail is gone,
outside the boxes not one pixel changes (lossless copy), and a tiled copy of a big image has
the very pixels of the whole image done at once (no seams at tile borders)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from tilescope.anonymize import (
    BLOCKS_ACROSS,
    MAX_SIGMA,
    AnonymizedReader,
    blur_radius,
    check_anonymize,
    margin_boxes,
    parse_targets,
    plan_marks,
)
from tilescope.errors import ConfigError
from tilescope.models import load_model
from tilescope.models.registry import model_categories
from tilescope.outputs.anonymized import anonymize_copy, write_anonymized
from tilescope.params import InferenceParams
from tilescope.pipeline import run_image
from tilescope.readers import TiffReader, open_image
from tilescope.readers.array import ArrayReader
from tilescope.samples import build_mosaic


def laplacian_variance(pixels: np.ndarray, keep: np.ndarray | None = None,
                       scale: int = 1) -> float:
    """The variance of the Laplacian (fine detail), on the pixels shrunk ``scale`` times
    (coarser detail: a light blur removes the finest only)."""
    if scale > 1:
        pixels = cv2.resize(pixels, None, fx=1 / scale, fy=1 / scale,
                            interpolation=cv2.INTER_AREA)
    lap = cv2.Laplacian(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), cv2.CV_64F)
    return float(lap[keep].var() if keep is not None else lap.var())


@pytest.fixture(scope="module")
def nanodet():
    with load_model("nanodet-coco") as model:
        yield model


def anonymized_sample(name, nanodet, tmp_path, **options):
    """(original pixels, copy read back, the result) for a sample photo, copy as PNG."""
    params = InferenceParams(anonymize="person,horse", **options)
    reader, image = open_image(str(__import__("tilescope.samples").samples.sample_path(name)))
    with reader:
        result = run_image(reader, image, params, nanodet)
        out = tmp_path / f"{name}.png"
        result.anonymized = anonymize_copy(reader, result, params, str(out), "png")
        original = reader.read_all().copy()
    return original, np.asarray(Image.open(out).convert("RGB")), result


@pytest.mark.parametrize("name", ["person", "horses", "astronaut"])
def test_blur_removes_the_detail_inside_every_box_and_nothing_outside(name, nanodet,
                                                                      tmp_path):
    original, copy, result = anonymized_sample(name, nanodet, tmp_path)
    record = result.anonymized
    assert record["mode"] == "blur" and record["boxes"] >= 1
    boxes = margin_boxes(result.detections.boxes[[
        result.category_names[int(c)] in ("person", "horse")
        for c in result.detections.category_ids]], 0.1, copy.shape[1], copy.shape[0])
    assert len(boxes) == record["boxes"]
    inside = np.zeros(copy.shape[:2], bool)
    for x1, y1, x2, y2 in boxes:
        inside[y1:y2, x1:x2] = True
        for scale in (1, 4):  # the fine detail, and the detail at 4 pixels
            before = laplacian_variance(original[y1:y2, x1:x2], scale=scale)
            after = laplacian_variance(copy[y1:y2, x1:x2], scale=scale)
            assert after < 0.1 * before, (name, (x1, y1, x2, y2), scale, before, after)
    assert np.array_equal(copy[~inside], original[~inside])  # PNG: exactly unchanged
    assert inside.any()


def test_pixelate_leaves_flat_blocks_of_the_box_average(nanodet, tmp_path):
    original, copy, result = anonymized_sample("person", nanodet, tmp_path,
                                               anonymize_mode="pixelate", anonymize_margin=8)
    boxes = margin_boxes(result.detections.boxes[[
        result.category_names[int(c)] in ("person", "horse")
        for c in result.detections.category_ids]], 8, copy.shape[1], copy.shape[0])
    inside = np.zeros(copy.shape[:2], bool)
    for x1, y1, x2, y2 in boxes:
        inside[y1:y2, x1:x2] = True
    for mark in plan_marks(boxes, "pixelate"):  # (none overlap on this photo)
        block = int(mark.strength)
        assert block >= min(mark.x2 - mark.x1, mark.y2 - mark.y1) / BLOCKS_ACROSS
        for y in range(mark.y1, mark.y2, block):
            for x in range(mark.x1, mark.x2, block):
                cell = copy[y:min(y + block, mark.y2), x:min(x + block, mark.x2)]
                source = original[y:min(y + block, mark.y2), x:min(x + block, mark.x2)]
                assert (cell == cell[0, 0]).all()  # flat: no detail left inside a block
                assert np.abs(cell[0, 0].astype(float) - source.mean(axis=(0, 1))).max() <= 0.5
        # the only edges left are the block borders
        box = copy[mark.y1:mark.y2, mark.x1:mark.x2]
        rows = (np.arange(box.shape[0]) % block)[:, None]
        cols = (np.arange(box.shape[1]) % block)[None, :]
        within = (rows > 0) & (rows < block - 1) & (cols > 0) & (cols < block - 1)
        assert laplacian_variance(box, within) < 0.1 * laplacian_variance(
            original[mark.y1:mark.y2, mark.x1:mark.x2], within)
    assert np.array_equal(copy[~inside], original[~inside])


def test_margin_is_a_fraction_below_one_and_pixels_from_one():
    boxes = np.array([[100.0, 100.0, 200.0, 150.0], [5.0, 5.0, 10.5, 10.0]])
    assert margin_boxes(boxes, 0.1, 1000, 1000).tolist() == [[90, 95, 210, 155], [4, 4, 12, 11]]
    assert margin_boxes(boxes, 20, 1000, 1000).tolist() == [[80, 80, 220, 170], [0, 0, 31, 30]]
    assert margin_boxes(boxes, 0, 150, 120).tolist() == [[100, 100, 150, 120], [5, 5, 11, 10]]


def test_bad_class_names_are_refused_by_name():
    names = model_categories("nanodet-coco")
    assert parse_targets("person, face", names) == parse_targets("person,face,person", names)
    assert parse_targets("face", names).faces and not parse_targets("car", names).faces
    with pytest.raises(ConfigError, match=r"'persn', 'unicorn' is not a class of model "
                                          r"nanodet-coco.*person"):
        parse_targets("persn,car,unicorn", names, "nanodet-coco")
    with pytest.raises(ConfigError, match="anonymize needs class names"):
        parse_targets(" , ", names)
    with pytest.raises(ConfigError, match="not with magnification 20"):
        check_anonymize(InferenceParams(anonymize="person", magnification=20))
    with pytest.raises(ConfigError, match="anonymize_mode must be one of"):
        InferenceParams(anonymize="person", anonymize_mode="smudge")
    with pytest.raises(ConfigError, match="anonymize_margin must be in"):
        InferenceParams(anonymize="person", anonymize_margin=-1)


def test_unset_anonymize_leaves_results_and_digests_as_they_were():
    plain = InferenceParams()
    assert "anonymize" not in plain.to_dict() and "anonymize_mode" not in plain.to_dict()
    assert InferenceParams(anonymize_mode="pixelate").digest() == plain.digest()
    asked = InferenceParams(anonymize="person")
    assert asked.to_dict()["anonymize_mode"] == "blur" and asked.digest() != plain.digest()


def border_boxes(size: int, tile: int) -> np.ndarray:
    """Boxes astride tile borders and corners (512² tiles), of every strength up to the
    strongest blur, and one at the image's edge."""
    boxes = []
    for i, side in enumerate((40, 150, 300, 700)):
        cx = cy = tile * (i + 1)
        boxes.append([cx - side // 3, cy - side // 2, cx + side - side // 3, cy + side // 2])
    boxes.append([size - 260, 700, size, 1100])  # reflected at the image's right edge
    boxes.append([tile * 2 - 90, 100, tile * 2 + 90, 420])  # overlaps none of the above
    boxes.append([tile * 2 - 50, 1180, tile * 2 + 400, 1400])  # overlaps the 300 px box
    return np.array(boxes, np.float64)


@pytest.mark.parametrize("mode", ["blur", "pixelate"])
def test_tiled_copy_equals_the_whole_image_done_at_once(mode, tmp_path):
    size, tile = 2048, 512
    pixels = build_mosaic(size)
    source = tmp_path / "mosaic.tif"
    tifffile.imwrite(source, pixels, tile=(tile, tile), photometric="rgb")
    marks = plan_marks(margin_boxes(border_boxes(size, tile), 0, size, size), mode)
    if mode == "blur":
        assert max(m.strength for m in marks) == MAX_SIGMA  # the widest halo is exercised
    whole = AnonymizedReader(ArrayReader(pixels), marks, mode).read_all()
    out = tmp_path / "copy.tif"
    with TiffReader(open(source, "rb")) as reader:  # reads only the tiles each read touches
        write_anonymized(AnonymizedReader(reader, marks, mode), str(out), "tif")
    with tifffile.TiffFile(out) as written:
        assert written.pages[0].is_tiled
        copy = written.asarray()
    assert np.array_equal(copy, whole)
    assert not np.array_equal(copy, pixels)
    # each read of a blurred tile fetched its halo from the neighbouring tiles
    assert AnonymizedReader(ArrayReader(pixels), marks, mode).halo == (
        blur_radius(MAX_SIGMA) if mode == "blur" else 0)


def test_cli_writes_the_copy_and_records_it(sample, tmp_path, capsys):
    from tilescope.cli import EXIT_OK, main

    copy, out = tmp_path / "astronaut.anon.png", tmp_path / "result.json"
    assert main(["predict", str(sample("astronaut")), "--anonymize", "person",
                 "--anonymize-mode", "pixelate", "--anonymized", str(copy), "--out", str(out),
                 "--quiet"]) == EXIT_OK
    doc = __import__("json").loads(out.read_text())
    assert doc["anonymized"]["uri"] == str(copy) and doc["anonymized"]["mode"] == "pixelate"
    assert doc["anonymized"]["targets"] == {"person": doc["summary"]["counts"]["person"]}
    assert doc["params"]["anonymize"] == "person"
    with Image.open(copy) as written:
        assert written.format == "PNG" and written.size == (512, 512)


@pytest.mark.parametrize(("argv", "message"), [
    (["--anonymize", "persn", "--anonymized", "x.png"],
     "'persn' is not a class of model"),
    (["--anonymize", "person"], "--anonymize and --anonymized PATH go together"),
    (["--anonymize", "person", "--anonymized", "x.gif"], "written as .tif, .png, .jpg, .webp"),
])
def test_cli_refuses_bad_anonymize_options_before_running(argv, message, sample, tmp_path,
                                                          capsys, monkeypatch):
    from tilescope.cli import EXIT_BAD_INPUT, main

    monkeypatch.chdir(tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("the model ran before the options were checked")

    monkeypatch.setattr("tilescope.cli.run_image", never)
    assert main(["predict", str(sample("astronaut")), *argv, "--quiet"]) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cli_many_inputs_write_each_copy_into_the_out_dir(sample, tmp_path):
    from tilescope.cli import EXIT_OK, main

    out = tmp_path / "out"
    assert main(["predict", str(sample("astronaut")), str(sample("horses")), "--anonymize",
                 "person,horse", "--out-dir", str(out), "--quiet"]) == EXIT_OK
    for name, fmt in (("astronaut.png", "PNG"), ("horses.jpg", "JPEG")):  # source formats
        doc = __import__("json").loads((out / f"{name}.json").read_text())
        copy = out / f"{name}.anonymized.{'png' if fmt == 'PNG' else 'jpg'}"
        assert doc["anonymized"]["uri"] == str(copy) and doc["anonymized"]["boxes"] >= 1
        with Image.open(copy) as written:
            assert written.format == fmt
