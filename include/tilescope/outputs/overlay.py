"""The overlay picture: detections drawn with labels on a downscaled copy of the image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tilescope.detections import Detections
from tilescope.previews import PreviewFormat, encode_preview, preview_format

#: long side of the overlay picture, in pixels
DEFAULT_OVERLAY_SIDE = 2048
#: labels drawn at most (the highest-scoring boxes): a 2048-px picture cannot show more
#: legibly, and text is what costs — 800k labelled boxes took 92 s, the boxes alone a few
DEFAULT_MAX_LABELS = 400


def category_colour(category_id: int) -> tuple[int, int, int]:
    """A stable, well-separated colour per category (golden-ratio hue walk)."""
    import colorsys

    hue = (category_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def render_overlay(thumbnail: np.ndarray, image_width: int, image_height: int,
                   detections: Detections, category_names: Sequence[str], *,
                   regions: Sequence[Sequence[int]] = (), failed: Sequence[int] = (),
                   max_labels: int = DEFAULT_MAX_LABELS,
                   fmt: PreviewFormat | None = None) -> bytes:
    """:func:`draw_overlay` encoded as ``fmt`` (default: :mod:`tilescope.previews`' WebP)."""
    canvas = draw_overlay(thumbnail, image_width, image_height, detections, category_names,
                          regions=regions, failed=failed, max_labels=max_labels)
    return encode_preview(canvas, fmt or preview_format(None))


def draw_overlay(thumbnail: np.ndarray, image_width: int, image_height: int,
                 detections: Detections, category_names: Sequence[str], *,
                 regions: Sequence[Sequence[int]] = (), failed: Sequence[int] = (),
                 max_labels: int = DEFAULT_MAX_LABELS) -> Image.Image:
    """``thumbnail`` with boxes, labels and (optionally) the region grid drawn on it.

    ``thumbnail`` is the whole image downscaled; detections are in full-image pixels. Every
    box is drawn; the ``max_labels`` highest-scoring ones also get their label (the results
    JSON, COCO file and viewer hold every detection's class and score). Instance masks,
    when the detections have them, are filled translucent in their category's colour.
    ``regions`` are region boxes [x1, y1, x2, y2]; those whose position is in ``failed`` are
    hatched red so a partial result is visible at a glance.
    """
    canvas = Image.fromarray(np.ascontiguousarray(thumbnail)).convert("RGB")
    scale_x = canvas.width / image_width
    scale_y = canvas.height / image_height
    draw = ImageDraw.Draw(canvas, "RGBA")
    font = ImageFont.load_default(size=max(10, canvas.width // 120))
    failed_set = set(failed)
    for position, (x1, y1, x2, y2) in enumerate(regions):
        outline = (255, 40, 40, 255) if position in failed_set else (255, 255, 255, 90)
        fill = (255, 40, 40, 60) if position in failed_set else None
        draw.rectangle([x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y],
                       outline=outline, fill=fill, width=1)
    width = max(1, canvas.width // 600)
    boxes = detections.boxes.astype(np.float64) * [scale_x, scale_y, scale_x, scale_y]
    colours = {int(c): category_colour(int(c)) for c in np.unique(detections.category_ids)}
    if detections.masks is not None:
        canvas = _masks_filled(canvas, detections, colours, scale_x, scale_y)
        draw = ImageDraw.Draw(canvas, "RGBA")
    for (x1, y1, x2, y2), category in zip(boxes.tolist(), detections.category_ids.tolist(),
                                          strict=True):
        draw.rectangle([x1, y1, x2, y2], outline=colours[category], width=width)
    labelled = np.argsort(-detections.scores, kind="stable")[:max(0, max_labels)]
    for index in sorted(labelled.tolist()):  # drawn in detection order, as before
        x1, y1 = boxes[index, 0], boxes[index, 1]
        score, category = detections.scores[index], int(detections.category_ids[index])
        colour = colours[category]
        name = category_names[category] if 0 <= category < len(category_names) else str(category)
        label = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
        text_y = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, text_y, x1 + (right - left) + 4, text_y + (bottom - top) + 2],
                       fill=(*colour, 200))
        draw.text((x1 + 2, text_y), label, fill=(0, 0, 0), font=font)
    return canvas


def _masks_filled(canvas: Image.Image, detections: Detections,
                  colours: dict[int, tuple[int, int, int]], scale_x: float,
                  scale_y: float) -> Image.Image:
    """``canvas`` with every mask (scaled to it) filled at 40 % opacity: one layer, one
    composite, so thousands of masks cost one pass over the picture."""
    layer = np.zeros((canvas.height, canvas.width, 4), np.uint8)
    for mask, category in zip(detections.masks or (), detections.category_ids.tolist(),
                              strict=True):
        small = mask.transformed(scale_x, scale_y).clipped(canvas.width, canvas.height)
        if small.width:
            window = layer[small.y:small.y + small.height, small.x:small.x + small.width]
            window[small.array()] = (*colours[category], 100)
    return Image.alpha_composite(canvas.convert("RGBA"), Image.fromarray(layer, "RGBA")
                                 ).convert("RGB")
