"""A large tiled TIFF written tile by tile at test time, never held whole in memory.

Its pixels are dark noise — below the blob detector's threshold (:mod:`support.blob_model`),
and compressing about as little as a photo, so the file is large — with bright boxes at
known pixels for the detector to find. A few noise tiles are drawn once and reused, so
writing even 16384² takes a few seconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

TILE = 512
#: the noise's values stay below this (the blob detector's threshold is 128)
DARK = 64


def _tiles(width: int, height: int, boxes: Sequence[Sequence[int]]) -> Iterator[np.ndarray]:
    """Row-major tiles of :data:`TILE`² with the parts of ``boxes`` (x1, y1, x2, y2) they
    hold painted white."""
    noise = np.random.default_rng(15).integers(0, DARK, (7, TILE, TILE, 3), dtype=np.uint8)
    number = 0
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            tile = noise[number % len(noise)]
            number += 1
            inside = [(max(x1, x) - x, max(y1, y) - y, min(x2, x + TILE) - x,
                       min(y2, y + TILE) - y) for x1, y1, x2, y2 in boxes]
            inside = [box for box in inside if box[0] < box[2] and box[1] < box[3]]
            if inside:
                tile = tile.copy()
                for x1, y1, x2, y2 in inside:
                    tile[y1:y2, x1:x2] = 255
            yield tile


def write_big_tiled_tiff(path: Path, width: int, height: int,
                         boxes: Sequence[Sequence[int]]) -> Path:
    """A zstd-compressed tiled RGB TIFF of ``width × height`` at ``path``, encoded tile by
    tile (tifffile's tile buffer bounded too)."""
    tifffile.imwrite(path, _tiles(width, height, boxes), shape=(height, width, 3),
                     dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                     compression="zstd", compressionargs={"level": 1}, maxworkers=1,
                     buffersize=16 << 20)
    return path
