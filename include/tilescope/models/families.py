"""ONNX detector families: how each wants its pixels and how its outputs read as boxes.

A *family* is a preprocessing recipe plus a decoder. The recipes are what each exporter's own
predictor does: Ultralytics letterboxes (aspect kept, centred, grey 114 padding) and feeds RGB
in 0–1; YOLOX pads at the bottom/right and feeds BGR in 0–255; DETR resizes (aspect not kept)
and normalises with the ImageNet mean/std; TF-style SSDs take uint8 RGB as it is.

Decoders turn one image's outputs (batch axis removed, float32) into candidate boxes in
*canvas* pixels (the network's input frame); :func:`to_slice` undoes the placement, so a box
comes back in the slice's own pixels. Layouts, per image:

* ``yolov5``: (anchors, 5 + C) = cx, cy, w, h, objectness, C class scores (score = obj × cls)
* ``yolov8`` (also YOLOv11): (4 + C, anchors) = cx, cy, w, h, C class scores
* ``yolov8-seg`` (also YOLOv11-seg): (4 + C + M, anchors) = the above plus M mask
  coefficients, and prototypes (M, H/4, W/4). A detection's mask is ``sigmoid(coefficients
  @ prototypes) > 0.5``, upsampled bilinearly to the input (as PyTorch's
  ``interpolate(align_corners=False)``) and cropped to the box: only the box's window is
  computed (after the NMS, for kept boxes only), and it is kept as a box-local
  :class:`~tilescope.instance_masks.Mask`
* ``yolo-end2end`` (NMS in the graph, YOLOv10, ``nms=True`` exports): (K, 6) = x1, y1, x2, y2,
  score, class
* ``yolox``: (anchors, 5 + C) raw grid offsets, decoded over strides 8/16/32 as YOLOX's demo
  does (``(xy + cell) × stride``, ``exp(wh) × stride``)
* ``rtdetr`` (Ultralytics RT-DETR): (queries, 4 + C) = normalised cx, cy, w, h, C scores
* ``detr`` (DETR, Hugging Face DETR/RT-DETR): boxes (queries, 4) normalised cx, cy, w, h and
  logits (queries, C or C + 1): softmax without the last "no object" column when there is
  one more column than names, sigmoid otherwise
* ``ssd`` (TF object detection API style): boxes (K, 4) normalised y1, x1, y2, x2, scores (K),
  classes (K), count: the first ``count`` rows are real

:func:`recognise` names the family from the output shapes (an exact grid count tells YOLOv5's
three anchors per cell from YOLOX's one) and refuses what it cannot read, naming the shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np

from tilescope.detections import Detections
from tilescope.errors import BadModelError
from tilescope.instance_masks import Mask
from tilescope.postprocess.combine import nms_index

__all__ = ["FAMILIES", "Family", "Placement", "Preprocessing", "decode", "detr_boxes_index",
           "place", "recognise", "to_slice"]

IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)
STRIDES: Final = (8, 16, 32)
STRIDES_P6: Final = (8, 16, 32, 64)


@dataclass(frozen=True)
class Preprocessing:
    """How a slice becomes the network's input: ``mode`` ``letterbox`` (aspect kept, centred),
    ``topleft`` (aspect kept, padded right and bottom) or ``resize`` (stretched); values
    × ``scale``, then ``(v - mean) / std`` per channel when ``mean`` is set; ``bgr`` swaps
    the channels; ``pad`` fills the canvas around a letterboxed slice (0–255)."""

    mode: str = "letterbox"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    bgr: bool = False
    pad: int = 114

    def lut(self) -> np.ndarray:
        """(3, 256) float32: uint8 value → network value per *network* channel (after the
        swap), so normalising a canvas is one gather per channel."""
        values = np.arange(256, dtype=np.float32)[None, :] * np.float32(self.scale)
        values = np.repeat(values, 3, axis=0)
        if self.mean is not None and self.std is not None:
            values = (values - np.asarray(self.mean, np.float32)[:, None]) / \
                np.asarray(self.std, np.float32)[:, None]
        return np.ascontiguousarray(values[::-1] if self.bgr else values, np.float32)


@dataclass(frozen=True)
class Placement:
    """Where a slice went on the canvas: canvas = slice × factor + offset."""

    factor_x: float
    factor_y: float
    left: int = 0
    top: int = 0


def place(image: np.ndarray, height: int, width: int, pre: Preprocessing
          ) -> tuple[np.ndarray, Placement]:
    """The (height, width, 3) uint8 canvas for an RGB slice, and where the slice went on it.

    ``letterbox`` rounds like Ultralytics' ``LetterBox`` (``round(d ∓ 0.1)`` per side), so a
    box maps back to the same pixel as in Ultralytics' own predictor; small slices are
    enlarged (its ``scaleup`` default), as are YOLOX's."""
    h, w = image.shape[:2]
    if pre.mode == "resize":
        canvas = image if (h, w) == (height, width) else cv2.resize(
            image, (width, height), interpolation=cv2.INTER_LINEAR)
        return canvas, Placement(width / w, height / h)
    ratio = min(height / h, width / w)
    if pre.mode == "letterbox":
        new_w, new_h = round(w * ratio), round(h * ratio)
        left, top = round((width - new_w) / 2 - 0.1), round((height - new_h) / 2 - 0.1)
    else:  # topleft: YOLOX truncates
        new_w, new_h = int(w * ratio), int(h * ratio)
        left = top = 0
    resized = image if (new_h, new_w) == (h, w) else cv2.resize(
        image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if (new_h, new_w) == (height, width):
        return resized, Placement(ratio, ratio)
    canvas = np.full((height, width, 3), pre.pad, np.uint8)
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas, Placement(ratio, ratio, left, top)


def to_slice(dets: Detections, placement: Placement, width: int, height: int) -> Detections:
    """Canvas-pixel detections → the slice's pixels, clipped to it (masks too: a shift
    when the slice went on the canvas at its own size, else nearest-neighbour resampling)."""
    offset = np.array([placement.left, placement.top] * 2, np.float32)
    factor = np.array([placement.factor_x, placement.factor_y] * 2, np.float32)
    masks = None if dets.masks is None else tuple(
        m.transformed(1 / placement.factor_x, 1 / placement.factor_y,
                      -placement.left / placement.factor_x, -placement.top / placement.factor_y)
        for m in dets.masks)
    return Detections((dets.boxes - offset) / factor, dets.scores,
                      dets.category_ids, masks=masks).clipped(width, height)


@dataclass(frozen=True)
class Family:
    """A family's defaults: its preprocessing, its per-slice NMS IoU (``None``: the graph
    or the architecture already removes duplicates), and the class id its first name has."""

    name: str
    preprocessing: Preprocessing
    nms_iou: float | None
    outputs: int = 1
    class_offset: int = 0


_ULTRALYTICS: Final = Preprocessing("letterbox")
FAMILIES: Final = {
    "yolov5": Family("yolov5", _ULTRALYTICS, 0.45),
    "yolov8": Family("yolov8", _ULTRALYTICS, 0.7),
    "yolov8-seg": Family("yolov8-seg", _ULTRALYTICS, 0.7, outputs=2),
    "yolo-end2end": Family("yolo-end2end", _ULTRALYTICS, None),
    "yolox": Family("yolox", Preprocessing("topleft", scale=1.0, bgr=True), 0.45),
    "rtdetr": Family("rtdetr", Preprocessing("resize"), None),
    "detr": Family("detr", Preprocessing("resize", mean=IMAGENET_MEAN, std=IMAGENET_STD),
                   None, outputs=2),
    "ssd": Family("ssd", Preprocessing("resize", scale=1.0), None, outputs=4, class_offset=1),
}

#: named normalisations for ``model_options.normalize``
NORMALIZATIONS: Final = {
    "0-1": {"scale": 1.0 / 255.0, "mean": None, "std": None},
    "0-255": {"scale": 1.0, "mean": None, "std": None},
    "imagenet": {"scale": 1.0 / 255.0, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
}


def _cells(height: int, width: int, strides: Sequence[int]) -> int:
    return sum((height // s) * (width // s) for s in strides)


def _described(shapes: Sequence[tuple[int, ...]]) -> str:
    return ", ".join("(" + ", ".join(str(d) for d in s) + ")" for s in shapes)


def recognise(output_shapes: Sequence[tuple[int, ...]], output_names: Sequence[str],
              height: int, width: int, classes: int | None) -> str:
    """The family of a detector from its outputs' shapes (batch axis included, as observed on
    one run), its input size and — when known — its number of class names."""
    ranks = sorted(len(s) for s in output_shapes)
    named = " ".join(output_names).lower()
    if ranks == [1, 2, 2, 3] or ("boxes" in named and "num" in named and len(ranks) == 4):
        return "ssd"
    if len(output_shapes) == 2 and ranks == [3, 4]:
        pred = next(s for s in output_shapes if len(s) == 3)
        protos = next(s for s in output_shapes if len(s) == 4)
        grids = {_cells(height, width, STRIDES), _cells(height, width, STRIDES_P6)}
        if pred[2] in grids and pred[1] > 4 + protos[1]:
            return "yolov8-seg"
    if len(output_shapes) == 2 and ranks == [3, 3]:
        first, second = output_shapes
        if first[1] == second[1] and 4 in (first[2], second[2]):
            return "detr"
    if len(output_shapes) == 1 and ranks == [3]:
        _, rows, cols = output_shapes[0]
        grids = {_cells(height, width, STRIDES), _cells(height, width, STRIDES_P6)}
        if cols == 6 and rows not in grids and rows < cols * 200:
            return "yolo-end2end"
        if cols in grids and rows > 4:
            return "yolov8"
        if rows in {3 * g for g in grids} and cols > 5:
            return "yolov5"
        if rows in grids and cols > 5:
            return "yolox"
        if cols > 4 and classes is not None and cols == 4 + classes:
            return "rtdetr"
        raise BadModelError(
            f"unknown output layout {_described(output_shapes)} for a {height}×{width} input "
            f"(no YOLO grid of {sorted(grids)} anchors); name it with model_options.family, "
            f"one of {', '.join(FAMILIES)}")
    if all(len(s) <= 2 for s in output_shapes):
        raise BadModelError(
            f"not a detector: outputs {_described(output_shapes)} carry no boxes (a "
            "classifier?); a detector has an output of (batch, boxes, values)")
    raise BadModelError(
        f"unknown output layout {_described(output_shapes)}; name it with "
        f"model_options.family, one of {', '.join(FAMILIES)}")


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    half = xywh[:, 2:4] / 2
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)


def _best_class(boxes: np.ndarray, scores: np.ndarray, threshold: float,
                offset: int = 0) -> Detections:
    """One detection per row: its best class, kept at or above ``threshold``."""
    if not len(scores):
        return Detections.empty()
    classes = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), classes]
    keep = best >= threshold
    return Detections(boxes[keep], best[keep], classes[keep] - offset)


def _yolov5(outputs: Sequence[np.ndarray], threshold: float, **_: object) -> Detections:
    pred = outputs[0]
    pred = pred[pred[:, 4] >= threshold]  # objectness bounds the score: most rows go here
    return _best_class(_xywh_to_xyxy(pred[:, :4]), pred[:, 5:] * pred[:, 4:5], threshold)


def _yolov8(outputs: Sequence[np.ndarray], threshold: float, **_: object) -> Detections:
    pred = outputs[0]
    scores = pred[4:]
    hits = np.flatnonzero(scores.max(axis=0) >= threshold)
    return _best_class(_xywh_to_xyxy(pred[:4, hits].T), scores[:, hits].T, threshold)


def _yolov8_seg(outputs: Sequence[np.ndarray], threshold: float, *, height: int,
                width: int, nms_threshold: float | None = None, **_: object) -> Detections:
    """YOLOv8-seg: boxes as ``yolov8``; with ``nms_threshold``, suppressed (class-aware
    IoU, as the detector does per slice) before any mask is made, as Ultralytics does."""
    protos = next(o for o in outputs if o.ndim == 3)
    pred = next(o for o in outputs if o.ndim == 2)
    coefficients = len(protos)
    scores = pred[4:len(pred) - coefficients]
    hits = np.flatnonzero(scores.max(axis=0) >= threshold)
    classes = scores[:, hits].argmax(axis=0)
    best = scores[classes, hits]  # the row's maximum: at or above the threshold
    dets = Detections(_xywh_to_xyxy(pred[:4, hits].T), best, classes)
    if len(dets) and nms_threshold is not None:
        kept = nms_index(dets, nms_threshold, "iou", class_agnostic=False)
        dets, hits = dets.select(kept), hits[kept]
    masks = tuple(_instance_mask(box, pred[len(pred) - coefficients:, hit], protos, height,
                                 width) for box, hit in zip(dets.boxes, hits.tolist(),
                                                            strict=True))
    return dets.with_masks(masks)


def _upsampling(first: int, count: int, scale: float, cells: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For output pixels ``first … first + count - 1``, the two prototype cells each reads
    and the weight of the second (PyTorch's bilinear ``align_corners=False``: source =
    (pixel + ½) × scale − ½, clamped at the edges)."""
    source = np.clip((np.arange(first, first + count) + 0.5) * scale - 0.5, 0, cells - 1)
    low = np.floor(source).astype(np.int64)
    return low, np.minimum(low + 1, cells - 1), (source - low).astype(np.float32)


def _instance_mask(box: np.ndarray, coefficients: np.ndarray, protos: np.ndarray,
                   height: int, width: int) -> Mask:
    """One detection's mask in canvas pixels: the pixels whose centres lie in ``box``
    where the upsampled ``coefficients @ protos`` is positive (sigmoid above ½).

    Only the prototype cells under the box are combined, and the upsampling is two
    gathers (rows, then columns): elementwise numpy, not BLAS, whose threads cost more to
    wake for these small products than the products themselves on a busy worker."""
    left = max(0, int(np.ceil(box[0] - 0.5)))
    top = max(0, int(np.ceil(box[1] - 0.5)))
    right = min(width, int(np.ceil(box[2] - 0.5)))
    bottom = min(height, int(np.ceil(box[3] - 0.5)))
    if right <= left or bottom <= top:
        return Mask(0, 0, 0, 0, "")
    _, cells_y, cells_x = protos.shape
    y_low, y_high, y_weight = _upsampling(top, bottom - top, cells_y / height, cells_y)
    x_low, x_high, x_weight = _upsampling(left, right - left, cells_x / width, cells_x)
    y0, x0 = int(y_low[0]), int(x_low[0])
    crop = protos[:, y0:int(y_high[-1]) + 1, x0:int(x_high[-1]) + 1]
    logits = np.einsum("c,chw->hw", coefficients, crop)
    rows = logits[y_low - y0] + (logits[y_high - y0] - logits[y_low - y0]) * y_weight[:, None]
    values = rows[:, x_low - x0] + (rows[:, x_high - x0] - rows[:, x_low - x0]) * x_weight
    return Mask.from_array(values > 0, left, top)


def _end2end(outputs: Sequence[np.ndarray], threshold: float, **_: object) -> Detections:
    pred = outputs[0]
    pred = pred[pred[:, 4] >= threshold]
    return Detections(pred[:, :4], pred[:, 4], np.rint(pred[:, 5]).astype(np.int32))


def _yolox(outputs: Sequence[np.ndarray], threshold: float, *, height: int, width: int,
           **_: object) -> Detections:
    pred = outputs[0]
    strides = STRIDES if len(pred) == _cells(height, width, STRIDES) else STRIDES_P6
    grids, steps = [], []
    for stride in strides:
        rows, cols = height // stride, width // stride
        ys, xs = np.divmod(np.arange(rows * cols, dtype=np.float32), cols)
        grids.append(np.stack([xs, ys], axis=1))
        steps.append(np.full((rows * cols, 1), stride, np.float32))
    grid, step = np.concatenate(grids), np.concatenate(steps)
    keep = pred[:, 4] >= threshold
    pred, grid, step = pred[keep], grid[keep], step[keep]
    xywh = np.concatenate([(pred[:, :2] + grid) * step, np.exp(pred[:, 2:4]) * step], axis=1)
    return _best_class(_xywh_to_xyxy(xywh), pred[:, 5:] * pred[:, 4:5], threshold)


def _normalised(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    return boxes * np.array([width, height, width, height], np.float32)


def _rtdetr(outputs: Sequence[np.ndarray], threshold: float, *, height: int, width: int,
            **_: object) -> Detections:
    pred = outputs[0]
    return _best_class(_normalised(_xywh_to_xyxy(pred[:, :4]), height, width), pred[:, 4:],
                       threshold)


def detr_boxes_index(names: Sequence[str], last_dims: Sequence[int]) -> int:
    """Which of DETR's two outputs holds the boxes: the one named so, else the one of width 4
    (a model of 3 classes has logits of width 4 too: then the name decides)."""
    named = [i for i, name in enumerate(names) if "box" in name.lower()]
    return named[0] if len(named) == 1 else 0 if last_dims[0] == 4 else 1


def _detr(outputs: Sequence[np.ndarray], threshold: float, *, height: int, width: int,
          classes: int | None, names: Sequence[str], **_: object) -> Detections:
    first = detr_boxes_index(names, [o.shape[-1] for o in outputs])
    boxes, logits = outputs[first], outputs[1 - first]
    if classes is not None and logits.shape[1] == classes + 1:  # DETR: last = "no object"
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores = (weights / weights.sum(axis=1, keepdims=True))[:, :-1]
    else:
        scores = 1.0 / (1.0 + np.exp(-logits))
    return _best_class(_normalised(_xywh_to_xyxy(boxes), height, width), scores, threshold)


def _ssd(outputs: Sequence[np.ndarray], threshold: float, *, height: int, width: int,
         names: Sequence[str], offset: int, **_: object) -> Detections:
    by_rank = sorted(range(len(outputs)), key=lambda i: -outputs[i].ndim)
    boxes = outputs[by_rank[0]]
    count_index = by_rank[-1]
    scores, classes = (outputs[i] for i in by_rank[1:3])
    if names and ("class" in names[by_rank[1]].lower() or "score" in names[by_rank[2]].lower()):
        scores, classes = classes, scores
    count = int(outputs[count_index].reshape(-1)[0]) if outputs[count_index].size else len(boxes)
    boxes, scores, classes = boxes[:count], scores[:count], classes[:count]
    keep = scores >= threshold
    yxyx = boxes[keep]
    xyxy = _normalised(yxyx[:, [1, 0, 3, 2]], height, width)
    return Detections(xyxy, scores[keep], np.rint(classes[keep]).astype(np.int32) - offset)


_DECODERS: Final[dict[str, Callable[..., Detections]]] = {
    "yolov5": _yolov5, "yolov8": _yolov8, "yolov8-seg": _yolov8_seg, "yolo-end2end": _end2end,
    "yolox": _yolox,
    "rtdetr": _rtdetr, "detr": _detr, "ssd": _ssd,
}


def decode(family: str, outputs: Sequence[np.ndarray], threshold: float, *, height: int,
           width: int, classes: int | None = None, output_names: Sequence[str] = (),
           class_offset: int = 0, nms_threshold: float | None = None) -> Detections:
    """One image's detections in canvas pixels (``height`` × ``width``, the network input)
    from its outputs (batch axis removed, float32), scores at or above ``threshold``.
    ``nms_threshold``: the NMS the caller applies next, which a family that makes costly
    per-box outputs (masks) applies first, so it makes them for kept boxes only."""
    return _DECODERS[family](outputs, threshold, height=height, width=width, classes=classes,
                             names=output_names, offset=class_offset,
                             nms_threshold=nms_threshold)
