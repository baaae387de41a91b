"""Merging overlapping detections: NMS, NMM and greedy NMM with IoU or IoS matching.

PLACEHOLDER API (being rewritten for speed and SAHI equivalence): keep these signatures.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from tilescope.detections import Detections

Strategy = Literal["nms", "nmm", "greedynmm"]
MatchMetric = Literal["iou", "ios"]


def nms(
    dets: Detections,
    threshold: float = 0.5,
    metric: MatchMetric = "iou",
    class_agnostic: bool = False,
) -> Detections:
    """Keep the best-scoring box of every group whose pairwise match exceeds ``threshold``."""
    order = np.argsort(-dets.scores, kind="stable")
    boxes = dets.boxes[order]
    cats = dets.category_ids[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = np.arange(i + 1, len(order))
        rest = rest[~suppressed[rest]]
        if not class_agnostic:
            rest = rest[cats[rest] == cats[i]]
        if not len(rest):
            continue
        iw = np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])
        ih = np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        if metric == "iou":
            denom = areas[i] + areas[rest] - inter
        else:
            denom = np.minimum(areas[i], areas[rest])
        match = inter / np.maximum(denom, 1e-9)
        suppressed[rest[match > threshold]] = True
    return dets.select(order[np.array(keep, dtype=np.int64)])


def merge(
    dets: Detections,
    strategy: Strategy = "greedynmm",
    metric: MatchMetric = "ios",
    threshold: float = 0.5,
    class_agnostic: bool = False,
) -> Detections:
    """Merge ``dets`` with the named strategy (SAHI's postprocess semantics)."""
    if strategy == "nms":
        return nms(dets, threshold, metric, class_agnostic)
    raise NotImplementedError(strategy)
