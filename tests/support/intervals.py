"""Overlap of task-instance intervals: how many ran at one instant (pool caps, fan-out)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime


def max_overlap(intervals: Iterable[tuple[datetime, datetime]]) -> int:
    """Most intervals running at one instant (an end at t does not overlap a start at t)."""
    spans = list(intervals)
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak
