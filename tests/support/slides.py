"""Whole-slide scans written at test time from real photos: an Aperio SVS layout and a
pyramidal OME-TIFF, each with bright boxes at known level-0 pixels (for the blob detector).

* **SVS**: tiled JPEG whose quantisation and Huffman tables are stored once, in the page's
  JPEGTables tag, and stripped from every tile (an abbreviated JPEG stream per tile, as
  Aperio's scanners write them); an ImageDescription in Aperio's format with ``AppMag`` and
  ``MPP``; a strip thumbnail as the second page and the reduced levels after it.
* **OME-TIFF**: the reduced levels as SubIFDs of the full-resolution page, OME-XML with
  ``PhysicalSizeX/Y`` (and units) and an Objective's ``NominalMagnification``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import tifffile

from tilescope.samples import build_mosaic

#: level-0 size of the test slides, and their bright boxes (x1, y1, x2, y2), multiples of 8
#: so each level's box edges fall on its pixel edges; away from level 1's 256-px slice seams
SLIDE_SIZE = (2048, 1536)
SLIDE_BOXES = [[80, 120, 176, 200], [600, 840, 744, 936], [1400, 200, 1520, 376],
               [1760, 1280, 1976, 1392]]
TILE = 256
SVS_MPP, SVS_POWER = 0.252, 40
#: an OME slide's level-0 size that halves unevenly: level 1 is 1024 × 768 of 2047 × 1535
OME_SIZE = (2047, 1535)


def slide_pixels(width: int = SLIDE_SIZE[0], height: int = SLIDE_SIZE[1]) -> np.ndarray:
    """Real-photo pixels darkened below the blob detector's threshold, boxes painted white."""
    photo = build_mosaic(max(width, height))[:height, :width]
    pixels = (photo.astype(np.float32) * 0.45).astype(np.uint8)
    for x1, y1, x2, y2 in SLIDE_BOXES:
        pixels[y1:y2, x1:x2] = 255
    return pixels


def pyramid(pixels: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """``pixels`` and its area-downscaled copies at ``sizes`` (width, height)."""
    return [pixels] + [cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
                       for size in sizes]


def _tiles(pixels: np.ndarray) -> Iterator[np.ndarray]:
    """Row-major tiles of :data:`TILE`², edge tiles zero-padded (as TIFF stores them)."""
    height, width = pixels.shape[:2]
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            tile = np.zeros((TILE, TILE, 3), np.uint8)
            part = pixels[y:y + TILE, x:x + TILE]
            tile[:part.shape[0], :part.shape[1]] = part
            yield tile


def _segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    """A JPEG's marker segments after SOI, as (marker, bytes); the scan runs to the end."""
    out, at = [], 2
    while at < len(jpeg):
        marker = jpeg[at + 1]
        if marker == 0xDA:  # start of scan: entropy-coded data up to EOI
            out.append((marker, jpeg[at:]))
            break
        length = int.from_bytes(jpeg[at + 2:at + 4], "big")
        out.append((marker, jpeg[at:at + 2 + length]))
        at += 2 + length
    return out


def abbreviated_jpeg_tiles(pixels: np.ndarray, quality: int = 90) -> tuple[bytes, list[bytes]]:
    """(JPEGTables, tiles): every tile JPEG-encoded with the same tables, which are taken
    out of the tiles (DQT, DHT) and returned once, as TIFF's JPEGTables tag holds them."""
    tables, tiles = None, []
    for tile in _tiles(pixels):
        encoded = imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB",
                                           outcolorspace="RGB")
        segments = _segments(encoded)
        shared = b"".join(s for m, s in segments if m in (0xDB, 0xC4))
        assert tables in (None, shared), "tiles encoded with different tables"
        tables = shared
        tiles.append(b"\xff\xd8" + b"".join(s for m, s in segments if m not in (0xDB, 0xC4)))
    assert tables is not None
    return b"\xff\xd8" + tables + b"\xff\xd9", tiles


