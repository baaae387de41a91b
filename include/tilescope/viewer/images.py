"""The picture under the viewer's boxes: a stored thumbnail, downscaled for the browser.

The api-server reads the run's thumbnail (at most 2048 px, written by ``preprocess``) from
S3 and sends a smaller JPEG, so the browser neither needs S3 credentials nor downloads the
original image (which may be gigabytes).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from tilescope.viewer.keys import ViewerInputError

MIN_SIDE = 64
MAX_SIDE = 2048
DEFAULT_SIDE = 1600
#: refuse to decode anything larger than a thumbnail could be (a thumbnail is ≤ 2048²)
MAX_SOURCE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class Preview:
    """An encoded preview and its pixel size."""

    data: bytes
    media_type: str
    width: int
    height: int


def parse_side(side: str | int | None) -> int:
    """The requested longest side from a query string, in ``[MIN_SIDE, MAX_SIDE]``."""
    if side is None or side == "":
        return DEFAULT_SIDE
    text = str(side)
    if not text.isdigit() or not MIN_SIDE <= int(text) <= MAX_SIDE:
        raise ViewerInputError(f"side must be an integer in [{MIN_SIDE}, {MAX_SIDE}]")
    return int(text)


def downscale(data: bytes, max_side: int = DEFAULT_SIDE, quality: int = 85) -> Preview:
    """``data`` (any Pillow-readable image) as an RGB JPEG whose longest side is at most
    ``max_side`` (never upscaled)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > MAX_SOURCE_PIXELS:
            raise ViewerInputError(f"preview source too large ({image.width}×{image.height})")
        image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
        rgb = image.convert("RGB")
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, optimize=True)
    return Preview(out.getvalue(), "image/jpeg", rgb.width, rgb.height)
