"""Postprocessing of detections: merging the overlapping boxes of neighbouring slices."""

from tilescope.postprocess.combine import (
    MatchMetric,
    Strategy,
    merge,
    nms,
    soft_nms,
    weighted_boxes_fusion,
)

__all__ = ["MatchMetric", "Strategy", "merge", "nms", "soft_nms", "weighted_boxes_fusion"]
