"""Columnar detections: the one currency passed between models, merging and results.

Boxes are ``float32`` ``[x1, y1, x2, y2]`` in pixels of whatever frame the producer works in
(a slice, a region or the full image); :meth:`Detections.shifted` moves them between frames.
Columnar numpy arrays instead of one object per box keep 100k-box merges fast and JSON small.

Raw detections (straight from the model, before any merge) may also say which slice each
came from (``slices``, the slice's box in the same frame): the seam-aware merge
(``merge_scope="seams"``, :mod:`tilescope.postprocess.combine`) only merges boxes from
different slices that meet in those slices' overlap. Merged detections have no one slice.

Instance-segmentation models add ``masks``: one box-local
:class:`~tilescope.instance_masks.Mask` per detection, in the same frame, moved, scaled, clipped
and selected with the boxes. Detections without masks (``masks is None``) pay nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from tilescope.instance_masks import Mask


@dataclass(frozen=True)
class Detections:
    """N detections as parallel arrays: ``boxes`` (N, 4) xyxy, ``scores``, ``category_ids``,
    and optionally ``slices`` (N, 4) int32, the box of the slice each detection came from,
    and ``masks``, one instance mask per detection."""

    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    slices: np.ndarray | None = None
    masks: tuple[Mask, ...] | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        category_ids = np.asarray(self.category_ids, dtype=np.int32).reshape(-1)
        if not (len(boxes) == len(scores) == len(category_ids)):
            raise ValueError(
                f"length mismatch: {len(boxes)} boxes, {len(scores)} scores, "
                f"{len(category_ids)} category ids"
            )
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "category_ids", category_ids)
        if self.slices is not None:
            slices = np.asarray(self.slices, dtype=np.int32).reshape(-1, 4)
            if len(slices) != len(boxes):
                raise ValueError(f"length mismatch: {len(boxes)} boxes, {len(slices)} slices")
            object.__setattr__(self, "slices", slices)
        if self.masks is not None:
            masks = tuple(self.masks)
            if len(masks) != len(boxes):
                raise ValueError(f"length mismatch: {len(boxes)} boxes, {len(masks)} masks")
            object.__setattr__(self, "masks", masks)

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    @classmethod
    def concat(cls, parts: Iterable[Detections]) -> Detections:
        """All detections of ``parts`` in one set (frames must already agree). ``slices``
        and ``masks`` are kept when every part has them."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        slices = [p.slices for p in parts]
        masks = [p.masks for p in parts]
        return cls(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.category_ids for p in parts]),
            np.concatenate(slices) if all(s is not None for s in slices) else None,  # type: ignore[arg-type]  # checked: none is None
            tuple(m for ms in masks for m in ms) if all(ms is not None for ms in masks)  # type: ignore[union-attr]  # checked: none is None
            else None,
        )

    def with_masks(self, masks: tuple[Mask, ...] | None) -> Detections:
        """The same detections carrying ``masks`` (``None``: none)."""
        return Detections(self.boxes, self.scores, self.category_ids, self.slices, masks)

    def __len__(self) -> int:
        return len(self.scores)

    def shifted(self, dx: float, dy: float) -> Detections:
        """The same detections moved by (dx, dy), e.g. from slice to image coordinates."""
        if dx == 0 and dy == 0:
            return self
        offset = np.array([dx, dy, dx, dy], dtype=np.float32)
        slices = None if self.slices is None else \
            self.slices + np.array([dx, dy, dx, dy]).round().astype(np.int32)
        masks = None if self.masks is None else tuple(m.shifted(dx, dy) for m in self.masks)
        return Detections(self.boxes + offset, self.scores, self.category_ids, slices, masks)

    def from_slice(self, x1: int, y1: int, x2: int, y2: int) -> Detections:
        """The same detections, each recorded as coming from the slice ``[x1, y1, x2, y2]``
        (in the detections' own frame)."""
        slices = np.broadcast_to(np.array([x1, y1, x2, y2], np.int32), (len(self), 4))
        return Detections(self.boxes, self.scores, self.category_ids, slices, self.masks)

    def scaled(self, factor: float, factor_y: float | None = None) -> Detections:
        """The same detections with coordinates multiplied by ``factor`` (y by ``factor_y``
        when given: a pyramid level's downsample differs a little per axis)."""
        factor_y = factor if factor_y is None else factor_y
        if factor == 1.0 and factor_y == 1.0:
            return self
        scale = np.array([factor, factor_y, factor, factor_y])
        slices = None if self.slices is None else \
            (self.slices * scale).round().astype(np.int32)
        masks = None if self.masks is None else \
            tuple(m.transformed(factor, factor_y) for m in self.masks)
        return Detections(self.boxes * scale.astype(np.float32), self.scores,
                          self.category_ids, slices, masks)

    def select(self, index: np.ndarray) -> Detections:
        """A subset by boolean mask or integer index array (order follows ``index``)."""
        masks = None
        if self.masks is not None:
            picked = np.arange(len(self))[index]
            masks = tuple(self.masks[i] for i in picked.tolist())
        return Detections(self.boxes[index], self.scores[index], self.category_ids[index],
                          None if self.slices is None else self.slices[index], masks)

    def clipped(self, width: int, height: int) -> Detections:
        """Boxes clipped to ``[0, width] x [0, height]``; boxes left with no area are dropped."""
        boxes = self.boxes.copy()
        np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        masks = None if self.masks is None else tuple(
            m.clipped(width, height) for m, kept in zip(self.masks, keep.tolist(), strict=True)
            if kept)
        return Detections(boxes[keep], self.scores[keep], self.category_ids[keep],
                          None if self.slices is None else self.slices[keep], masks)

    def sorted_by_score(self) -> Detections:
        """Highest score first; ties keep input order (stable), so results are deterministic."""
        order = np.argsort(-self.scores, kind="stable")
        return self.select(order)
