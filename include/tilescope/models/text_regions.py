"""Text regions (PP-OCRv4 text detection, DB) on onnxruntime: the embedded model for documents.

High-resolution scans are a tiled-inference use case of their own: the boxes are text lines
and blocks, one category ``text``. The network is PaddleOCR's PP-OCRv4 detector as shipped
inside the ``rapidocr-onnxruntime==1.4.4`` wheel (Apache-2.0). Only the ONNX file is used,
located through the installed distribution's metadata (its package is never imported, so its
``opencv-python``/``pyclipper`` dependencies are not needed) and checked against a pinned
sha256. Nothing is downloaded at run time.

Input rule (RapidOCR's defaults): RGB scaled to ``[-1, 1]``; a slice whose short side is below
``min_side`` (736) is enlarged to it, one whose long side exceeds ``max_side`` (2000) is shrunk
(aspect kept); then each side is resized to a multiple of 32, as the network requires.

Decoding is DB post-processing (Differentiable Binarization, as RapidOCR/PaddleOCR do it):
threshold the probability map at ``binary_threshold``, dilate 2×2, take the contours; per
contour its minimum-area rectangle, scored by the mean probability inside it ("fast" score)
and kept at or above ``box_threshold``; then *unclip* — the network predicts shrunken text
kernels, so the rectangle is grown by ``area × unclip_ratio / perimeter`` on every side (what
a round-joined polygon offset does to a rectangle's minimum-area box) — and reported as its
axis-aligned bounding box in slice pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import cv2
import numpy as np

from tilescope.detections import Detections
from tilescope.errors import ConfigError, ModelError, ModelUnavailableError
from tilescope.models.base import DetectionModel
from tilescope.models.onnx_cpu import CoreSlots, SlicePool, open_cpu_session, slice_workers

__all__ = ["TextRegionsModel", "bundled_model_path", "db_boxes", "preprocess"]

WHEEL_DISTRIBUTION: Final = "rapidocr-onnxruntime"
WHEEL_VERSION: Final = "1.4.4"
WHEEL_MODEL_FILE: Final = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
#: sha256 of that file in the 1.4.4 wheel: a different file is never silently used
MODEL_SHA256: Final = "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"
_INPUT_NAME: Final = "x"
_MIN_SIZE: Final = 3  # DB's minimum short side of a candidate, in map pixels
_DILATION: Final = np.ones((2, 2), np.uint8)


def bundled_model_path() -> Path:
    """The detector ONNX inside the installed wheel, checksum-verified."""
    from importlib.metadata import PackageNotFoundError, distribution

    from tilescope.models.weights import sha256_file

    hint = f"install it with: pip install --no-deps {WHEEL_DISTRIBUTION}=={WHEEL_VERSION}"
    try:
        dist = distribution(WHEEL_DISTRIBUTION)
    except PackageNotFoundError:
        raise ModelUnavailableError(f"text-regions needs {WHEEL_DISTRIBUTION}; {hint}") from None
    path = Path(str(dist.locate_file(WHEEL_MODEL_FILE)))
    if not path.is_file():
        raise ModelUnavailableError(f"{path} is missing from {WHEEL_DISTRIBUTION} "
                                    f"{dist.version}; {hint}")
    digest = sha256_file(path)
    if digest != MODEL_SHA256:
        raise ModelUnavailableError(f"{path} has sha256 {digest}, expected {MODEL_SHA256} "
                                    f"({WHEEL_DISTRIBUTION} {dist.version} instead of "
                                    f"{WHEEL_VERSION}?); {hint}")
    return path


def _network_size(height: int, width: int, min_side: int, max_side: int) -> tuple[int, int]:
    """(h, w) fed to the network: short side raised to ``min_side``, long side capped at
    ``max_side``, both rounded to a multiple of 32."""
    ratio = max(1.0, min_side / min(height, width))
    ratio = min(ratio, max_side / max(height, width))
    return (max(32, round(height * ratio / 32) * 32), max(32, round(width * ratio / 32) * 32))


def preprocess(image: np.ndarray, min_side: int = 736, max_side: int = 2000) -> np.ndarray:
    """NCHW float32 network input in ``[-1, 1]`` for an RGB uint8 slice."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"expected an RGB uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
    height, width = _network_size(image.shape[0], image.shape[1], min_side, max_side)
    if (height, width) != image.shape[:2]:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    tensor = image.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    return np.ascontiguousarray(tensor.transpose(2, 0, 1)[None])


