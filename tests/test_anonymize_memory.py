"""An anonymized copy of a big tiled image is made tile by tile: memory does not grow with
the image (as tests/test_memory_bounds.py checks for preprocess and analyze).

Tiled TIFFs of 4096² and 8192² (4× the pixels) made from real photos; boxes to blur or
pixelate cover a large part of each, one of them most of the image. Each copy is written in a
fresh subprocess whose peak RSS is compared with its own baseline after the imports.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from tilescope.samples import build_mosaic

COPY = """
import json, sys
import cv2, imagecodecs, numpy as np, tifffile
from tilescope.anonymize import AnonymizedReader, plan_marks
from tilescope.outputs.anonymized import write_anonymized
from tilescope.readers import TiffReader
from tilescope.stack.procs import peak_rss_mb
spec = json.loads(sys.argv[1])
before = peak_rss_mb()
with TiffReader(open(spec["source"], "rb")) as reader:
    marks = plan_marks(np.array(spec["boxes"]), spec["mode"])
    write_anonymized(AnonymizedReader(reader, marks, spec["mode"]), spec["out"], "tif")
print(json.dumps({"before_mb": before, "rss_mb": peak_rss_mb()}))
"""


def boxes_for(size: int) -> list[list[int]]:
    """One box over most of the image, and a row of smaller ones astride tile borders."""
    boxes = [[size // 16, size // 16, size - size // 16, size - size // 8]]
    for i in range(1, size // 512):
        x = 512 * i - 100
        boxes.append([x, size - 700, x + 300, size - 200])
    return boxes


def copy_growth(tmp_path, size: int, mode: str) -> float:
    source, out = tmp_path / f"src-{size}.tif", tmp_path / f"copy-{size}-{mode}.tif"
    if not source.exists():
        tifffile.imwrite(source, build_mosaic(size), tile=(512, 512), photometric="rgb",
                         compression="zstd")
    spec = {"source": str(source), "out": str(out), "mode": mode, "boxes": boxes_for(size)}
    done = subprocess.run([sys.executable, "-c", COPY, json.dumps(spec)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    with tifffile.TiffFile(out) as written:  # a whole, tiled copy was written
        page = written.pages[0]
        assert page.is_tiled and page.shape == (size, size, 3)
        corner = page.asarray()[:64, :64]
    assert np.array_equal(corner, build_mosaic(size)[:64, :64])  # outside every box
    return figures["rss_mb"] - figures["before_mb"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["blur", "pixelate"])
def test_copy_memory_does_not_grow_with_the_image(mode, tmp_path):
    small = copy_growth(tmp_path, 4096, mode)
    large = copy_growth(tmp_path, 8192, mode)
    image_mb = 8192 * 8192 * 3 / 2**20  # 192 MiB decoded
    # far below one decoded copy of the large image, and ~flat from 4096² to 8192²
    assert large < image_mb / 3, (small, large)
    assert large - small < 24, (small, large)
