"""Banded region prediction: same slices, same order, same pixels as one whole-region read,
with the next band read while the model runs."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import tifffile
from support.blob_model import BrightBlobModel, blob_image

from tilescope.banding import predict_region, region_bands
from tilescope.readers import reader_for_bytes
from tilescope.slicing import plan_slices


def test_bands_group_whole_slice_rows_in_region_order() -> None:
    region = plan_slices(3000, 2000, 256, 256, 51, 51, grid=(1, 1)).regions[0]
    bands = region_bands(region, min_slices=20)
    per_row = len(region.xs)
    assert all(len(b.slices) % per_row == 0 or b is bands[-1] for b in bands)
    assert all(len(b.slices) >= 20 for b in bands[:-1])
    assert [s for b in bands for s in b.slices] == region.slices()
    for band in bands:  # each band's box is exactly the union of its slices
        assert band.box.x1 == min(s.x1 for s in band.slices)
        assert band.box.y2 == max(s.y2 for s in band.slices)


@pytest.mark.parametrize("min_slices", [1, 8, 1000])
def test_banded_prediction_equals_one_whole_region_read(min_slices: int) -> None:
    image, _ = blob_image(1500, 1100, 60, seed=3)
    out = io.BytesIO()
    tifffile.imwrite(out, image, tile=(128, 128), photometric="rgb", compression="zstd")
    region = plan_slices(1500, 1100, 256, 256, 51, 51, grid=(2, 2)).regions[3]
    reader = reader_for_bytes(out.getvalue())
    model = BrightBlobModel()
    banded = predict_region(reader, region, model, region_bands(region, min_slices))
    assert banded.slices == region.slices()
    whole = BrightBlobModel().predict(
        [image[s.y1:s.y2, s.x1:s.x2] for s in region.slices()])
    for got, want in zip(banded.per_slice, whole, strict=True):
        assert np.array_equal(got.boxes, want.boxes)
        assert np.array_equal(got.category_ids, want.category_ids)
    # overlapping bands never fetch a stored tile twice
    rows = range(region.box.y1 // 128, -(-region.box.y2 // 128))
    cols = range(region.box.x1 // 128, -(-region.box.x2 // 128))
    assert reader.tiles_read == len(rows) * len(cols)
    assert banded.model > 0 and banded.read_wait >= 0


def test_next_band_is_read_while_the_model_runs() -> None:
    """The reader is called for band k+1 before the model returns from band k."""
    image, _ = blob_image(1024, 1024, 10, seed=1)
    region = plan_slices(1024, 1024, 256, 256, 0, 0, grid=(1, 1)).regions[0]
    events: list[str] = []
    second_read = threading.Event()

    class Reader:
        width = height = 1024
        rgb_nodata = None  # as ImageReader: no nodata, so no slice is skipped

        def valid_mask(self, box):  # as ImageReader: no mask or alpha either
            return None

        def read(self, box):
            events.append(f"read {box.y1}")
            if box.y1 > 0:
                second_read.set()
            return image[box.y1:box.y2, box.x1:box.x2]

    class WaitingModel(BrightBlobModel):
        def predict(self, images):
            if not events[-1].startswith("read 768"):
                assert second_read.wait(5), "the next band was not read ahead"
            events.append("predict")
            return super().predict(images)

    banded = predict_region(Reader(), region, WaitingModel(), region_bands(region, 4))
    assert len(banded.per_slice) == 16
    assert events[:3] == ["read 0", "read 256", "predict"]
