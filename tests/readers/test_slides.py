"""Whole-slide scans (issue 15, item 4): an Aperio SVS layout and a pyramidal OME-TIFF, written
at test time from real photos, read by pyramid level, tile by tile over ranged GETs from a
real S3 server, with their microns per pixel and objective power; broken pyramids refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from support.slides import (
    OME_SIZE,
    SVS_MPP,
    SVS_POWER,
    ome_xml,
    slide_pixels,
    write_ome,
    write_svs,
)

from tilescope.errors import BadImageError, ConfigError
from tilescope.layout import open_source
from tilescope.microscopy import SlideError, SlideScale
from tilescope.readers import open_image
from tilescope.readers.tiff import TiffReader
from tilescope.slicing import Box

BUCKET = "slides"


@pytest.fixture
def bucket(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


def put_file(client, path: Path) -> str:
    client.put_object(Bucket=BUCKET, Key=f"incoming/{path.name}", Body=path.read_bytes())
    return f"s3://{BUCKET}/incoming/{path.name}"


def ranged_file(reader: TiffReader):
    """The ranged S3 file under the reader's read buffer (counts GETs and bytes)."""
    return reader._tiff.filehandle._fh.raw


def level_pixels(path: Path, level: int) -> np.ndarray:
    """Level ``level`` of a slide as tifffile decodes it whole: the reference."""
    with tifffile.TiffFile(path) as tiff:
        return tiff.series[0].levels[level].asarray()


def test_an_svs_is_read_at_20x_tile_by_tile_over_ranged_gets(bucket, tmp_path: Path):
    path = write_svs(tmp_path / "slide.svs", slide_pixels())
    uri = put_file(bucket, path)
    size = path.stat().st_size
    with open_source(uri, bucket, magnification=20) as reader:
        page = reader._page
        assert page.jpegtables is not None and page.compression == 7  # shared JPEG tables
        assert (reader.width, reader.height) == (1024, 768)
        scale = reader.microscopy
        assert scale is not None and (scale.kind, scale.level) == ("svs", 1)
        assert scale.mpp == (SVS_MPP, SVS_MPP) and scale.objective_power == SVS_POWER
        assert scale.levels == ((2048, 1536), (1024, 768), (256, 192))
        assert scale.magnification() == 20 and scale.level_mpp() == (2 * SVS_MPP, 2 * SVS_MPP)
        raw = ranged_file(reader)
        before = raw.bytes_read
        crop = reader.read(Box(300, 200, 700, 500))  # 2 × 2 tiles of level 1
        assert reader.tiles_read == 4
        assert np.array_equal(crop, level_pixels(path, 1)[200:500, 300:700])
        # only those tiles came over the wire (two ranged GETs of a 64 KiB-buffered reader
        # per tile row), never the whole object nor the whole level
        tiles = sum(page.databytecounts[i] for i in (1, 2, 5, 6))
        assert raw.bytes_read - before <= tiles + 2 * (64 << 10), (raw.bytes_read - before)
        assert raw.bytes_read - before < size / 5, (raw.bytes_read - before, size)
        assert raw.bytes_read < size / 3, (raw.bytes_read, size)


def test_an_ome_tiff_pyramid_is_read_by_level_with_its_physical_size(bucket, tmp_path: Path):
    path = write_ome(tmp_path / "slide.ome.tif", slide_pixels(*OME_SIZE),
                     physical_size=("500", "nm"))
    uri = put_file(bucket, path)
    with open_source(uri, bucket, magnification=10) as reader:
        scale = reader.microscopy
        assert scale is not None and (scale.kind, scale.level) == ("ome", 1)
        assert (reader.width, reader.height) == (1024, 768) == scale.size
        assert scale.mpp == (0.5, 0.5) and scale.objective_power == 20.0
        # exact per axis: 2047 / 1024 across, 1535 / 768 down
        assert scale.downsample() == (2047 / 1024, 1535 / 768)
        crop = reader.read(Box(500, 100, 900, 700))
        assert np.array_equal(crop, level_pixels(path, 1)[100:700, 500:900])
        assert ranged_file(reader).bytes_read < path.stat().st_size / 3
    with open_source(uri, bucket) as reader:  # no magnification: level 0, scale still read
        assert (reader.width, reader.height) == OME_SIZE
        assert reader.microscopy is not None and reader.microscopy.level == 0