def _box_score(prob: np.ndarray, corners: np.ndarray) -> float:
    """Mean probability inside a (4, 2) polygon (DB's "fast" score)."""
    height, width = prob.shape
    x0 = int(np.clip(np.floor(corners[:, 0].min()), 0, width - 1))
    x1 = int(np.clip(np.ceil(corners[:, 0].max()), 0, width - 1))
    y0 = int(np.clip(np.floor(corners[:, 1].min()), 0, height - 1))
    y1 = int(np.clip(np.ceil(corners[:, 1].max()), 0, height - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    shifted = (corners - np.array([x0, y0], np.float32)).astype(np.int32)
    cv2.fillPoly(mask, [shifted.reshape(-1, 2)], 1)
    return float(cv2.mean(prob[y0:y1 + 1, x0:x1 + 1], mask)[0])


def db_boxes(prob: np.ndarray, binary_threshold: float = 0.3, box_threshold: float = 0.5,
             unclip_ratio: float = 1.6, max_candidates: int = 1000
             ) -> tuple[np.ndarray, np.ndarray]:
    """Text boxes from a DB probability map: ``(N, 4)`` xyxy in map pixels and scores."""
    mask = cv2.dilate((prob > binary_threshold).astype(np.uint8), _DILATION)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes, scores = [], []
    for contour in contours[:max_candidates]:
        centre, (rect_w, rect_h), angle = cv2.minAreaRect(contour)
        if min(rect_w, rect_h) < _MIN_SIZE:
            continue
        score = _box_score(prob, cv2.boxPoints((centre, (rect_w, rect_h), angle)))
        if score < box_threshold:
            continue
        grow = rect_w * rect_h * unclip_ratio / (2.0 * (rect_w + rect_h))
        grown = (centre, (rect_w + 2 * grow, rect_h + 2 * grow), angle)
        if min(grown[1]) < _MIN_SIZE + 2:
            continue
        corners = cv2.boxPoints(grown)
        boxes.append([*corners.min(axis=0), *corners.max(axis=0)])
        scores.append(score)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)


class TextRegionsModel(DetectionModel):
    """PP-OCRv4 text detector: text lines/blocks as boxes of category ``text``, on CPU.

    ``score_threshold`` drops boxes scored below it (the pipeline passes the run's value);
    ``box_threshold`` is DB's own candidate filter — the effective cut is the larger one.
    """

    name = "text-regions"
    CATEGORY_NAMES = ("text",)
    preferred_slice_size = 960

    def __init__(
        self,
        score_threshold: float = 0.5,
        box_threshold: float = 0.5,
        binary_threshold: float = 0.3,
        unclip_ratio: float = 1.6,
        min_side: int = 736,
        max_side: int = 2000,
        intra_op_threads: int = 1,
        parallel_slices: int | None = None,
        model_path: str | Path | None = None,
        share_cores: bool = False,
    ) -> None:
        for label, value in (("score_threshold", score_threshold),
                             ("box_threshold", box_threshold),
                             ("binary_threshold", binary_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{label} must be in [0, 1], got {value}")
        if not 0.0 < unclip_ratio <= 10.0:
            raise ConfigError(f"unclip_ratio must be in (0, 10], got {unclip_ratio}")
        if not 32 <= min_side <= max_side <= 8192:
            raise ConfigError(f"need 32 <= min_side <= max_side <= 8192, got {min_side}, "
                              f"{max_side}")
        self.min_score = max(float(score_threshold), float(box_threshold))
        self.binary_threshold = float(binary_threshold)
        self.unclip_ratio = float(unclip_ratio)
        self.min_side, self.max_side = int(min_side), int(max_side)
        self.model_path = Path(model_path) if model_path is not None else bundled_model_path()
        self._session = open_cpu_session(self.model_path, intra_op_threads, "text-regions")
        self._pool = SlicePool(slice_workers(parallel_slices), "text-regions",
                                CoreSlots() if share_cores else None)

    def predict_one(self, image: np.ndarray) -> Detections:
        """Text boxes of one RGB uint8 slice, in its pixel coordinates."""
        session = self._session
        if session is None:
            raise ModelError("TextRegionsModel is closed")
        height, width = image.shape[:2]
        if height == 0 or width == 0:
            return Detections.empty()
        tensor = preprocess(image, self.min_side, self.max_side)
        try:
            (prob,) = session.run(None, {_INPUT_NAME: tensor})
        except Exception as exc:
            raise ModelError(f"text-regions inference failed: {exc}") from exc
        boxes, scores = db_boxes(prob[0, 0], self.binary_threshold, self.min_score,
                                 self.unclip_ratio)
        if not len(boxes):
            return Detections.empty()
        scale = np.array([width / tensor.shape[3], height / tensor.shape[2]] * 2, np.float32)
        dets = Detections(boxes * scale, scores, np.zeros(len(boxes), np.int32))
        return dets.clipped(width, height)

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        return self._pool.map(self.predict_one, images)

    def close(self) -> None:
        self._pool.close()
        self._session = None
