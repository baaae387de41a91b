"""Instance masks, kept small: a box-local binary window as a COCO compressed RLE string.

A detection's mask travels with its box through slicing, merging and the region findings
that cross XCom, so it must stay small whatever the image's size: a :class:`Mask` holds only
the tight window around its set pixels (origin ``x, y`` in the detection's frame) and that
window's run lengths in COCO's compressed string form (column-major, starting with a run of
zeros). A full-image array is never built: :meth:`Mask.to_coco` writes the image-sized RLE
COCO wants straight from the window's runs.

The string codec is COCO's (``maskApi.c`` ``rleToString`` / ``rleFrString``), written here so
that no extra package is needed; the tests cross-check it with pycocotools.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Mask", "counts_to_string", "decode_rle", "encode_rle", "string_to_counts"]


def counts_to_string(counts: Sequence[int] | np.ndarray) -> str:
    """COCO's compressed form of run lengths: each run (minus the one two before it, from
    the fourth on) in 5-bit groups, low first, 0x20 marking "more follows", offset by 48.
    All runs at once in numpy (a mask has hundreds of runs; a Python loop cost 0.5 ms)."""
    values = np.asarray(counts, np.int64)
    if not len(values):
        return ""
    values = values.copy()
    values[3:] -= np.asarray(counts, np.int64)[1:-2]
    groups, emitting = [], np.ones(len(values), bool)
    while emitting.any():
        low = values & 0x1F
        values = values >> 5
        more = np.where(low & 0x10, values != -1, values != 0)
        groups.append((np.where(more, low | 0x20, low) + 48, emitting))
        emitting = emitting & more
    chars = np.stack([g for g, _ in groups], axis=1)
    valid = np.stack([e for _, e in groups], axis=1)
    return chars[valid].astype(np.uint8).tobytes().decode("ascii")


def string_to_counts(text: str) -> list[int]:
    """Run lengths back from COCO's compressed string (inverse of :func:`counts_to_string`)."""
    if not text:
        return []
    chars = np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64) - 48
    last = (chars & 0x20) == 0  # the last group of a value
    value_of = np.concatenate([[0], np.cumsum(last)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    shift = 5 * (np.arange(len(chars)) - starts[value_of])
    values = np.zeros(int(last.sum()), np.int64)
    np.add.at(values, value_of, (chars & 0x1F) << shift)
    negative = (chars[last] & 0x10) != 0  # sign-extend from the last group's top bit
    values[negative] -= np.int64(1) << (shift[last][negative] + 5)
    values[3::2] = np.cumsum(values[1::2])[1:]
    values[4::2] = np.cumsum(values[2::2])[1:]
    return values.tolist()


def _runs(binary: np.ndarray, x: int, y: int, height: int, width: int) -> list[int]:
    """Run lengths of ``binary`` placed at (x, y) in a ``height`` × ``width`` frame, in
    column-major order, zeros first — without building the frame."""
    h, w = binary.shape
    padded = np.zeros((h + 2, w), np.int8)
    padded[1:-1] = binary
    step = np.diff(padded, axis=0)
    cols_on, rows_on = np.nonzero(step.T == 1)  # column-major: columns outer
    _, rows_off = np.nonzero(step.T == -1)
    starts = (cols_on + x).astype(np.int64) * height + y + rows_on
    ends = (cols_on + x).astype(np.int64) * height + y + rows_off
    if len(starts) > 1:  # a run down a column's last row goes on at the next column's top
        joined = np.flatnonzero(ends[:-1] == starts[1:])
        starts, ends = np.delete(starts, joined + 1), np.delete(ends, joined)
    edges = np.empty(2 * len(starts) + 2, np.int64)
    edges[0], edges[-1] = 0, height * width
    edges[1:-1:2], edges[2:-1:2] = starts, ends
    runs = np.diff(edges).tolist()
    return runs[:-1] if len(runs) > 1 and runs[-1] == 0 else runs  # COCO ends on the last run


def encode_rle(binary: np.ndarray) -> str:
    """COCO compressed RLE string of a 2-D binary array."""
    flat = np.ascontiguousarray(binary.T).reshape(-1).astype(bool)  # column-major
    if not len(flat):
        return ""
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], changes, [len(flat)]]))
    return counts_to_string(np.concatenate([[0], runs]) if flat[0] else runs)


def decode_rle(text: str, height: int, width: int) -> np.ndarray:
    """The ``height`` × ``width`` bool array a COCO compressed RLE string stands for."""
    counts = string_to_counts(text)
    if sum(counts) != height * width:
        raise ValueError(f"RLE covers {sum(counts)} pixels, not {height}×{width}")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T


