"""Slice planning: model-sized slices with overlap, grouped into a grid of regions.

A *slice* is what one model call sees; a *region* is a rectangular block of slices and the
unit of work the Airflow DAG maps over (one task per region). Slices follow SAHI's
``get_slice_bboxes`` exactly (the last row/column is shifted inward so the image is covered
without padding), so tilescope and SAHI see the same pixels.

Regions store their slices as the cartesian product of column starts and row starts, which
keeps a 50,000-slice plan a few kilobytes of JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

from tilescope.errors import ConfigError

#: Airflow's default ``[core] max_map_length``: a mapped task cannot expand beyond it.
MAX_MAP_LENGTH = 1024
#: Fewest slices per auto-sized region. Measured through the scheduler on 2 cores, a mapped
#: task costs ~1.5–2 s besides its model work (process start, imports, model session, first
#: reads) while a 416-px NanoDet slice costs ~25 ms of CPU: 256 slices (~6 CPU-s) keep that
#: fixed cost near a fifth of the task, and still give 9 regions at 16384² and ~200 at 50k slices.
DEFAULT_MIN_SLICES_PER_REGION = 256


@dataclass(frozen=True, order=True)
class Box:
    """An integer pixel rectangle ``[x1, x2) × [y1, y2)``."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    def as_list(self) -> list[int]:
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True)
class Region:
    """A block of slices: every (x, y) in ``xs × ys`` is the top-left corner of one slice."""

    index: int
    row: int
    col: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]
    slice_width: int
    slice_height: int

    @property
    def name(self) -> str:
        """Short label used in task names and logs, e.g. ``r2c5``."""
        return f"r{self.row}c{self.col}"

    @property
    def box(self) -> Box:
        """The pixels this region's slices cover, overlap margins included."""
        return Box(self.xs[0], self.ys[0], self.xs[-1] + self.slice_width,
                   self.ys[-1] + self.slice_height)

    @property
    def slice_count(self) -> int:
        return len(self.xs) * len(self.ys)

    def slices(self) -> list[Box]:
        """The slice boxes in image pixels, row by row (SAHI's order inside the region)."""
        return [Box(x, y, x + self.slice_width, y + self.slice_height)
                for y, x in product(self.ys, self.xs)]

    def to_dict(self) -> dict:
        """A small JSON-able form, e.g. for an XCom. The slice starts travel as arithmetic
        runs: the list of regions is the one XCom that grows with the region count (Airflow
        maps over it), and runs keep it at ~190 bytes a region whatever the slices per region.
        """
        return {"index": self.index, "row": self.row, "col": self.col,
                "x_runs": to_runs(self.xs), "y_runs": to_runs(self.ys),
                "slice_width": self.slice_width, "slice_height": self.slice_height,
                "box": self.box.as_list(), "name": self.name, "slice_count": self.slice_count}

    @classmethod
    def from_dict(cls, data: dict) -> Region:
        """Inverse of :meth:`to_dict`; also reads explicit ``xs``/``ys`` lists."""
        xs = from_runs(data["x_runs"]) if "x_runs" in data else tuple(int(x) for x in data["xs"])
        ys = from_runs(data["y_runs"]) if "y_runs" in data else tuple(int(y) for y in data["ys"])
        return cls(int(data["index"]), int(data["row"]), int(data["col"]), xs, ys,
                   int(data["slice_width"]), int(data["slice_height"]))


def to_runs(values: Sequence[int]) -> list[list[int]]:
    """Integers as ``[start, step, count]`` runs of an arithmetic progression. Slice starts are
    evenly spaced except the last, which SAHI shifts back to the image edge: one or two runs."""
    runs: list[list[int]] = []
    for value in values:
        if runs and runs[-1][2] == 1:
            runs[-1][1], runs[-1][2] = value - runs[-1][0], 2
        elif runs and value == runs[-1][0] + runs[-1][1] * runs[-1][2]:
            runs[-1][2] += 1
        else:
            runs.append([int(value), 0, 1])
    return runs