def aperio_description(width: int, height: int, *, level0: tuple[int, int] | None = None,
                       mpp: float | str = SVS_MPP, power: float = SVS_POWER) -> str:
    """An ImageDescription in Aperio's format (the baseline's carries AppMag and MPP)."""
    if level0 is not None:
        return (f"Aperio Image Library v12.0.15 \r\n{level0[0]}x{level0[1]} -> "
                f"{width}x{height} JPEG/RGB Q=90")
    return (f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] "
            f"({TILE}x{TILE}) JPEG/RGB Q=90|AppMag = {power}|StripeWidth = 2040|"
            f"ScanScope ID = SS1234|Filename = slide|Date = 12/01/26|MPP = {mpp}")


def write_svs(path: Path, pixels: np.ndarray, *, downsamples: Sequence[int] = (2, 8),
              mpp: float | str = SVS_MPP, power: float = SVS_POWER) -> Path:
    """An Aperio SVS layout: baseline, strip thumbnail, then each reduced level, all tiled
    JPEG with shared JPEGTables."""
    height, width = pixels.shape[:2]
    levels = pyramid(pixels, [(width // d, height // d) for d in downsamples])
    thumbnail = cv2.resize(pixels, (width // 32, height // 32), interpolation=cv2.INTER_AREA)
    with tifffile.TiffWriter(path) as tw:
        for number, level in enumerate(levels):
            tables, tiles = abbreviated_jpeg_tiles(level)
            description = aperio_description(
                level.shape[1], level.shape[0], mpp=mpp, power=power,
                level0=None if number == 0 else (width, height))
            tw.write(iter(tiles), shape=level.shape, dtype=np.uint8, tile=(TILE, TILE),
                     compression="jpeg", photometric="rgb", metadata=None,
                     description=description,
                     extratags=[(347, 7, len(tables), tables, True)])
            if number == 0:
                tw.write(thumbnail, photometric="rgb", metadata=None, compression="jpeg",
                         description=aperio_description(*thumbnail.shape[1::-1],
                                                        level0=(width, height)))
    return path


def ome_xml(width: int, height: int, *, physical_size: tuple[str, str] = ("0.5", "µm"),
            power: float | None = 20.0) -> bytes:
    """OME-XML for one RGB image with its physical pixel size and, when ``power`` is given,
    an Objective of that nominal magnification named by the image's ObjectiveSettings."""
    ome = tifffile.OmeXml()
    value, unit = physical_size
    ome.addimage(np.uint8, (height, width, 3), (1, 1, 1, height, width, 3), axes="YXS",
                 PhysicalSizeX=value, PhysicalSizeXUnit=unit,
                 PhysicalSizeY=value, PhysicalSizeYUnit=unit)
    xml = ome.tostring()
    if power is not None:
        xml = xml.replace('<Image ID="Image:0"',
                          '<Instrument ID="Instrument:0"><Objective ID="Objective:0:0" '
                          f'NominalMagnification="{power}"/></Instrument><Image ID="Image:0"',
                          1)
        xml = xml.replace("<Pixels ", '<InstrumentRef ID="Instrument:0"/><ObjectiveSettings '
                                      'ID="Objective:0:0"/><Pixels ', 1)
    return xml.encode()


def write_ome(path: Path, pixels: np.ndarray, *, sizes: Sequence[tuple[int, int]] | None = None,
              physical_size: tuple[str, str] = ("0.5", "µm"),
              power: float | None = 20.0) -> Path:
    """A pyramidal OME-TIFF: level 0 tiled (zlib), its reductions at ``sizes`` (default:
    halved, rounding up, twice) as SubIFDs."""
    height, width = pixels.shape[:2]
    if sizes is None:
        sizes = [(-(-width // d), -(-height // d)) for d in (2, 4)]
    levels = pyramid(pixels, sizes)
    with tifffile.TiffWriter(path) as tw:
        tw.write(pixels, tile=(TILE, TILE), subifds=len(sizes), compression="zlib",
                 photometric="rgb", metadata=None,
                 description=ome_xml(width, height, physical_size=physical_size, power=power))
        for level in levels[1:]:
            tw.write(level, tile=(TILE, TILE), subfiletype=1, compression="zlib",
                     photometric="rgb", metadata=None)
    return path
