"""Which frames of a video to analyze: N per second of *presentation time*.

Sampling follows the frames' timestamps rather than counting frames, so a variable-frame-rate
stream is sampled evenly in time, and asking for more frames per second than the video has
simply takes every frame (never the same frame twice).

The frames for the contact sheet are chosen while the video is decoded, without knowing how
many frames will come: :class:`SheetCells` keeps every ``stride``-th frame and doubles the
stride whenever it holds twice the frames the sheet shows, so memory stays bounded by a few
dozen small pictures and the kept frames stay evenly spread over the whole video.
"""

from __future__ import annotations

import math

import numpy as np

from tilescope.readers.base import downscale

#: slack for timestamps that land a hair before their target (float noise in the container)
_EPSILON_MS = 1e-3
#: frames shown on a contact sheet at most, and the long side of each
MAX_SHEET_FRAMES = 24
SHEET_CELL_SIDE = 320


class FrameSampler:
    """Keeps the first frame at or after each target time ``0, 1/fps, 2/fps, …`` seconds."""

    def __init__(self, fps: float) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.interval_ms = 1000.0 / fps
        self._next_ms = 0.0

    def take(self, timestamp_ms: float) -> bool:
        """Whether the frame shown at ``timestamp_ms`` is sampled (call in stream order)."""
        if timestamp_ms + _EPSILON_MS < self._next_ms:
            return False
        # Past every target this frame satisfies: a long gap yields one frame, not a burst.
        self._next_ms = (math.floor((timestamp_ms + _EPSILON_MS) / self.interval_ms) + 1) \
            * self.interval_ms
        return True


def expected_samples(frame_count: int, native_fps: float, fps: float) -> int:
    """How many frames :class:`FrameSampler` keeps from ``frame_count`` frames evenly shown
    at ``native_fps`` — the count a header promises, known before decoding anything."""
    if frame_count <= 0 or not native_fps > 0:
        return 0
    timestamps = np.arange(frame_count, dtype=np.float64) * (1000.0 / native_fps)
    # The sampler keeps exactly the first frame of each target interval it reaches.
    slots = np.floor((timestamps + _EPSILON_MS) / (1000.0 / fps))
    return int(np.count_nonzero(np.diff(slots, prepend=-1.0)))


class SheetCells:
    """Downscaled copies of evenly spaced frames, at most ``2 × limit`` held at a time."""

    def __init__(self, limit: int = MAX_SHEET_FRAMES, side: int = SHEET_CELL_SIDE) -> None:
        self.limit, self.side = max(1, limit), side
        self._stride = 1
        self._cells: dict[int, np.ndarray] = {}

    def offer(self, position: int, pixels: np.ndarray) -> None:
        """Consider the ``position``-th sampled frame (positions come in increasing order)."""
        if position % self._stride:
            return
        self._cells[position] = downscale(pixels, self.side)
        if len(self._cells) >= 2 * self.limit:
            self._stride *= 2
            self._cells = {p: c for p, c in self._cells.items() if p % self._stride == 0}

    def chosen(self) -> list[tuple[int, np.ndarray]]:
        """At most ``limit`` (position, picture) pairs, evenly spread, in order."""
        positions = sorted(self._cells)
        if len(positions) > self.limit:
            picks = np.unique(np.linspace(0, len(positions) - 1, self.limit).round())
            positions = [positions[int(i)] for i in picks]
        return [(p, self._cells[p]) for p in positions]
