"""text-regions (PP-OCRv4 DB detector from the rapidocr-onnxruntime wheel) on documents.

A rendered page gives exact ground truth (Pillow's text boxes); the sliced pipeline must box
every line and leave the blank paper alone, across slice borders. scikit-image's ``page`` is a
real photographed page; the CLI runs it end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from tilescope.models import available_models, load_model, model_slice_size
from tilescope.models.registry import model_categories
from tilescope.models.text_regions import (
    MODEL_SHA256,
    TextRegionsModel,
    bundled_model_path,
    db_boxes,
    preprocess,
)
from tilescope.params import InferenceParams
from tilescope.pipeline import run_image
from tilescope.readers import reader_for_bytes
from tilescope.results import ImageInfo

LINES = [
    "Sliced inference reads one region of a scan at a time,",
    "so a page larger than any model input is still searched",
    "line by line, and boxes cut by a slice border are merged.",
    "Invoice 2026-0417   Total due: 1,284.50 EUR   Net 30 days",
    "The quick brown fox jumps over the lazy dog 0123456789",
]


@pytest.fixture(scope="module")
def model() -> Iterator[TextRegionsModel]:
    with TextRegionsModel(parallel_slices=2) as text_model:
        yield text_model


def document(width: int = 2400, height: int = 1800) -> tuple[np.ndarray, list[tuple]]:
    """A scan-like page (off-white paper, grey ink, slight blur and noise) and the ink box of
    every text line. Lines are long enough to cross 960-px slice borders; the lower third of
    the page stays blank."""
    page = Image.new("RGB", (width, height), (246, 244, 238))
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=40)
    truth = []
    for i, text in enumerate(LINES):
        xy = (150 + 40 * (i % 2), 160 + i * 110)
        draw.text(xy, text, fill=(35, 35, 40), font=font)
        truth.append(draw.textbbox(xy, text, font=font))
    pixels = np.asarray(page.filter(ImageFilter.GaussianBlur(0.8))).astype(np.int16)
    noise = np.random.default_rng(7).normal(0, 4, pixels.shape).astype(np.int16)
    return np.clip(pixels + noise, 0, 255).astype(np.uint8), truth


def png(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))[1].tobytes()


def coverage(mask_boxes, width: int, height: int) -> np.ndarray:
    covered = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in mask_boxes:
        covered[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = True
    return covered


def test_registered_with_metadata_and_the_wheel_file_is_verified():
    assert "text-regions" in available_models()
    assert model_categories("text-regions") == ["text"]
    assert model_slice_size("text-regions") == 960
    path = bundled_model_path()
    assert path.name == "ch_PP-OCRv4_det_infer.onnx" and "rapidocr_onnxruntime" in path.parts
    assert len(MODEL_SHA256) == 64


def test_preprocess_rounds_to_32_and_enlarges_small_slices():
    tensor = preprocess(np.zeros((960, 960, 3), np.uint8))
    assert tensor.shape == (1, 3, 960, 960) and tensor.dtype == np.float32
    assert float(tensor.min()) == -1.0
    assert preprocess(np.full((100, 200, 3), 255, np.uint8)).shape == (1, 3, 736, 1472)
    assert preprocess(np.zeros((500, 5000, 3), np.uint8)).shape == (1, 3, 192, 1984)  # capped


def test_db_decoding_unclips_the_kernel_and_filters_weak_or_tiny_blobs():
    prob = np.zeros((200, 300), np.float32)
    prob[50:60, 40:140] = 0.9  # a 100×10 text kernel
    prob[120:130, 40:140] = 0.32  # over the binary threshold, under the box threshold
    prob[170:172, 200:202] = 0.9  # too small to be text
    boxes, scores = db_boxes(prob)
    assert len(boxes) == 1 and 0.7 < scores[0] <= 0.9
    # the 2×2 dilation adds a pixel right and below: the contour's pixel centres span
    # x 40..140, y 50..60 (a 100×10 rectangle); unclip grows each side by area·1.6/perimeter
    grow = 100 * 10 * 1.6 / (2 * (100 + 10))
    np.testing.assert_allclose(boxes[0], [40 - grow, 50 - grow, 140 + grow, 60 + grow], atol=0.01)


def test_every_line_of_a_page_is_boxed_across_slice_borders(model):
    pixels, truth = document()
    height, width = pixels.shape[:2]
    reader = reader_for_bytes(png(pixels))
    info = ImageInfo("page.png", width, height, "0" * 64, "PNG", 0)
    params = InferenceParams(model="text-regions", overlap=0.2, grid="2x2")
    result = run_image(reader, info, params, model)
    assert result.plan["slices"] == 9 and result.plan["regions"] == 4  # 3×3 slices
    boxes = result.detections.boxes
    assert set(result.detections.category_ids.tolist()) == {0}
    assert result.counts() == {"text": len(boxes)}

    found = coverage(boxes, width, height)
    ink = pixels.min(axis=2) < 128
    for x1, y1, x2, y2 in truth:  # every line's ink is inside the detections
        line_ink = ink[y1:y2, x1:x2]
        assert (line_ink & found[y1:y2, x1:x2]).sum() >= 0.99 * line_ink.sum(), (x1, y1)
    # and detections stay on the lines: nothing on blank paper beyond a small margin
    near_text = coverage([(x1 - 25, y1 - 25, x2 + 25, y2 + 25) for x1, y1, x2, y2 in truth],
                         width, height)
    assert (found & ~near_text).sum() < 0.01 * found.sum()
    assert not found[800:, :].any()  # the blank lower part of the page
    assert len(boxes) <= 3 * len(LINES)  # lines, or a few pieces of one; not noise


def test_a_photographed_page(model, sample):
    page = np.asarray(Image.open(sample("page")).convert("RGB"))  # 384×191, grey
    (dets,) = model.predict([page])
    boxes = dets.boxes
    assert len(boxes) >= 4
    heading = boxes[(boxes[:, 1] < 20) & (boxes[:, 3] < 45)]
    assert len(heading) == 1 and heading[0, 2] - heading[0, 0] > 250  # "Region-based ..."
    ink = page[:, :, 0] < 100
    for x1, y1, x2, y2 in boxes.astype(int):  # each box holds dark ink, not plain paper
        assert ink[y1:y2, x1:x2].mean() > 0.03


def test_blank_paper_has_no_text(model):
    paper = np.full((960, 960, 3), 245, np.uint8)
    (dets,) = model.predict([paper])
    assert len(dets) == 0


def test_cli_predict_with_text_regions(tmp_path: Path, sample):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "tilescope.cli", "predict", str(sample("page")),
                           "--model", "text-regions", "--quiet", "--out", str(out),
                           "--overlay", str(tmp_path / "overlay.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "text" in proc.stdout and "detections" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["model"] == "text-regions"
    assert doc["summary"]["counts"]["text"] >= 4
    assert {d["category_name"] for d in doc["detections"]} == {"text"}


def test_load_model_passes_options():
    with load_model("text-regions", score_threshold=0.3, box_threshold=0.6,
                    parallel_slices=1) as text_model:
        assert text_model.min_score == 0.6
    with pytest.raises(Exception, match="unclip_ratio"):
        TextRegionsModel(unclip_ratio=0)
