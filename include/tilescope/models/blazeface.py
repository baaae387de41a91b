"""BlazeFace (MediaPipe's full-range "back" face detector, 256×256) on onnxruntime: finds
faces (category ``face``) for anonymization, from the same npm tarball as NanoDet
(``models/blazeface.json``).

What the graph and the vladmandic/human library (``src/face/blazeface.ts``,
``facemeshutil.generateAnchors``) say:

* input ``input`` is NHWC (1, 256, 256, 3), RGB scaled to [-1, 1] (``x / 127.5 - 1``). A
  slice larger than 256 px is shrunk with area interpolation (aspect ratio kept), a smaller
  one is never enlarged; it sits top-left on a black (-1) canvas.
* 896 anchors: a 16×16 grid at stride 16 with 2 anchors a cell, then an 8×8 grid at stride
  32 with 6, each anchor at its cell's centre ((col + 0.5)·stride, (row + 0.5)·stride).
  Outputs ``Identity``/``Identity_1`` are the logits of the 512 and 384 anchors,
  ``Identity_2``/``Identity_3`` 16 regressors each: the box centre offset from the anchor
  and the box width and height, in input pixels (then six landmarks, unused here).
* a face's score is the sigmoid of its logit. Like MediaPipe's, the model also fires on
  animal faces (a cat scores ~0.7): harmless when the boxes are blurred.

Boxes are scaled back to slice pixels, clipped, then NMS (one class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np

from tilescope.detections import Detections
from tilescope.models.onnx_cpu import EmbeddedSliceModel, shrink_to_fit

__all__ = ["ANCHORS", "INPUT_SIZE", "BlazeFaceModel", "decode_blazeface", "preprocess"]

INPUT_SIZE: Final = 256
_INPUT_NAME: Final = "input"
_SCORE_OUTPUTS: Final = ("Identity", "Identity_1")  # 512 anchors at stride 16, 384 at 32
_BOX_OUTPUTS: Final = ("Identity_2", "Identity_3")
_GRIDS: Final = ((16, 2), (32, 6))  # (stride, anchors a cell)


def _anchors() -> np.ndarray:
    """(896, 2) anchor centres in input pixels, in the network's output order."""
    parts = []
    for stride, per_cell in _GRIDS:
        n = INPUT_SIZE // stride
        rows, cols = np.divmod(np.arange(n * n, dtype=np.float32), n)
        centres = np.stack([(cols + 0.5) * stride, (rows + 0.5) * stride], axis=1)
        parts.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(parts)


ANCHORS: Final = _anchors()


def preprocess(image: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """NHWC RGB [-1, 1] network input for an RGB uint8 slice, and the resize factor.

    ``factor`` < 1 when the slice was shrunk; boxes on the canvas divided by it are in slice
    pixels. ``out`` (1, 256, 256, 3) float32 is reused when given.
    """
    image, factor = shrink_to_fit(image, INPUT_SIZE)
    height, width = image.shape[:2]
    if out is None:
        out = np.empty((1, INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    out.fill(-1.0)
    out[0, :height, :width] = image * np.float32(1 / 127.5) - np.float32(1.0)
    return out, factor


def decode_blazeface(logits: np.ndarray, regressors: np.ndarray,
                     score_threshold: float) -> Detections:
    """Face detections on the 256² canvas from the 896 anchors' logits (896,) and
    regressors (896, ≥4): every anchor whose sigmoid score reaches the threshold."""
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80.0, 80.0)))
    hits = np.flatnonzero(scores >= score_threshold)
    if not len(hits):
        return Detections.empty()
    centres = ANCHORS[hits] + regressors[hits, :2]
    half = regressors[hits, 2:4] / 2
    xyxy = np.concatenate([centres - half, centres + half], axis=1)
    return Detections(xyxy, scores[hits].astype(np.float32), np.zeros(len(hits), np.int64))


class BlazeFaceModel(EmbeddedSliceModel):
    """MediaPipe BlazeFace (full range) face detector, 256×256 input, onnxruntime CPU."""

    name = "blazeface"
    preferred_slice_size = INPUT_SIZE
    #: NanoDet's 0.04 s × 0.13 (one 256² slice against one 416² one, interleaved)
    slice_seconds = 0.005
    CATEGORY_NAMES = ("face",)
    INPUT_SHAPE = (1, INPUT_SIZE, INPUT_SIZE, 3)
    LABEL = "BlazeFace"
    #: MediaPipe's own defaults: a face from score 0.5, overlaps above 0.3 suppressed
    configured_options: ClassVar[dict[str, Any]] = {"score_threshold": 0.5, "nms_threshold": 0.3}

    @classmethod
    def default_model_path(cls) -> Path:
        from tilescope.models.weights import BLAZEFACE, ensure_model_onnx

        return ensure_model_onnx(BLAZEFACE)

    def predict_one(self, image: np.ndarray) -> Detections:
        """Face boxes of one RGB uint8 slice, in its pixel coordinates."""
        height, width = image.shape[:2]
        if height == 0 or width == 0:
            return Detections.empty()
        tensor, factor = preprocess(image, self._input_buffer())
        outputs = self._run([*_SCORE_OUTPUTS, *_BOX_OUTPUTS], {_INPUT_NAME: tensor})
        logits = np.concatenate([outputs[0][0, :, 0], outputs[1][0, :, 0]])
        regressors = np.concatenate([outputs[2][0], outputs[3][0]])
        dets = decode_blazeface(logits, regressors, self.score_threshold)
        return self.to_slice(dets, factor, width, height, class_agnostic=True)
