"""The overlay picture: every box drawn, labels only for the highest-scoring ones."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tilescope.detections import Detections
from tilescope.outputs.overlay import render_overlay
from tilescope.previews import preview_format


def rendered(dets: Detections, **options) -> np.ndarray:
    # lossless, so that "no ink" means exactly zero (a lossy codec rings around text)
    png = render_overlay(np.zeros((600, 600, 3), np.uint8), 600, 600, dets, ["a", "b"],
                         fmt=preview_format("png"), **options)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_labels_go_to_the_highest_scores_and_every_box_is_drawn() -> None:
    boxes = np.array([[50, 100, 150, 200], [250, 100, 350, 200], [450, 100, 550, 200]],
                     np.float32)
    dets = Detections(boxes, np.array([0.2, 0.9, 0.5]), np.array([0, 1, 0]))
    labelled = rendered(dets, max_labels=1)
    bare = rendered(dets, max_labels=0)
    above = [(x1, x2) for x1, _, x2, _ in boxes.astype(int)]

    def label_ink(pixels: np.ndarray, x1: int, x2: int) -> int:
        return int((pixels[80:98, x1 + 2:x2 - 2].sum(axis=2) > 0).sum())  # just above a box

    assert label_ink(labelled, *above[1]) > 100  # the 0.9 box is labelled
    assert label_ink(labelled, *above[0]) == 0 and label_ink(labelled, *above[2]) == 0
    assert all(label_ink(bare, *span) == 0 for span in above)
    for x1, y1, x2, y2 in boxes.astype(int):  # every outline, labelled or not
        assert labelled[(y1 + y2) // 2, x1].sum() > 0 and bare[(y1 + y2) // 2, x2].sum() > 0



def test_an_overlay_is_webp_unless_another_format_is_asked_for() -> None:
    """Seen red with render_overlay's default format set back to PNG."""
    dets = Detections(np.array([[50, 100, 150, 200]], np.float32), np.array([0.9]),
                      np.array([0]))
    picture = np.full((600, 600, 3), 90, np.uint8)
    default = render_overlay(picture, 600, 600, dets, ["a"])
    assert default[:4] == b"RIFF" and default[8:12] == b"WEBP"
    jpeg = render_overlay(picture, 600, 600, dets, ["a"], fmt=preview_format("jpeg"))
    assert jpeg[:3] == b"\xff\xd8\xff"
    with Image.open(io.BytesIO(default)) as image:
        assert image.size == (600, 600)