def from_runs(runs: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Inverse of :func:`to_runs`."""
    return tuple(int(start) + int(step) * i for start, step, count in runs
                 for i in range(int(count)))


@dataclass(frozen=True)
class SlicePlan:
    """Every slice of an image, grouped into ``grid_rows × grid_cols`` regions."""

    width: int
    height: int
    slice_width: int
    slice_height: int
    overlap_x: int
    overlap_y: int
    grid_rows: int
    grid_cols: int
    regions: tuple[Region, ...]

    @property
    def slice_count(self) -> int:
        return sum(r.slice_count for r in self.regions)

    def slices(self) -> list[Box]:
        """All slices in image pixels."""
        return [s for r in self.regions for s in r.slices()]

    @classmethod
    def from_summary(cls, summary: dict) -> SlicePlan:
        """The same plan again from its :meth:`summary` (planning is deterministic)."""
        return plan_slices(int(summary["width"]), int(summary["height"]),
                           int(summary["slice_width"]), int(summary["slice_height"]),
                           int(summary["overlap_x"]), int(summary["overlap_y"]),
                           grid=(int(summary["grid_rows"]), int(summary["grid_cols"])))

    def summary(self) -> dict:
        return {"width": self.width, "height": self.height, "slice_width": self.slice_width,
                "slice_height": self.slice_height, "overlap_x": self.overlap_x,
                "overlap_y": self.overlap_y, "grid_rows": self.grid_rows,
                "grid_cols": self.grid_cols, "regions": len(self.regions),
                "slices": self.slice_count}


def axis_starts(length: int, size: int, overlap: int) -> list[int]:
    """Slice start offsets along one axis, exactly as SAHI's ``get_slice_bboxes`` places them."""
    if size >= length:
        return [0]
    step = size - overlap
    starts: list[int] = []
    start = 0
    while start + size < length:
        starts.append(start)
        start += step
    starts.append(length - size)  # the last slice is shifted inward, never padded
    return starts


def sahi_auto_slice_params(width: int, height: int) -> tuple[int, int, int, int]:
    """SAHI's ``auto_slice_resolution`` rule: ``(slice_w, slice_h, overlap_x, overlap_y)``.

    It sizes slices from the image's resolution class and orientation (not from the model),
    e.g. a 4096×4096 image gets 2048-px slices with 40 % overlap.
    """
    factor = max(0, math.ceil(math.log2(width * height)) - 1) if width * height > 1 else 0
    orientation = "vertical" if width < height else "horizontal" if width > height else "square"
    if factor <= 18:
        return width, height, width, height  # low resolution: one slice, "overlap" = itself
    slide, ratio = (1, 0.8) if factor < 21 else (2, 0.4) if factor < 24 else (4, 0.4)
    rows, cols = {"vertical": (slide, slide * 2), "horizontal": (slide * 2, slide),
                  "square": (slide, slide)}[orientation]
    slice_h, slice_w = height // cols, width // rows
    return slice_w, slice_h, int(slice_w * ratio), int(slice_h * ratio)


def validate_slicing(slice_width: int, slice_height: int, overlap: float) -> None:
    """Refuse slice sizes and overlaps that cannot make a sensible plan."""
    if not (32 <= slice_width <= 8192 and 32 <= slice_height <= 8192):
        raise ConfigError(f"slice size must be within 32..8192 px, got "
                          f"{slice_width}×{slice_height}")
    if not (0.0 <= overlap < 0.9):
        raise ConfigError(f"overlap must be in [0, 0.9), got {overlap}")


def _split(items: list[int], parts: int) -> list[list[int]]:
    """``items`` cut into ``parts`` contiguous runs whose lengths differ by at most one."""
    quotient, remainder = divmod(len(items), parts)
    runs, start = [], 0
    for i in range(parts):
        end = start + quotient + (1 if i < remainder else 0)
        runs.append(items[start:end])
        start = end
    return runs


def auto_grid(columns: int, rows: int, *,
              min_slices_per_region: int = DEFAULT_MIN_SLICES_PER_REGION,
              max_regions: int = MAX_MAP_LENGTH) -> tuple[int, int]:
    """A region grid (rows, cols) for a ``columns × rows`` slice grid.

    Enough slices per region to amortize per-task orchestration, never more regions than
    Airflow can map, and region shapes that follow the image's aspect.
    """
    total = columns * rows
    wanted = max(1, min(max_regions, total // max(1, min_slices_per_region)))
    # capped at ``wanted`` too: a tall strip (1 column, many rows) must not get a region per
    # few rows just because its aspect asks for more rows than there are regions to give
    grid_rows = max(1, min(rows, wanted, round(math.sqrt(wanted * rows / columns))))
    grid_cols = max(1, min(columns, wanted // grid_rows))
    while grid_rows * grid_cols > max_regions:  # rounding can overshoot the cap by a row
        grid_rows -= 1
    return grid_rows, grid_cols


def plan_slices(
    width: int,
    height: int,
    slice_width: int,
    slice_height: int,
    overlap_x: int,
    overlap_y: int,
    *,
    grid: tuple[int, int] | None = None,
    min_slices_per_region: int = DEFAULT_MIN_SLICES_PER_REGION,
    max_regions: int = MAX_MAP_LENGTH,
) -> SlicePlan:
    """Plan the slices of a ``width × height`` image and group them into regions.

    ``grid`` = (rows, cols) asks for an explicit region grid (clamped to the slice grid);
    ``None`` chooses one with :func:`auto_grid`.
    """
    if width <= 0 or height <= 0:
        raise ConfigError(f"image size must be positive, got {width}×{height}")
    slice_width, slice_height = min(slice_width, width), min(slice_height, height)
    xs = axis_starts(width, slice_width, overlap_x)
    ys = axis_starts(height, slice_height, overlap_y)
    if grid is None:
        grid_rows, grid_cols = auto_grid(len(xs), len(ys),
                                         min_slices_per_region=min_slices_per_region,
                                         max_regions=max_regions)
    else:
        grid_rows, grid_cols = max(1, min(grid[0], len(ys))), max(1, min(grid[1], len(xs)))
        if grid_rows * grid_cols > max_regions:
            raise ConfigError(f"grid {grid[0]}×{grid[1]} makes {grid_rows * grid_cols} regions, "
                              f"more than the {max_regions} Airflow can map")
    regions = tuple(
        Region(index=r * grid_cols + c, row=r, col=c, xs=tuple(col_xs), ys=tuple(row_ys),
               slice_width=slice_width, slice_height=slice_height)
        for r, row_ys in enumerate(_split(ys, grid_rows))
        for c, col_xs in enumerate(_split(xs, grid_cols))
    )
    return SlicePlan(width, height, slice_width, slice_height, overlap_x, overlap_y,
                     grid_rows, grid_cols, regions)


def parse_grid(text: str | None) -> tuple[int, int] | None:
    """``"auto"``/``None`` → ``None``; ``"3x4"`` (or ``3×4``) → ``(3, 4)`` rows × cols."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return None
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"grid must be 'auto' or ROWSxCOLS like '3x4', got {text!r}") from None
    if rows < 1 or cols < 1:
        raise ConfigError(f"grid rows and cols must be ≥ 1, got {text!r}")
    return rows, cols
