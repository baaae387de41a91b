"""Anonymization: blur or pixelate the boxes of chosen classes, or of faces, on the
full-resolution pixels.

Done as a reader (:class:`AnonymizedReader`) wrapping the image's own reader: whatever box is
read comes back anonymized. The writers that already stream an image tile by tile (the
tiled-TIFF stager in :mod:`tilescope.layout`) then write the anonymized copy with memory flat,
and the pixels are the very ones of the whole image done at once, because every output pixel
depends on source pixels a bounded distance away only:

- **blur**: three box filters of width ``2·sigma + 1`` — a Gaussian of about ``sigma`` (from
  the box's short side, at most :data:`MAX_SIGMA`) at a cost that does not grow with it
  (a true Gaussian of that width was 34× slower, measured); each read fetches its box plus a
  halo of ``3·sigma``, so no filter reaches a tile border that is not the image's own (no
  seams);
- **pixelate**: blocks of a tenth of the box's short side, anchored at the box's corner; the
  block averages are computed once, up front, from reads of :data:`CHUNK` pixels at a time
  (a few numbers per block), so a read needs no halo and a huge box costs no memory.

Boxes come from a result's detections of the chosen classes, grown by a margin (a fraction
of the box's side below 1, pixels from 1), or from the face detector run sliced over the image
through the ordinary pipeline (:func:`find_faces`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilescope.detections import Detections
from tilescope.errors import ConfigError
from tilescope.params import ANONYMIZE_MODES, InferenceParams
from tilescope.readers.base import ImageReader, clip_box
from tilescope.results import ImageInfo
from tilescope.slicing import Box

#: the target that runs the face detector instead of naming one of the model's classes
FACE = "face"
#: the registered face detector :func:`find_faces` runs
FACE_MODEL = "blazeface"
#: the strongest blur: its halo (3·sigma) bounds what each read fetches beyond its box
MAX_SIGMA = 32.0
MIN_SIGMA = 2.0
#: blocks across a pixelated box's short side; blocks are at least MIN_BLOCK pixels
BLOCKS_ACROSS = 10
MIN_BLOCK = 4
#: side of the reads that compute the block averages (and of thumbnail reads)
CHUNK = 1024


@dataclass(frozen=True)
class AnonymizeTargets:
    """What is anonymized: boxes of these class names, and faces when ``faces``."""

    classes: tuple[str, ...]
    faces: bool


def parse_targets(text: str, category_names: Sequence[str], model: str = "") -> AnonymizeTargets:
    """``person,car`` or ``face`` → targets, every class checked against the model's
    categories (an open-vocabulary model, with none declared, takes any name)."""
    names = [part.strip() for part in str(text or "").split(",") if part.strip()]
    if not names:
        raise ConfigError("anonymize needs class names (e.g. person,car) or 'face'")
    classes = tuple(dict.fromkeys(n for n in names if n != FACE))
    unknown = [n for n in classes if category_names and n not in category_names]
    if unknown:
        known = ", ".join(list(category_names)[:12])
        raise ConfigError(
            f"anonymize: {', '.join(map(repr, unknown))} is not a class of model "
            f"{model or '(this model)'} (it knows {known}{' …' if len(category_names) > 12 else ''}"
            f"); '{FACE}' runs the face detector")
    return AnonymizeTargets(classes, FACE in names)


def margin_boxes(boxes: np.ndarray, margin: float, width: int, height: int) -> np.ndarray:
    """``boxes`` (x1, y1, x2, y2) grown by ``margin`` on every side — a fraction of the box's
    width/height below 1, pixels from 1 — to whole pixels outward, clipped; empty ones
    dropped. Returns int64 ``(n, 4)``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if margin < 0:
        raise ConfigError(f"anonymize_margin must be ≥ 0, got {margin}")
    sides = boxes[:, 2:] - boxes[:, :2]
    grow = sides * margin if margin < 1 else np.full_like(sides, float(margin))
    grown = np.column_stack([np.floor(boxes[:, :2] - grow), np.ceil(boxes[:, 2:] + grow)])
    grown = np.clip(grown, 0, [width, height, width, height]).astype(np.int64)
    return grown[(grown[:, 2] > grown[:, 0]) & (grown[:, 3] > grown[:, 1])]


