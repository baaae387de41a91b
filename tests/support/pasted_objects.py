"""Real objects pasted at known positions: images whose ground truth is known exactly.

Each object is a crop of a real photo (scikit-image's astronaut, Debian darknet's giraffe,
eagle and dog), cut where NanoDet finds it in the original and resized so its longer side is
what the test asks; the COCO ground truth is the pasted rectangle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from tilescope.samples import sample_array

#: class → (sample photo, the object's box in it: x1, y1, x2, y2)
CROPS = {"giraffe": ("giraffe", (165, 30, 452, 443)), "bird": ("eagle", (132, 88, 601, 440)),
         "person": ("astronaut", (14, 14, 364, 507)), "dog": ("dog", (130, 209, 323, 538))}
CATEGORIES = sorted(CROPS)


def paste(canvas: np.ndarray, name: str, x: int, y: int, longer_side: int) -> list[int]:
    """Paste ``name``'s crop with its top-left at (x, y); its COCO box ``[x, y, w, h]``."""
    photo, (x1, y1, x2, y2) = CROPS[name]
    crop = Image.fromarray(sample_array(photo)[y1:y2, x1:x2])
    scale = longer_side / max(crop.size)
    w, h = round(crop.size[0] * scale), round(crop.size[1] * scale)
    canvas[y:y + h, x:x + w] = np.asarray(crop.resize((w, h), Image.BILINEAR))
    return [x, y, w, h]


def ground_truth(file_name: str, size: tuple[int, int],
                 objects: list[tuple[str, list[int]]]) -> dict[str, Any]:
    """COCO ground truth for one image of pasted objects."""
    return {"images": [{"id": 1, "file_name": file_name, "width": size[0], "height": size[1]}],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CATEGORIES)],
            "annotations": [{"id": i + 1, "image_id": 1, "bbox": box,
                             "category_id": CATEGORIES.index(name) + 1}
                            for i, (name, box) in enumerate(objects)]}


def big_and_small(file_name: str = "scene.png") -> tuple[np.ndarray, dict[str, Any]]:
    """1216×1024: one giraffe 900 px tall (model-sized slices cut it; the full-image pass
    sees it whole) and six people, birds and dogs 80 px long in a strip on the right (a
    1024-px slice shrinks them below what the model sees)."""
    canvas = np.full((1024, 1216, 3), 120, np.uint8)
    objects = [("giraffe", paste(canvas, "giraffe", 40, 40, 900))]
    for row, name in enumerate(("bird", "person", "dog") * 2):
        x, y = 1000 + 60 * (row % 2), 20 + row * 165
        objects.append((name, paste(canvas, name, x, y, 80)))
    return canvas, ground_truth(file_name, (1216, 1024), objects)
