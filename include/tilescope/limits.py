"""Budgets a run must fit before any region task exists: input bytes, decoded pixels, slices,
regions, video frames.

A request over budget is refused in preprocess with the numbers in the message, instead of
failing later and worse: Airflow refusing to expand more mapped tasks than its
``[core] max_map_length`` (the run stuck with a cryptic ``unmappable_return_value_length``),
a worker decoding a gigapixel JPEG into memory, or a small slice size quietly asking for
hours of model time. Operators set the budgets per deployment in the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tilescope.errors import BadImageError, ConfigError, ImageTooLargeError
from tilescope.readers.base import DEFAULT_MAX_PIXELS
from tilescope.settings import MAX_FRAMES, MAX_PIXELS, MAX_SLICES
from tilescope.slicing import MAX_MAP_LENGTH, SlicePlan

#: trigger-time schema (the DAG's Params) for what :func:`validate_slicing` and the region
#: cap accept later: a slice size of 32..8192 px, a grid of 1..1024 regions per side
SLICE_SIZE_PATTERN = (r"^(model|auto|3[2-9]|[4-9][0-9]|[1-9][0-9]{2}|[1-7][0-9]{3}|80[0-9]{2}"
                      r"|81[0-8][0-9]|819[0-2])$")
_GRID_SIDE = r"([1-9][0-9]{0,2}|10[01][0-9]|102[0-4])"
GRID_PATTERN = rf"^(auto|{_GRID_SIDE}x{_GRID_SIDE})$"
#: default slice budget: ~40 CPU-minutes of NanoDet; a 10-gigapixel tiled scan at 416 px
DEFAULT_MAX_SLICES: int = MAX_SLICES.default
#: default budget of sampled video frames: an hour of video at 1 frame per second
DEFAULT_MAX_FRAMES: int = MAX_FRAMES.default
#: default refusal size for an input object (the pixel limit guards decoding separately)
DEFAULT_MAX_BYTES = 2 * 1024**3
SLICES_ENV, FRAMES_ENV = MAX_SLICES.name, MAX_FRAMES.name


@dataclass(frozen=True)
class RunLimits:
    """What one run may cost.

    ``max_pixels`` guards *decoding* (JPEG/PNG/strip TIFF are decoded whole; a tiled TIFF is
    read region by region and is bounded by the slice budget instead). ``max_slices`` bounds
    model work; ``max_regions`` is the number of mapped tasks Airflow can create.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_slices: int = DEFAULT_MAX_SLICES
    max_regions: int = MAX_MAP_LENGTH
    #: sampled frames of one video (each is staged and analyzed like an image)
    max_frames: int = DEFAULT_MAX_FRAMES
    #: bytes of one input object, checked from its size before anything is read
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *,
                         max_regions: int = MAX_MAP_LENGTH) -> RunLimits:
        """``TILESCOPE_MAX_PIXELS``, ``TILESCOPE_MAX_SLICES`` and ``TILESCOPE_MAX_FRAMES``
        (defaults when unset)."""
        return cls(max_pixels=MAX_PIXELS.get(environ), max_slices=MAX_SLICES.get(environ),
                   max_regions=max_regions, max_frames=MAX_FRAMES.get(environ))

    def check_size(self, uri: str, size: int) -> None:
        """Refuse an empty object, or one over the byte budget, before reading it."""
        if size == 0:
            raise BadImageError(f"{uri} is empty (0 bytes)")
        if size > self.max_bytes:
            raise ImageTooLargeError(f"{uri} is {size:,} bytes, over the limit of "
                                     f"{self.max_bytes:,}")

    def check_plan(self, plan: SlicePlan) -> None:
        """Refuse a plan over the slice or region budget, saying by how much."""
        geometry = (f"{plan.width}×{plan.height} image in {plan.slice_width}×"
                    f"{plan.slice_height} slices (overlap {plan.overlap_x}×{plan.overlap_y} px)")
        if plan.slice_count > self.max_slices:
            raise ConfigError(f"{geometry} makes {plan.slice_count:,} slices, over the budget "
                              f"of {self.max_slices:,} ({SLICES_ENV}); use larger slices or "
                              f"less overlap")
        if len(plan.regions) > self.max_regions:
            raise ConfigError(f"{geometry} in a {plan.grid_rows}×{plan.grid_cols} grid makes "
                              f"{len(plan.regions):,} regions, more than the {self.max_regions:,}"
                              f" mapped tasks Airflow allows ([core] max_map_length)")

    def check_frames(self, frames: int, what: str) -> None:
        """Refuse more sampled video frames than the budget; ``what`` says where the count
        comes from, e.g. ``"79.5 s of video at 2 fps"``."""
        if frames > self.max_frames:
            raise ConfigError(f"{what} makes {frames:,} frames, over the budget of "
                              f"{self.max_frames:,} ({FRAMES_ENV}); lower video_fps")

    def check_video_plan(self, frames: int, plan: SlicePlan) -> None:
        """Refuse a video whose frames together exceed the slice budget (each frame is
        planned like an image: ``plan``)."""
        self.check_plan(plan)
        total = frames * plan.slice_count
        if total > self.max_slices:
            raise ConfigError(f"{frames:,} frames × {plan.slice_count:,} slices of "
                              f"{plan.width}×{plan.height} ({plan.slice_width}×"
                              f"{plan.slice_height} slices) make {total:,} slices, over the "
                              f"budget of {self.max_slices:,} ({SLICES_ENV}); lower "
                              f"video_fps or use larger slices")
