"""The overlay picture fills instance masks, scaled to the picture, in the box's colour."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tilescope.detections import Detections
from tilescope.instance_masks import Mask
from tilescope.outputs.overlay import category_colour, render_overlay
from tilescope.previews import preview_format

PNG = preview_format("png")  # lossless: the drawn colours are checked exactly


def test_mask_filled_translucent_at_the_pictures_scale() -> None:
    """A 1200² image drawn at 600²: a mask of the image's rows 600–699, columns 400–599
    becomes rows 300–349, columns 200–299 of the picture, the rest of its box stays dark."""
    binary = np.zeros((200, 300), bool)
    binary[100:, 100:] = True
    mask = Mask.from_array(binary, 300, 500)
    dets = Detections([[300, 500, 600, 700]], [0.9], [1], masks=(mask,))
    png = render_overlay(np.zeros((600, 600, 3), np.uint8), 1200, 1200, dets, ["a", "b"],
                         max_labels=0, fmt=PNG)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    inside = pixels[305:345, 205:295]
    expected = np.round(np.array(category_colour(1)) * 100 / 255)
    assert np.abs(inside - expected).max() <= 1  # 100/255 of the colour over black
    assert pixels[255:295, 155:195].sum() == 0  # the box's unmasked part
    plain = render_overlay(np.zeros((600, 600, 3), np.uint8), 1200, 1200,
                           dets.with_masks(None), ["a", "b"], max_labels=0, fmt=PNG)
    assert np.asarray(Image.open(io.BytesIO(plain)))[305:345, 205:295].sum() == 0
