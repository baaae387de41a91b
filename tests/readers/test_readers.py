"""Readers: every image mode comes out as RGB uint8 in displayed orientation; bad input is
refused with a clear BadImageError before or while decoding."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from tilescope.errors import BadImageError, ImageTooLargeError
from tilescope.readers import PillowReader, TiffReader, open_image, reader_for_bytes
from tilescope.readers.base import downscale
from tilescope.slicing import Box


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def gradient(width: int = 64, height: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=2).astype(np.uint8)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A syntactically valid PNG header that declares a huge image (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_rgb_png_round_trips_and_crops_are_views() -> None:
    pixels = gradient()
    reader = reader_for_bytes(encode(Image.fromarray(pixels), "PNG"))
    assert (reader.width, reader.height, reader.header.format) == (64, 48, "PNG")
    assert np.array_equal(reader.read_all(), pixels)
    crop = reader.read(Box(10, 5, 30, 25))
    assert np.array_equal(crop, pixels[5:25, 10:30])
    decoded = reader._rgb
    reader.read(Box(0, 0, 5, 5))
    assert reader._rgb is decoded  # decoded once, regions converted as they are read
    assert reader.read(Box(50, 40, 100, 100)).shape == (8, 14, 3)  # clipped at the border


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "P", "I;16", "I"])
def test_every_mode_becomes_rgb_uint8(mode: str) -> None:
    base = Image.fromarray(gradient())
    if mode == "I;16":
        image = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16))
    elif mode == "I":
        image = base.convert("L").convert("I")
    else:
        image = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I" else "PNG"
    pixels = reader_for_bytes(encode(image, fmt)).read_all()
    assert pixels.dtype == np.uint8 and pixels.shape == (48, 64, 3)
    assert pixels.std() > 10  # real content, not a flat (clipped) image


def test_16_bit_png_keeps_its_range() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    pixels = reader_for_bytes(encode(Image.fromarray(ramp), "PNG")).read_all()
    assert pixels[0, 0, 0] == 0 and pixels[0, -1, 0] == 255
    assert 120 <= pixels[0, 128, 0] <= 135  # mid-grey stays mid-grey (not clipped to white)


def test_transparent_pixels_become_white() -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:5, :, :] = (255, 0, 0, 255)  # top half opaque red, bottom half transparent black
    pixels = reader_for_bytes(encode(Image.fromarray(rgba), "PNG")).read_all()
    assert tuple(pixels[0, 0]) == (255, 0, 0) and tuple(pixels[9, 9]) == (255, 255, 255)


def test_palette_with_transparency_is_composited() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))
    data = encode(image, "PNG", transparency=0)
    pixels = reader_for_bytes(data).read_all()
    assert tuple(pixels[0, 0]) == (0, 255, 0) and tuple(pixels[0, 7]) == (255, 255, 255)


@pytest.mark.parametrize(("orientation", "shape"), [(1, (48, 64)), (3, (48, 64)),
                                                     (6, (64, 48)), (8, (64, 48))])
def test_exif_orientation_gives_displayed_pixels(orientation: int, shape: tuple) -> None:
    pixels = gradient()
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(pixels), "PNG", exif=exif)
    reader = reader_for_bytes(data)
    assert (reader.height, reader.width) == shape  # header already in displayed orientation
    out = reader.read_all()
    assert out.shape[:2] == shape
    expected = {1: pixels, 3: pixels[::-1, ::-1], 6: np.rot90(pixels, -1),
                8: np.rot90(pixels, 1)}[orientation]
    assert np.array_equal(out, expected)


def pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(("subsampling", "progressive"),
                         [(0, False), (1, False), (2, False), (2, True)])
def test_a_plain_jpeg_is_decoded_once_into_pillows_very_pixels(subsampling: int,
                                                               progressive: bool) -> None:
    """An RGB JPEG goes straight into one read-only 3-byte array (no Pillow image, no encoded
    bytes kept), crops are views of it, and every pixel is the one Pillow decodes."""
    pixels = np.tile(gradient(), (3, 3, 1))[:141, :187]  # sides that are not a multiple of 16
    data = encode(Image.fromarray(pixels), "JPEG", quality=90, subsampling=subsampling,
                  progressive=progressive)
    reader = reader_for_bytes(data)
    out = reader.read_all()
    assert np.array_equal(out, pillow_pixels(data))
    assert isinstance(reader, PillowReader) and reader._rgb is None and reader._data == b""
    assert out.flags.writeable is False
    crop = reader.read(Box(10, 20, 50, 60))
    assert np.shares_memory(crop, out) and np.array_equal(crop, out[20:60, 10:50])


def test_a_rotated_jpeg_is_decoded_by_pillow() -> None:
    """EXIF orientation is Pillow's job: 180° keeps the shape, so only the check that sends
    an oriented JPEG to Pillow keeps it from coming out upside down."""
    exif = Image.Exif()
    exif[0x0112] = 3
    data = encode(Image.fromarray(gradient()), "JPEG", quality=95, exif=exif)
    reader = reader_for_bytes(data)
    with Image.open(io.BytesIO(data)) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    assert np.array_equal(reader.read_all(), expected)


def test_a_jpeg_without_its_end_marker_is_refused_as_pillow_refuses_it() -> None:
    """libjpeg-turbo pads a stream that stops short without a word; Pillow calls it truncated.
    Two bytes short is still truncated."""
    data = encode(Image.fromarray(gradient(256, 256)), "JPEG")
    assert data.endswith(b"\xff\xd9")
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        reader_for_bytes(data[:-2]).read_all()


def test_animated_gif_reads_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    reader = reader_for_bytes(out.getvalue())
    assert reader.header.frames == 2
    assert reader.read_all()[0, 0, 0] > 200 and reader.read_all()[0, 0, 2] < 50


def test_empty_input_is_refused() -> None:
    with pytest.raises(BadImageError, match="empty"):
        reader_for_bytes(b"")


@pytest.mark.parametrize("data", [b"hello, this is text pretending to be a jpg\n",
                                  b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>"])
def test_non_image_bytes_are_refused_by_signature(data: bytes) -> None:
    with pytest.raises(BadImageError, match="not an image"):
        reader_for_bytes(data)


def test_truncated_jpeg_is_refused_when_decoding() -> None:
    data = encode(Image.fromarray(gradient(256, 256)), "JPEG")
    reader = reader_for_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        reader.read_all()


def test_png_with_bad_crc_is_refused() -> None:
    data = bytearray(encode(Image.fromarray(gradient()), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # flip bits inside the compressed data: CRC no longer matches
    with pytest.raises(BadImageError):
        reader_for_bytes(bytes(data)).read_all()


def test_decompression_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(ImageTooLargeError, match="pixel"):
        reader_for_bytes(png_with_declared_size(100_000, 100_000))


def test_pixel_limit_is_configurable() -> None:
    data = encode(Image.fromarray(gradient(100, 100)), "PNG")
    with pytest.raises(ImageTooLargeError, match="5,000"):
        reader_for_bytes(data, max_pixels=5_000)
    assert reader_for_bytes(data, max_pixels=10_000).width == 100


def test_pillow_global_limit_is_restored() -> None:
    before = Image.MAX_IMAGE_PIXELS
    reader_for_bytes(encode(Image.fromarray(gradient()), "PNG"), max_pixels=5000)
    assert before == Image.MAX_IMAGE_PIXELS


def test_one_pixel_and_extreme_aspect_images() -> None:
    assert reader_for_bytes(encode(Image.new("RGB", (1, 1)), "PNG")).read_all().shape == (1, 1, 3)
    wide = reader_for_bytes(encode(Image.new("RGB", (20000, 8)), "PNG"))
    assert (wide.width, wide.height) == (20000, 8)


def test_jpeg_thumbnail_uses_draft_decoding() -> None:
    data = encode(Image.fromarray(np.tile(gradient(), (20, 20, 1))), "JPEG")  # 1280×960
    reader = reader_for_bytes(data)
    thumb = reader.thumbnail(200)
    assert max(thumb.shape[:2]) == 200
    assert isinstance(reader, PillowReader) and reader._rgb is None  # full image not decoded


def tiled_tiff(pixels: np.ndarray, tile: int = 64, **options) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, pixels, tile=(tile, tile), **options)
    return out.getvalue()


def test_tiled_tiff_reads_only_the_tiles_a_box_needs() -> None:
    pixels = np.tile(gradient(), (6, 6, 1))  # 384 × 288
    reader = reader_for_bytes(tiled_tiff(pixels, compression="zlib"))
    assert isinstance(reader, TiffReader) and reader.header.tiled
    crop = reader.read(Box(70, 70, 120, 120))
    assert np.array_equal(crop, pixels[70:120, 70:120])
    assert reader.tiles_read == 1  # all inside tile (1, 1)
    assert np.array_equal(reader.read(Box(0, 0, 384, 288)), pixels)
    assert np.array_equal(reader.read(Box(300, 250, 400, 300)), pixels[250:288, 300:384])


def test_tiled_tiff_reuses_the_last_tile_row_for_an_overlapping_next_read() -> None:
    pixels = np.tile(gradient(), (6, 6, 1))  # 384 × 288, 64-px tiles: 6 × 5 tiles
    reader = reader_for_bytes(tiled_tiff(pixels, compression="zstd"))
    assert np.array_equal(reader.read(Box(0, 0, 384, 100)), pixels[0:100])  # tile rows 0-1
    assert reader.tiles_read == 12
    # Rows 80-200 span tile rows 1-3: row 1 comes from the last read, rows 2-3 are new.
    assert np.array_equal(reader.read(Box(0, 80, 384, 200)), pixels[80:200])
    assert reader.tiles_read == 12 + 12
    assert np.array_equal(reader.read(Box(10, 10, 50, 50)), pixels[10:50, 10:50])  # dropped
    assert reader.tiles_read == 25


def test_tiled_tiff_16_bit_grey_and_thumbnail() -> None:
    grey = (np.arange(256 * 256).reshape(256, 256) % 65536).astype(np.uint16)
    reader = reader_for_bytes(tiled_tiff(grey))
    out = reader.read_all()
    assert out.dtype == np.uint8 and out.shape == (256, 256, 3)
    assert np.array_equal(out[:, :, 0], (grey >> 8).astype(np.uint8))
    assert reader.thumbnail(64).shape == (64, 64, 3)


def pyramid_tiff(pixels: np.ndarray, *, sub_ifds: bool) -> bytes:
    """A tiled pyramid: full resolution plus ½ and ¼ levels, stored either as SubIFDs
    (whole-slide/OME style) or as reduced-resolution pages after it (COG style)."""
    out = io.BytesIO()
    with tifffile.TiffWriter(out) as tif:
        tif.write(pixels, tile=(64, 64), photometric="rgb", compression="zstd",
                  **({"subifds": 2} if sub_ifds else {}))
        for step in (2, 4):
            level = downscale(pixels, max(pixels.shape[:2]) // step)  # averaged, as scanners do
            tif.write(level, tile=(64, 64), photometric="rgb", compression="zstd",
                      subfiletype=1)
    return out.getvalue()


@pytest.mark.parametrize("sub_ifds", [True, False], ids=["subifds", "reduced-pages"])
def test_pyramidal_tiff_thumbnail_reads_a_reduced_level(sub_ifds: bool) -> None:
    pixels = np.tile(gradient(), (8, 8, 1))  # 512 × 384: 8 × 6 tiles at full resolution
    reader = reader_for_bytes(pyramid_tiff(pixels, sub_ifds=sub_ifds))
    assert (reader.width, reader.height) == (512, 384) and reader.header.tiled
    assert np.array_equal(reader.read(Box(100, 50, 300, 200)), pixels[50:200, 100:300])
    before = reader.tiles_read
    thumb = reader.thumbnail(120)  # the ¼ level (128 × 96) still has the detail: 2 × 2 tiles
    assert thumb.shape == (90, 120, 3)
    assert reader.tiles_read - before == 4
    expected = downscale(pixels, 120).astype(int)
    assert np.abs(thumb.astype(int) - expected).mean() < 2
    before = reader.tiles_read
    assert reader.thumbnail(300).shape == (225, 300, 3)  # the ½ level (256 × 192) is too small
    assert reader.tiles_read - before == 48


def test_strip_tiff_falls_back_to_full_decode() -> None:
    pixels = gradient()
    out = io.BytesIO()
    tifffile.imwrite(out, pixels)
    reader = reader_for_bytes(out.getvalue())
    assert not reader.header.tiled
    assert np.array_equal(reader.read(Box(1, 2, 30, 40)), pixels[2:40, 1:30])


def test_open_image_from_path_gives_identity(tmp_path) -> None:
    path = tmp_path / "x.png"
    data = encode(Image.fromarray(gradient()), "PNG")
    path.write_bytes(data)
    reader, info = open_image(str(path))
    import hashlib

    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.bytes == len(data)
    assert (info.width, info.height, info.format) == (64, 48, "PNG")
    reader.close()


def test_open_image_missing_file() -> None:
    with pytest.raises(BadImageError, match="no such file"):
        open_image("/nonexistent/x.jpg")
