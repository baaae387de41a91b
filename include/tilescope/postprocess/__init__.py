"""Postprocessing of detections: merging the overlapping boxes of neighbouring slices."""

from tilescope.postprocess.combine import MatchMetric, Strategy, merge, nms

__all__ = ["MatchMetric", "Strategy", "merge", "nms"]
