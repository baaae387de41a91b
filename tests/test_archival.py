"""Archival copies (:mod:`tilescope.archival`) on a real photo: the adaptive quality is the
lowest setting that reaches the SSIM target (checked against a sweep of every setting), the
copies decode with a decoder other than the one that wrote them, and the tiled TIFF is
lossless and written tile by tile."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from tilescope import archival
from tilescope.archival import ArchivePolicy, archive_pixels, archive_reader, decode, encode
from tilescope.errors import ConfigError
from tilescope.readers.array import ArrayReader
from tilescope.samples import sample_array


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 160×200 crop of the astronaut photo: face, suit and flag (small, so a sweep of
    every quality setting stays quick)."""
    return np.ascontiguousarray(sample_array("astronaut")[40:200, 150:350])


def test_banded_ssim_equals_one_structural_similarity_call(photo):
    noisy = np.clip(photo.astype(int) + np.random.default_rng(1).integers(-20, 20, photo.shape),
                    0, 255).astype(np.uint8)
    whole = structural_similarity(photo, noisy, channel_axis=2, data_range=255)
    for rows in (7, 16, 61, 1000):
        assert archival.ssim(photo, noisy, band_rows=rows) == pytest.approx(whole, abs=1e-12)


def test_banded_ssim_leaves_the_unscored_boxes_out(photo):
    """Anonymized regions are left out of the mean: equal, band size whatever, to the mean
    of one structural_similarity map over the pixels outside the boxes (and the 3-pixel
    border). Seen red with the mask's rows not offset by the band's first row."""
    from tilescope.slicing import Box

    noisy = np.clip(photo.astype(int) + np.random.default_rng(2).integers(-20, 20, photo.shape),
                    0, 255).astype(np.uint8)
    boxes = [Box(10, 5, 90, 70), Box(60, 100, 200, 158), Box(0, 150, 30, 160)]
    _, full = structural_similarity(photo, noisy, channel_axis=2, data_range=255, full=True)
    scored = np.zeros(photo.shape[:2], bool)
    scored[3:-3, 3:-3] = True
    for box in boxes:
        scored[box.y1:box.y2, box.x1:box.x2] = False
    expected = float(full[scored].mean())
    for rows in (7, 16, 61, 1000):
        assert archival.ssim(photo, noisy, band_rows=rows, unscored=boxes) == \
            pytest.approx(expected, abs=1e-12)
    assert archival.ssim(photo, noisy, unscored=[Box(0, 0, 200, 160)]) == 1.0  # nothing left


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
@pytest.mark.parametrize("target", [0.9, 0.95])
def test_adaptive_quality_is_the_lowest_setting_reaching_the_target(photo, fmt, target):
    quality, data, reached, met = archival.lowest_quality(photo, fmt, target)
    lo, hi = archival.QUALITY_RANGE[fmt]
    sweep = {q: archival.ssim(photo, decode(encode(photo, fmt, q), fmt))
             for q in range(lo, hi + 1)}
    lowest = min(q for q, value in sweep.items() if value >= target)
    assert met and quality == lowest, (quality, lowest)
    assert reached == pytest.approx(sweep[quality]) and reached >= target
    assert data == encode(photo, fmt, quality)


def test_an_unreachable_target_takes_the_highest_setting_and_says_so(photo):
    quality, _, reached, met = archival.lowest_quality(photo, "jpeg", 0.99999)
    assert (quality, met) == (95, False) and reached < 0.99999


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_a_lossy_archive_decodes_with_opencv(photo, fmt):
    data, outcome = archive_pixels(photo, ArchivePolicy(format=fmt, ssim=0.95), 10**6)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # not Pillow
    assert decoded is not None and decoded.shape == photo.shape
    independent = structural_similarity(photo, decoded[..., ::-1], channel_axis=2,
                                        data_range=255)
    assert independent >= 0.95 and independent == pytest.approx(outcome.ssim, abs=0.01)
    assert outcome.target_met and outcome.bytes == len(data)
    assert outcome.bytes_saved == 10**6 - len(data)


def test_a_tiff_archive_is_streamed_tile_by_tile_lossless_and_pillow_decodes_it(tmp_path):
    big = np.ascontiguousarray(np.tile(sample_array("astronaut"), (3, 2, 1)))  # 1536×1024
    reader = ArrayReader(big)
    boxes: list = []
    original_read = reader.read
    reader.read = lambda box: boxes.append(box) or original_read(box)  # type: ignore
    path = tmp_path / "copy.tif"
    outcome = archive_reader(reader, ArchivePolicy(format="tiff"), str(path), big.nbytes)
    assert {(b.x2 - b.x1, b.y2 - b.y1) for b in boxes} == {(512, 512)}  # never whole
    with Image.open(path) as image:  # libtiff, not tifffile + imagecodecs that wrote it
        assert np.array_equal(np.asarray(image), big)
    assert outcome.ssim == 1.0 and outcome.quality is None and outcome.bytes < big.nbytes


def test_max_side_downscales_and_the_ssim_is_against_the_downscaled_source(tmp_path):
    reader = ArrayReader(sample_array("astronaut"))
    outcome = archive_reader(reader, ArchivePolicy(format="webp", max_side=200),
                             str(tmp_path / "small.webp"), 1000)
    with Image.open(tmp_path / "small.webp") as image:
        assert image.size == (200, 200) == (outcome.width, outcome.height)
    assert outcome.target_met and outcome.ssim >= 0.95


def test_bad_policies_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="archive_format must be one of"):
        ArchivePolicy(format="gif")
    with pytest.raises(ConfigError, match="needs an archival copy"):
        ArchivePolicy(keep_original="delete")
    with pytest.raises(ConfigError, match="extension"):
        archival.format_of("copy.bmp")
    assert archival.format_of("s3://b/x/copy.JPEG") == "jpeg"
    with pytest.raises(ConfigError, match="at most 16383"):
        archive_pixels(np.zeros((8, 16400, 3), np.uint8), ArchivePolicy(format="webp"), 1)


def test_the_image_stays_readable_by_pillow_in_every_available_format(photo):
    for fmt in archival.available_formats():
        data, _ = archive_pixels(photo, ArchivePolicy(format=fmt, quality=80), 1)
        if fmt == "jxl":  # only libjxl reads JPEG XL here
            assert decode(data, fmt).shape == photo.shape
            continue
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (photo.shape[1], photo.shape[0])
