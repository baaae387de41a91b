"""A small, real detector for tests: bright rectangles on a dark background.

It finds connected components of bright pixels in each slice (clipped at the slice border,
exactly as a neural detector sees a cut object), so tests can check slicing, shifting and
merging against known ground truth without depending on a neural model's judgement.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from tilescope.detections import Detections
from tilescope.models.base import DetectionModel


class BrightBlobModel(DetectionModel):
    name = "bright-blobs"
    preferred_slice_size = 256
    CATEGORY_NAMES = ("white", "yellow")

    def __init__(self, fail_on: set[tuple[int, int]] | None = None,
                 score_threshold: float = 0.0) -> None:
        # score_threshold: accepted as load_model passes it (the CLI, the DAG); the pipeline
        # applies the run's threshold itself
        self.calls = 0
        self.slices_seen = 0
        self._fail_on = fail_on or set()

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        self.calls += 1
        out = []
        for image in images:
            self.slices_seen += 1
            mask = (image.max(axis=2) > 128).astype(np.uint8)
            count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
            boxes, scores, cats = [], [], []
            for x, y, w, h, area in stats[1:count]:
                boxes.append([x, y, x + w, y + h])
                scores.append(min(0.99, 0.5 + area / 20000))
                # category from colour, so a cut fragment keeps its object's category
                cats.append(1 if image[y + h // 2, x + w // 2, 2] < 128 else 0)
            dets = Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores),
                              np.array(cats))
            out.append(dets)
        return out


class WholeBlobModel(BrightBlobModel):
    """The blob detector that, like a neural detector, misses an object it only sees cut.

    A component touching its input's border is dropped, so an object larger than a slice is
    found by no slice and only by a whole-image pass: what the full-image pass exists for.
    """

    name = "whole-blobs"

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        found = super().predict(images)
        return [dets.select(~touches_border(dets.boxes, image.shape[1], image.shape[0]))
                for dets, image in zip(found, images, strict=True)]


def touches_border(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Which xyxy ``boxes`` reach an edge of a ``width`` × ``height`` input (cut objects)."""
    return ((boxes[:, 0] <= 0) | (boxes[:, 1] <= 0) | (boxes[:, 2] >= width)
            | (boxes[:, 3] >= height))


def big_object_image() -> tuple[np.ndarray, list[list[int]], list[int]]:
    """A 640² dark image for slices of 256 (overlap 0.2): four small white squares, each
    whole inside a corner slice, and one yellow square of 400² that every slice sees cut.
    Returns the pixels, the small squares' boxes and the big square's box."""
    image = np.zeros((640, 640, 3), np.uint8)
    small = [[20, 20, 50, 50], [580, 20, 610, 50], [20, 580, 50, 610], [590, 590, 620, 620]]
    for x1, y1, x2, y2 in small:
        image[y1:y2, x1:x2] = (255, 255, 255)
    big = [120, 120, 520, 520]
    image[big[1]:big[3], big[0]:big[2]] = (255, 255, 0)
    return image, small, big


def blob_image(width: int, height: int, count: int, seed: int = 0,
               max_side: int = 60) -> tuple[np.ndarray, list[list[int]]]:
    """A dark image with ``count`` non-touching white or yellow rectangles, and their boxes."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    occupied = np.zeros((height, width), bool)
    boxes: list[list[int]] = []
    while len(boxes) < count:
        w, h = (int(v) for v in rng.integers(8, max_side, 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        if occupied[max(0, y - 4):y + h + 4, max(0, x - 4):x + w + 4].any():
            continue
        occupied[y:y + h, x:x + w] = True
        image[y:y + h, x:x + w] = (255, 255, 0) if len(boxes) % 3 == 0 else (255, 255, 255)
        boxes.append([x, y, x + w, y + h])
    return image, boxes


#: for a script run in a child process (``python -c``): the test model registered there too,
#: as every Airflow worker knows a run's model (store fingerprints it for the catalog row)
REGISTER_IN_CHILD = ('from support.blob_model import BrightBlobModel\n'
                     'from tilescope.models import register_model\n'
                     'register_model("bright-blobs", BrightBlobModel)\n')


def child_env() -> dict[str, str]:
    """The environment for such a child (the S3 fixture's settings included, read now), with
    tests/ first on its path so ``support`` imports there as here."""
    import os
    from pathlib import Path

    tests = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [tests, os.environ.get("PYTHONPATH")]))}