def test_a_slides_thumbnail_comes_from_its_smallest_level(bucket, tmp_path: Path):
    path = write_svs(tmp_path / "slide.svs", slide_pixels())
    with open_source(put_file(bucket, path), bucket) as reader:
        thumbnail = reader.thumbnail(256)
        assert thumbnail.shape == (192, 256, 3)
        assert reader.tiles_read == 1  # level 2 (256 × 192) is one tile
        expected = level_pixels(path, 2)
        assert np.abs(thumbnail.astype(int) - expected).mean() < 1.0


def test_the_scale_survives_the_result_json():
    scale = SlideScale("ome", ((2047, 1535), (1024, 768)), (0.5, 0.25), 20.0, level=1)
    again = SlideScale.from_dict(scale.to_dict())
    assert again == scale
    data = scale.to_dict()
    assert data["level_mpp"] == [0.5 * 2047 / 1024, 0.25 * 1535 / 768]
    assert data["level_magnification"] == pytest.approx(20 * 1024 / 2047)


def test_a_pyramid_level_of_another_shape_is_a_corrupt_pyramid(tmp_path: Path):
    path = write_ome(tmp_path / "bad.ome.tif", slide_pixels(*OME_SIZE),
                     sizes=[(1024, 300)])
    with pytest.raises(SlideError, match=r"pyramid level 1 is 1024×300, not a reduction of "
                                         r"level 0's 2047×1535.*corrupt pyramid"):
        open_image(str(path))
    assert issubclass(SlideError, BadImageError)  # the CLI's exit 2, the DAG's fail-fast


def test_unreadable_scale_metadata_is_refused(tmp_path: Path):
    svs = write_svs(tmp_path / "bad.svs", slide_pixels(), mpp="0.25um")
    with pytest.raises(SlideError, match=r"its MPP is '0\.25um', not a positive number"):
        open_image(str(svs))
    ome = write_ome(tmp_path / "bad.ome.tif", slide_pixels(*OME_SIZE),
                    physical_size=("0.5", "parsec-ish"))
    with pytest.raises(SlideError, match="PhysicalSizeXUnit 'parsec-ish' is not a length"):
        open_image(str(ome))


def test_a_magnification_a_slide_does_not_have_is_refused_naming_its_levels(tmp_path: Path):
    svs = write_svs(tmp_path / "slide.svs", slide_pixels())
    with pytest.raises(ConfigError, match=r"has no 10× level \(its levels are at 40×, 20×, "
                                          r"5×\)"):
        open_image(str(svs), magnification=10)
    bare = write_ome(tmp_path / "bare.ome.tif", slide_pixels(*OME_SIZE), power=None)
    with pytest.raises(ConfigError, match="does not state its objective power"):
        open_image(str(bare), magnification=10)
    reader, _ = open_image(str(bare))  # read at full resolution, without a power
    assert reader.microscopy is not None and reader.microscopy.objective_power is None
    reader.close()
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, slide_pixels(512, 384), tile=(256, 256))
    with pytest.raises(ConfigError, match="is not a whole-slide scan"):
        open_image(str(plain), magnification=20)


def test_a_level_of_another_kind_of_pixel_is_an_unsupported_pyramid(tmp_path: Path):
    pixels = slide_pixels(*OME_SIZE)
    path = tmp_path / "grey-level.ome.tif"
    with tifffile.TiffWriter(path) as tw:  # RGB level 0, a grey level 1
        tw.write(pixels, tile=(256, 256), subifds=1, compression="zlib", photometric="rgb",
                 metadata=None, description=ome_xml(*OME_SIZE))
        tw.write(pixels[::2, ::2, 0].copy(), tile=(256, 256), subfiletype=1,
                 compression="zlib", photometric="minisblack", metadata=None)
    with pytest.raises(SlideError, match=r"pyramid level 1 holds uint8×1 pixels, level 0 "
                                         r"uint8×3: an unsupported pyramid"):
        open_image(str(path))


def test_a_corrupt_tile_of_the_level_read_is_a_bad_image(tmp_path: Path):
    path = write_svs(tmp_path / "slide.svs", slide_pixels())
    with tifffile.TiffFile(path) as tiff:
        level1 = tiff.series[0].levels[1].keyframe
        offset, count = level1.dataoffsets[5], level1.databytecounts[5]
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = b"\x00" * count  # tile 5 of level 1 zeroed
    path.write_bytes(bytes(data))
    reader, _ = open_image(str(path), magnification=20)  # the header is intact
    with reader, pytest.raises(BadImageError, match="tile 5 is corrupt"):
        reader.read(Box(256, 256, 512, 512))
