"""The overlay of a video: a contact sheet — a grid of downscaled sampled frames, each drawn
with its own detections (by :func:`tilescope.outputs.overlay.draw_overlay`, as an image's
overlay is) and captioned with its frame number, time and count.

The frames are chosen while the video is decoded
(:class:`tilescope.video.sampling.SheetCells`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tilescope.outputs.overlay import draw_overlay
from tilescope.previews import PreviewFormat, encode_preview, preview_format
from tilescope.results import Result

#: cells per sheet row
SHEET_COLUMNS = 6
_CAPTION = 18
_GAP = 4
_BACKGROUND = (24, 24, 24)


def pack_cells(cells: Sequence[tuple[int, np.ndarray]]) -> tuple[bytes, dict[str, Any]]:
    """The chosen pictures side by side in one PNG (how preprocess hands them to store),
    and the layout to cut them out again with :func:`unpack_cells`. Lossless, unlike the
    previews: a lossy codec's blocks would bleed each cell's border into its neighbours."""
    height = max(c.shape[0] for _, c in cells)
    strip = np.zeros((height, sum(c.shape[1] for _, c in cells), 3), np.uint8)
    x, boxes = 0, []
    for _, cell in cells:
        strip[:cell.shape[0], x:x + cell.shape[1]] = cell
        boxes.append([x, 0, x + cell.shape[1], cell.shape[0]])
        x += cell.shape[1]
    out = io.BytesIO()
    Image.fromarray(strip).save(out, format="PNG", compress_level=1)
    return out.getvalue(), {"positions": [p for p, _ in cells], "boxes": boxes}


def unpack_cells(png: bytes, layout: dict[str, Any]) -> list[tuple[int, np.ndarray]]:
    """The (position, picture) pairs :func:`pack_cells` packed."""
    with Image.open(io.BytesIO(png)) as image:
        strip = np.asarray(image.convert("RGB"))
    return [(int(p), strip[y1:y2, x1:x2])
            for p, (x1, y1, x2, y2) in zip(layout["positions"], layout["boxes"], strict=True)]


def _caption(result: Result, position: int, count: int) -> str:
    frame = result.frames[position] if result.frames else None
    if frame is None:
        return f"{count} detections"
    seconds = frame.timestamp_ms / 1000
    return f"#{frame.frame_index}  {int(seconds // 60)}:{seconds % 60:06.3f}  {count} det."


def render_contact_sheet(result: Result, cells: Sequence[tuple[int, np.ndarray]],
                         columns: int = SHEET_COLUMNS, fmt: PreviewFormat | None = None
                         ) -> bytes:
    """The sheet encoded as ``fmt`` (default: :mod:`tilescope.previews`' WebP): each cell
    is frame ``position`` of ``result`` with its boxes (and its failed regions hatched, as on
    an image's overlay) and a caption."""
    if not cells:
        raise ValueError("a contact sheet needs at least one frame")
    columns = max(1, min(columns, len(cells)))
    rows = math.ceil(len(cells) / columns)
    cell_w = max(c.shape[1] for _, c in cells)
    cell_h = max(c.shape[0] for _, c in cells)
    sheet = Image.new("RGB", (columns * (cell_w + _GAP) + _GAP,
                              rows * (cell_h + _CAPTION + _GAP) + _GAP), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for number, (position, picture) in enumerate(cells):
        detections = result.frame_detections(position)
        units = [r for r in result.regions
                 if r.frame is not None and result.frames
                 and r.frame.frame_index == result.frames[position].frame_index]
        drawn = draw_overlay(picture, result.image.width, result.image.height, detections,
                             result.category_names,
                             regions=[u.box for u in units] if len(units) > 1 else (),
                             failed=[i for i, u in enumerate(units) if u.status != "success"])
        x = _GAP + (number % columns) * (cell_w + _GAP)
        y = _GAP + (number // columns) * (cell_h + _CAPTION + _GAP)
        sheet.paste(drawn, (x, y + _CAPTION))
        draw.text((x + 2, y + 3), _caption(result, position, len(detections)),
                  fill=(235, 235, 235), font=font)
    return encode_preview(sheet, fmt or preview_format(None))
