"""CenterNet (mobilenetv3 backbone, COCO, 512×512) on onnxruntime: the second embedded
COCO detector, from the same npm tarball as NanoDet (``models/centernet.json``).

What the graph says (inspected node by node, and as the vladmandic/human library and the
model's training code use it):

* input ``tower_0/images`` is NHWC (1, 512, 512, 3), **RGB with raw 0–255 values**: the
  placeholder feeds the first convolution directly (the training code's ``/255`` is folded
  into it; fed 0–1 values the network finds nothing). A slice larger than 512 px is shrunk
  with area interpolation (aspect ratio kept), a smaller one is never enlarged; it sits
  top-left on a black (0) canvas, as the training code's letterbox pads with 0.
* the head works at stride 4 (a 128×128 grid): ``tower_0/keypoints`` are 80 sigmoid class
  heat maps, ``tower_0/wh`` four distances in input pixels from the cell's corner point
  (column·4, row·4) to the box's left, top, right and bottom sides.
* the graph's own decoding keeps the heat-map peaks (a value equal to the maximum of its
  3×3 neighbourhood, ``tower_0/mul_1`` = heat × peak mask) and then takes the top 100. The
  converted ONNX graph ends at ``tower_0/mul_1`` and ``tower_0/wh``: the top-k is replaced by
  a score threshold in numpy here, so a crowded slice is not cut at 100 objects.

Boxes are scaled back to slice pixels, clipped, then per-slice class-aware NMS (two peaks
of one object a cell apart are otherwise both kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np

from tilescope.detections import Detections
from tilescope.models.coco import COCO_CATEGORY_IDS, COCO_NAMES
from tilescope.models.onnx_cpu import EmbeddedSliceModel, shrink_to_fit

__all__ = ["INPUT_SIZE", "STRIDE", "CenterNetModel", "decode_centernet", "preprocess"]

INPUT_SIZE: Final = 512
STRIDE: Final = 4
GRID: Final = INPUT_SIZE // STRIDE
NUM_CLASSES: Final = 80
_INPUT_NAME: Final = "tower_0/images"
_PEAKS_OUTPUT: Final = "tower_0/mul_1"
_SIDES_OUTPUT: Final = "tower_0/wh"


def preprocess(image: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """NHWC RGB 0–255 network input for an RGB uint8 slice, and the resize factor.

    ``factor`` < 1 when the slice was shrunk; boxes on the canvas divided by it are in slice
    pixels. ``out`` (1, 512, 512, 3) float32 is reused when given.
    """
    image, factor = shrink_to_fit(image, INPUT_SIZE)
    height, width = image.shape[:2]
    if out is None:
        out = np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    else:
        out.fill(0.0)
    out[0, :height, :width] = image
    return out, factor


def decode_centernet(peaks: np.ndarray, sides: np.ndarray, score_threshold: float) -> Detections:
    """Detections on the 512² canvas from the peak-masked heat maps (128, 128, 80) and the
    box sides (128, 128, 4): every (cell, class) peak at or above the threshold."""
    hits = np.flatnonzero(peaks >= max(score_threshold, np.finfo(np.float32).tiny))
    if not len(hits):
        return Detections.empty()
    cells, classes = np.divmod(hits, peaks.shape[-1])
    rows, cols = np.divmod(cells, peaks.shape[1])
    points = np.stack([cols, rows], axis=1).astype(np.float32) * STRIDE
    distances = sides.reshape(-1, 4)[cells]  # left, top, right, bottom
    xyxy = np.concatenate([points - distances[:, :2], points + distances[:, 2:]], axis=1)
    return Detections(xyxy, peaks.reshape(-1)[hits], classes)


class CenterNetModel(EmbeddedSliceModel):
    """mobilenetv3 CenterNet COCO detector (80 classes), 512×512 input, onnxruntime CPU."""

    name = "centernet-coco"
    preferred_slice_size = INPUT_SIZE
    #: NanoDet's 0.04 s × 1.5: one 512² CenterNet slice against one 416² NanoDet slice on one
    #: thread, interleaved in one sitting
    slice_seconds = 0.06
    CATEGORY_NAMES = COCO_NAMES
    COCO_CATEGORY_IDS = COCO_CATEGORY_IDS
    INPUT_SHAPE = (1, INPUT_SIZE, INPUT_SIZE, 3)
    LABEL = "CenterNet"

    @classmethod
    def default_model_path(cls) -> Path:
        from tilescope.models.weights import CENTERNET, ensure_model_onnx

        return ensure_model_onnx(CENTERNET)

    def predict_one(self, image: np.ndarray) -> Detections:
        """Detections of one RGB uint8 slice, in its pixel coordinates."""
        height, width = image.shape[:2]
        if height == 0 or width == 0:
            return Detections.empty()
        tensor, factor = preprocess(image, self._input_buffer())
        peaks, sides = self._run([_PEAKS_OUTPUT, _SIDES_OUTPUT], {_INPUT_NAME: tensor})
        dets = decode_centernet(peaks[0], sides[0], self.score_threshold)
        return self.to_slice(dets, factor, width, height)
