"""The 80 COCO categories in the contiguous order detectors are trained with.

Models predict a contiguous index 0..79; COCO's own annotation files use the original
category ids 1..90 with gaps (ids of categories dropped from the 2014 release are missing).
Exporting results as COCO JSON therefore needs :data:`COCO_CATEGORY_IDS`, while drawing or
printing needs :data:`COCO_NAMES`; both are indexed by the contiguous id.
"""

from __future__ import annotations

from typing import Final

#: name per contiguous category id (index 0..79)
COCO_NAMES: Final[tuple[str, ...]] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip

#: official COCO ``category_id`` per contiguous category id (index 0..79)
COCO_CATEGORY_IDS: Final[tuple[int, ...]] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip


def coco_category_id(contiguous_id: int) -> int:
    """The official COCO category id (1..90) of a contiguous id (0..79)."""
    if not 0 <= contiguous_id < len(COCO_CATEGORY_IDS):
        raise ValueError(f"contiguous COCO id must be in 0..79, got {contiguous_id}")
    return COCO_CATEGORY_IDS[contiguous_id]


def contiguous_id(coco_id: int) -> int:
    """The contiguous id (0..79) of an official COCO category id; unknown ids raise."""
    try:
        return COCO_CATEGORY_IDS.index(coco_id)
    except ValueError:
        raise ValueError(f"{coco_id} is not a COCO category id") from None