@dataclass(frozen=True)
class Mask:
    """A binary mask: the window ``[x, x + width) × [y, y + height)`` of its frame (the tight
    box around its set pixels) and the window's COCO compressed RLE ``counts``."""

    x: int
    y: int
    width: int
    height: int
    counts: str

    @classmethod
    def from_array(cls, binary: np.ndarray, x: int = 0, y: int = 0) -> Mask:
        """The mask of ``binary`` placed at (x, y), cropped to its set pixels."""
        binary = np.asarray(binary, bool)
        rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
        if not len(rows):
            return cls(int(x), int(y), 0, 0, "")
        top, left = int(rows[0]), int(cols[0])
        window = binary[top:int(rows[-1]) + 1, left:int(cols[-1]) + 1]
        return cls(int(x) + left, int(y) + top, window.shape[1], window.shape[0],
                   encode_rle(window))

    def array(self) -> np.ndarray:
        """The window as a (height, width) bool array."""
        if not self.width or not self.height:
            return np.zeros((self.height, self.width), bool)
        return decode_rle(self.counts, self.height, self.width)

    @property
    def area(self) -> int:
        """Set pixels."""
        return int(sum(string_to_counts(self.counts)[1::2])) if self.counts else 0

    def shifted(self, dx: float, dy: float) -> Mask:
        """Moved by whole pixels (slice and region offsets are whole)."""
        return Mask(self.x + round(dx), self.y + round(dy), self.width, self.height,
                    self.counts)

    def transformed(self, scale_x: float, scale_y: float, shift_x: float = 0.0,
                    shift_y: float = 0.0) -> Mask:
        """The mask in a frame where a point ``p`` of this one is at ``p × scale + shift``,
        sampled at pixel centres (nearest neighbour)."""
        if scale_x == 1 and scale_y == 1 and float(shift_x).is_integer() \
                and float(shift_y).is_integer():
            return self.shifted(shift_x, shift_y)
        if not self.area:
            return Mask(0, 0, 0, 0, "")
        left = int(np.floor(self.x * scale_x + shift_x))
        top = int(np.floor(self.y * scale_y + shift_y))
        right = int(np.ceil((self.x + self.width) * scale_x + shift_x))
        bottom = int(np.ceil((self.y + self.height) * scale_y + shift_y))
        cols = np.floor((np.arange(left, right) + 0.5 - shift_x) / scale_x).astype(np.int64) \
            - self.x
        rows = np.floor((np.arange(top, bottom) + 0.5 - shift_y) / scale_y).astype(np.int64) \
            - self.y
        window = np.zeros((len(rows), len(cols)), bool)
        good_r = (rows >= 0) & (rows < self.height)
        good_c = (cols >= 0) & (cols < self.width)
        window[np.ix_(good_r, good_c)] = self.array()[np.ix_(rows[good_r], cols[good_c])]
        return Mask.from_array(window, left, top)

    def clipped(self, width: int, height: int) -> Mask:
        """The part inside ``[0, width) × [0, height)``."""
        if self.x >= 0 and self.y >= 0 and self.x + self.width <= width \
                and self.y + self.height <= height:
            return self
        left, top = max(self.x, 0), max(self.y, 0)
        right, bottom = min(self.x + self.width, width), min(self.y + self.height, height)
        if right <= left or bottom <= top:
            return Mask(0, 0, 0, 0, "")
        window = self.array()[top - self.y:bottom - self.y, left - self.x:right - self.x]
        return Mask.from_array(window, left, top)

    @classmethod
    def union(cls, masks: Iterable[Mask]) -> Mask:
        """The pixels set in any of ``masks`` (what a merged detection's mask is)."""
        masks = [m for m in masks if m.width and m.height]
        if not masks:
            return cls(0, 0, 0, 0, "")
        if len(masks) == 1:
            return masks[0]
        left, top = min(m.x for m in masks), min(m.y for m in masks)
        right = max(m.x + m.width for m in masks)
        bottom = max(m.y + m.height for m in masks)
        window = np.zeros((bottom - top, right - left), bool)
        for m in masks:
            window[m.y - top:m.y - top + m.height, m.x - left:m.x - left + m.width] |= m.array()
        return cls.from_array(window, left, top)

    def to_coco(self, height: int, width: int) -> dict[str, Any]:
        """COCO's ``segmentation`` for an image of ``height`` × ``width``: ``{"size": [h, w],
        "counts": "..."}`` (compressed RLE), built from the window's runs alone."""
        inside = self.clipped(width, height)
        if not inside.width:
            return {"size": [height, width], "counts": counts_to_string([height * width])}
        runs = _runs(inside.array(), inside.x, inside.y, height, width)
        return {"size": [height, width], "counts": counts_to_string(runs)}

    @classmethod
    def from_coco(cls, segmentation: dict[str, Any]) -> Mask:
        """The box-local mask of a COCO compressed-RLE ``segmentation`` (inverse of
        :meth:`to_coco`), built from its runs: work and memory grow with the set pixels, not
        with the image."""
        height, width = (int(v) for v in segmentation["size"])
        counts = segmentation["counts"]
        runs = np.asarray(string_to_counts(counts.decode() if isinstance(counts, bytes)
                                           else str(counts)), np.int64)
        if int(runs.sum()) != height * width:
            raise ValueError(f"RLE covers {int(runs.sum())} pixels, not {height}×{width}")
        ends = np.cumsum(runs)
        starts, lengths = (ends - runs)[1::2], runs[1::2]
        if not lengths.sum():
            return cls(0, 0, 0, 0, "")
        first = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        flat = first + np.arange(int(lengths.sum()))  # every set pixel, column-major
        cols, rows = np.divmod(flat, height)
        left, top = int(cols.min()), int(rows.min())
        window = np.zeros((int(rows.max()) - top + 1, int(cols.max()) - left + 1), bool)
        window[rows - top, cols - left] = True
        return cls.from_array(window, left, top)

    def to_list(self) -> list[Any]:
        """``[x, y, width, height, counts]``: the JSON form findings and results carry."""
        return [self.x, self.y, self.width, self.height, self.counts]

    @classmethod
    def from_list(cls, data: Sequence[Any]) -> Mask:
        """Inverse of :meth:`to_list`."""
        x, y, width, height, counts = data
        return cls(int(x), int(y), int(width), int(height), str(counts))
