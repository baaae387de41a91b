"""Run a model over a region band by band, fetching the next band while this one computes.

Reading a whole region before the first model call puts every byte of I/O on the critical
path: a 4k×8k region staged in S3 is ~100 MB, a second or more at loopback speeds. Cutting the
region into horizontal bands of whole slice rows and reading band *k+1* on a background thread
while the model runs on band *k* hides that time behind the model (model sessions and socket
reads both release the GIL). Bands overlap where slices overlap; readers that cache their last
tile rows (:class:`~tilescope.readers.tiff.TiffReader`) fetch each stored byte once anyway.

Slices whose every pixel is the image's nodata (a GeoTIFF's collar, by its nodata value,
mask or alpha band, decided on the source's pixels: see
:attr:`~tilescope.readers.base.ImageReader.rgb_nodata` and
:meth:`~tilescope.readers.base.ImageReader.valid_mask`) are not sent to the model: they
get no detections and are counted as skipped (:func:`nodata_slices`, on every path that
reads slices, so the CLI and the DAG decide alike).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tilescope.detections import Detections
from tilescope.models.base import DetectionModel
from tilescope.readers.base import ImageReader
from tilescope.slicing import Box, Region

#: Fewest slices handed to one model call: enough for the model's own parallelism.
MIN_BAND_SLICES = 8


@dataclass(frozen=True)
class Band:
    """Consecutive slice rows of a region: the pixels they span and their slices in order."""

    box: Box
    slices: tuple[Box, ...]


@dataclass(frozen=True)
class BandedPrediction:
    """Per-slice detections in the region's slice order, and where the time went."""

    per_slice: list[Detections]
    slices: list[Box]
    read_wait: float  # seconds the model waited for pixels (the I/O left on the critical path)
    model: float  # seconds inside model calls
    skipped: int = 0  # slices entirely nodata, not sent to the model (no detections)


def region_bands(region: Region, min_slices: int = MIN_BAND_SLICES) -> list[Band]:
    """The region's slice rows grouped top to bottom into bands of at least ``min_slices``
    slices (the last band may be smaller); slice order is the region's own (row-major)."""
    per_row = len(region.xs)
    rows_per_band = max(1, -(-min_slices // per_row))
    bands = []
    for first in range(0, len(region.ys), rows_per_band):
        ys = region.ys[first:first + rows_per_band]
        slices = tuple(Box(x, y, x + region.slice_width, y + region.slice_height)
                       for y in ys for x in region.xs)
        box = Box(region.xs[0], ys[0], region.xs[-1] + region.slice_width,
                  ys[-1] + region.slice_height)
        bands.append(Band(box, slices))
    return bands


def nodata_slices(reader: ImageReader, pixels: np.ndarray, origin: Box,
                  slices: Sequence[Box]) -> list[bool]:
    """Per slice of ``pixels`` (read from ``reader`` at ``origin``): is every pixel of it
    the reader's :attr:`~tilescope.readers.base.ImageReader.rgb_nodata`, or else has no
    pixel of it data in the source's
    :meth:`~tilescope.readers.base.ImageReader.valid_mask` (nodata of a stretched scene,
    an alpha band, a GDAL mask)? All False when the reader knows neither. One pixel of data
    keeps a slice."""
    nodata = reader.rgb_nodata
    if nodata is None:
        mask = reader.valid_mask(origin)
        if mask is None:
            return [False] * len(slices)
        views = [mask[s.y1 - origin.y1:s.y2 - origin.y1, s.x1 - origin.x1:s.x2 - origin.x1]
                 for s in slices]
        return [bool(v.size) and not bool(np.any(v)) for v in views]
    out = []
    for s in slices:
        view = pixels[s.y1 - origin.y1:s.y2 - origin.y1, s.x1 - origin.x1:s.x2 - origin.x1]
        out.append(bool(view.size) and bool(np.all(view == nodata)))
    return out


def predict_kept(model: DetectionModel, views: Sequence[np.ndarray],
                 skip: Sequence[bool]) -> list[Detections]:
    """``model`` on the views not marked in ``skip``; skipped views get no detections (no
    model call at all when every view is skipped)."""
    kept = [v for v, s in zip(views, skip, strict=True) if not s]
    found = iter(model.predict(kept) if kept else [])
    return [Detections.empty() if s else next(found) for s in skip]


def predict_region(reader: ImageReader, region: Region, model: DetectionModel,
                   bands: Sequence[Band] | None = None, *,
                   skip_nodata: bool = True) -> BandedPrediction:
    """Every slice of ``region`` through ``model``, band by band with one band read ahead;
    with ``skip_nodata``, slices entirely nodata are not (:func:`nodata_slices`)."""
    bands = list(bands if bands is not None else region_bands(region))
    per_slice: list[Detections] = []
    slices: list[Box] = []
    waited = computed = 0.0
    skipped = 0
    # One reader thread: a reader is used by one thread at a time (the next read is only
    # submitted once the previous one has been collected).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="band-read") as io:
        pending = io.submit(reader.read, bands[0].box)
        for i, band in enumerate(bands):
            started = time.perf_counter()
            pixels = pending.result()
            waited += time.perf_counter() - started
            if i + 1 < len(bands):
                pending = io.submit(reader.read, bands[i + 1].box)
            origin = band.box
            views = [pixels[s.y1 - origin.y1:s.y2 - origin.y1, s.x1 - origin.x1:s.x2 - origin.x1]
                     for s in band.slices]
            skip = (nodata_slices(reader, pixels, origin, band.slices) if skip_nodata
                    else [False] * len(views))
            skipped += sum(skip)
            started = time.perf_counter()
            per_slice.extend(predict_kept(model, views, skip))
            computed += time.perf_counter() - started
            slices.extend(band.slices)
    return BandedPrediction(per_slice, slices, waited, computed, skipped)