def class_boxes(detections: Detections, category_names: Sequence[str],
                classes: Sequence[str]) -> np.ndarray:
    """The boxes of ``detections`` whose category name is one of ``classes``."""
    wanted = {i for i, name in enumerate(category_names) if name in classes}
    keep = np.array([int(c) in wanted for c in detections.category_ids], bool)
    return detections.boxes[keep] if len(keep) else np.zeros((0, 4))


def find_faces(reader: ImageReader, image: ImageInfo, *, score_threshold: float = 0.5,
               model_options: dict | None = None) -> Detections:
    """Faces on the image: the face detector sliced over it by the ordinary pipeline (its own
    slice size, the usual merge), so faces anywhere in a huge image are found at full
    resolution."""
    from tilescope.models import load_model
    from tilescope.pipeline import run_image

    params = InferenceParams(model=FACE_MODEL, score_threshold=score_threshold,
                             model_options=dict(model_options or {}))
    with load_model(FACE_MODEL, **params.model_arguments()) as model:
        return run_image(reader, image, params, model).detections


@dataclass(frozen=True)
class Mark:
    """One box to anonymize and its strength (blur sigma, or pixelation block side)."""

    x1: int
    y1: int
    x2: int
    y2: int
    strength: float

    @property
    def box(self) -> Box:
        return Box(self.x1, self.y1, self.x2, self.y2)


def plan_marks(boxes: np.ndarray, mode: str) -> list[Mark]:
    """Each box with its strength, weakest first (where boxes overlap, the strongest wins)."""
    if mode not in ANONYMIZE_MODES:
        raise ConfigError(f"anonymize_mode must be one of {ANONYMIZE_MODES}, got {mode!r}")
    marks = []
    for x1, y1, x2, y2 in np.asarray(boxes, np.int64).reshape(-1, 4).tolist():
        short = min(x2 - x1, y2 - y1)
        strength = (min(MAX_SIGMA, max(MIN_SIGMA, short / 6)) if mode == "blur"
                    else max(MIN_BLOCK, math.ceil(short / BLOCKS_ACROSS)))
        marks.append(Mark(x1, y1, x2, y2, float(strength)))
    return sorted(marks, key=lambda m: m.strength)


def box_half_width(sigma: float) -> int:
    """Half the width of each of the three box filters that blur like a Gaussian of
    ``sigma`` (three passes of width ``w`` have a variance of ``(w² − 1) / 4``)."""
    return max(1, round(sigma))


def blur_radius(sigma: float) -> int:
    """How far the blur reaches: three passes, each ``box_half_width`` further."""
    return 3 * box_half_width(sigma)


def _overlap(a: Box, b: Box) -> Box | None:
    box = Box(max(a.x1, b.x1), max(a.y1, b.y1), min(a.x2, b.x2), min(a.y2, b.y2))
    return box if box.x2 > box.x1 and box.y2 > box.y1 else None


def _block_edges(start: int, stop: int, block: int) -> np.ndarray:
    """Block starts from ``start`` every ``block`` pixels, then ``stop``."""
    return np.append(np.arange(start, stop, block), stop)


