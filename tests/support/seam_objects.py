"""A scene of real objects placed where sliced inference sees them twice or four times.

Real object crops (the astronaut from scikit-image, a kite from Debian darknet's kite.jpg,
scaled down) pasted on grey at computed positions: centred on slice overlaps (two slices see
the whole object), on crossings of overlaps (four slices), on the overlaps that are also
region borders, and inside single slices (controls). With 416-px slices and overlap 0.2 the
overlap strips are 83 px wide and each object is at most 70 px, so every slice that covers
it sees all of it: merging must turn 2 or 4 raw detections into exactly one.

``OVERLAPPING`` adds two people overlapping inside one slice (NanoDet boxes them at IoS
0.36, IoU 0.24): two real objects that one slice already told apart, which a merge matching
at IoS 0.3 fuses unless it is seam-aware.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tilescope.models.coco import COCO_NAMES
from tilescope.samples import sample_array

SLICE, OVERLAP = 416, 0.2
#: 4 × 4 slices of 416 px at a step of 333 (overlap int(0.2 × 416) = 83): 0, 333, 666, 999
SIZE = 1415
#: a 2 × 2 region grid: the overlap at 666..749 on each axis is also a region border
GRID = "2x2"
OBJECT_PX = 70
STRIPS = (374, 707, 1040)  # overlap strip centres: 333..416, 666..749, 999..1082
INSIDE = (166, 541, 874, 1248)  # centres of pixels only one slice (per axis) covers
#: (photo, crop box, COCO class name): tight around the object, as NanoDet boxes it
CROPS = {"person": ("astronaut", (10, 10, 370, 510)), "kite": ("kite", (588, 75, 679, 158))}

#: (centre x, centre y, class, where)
PLACED = (
    (STRIPS[0], STRIPS[0], "person", "4 slices"),
    (STRIPS[1], STRIPS[1], "kite", "4 slices, 4 regions"),
    (STRIPS[2], STRIPS[0], "kite", "4 slices"),
    (STRIPS[0], STRIPS[2], "person", "4 slices"),
    (STRIPS[1], INSIDE[0], "person", "2 slices, 2 regions"),
    (STRIPS[0], INSIDE[1], "kite", "2 slices"),
    (STRIPS[2], INSIDE[2], "person", "2 slices"),
    (INSIDE[0], STRIPS[1], "kite", "2 slices, 2 regions"),
    (INSIDE[1], STRIPS[0], "person", "2 slices"),
    (INSIDE[2], STRIPS[2], "kite", "2 slices"),
    (INSIDE[0], INSIDE[0], "person", "1 slice"),
    (INSIDE[3], INSIDE[3], "kite", "1 slice"),
    (INSIDE[1], INSIDE[1], "kite", "1 slice"),
)
#: two people inside slice (row 0, col 3), 24 px apart, the right one in front
OVERLAPPING = ((INSIDE[3] - 12, INSIDE[0], "person", "1 slice, overlapping"),
               (INSIDE[3] + 12, INSIDE[0], "person", "1 slice, overlapping"))


@dataclass(frozen=True)
class Placed:
    """One pasted object: its box in the scene, COCO class index and where it sits."""

    box: tuple[int, int, int, int]
    category_id: int
    where: str


def object_crop(kind: str) -> np.ndarray:
    """The real object, scaled so its longer side is ``OBJECT_PX``."""
    photo, (x1, y1, x2, y2) = CROPS[kind]
    crop = sample_array(photo)[y1:y2, x1:x2]
    factor = OBJECT_PX / max(crop.shape[:2])
    size = (round(crop.shape[1] * factor), round(crop.shape[0] * factor))
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA)


def build_scene(objects: tuple = PLACED) -> tuple[np.ndarray, list[Placed]]:
    """The scene's RGB pixels and its objects (later ones pasted over earlier ones)."""
    canvas = np.full((SIZE, SIZE, 3), 128, np.uint8)
    placed = []
    for cx, cy, kind, where in objects:
        crop = object_crop(kind)
        h, w = crop.shape[:2]
        x1, y1 = cx - w // 2, cy - h // 2
        canvas[y1:y1 + h, x1:x1 + w] = crop
        placed.append(Placed((x1, y1, x1 + w, y1 + h), COCO_NAMES.index(kind), where))
    return canvas, placed