class AnonymizedReader(ImageReader):
    """``base`` with the ``marks`` blurred or pixelated in every read (see the module
    docstring). The base reader stays the caller's to close."""

    def __init__(self, base: ImageReader, marks: Sequence[Mark], mode: str) -> None:
        if mode not in ANONYMIZE_MODES:
            raise ConfigError(f"anonymize_mode must be one of {ANONYMIZE_MODES}, "
                              f"got {mode!r}")
        self._base, self.marks, self.mode = base, list(marks), mode
        self.header = base.header
        self.georeference = base.georeference
        self.pixels = base.pixels
        self.halo = max((blur_radius(m.strength) for m in self.marks), default=0) \
            if mode == "blur" else 0
        self._means = [self._block_means(m) for m in self.marks] if mode == "pixelate" else []

    @property
    def regions(self) -> list[Box]:
        """The anonymized boxes (what an archival copy's SSIM leaves out)."""
        return [m.box for m in self.marks]

    def _block_means(self, mark: Mark) -> np.ndarray:
        """The mark's block averages (rounded), read ``CHUNK``-sized pieces at a time."""
        block = int(mark.strength)
        xs = _block_edges(mark.x1, mark.x2, block)
        ys = _block_edges(mark.y1, mark.y2, block)
        sums = np.zeros((len(ys) - 1, len(xs) - 1, 3), np.int64)
        step = max(1, CHUNK // block) * block  # whole blocks per piece
        for y in range(mark.y1, mark.y2, step):
            y2 = min(mark.y2, y + step)
            rows = _block_edges(y, y2, block)[:-1] - y
            row0 = (y - mark.y1) // block
            for x in range(mark.x1, mark.x2, step):
                x2 = min(mark.x2, x + step)
                cols = _block_edges(x, x2, block)[:-1] - x
                col0 = (x - mark.x1) // block
                piece = self._base.read(Box(x, y, x2, y2)).astype(np.int64)
                part = np.add.reduceat(np.add.reduceat(piece, rows, axis=0), cols, axis=1)
                sums[row0:row0 + len(rows), col0:col0 + len(cols)] = part
        counts = np.outer(np.diff(ys), np.diff(xs))[:, :, None]
        return ((2 * sums + counts) // (2 * counts)).astype(np.uint8)  # rounded half up

    def read(self, box: Box) -> np.ndarray:
        box = clip_box(box, self.width, self.height)
        hits = [(i, m) for i, m in enumerate(self.marks) if _overlap(m.box, box)]
        if not hits:
            return self._base.read(box)
        window = clip_box(Box(box.x1 - self.halo, box.y1 - self.halo, box.x2 + self.halo,
                              box.y2 + self.halo), self.width, self.height)
        source = self._base.read(window)
        out = source[box.y1 - window.y1:box.y2 - window.y1,
                     box.x1 - window.x1:box.x2 - window.x1].copy()
        for index, mark in hits:
            target = _overlap(mark.box, box)
            assert target is not None
            if self.mode == "blur":
                patch = self._blurred(source, window, target, mark.strength)
            else:
                patch = self._pixelated(index, mark, target)
            out[target.y1 - box.y1:target.y2 - box.y1,
                target.x1 - box.x1:target.x2 - box.x1] = patch
        return out

    def _blurred(self, source: np.ndarray, window: Box, target: Box,
                 sigma: float) -> np.ndarray:
        """``target`` blurred from the source pixels around it (within the halo): the same
        neighbourhood whichever read it falls in, reflected only at the image's edges."""
        import cv2

        radius = blur_radius(sigma)
        around = clip_box(Box(target.x1 - radius, target.y1 - radius, target.x2 + radius,
                              target.y2 + radius), self.width, self.height)
        blurred = source[around.y1 - window.y1:around.y2 - window.y1,
                         around.x1 - window.x1:around.x2 - window.x1]
        width = 2 * box_half_width(sigma) + 1
        for _ in range(3):  # each pass spoils box_half_width pixels at a cut edge: radius
            blurred = cv2.blur(blurred, (width, width), borderType=cv2.BORDER_REFLECT_101)
        return blurred[target.y1 - around.y1:target.y2 - around.y1,
                       target.x1 - around.x1:target.x2 - around.x1]

    def _pixelated(self, index: int, mark: Mark, target: Box) -> np.ndarray:
        """``target``'s pixels as their blocks' averages."""
        block = int(mark.strength)
        rows = (np.arange(target.y1, target.y2) - mark.y1) // block
        cols = (np.arange(target.x1, target.x2) - mark.x1) // block
        return self._means[index][rows[:, None], cols[None, :]]

    def thumbnail(self, max_side: int) -> np.ndarray:
        """Downscaled from ``CHUNK``-sized anonymized reads (never the whole image)."""
        import cv2

        scale = min(1.0, max_side / max(self.width, self.height))
        out_w, out_h = max(1, round(self.width * scale)), max(1, round(self.height * scale))
        if scale == 1.0:
            return self.read_all()
        out = np.zeros((out_h, out_w, 3), np.uint8)
        for y in range(0, self.height, CHUNK):
            for x in range(0, self.width, CHUNK):
                x1, y1 = round(x * scale), round(y * scale)
                x2 = min(out_w, round(min(self.width, x + CHUNK) * scale))
                y2 = min(out_h, round(min(self.height, y + CHUNK) * scale))
                if x2 > x1 and y2 > y1:
                    out[y1:y2, x1:x2] = cv2.resize(self.read(Box(x, y, x + CHUNK, y + CHUNK)),
                                                   (x2 - x1, y2 - y1),
                                                   interpolation=cv2.INTER_AREA)
        return out


def anonymized_reader(reader: ImageReader, boxes: np.ndarray, params: InferenceParams
                      ) -> AnonymizedReader:
    """``reader`` with ``boxes`` (detector boxes, before the margin) anonymized as
    ``params`` say (``anonymize_mode``, ``anonymize_margin``)."""
    grown = margin_boxes(boxes, float(params.anonymize_margin), reader.width, reader.height)
    return AnonymizedReader(reader, plan_marks(grown, params.anonymize_mode),
                            params.anonymize_mode)


def replayed_reader(reader: ImageReader, record: dict[str, Any]) -> AnonymizedReader:
    """``reader`` anonymized exactly as a stored copy was (``record``: ``Result.anonymized``,
    with the ``regions`` it blurred or pixelated): a second copy of the same pixels — the
    archival one — without running the face detector again or decoding the first copy."""
    regions = np.asarray(record.get("regions", []), np.int64).reshape(-1, 4)
    return AnonymizedReader(reader, plan_marks(regions, str(record["mode"])),
                            str(record["mode"]))


def boxes_to_anonymize(reader: ImageReader, image: ImageInfo, detections: Detections,
                       category_names: Sequence[str], params: InferenceParams
                       ) -> tuple[np.ndarray, dict[str, int]]:
    """The boxes the run's ``anonymize`` targets: detections of its classes, plus faces
    (the face detector run now) when asked. Returns ``(boxes, count per target)``."""
    targets = parse_targets(params.anonymize, category_names, params.model)
    picked = class_boxes(detections, category_names, targets.classes)
    counts = {name: int(sum(category_names[int(c)] == name for c in detections.category_ids
                            if int(c) < len(category_names)))
              for name in targets.classes}
    if targets.faces:
        faces = find_faces(reader, image)
        picked = np.concatenate([np.asarray(picked, np.float64).reshape(-1, 4),
                                 faces.boxes.astype(np.float64).reshape(-1, 4)])
        counts[FACE] = len(faces)
    return np.asarray(picked, np.float64).reshape(-1, 4), counts


def check_anonymize(params: InferenceParams) -> AnonymizeTargets | None:
    """Refuse an ``anonymize`` naming classes the run's model does not have, before any
    pixel is analysed (:class:`ConfigError` naming them); ``None`` when none is asked."""
    if not params.anonymize:
        return None
    if params.magnification:  # the copy is of the full-resolution pixels, boxes too
        raise ConfigError("anonymize makes a full-resolution copy: not with magnification "
                          f"{params.magnification:g} (analyse at 0, the full resolution)")
    from tilescope.models.registry import model_categories

    return parse_targets(params.anonymize, model_categories(params.model), params.model)


__all__ = ["FACE", "FACE_MODEL", "AnonymizeTargets", "AnonymizedReader", "Mark",
           "anonymized_reader", "boxes_to_anonymize", "check_anonymize", "class_boxes",
           "find_faces", "margin_boxes", "parse_targets", "plan_marks", "replayed_reader"]
