"""Georeferenced test scenes made from real photos, and GDAL's own command-line tools.

Scenes are real-photo pixels (tilescope.samples' mosaic) darkened below the blob detector's
threshold, with bright rectangles painted at known pixels: :class:`BrightBlobModel` then
finds exactly those boxes, so where a detection lands on the Earth can be checked against
``gdaltransform`` for the same pixels.

COGs are made by ``gdal_translate -of COG`` (Debian ``gdal-bin``: ``make test`` installs it
when it can run apt-get as root); tests needing the tools skip with :data:`NO_GDAL_TOOLS`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tilescope.samples import build_mosaic
from tilescope.slicing import Box

#: why tests needing GDAL's command-line tools skip, or ``None`` when they are here
NO_GDAL_TOOLS = None if all(shutil.which(t) for t in ("gdal_translate", "gdaltransform",
                                                       "ogrinfo")) else (
    "GDAL command-line tools missing (Debian gdal-bin; `make test` installs it when apt-get "
    "can run as root)")
needs_gdal_tools = pytest.mark.skipif(NO_GDAL_TOOLS is not None, reason=str(NO_GDAL_TOOLS))

#: UTM zone 33N (a real projected CRS): a 0.5 m grid whose top-left corner is this point
UTM_EPSG, UTM_ORIGIN, PIXEL_METRES = 32633, (500_000.0, 5_000_000.0), 0.5
#: the bright boxes painted on every scene (x1, y1, x2, y2 in pixels), away from slice seams
BOXES = [[40, 60, 90, 100], [300, 420, 372, 470], [700, 100, 760, 190], [880, 640, 990, 700]]


def dark_photo_scene(width: int = 1024, height: int = 768) -> np.ndarray:
    """Real-photo pixels scaled below 128 (the blob detector's threshold) with white
    rectangles at :data:`BOXES`."""
    photo = build_mosaic(max(width, height))[:height, :width]
    pixels = (photo.astype(np.float32) * 0.45).astype(np.uint8)
    for x1, y1, x2, y2 in BOXES:
        pixels[y1:y2, x1:x2] = 255
    return pixels


def write_cog(pixels: np.ndarray, path: Path, *, epsg: int = UTM_EPSG,
              bigtiff: bool = False) -> Path:
    """``pixels`` as a Cloud-Optimized GeoTIFF made by ``gdal_translate -of COG``, placed by
    ``-a_srs``/``-a_ullr`` on a :data:`PIXEL_METRES` grid at :data:`UTM_ORIGIN`."""
    plain = path.with_suffix(".plain.tif")
    tifffile.imwrite(plain, pixels, photometric="rgb")
    height, width = pixels.shape[:2]
    ulx, uly = UTM_ORIGIN
    command = ["gdal_translate", "-q", "-of", "COG", "-a_srs", f"EPSG:{epsg}",
               "-a_ullr", str(ulx), str(uly), str(ulx + width * PIXEL_METRES),
               str(uly - height * PIXEL_METRES), "-co", "BLOCKSIZE=256",
               "-co", "COMPRESS=DEFLATE", *(["-co", "BIGTIFF=YES"] if bigtiff else []),
               str(plain), str(path)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    plain.unlink()
    return path


def gdaltransform_lonlat(scene: Path, cols: np.ndarray,
                         rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GDAL's own pixel/line → WGS 84 lon/lat for ``scene``'s pixels (``gdaltransform`` given
    the raster file, ``-t_srs OGC:CRS84``: longitude first)."""
    text = "\n".join(f"{float(c)!r} {float(r)!r}" for c, r in zip(np.ravel(cols), np.ravel(rows),
                                                   strict=True))
    out = subprocess.run(["gdaltransform", "-t_srs", "OGC:CRS84", "-output_xy", str(scene)],
                         input=text + "\n", check=True, capture_output=True, text=True).stdout
    values = np.array([[float(v) for v in line.split()[:2]] for line in out.splitlines()
                       if line.strip()])
    return values[:, 0].reshape(np.shape(cols)), values[:, 1].reshape(np.shape(rows))


def ogrinfo_summary(path: Path) -> str:
    """``ogrinfo -ro -so -al``: the layer's driver, feature count and CRS, as GDAL reads them."""
    return subprocess.run(["ogrinfo", "-ro", "-so", "-al", str(path)], check=True,
                          capture_output=True, text=True).stdout


def write_with_rasterio(pixels: np.ndarray, path: Path, transform: object, *,
                        crs: str | None = f"EPSG:{UTM_EPSG}", nodata: float | None = None,
                        photometric: str | None = None) -> Path:
    """A tiled GeoTIFF written by GDAL (through rasterio) with any affine ``transform``
    (rotation, shear), ``crs`` (``None``: none) and ``nodata``; ``pixels`` (h, w, bands)."""
    import rasterio

    height, width, count = pixels.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count,
               "dtype": pixels.dtype.name, "transform": transform, "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    if crs:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    if photometric:
        profile["photometric"] = photometric
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.moveaxis(pixels, 2, 0))
    return path


def unknown_crs_geotiff(path: Path, pixels: np.ndarray) -> Path:
    """A tiled GeoTIFF whose GeoKeys name a projected CRS code no registry knows
    (ProjectedCSTypeGeoKey 32768), with a valid tie point and pixel scale."""
    geokeys = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32768]
    tifffile.imwrite(path, pixels, photometric="rgb", tile=(256, 256), extratags=[
        (34735, 3, len(geokeys), geokeys, True),
        (33550, 12, 3, (PIXEL_METRES, PIXEL_METRES, 0.0), True),
        (33922, 12, 6, (0.0, 0.0, 0.0, *UTM_ORIGIN, 0.0), True)])
    return path


#: a nodata collar scene (issue 15, item 2): every pixel left of COLLAR_X or above COLLAR_Y
#: is COLLAR_NODATA (not 0: a black slice in the valid area must still be analysed), and
#: BLACK is a truly black (0) block inside the valid area, large enough for a whole slice
COLLAR_NODATA, COLLAR_X, COLLAR_Y = 1, 300, 260
BLACK = Box(400, 450, 700, 768)


def collar_pixels() -> np.ndarray:
    """:func:`dark_photo_scene` with the collar and the black block painted on."""
    pixels = dark_photo_scene()  # 1024 × 768, bright boxes at BOXES
    pixels[BLACK.y1:BLACK.y2, BLACK.x1:BLACK.x2] = 0
    pixels[:, :COLLAR_X] = COLLAR_NODATA
    pixels[:COLLAR_Y] = COLLAR_NODATA
    return pixels


def collar_scene(tmp_path: Path, *, nodata: float | None = COLLAR_NODATA,
                 dtype: type = np.uint8) -> Path:
    """The collar scene as a tiled GeoTIFF written by GDAL (8-bit: read in place; 16-bit:
    stretched) with ``nodata`` (``None``: none) on a 0.5 m UTM grid."""
    from affine import Affine

    transform = Affine.translation(*UTM_ORIGIN) @ Affine.scale(PIXEL_METRES, -PIXEL_METRES)
    return write_with_rasterio(collar_pixels().astype(dtype),
                               tmp_path / f"collar-{nodata}-{np.dtype(dtype)}.tif",
                               transform, nodata=nodata)


def collar_validity_scene(tmp_path: Path, how: str) -> Path:
    """The collar scene with its collar said by something other than an 8-bit nodata value,
    written by GDAL (through rasterio): ``"uint16x4"`` a 16-bit 4-band scene (a fourth band
    added, values ×257) with nodata :data:`COLLAR_NODATA` in every band — stretched when
    read; ``"mask"`` 8-bit RGB with GDAL's internal per-dataset mask (0 on the collar) and
    no nodata value; ``"alpha"`` 8-bit RGBA whose alpha band (ExtraSamples: alpha) is 0 on
    the collar; ``"sidecar"`` the mask of ``"mask"`` written beside the file as
    ``<file>.msk`` (``GDAL_TIFF_INTERNAL_MASK=NO``). The collar's pixels keep a value that
    is not nodata in the mask, sidecar and alpha scenes (photo pixels), so only the mask or
    alpha says they are empty."""
    from affine import Affine

    transform = Affine.translation(*UTM_ORIGIN) @ Affine.scale(PIXEL_METRES, -PIXEL_METRES)
    pixels = collar_pixels()
    collar = np.zeros(pixels.shape[:2], bool)
    collar[:, :COLLAR_X] = True
    collar[:COLLAR_Y] = True
    if how == "uint16x4":
        four = np.concatenate([pixels, pixels[:, :, 1:2]], axis=2).astype(np.uint16) * 257
        four[collar] = COLLAR_NODATA
        return write_with_rasterio(four, tmp_path / "collar-uint16x4.tif", transform,
                                   nodata=COLLAR_NODATA)
    photo = dark_photo_scene()  # the collar holds photo pixels, not a nodata value
    pixels[collar] = photo[collar]
    path = tmp_path / f"collar-{how}.tif"
    profile = {"driver": "GTiff", "width": pixels.shape[1], "height": pixels.shape[0],
               "dtype": "uint8", "transform": transform, "crs": f"EPSG:{UTM_EPSG}",
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    return write_validity(pixels, collar, path, how, profile)


def write_validity(pixels: np.ndarray, hidden: np.ndarray, path: Path, how: str,
                   profile: dict, overviews: tuple[int, ...] = ()) -> Path:
    """``pixels`` (h, w, 3) written by GDAL (through rasterio) with ``hidden`` said to hold
    no data by ``how``: ``"alpha"`` an alpha band (ExtraSamples: alpha, 0 where hidden),
    ``"mask"`` GDAL's internal per-dataset mask, ``"sidecar"`` the same mask written beside
    the file as ``<path>.msk`` (``GDAL_TIFF_INTERNAL_MASK=NO``). ``overviews``: factors of
    the overviews built afterwards by GDAL (with the mask's own, which mirror them)."""
    import rasterio
    from rasterio.enums import Resampling

    top = np.iinfo(pixels.dtype).max
    valid = np.where(hidden, 0, top).astype(pixels.dtype)
    internal = how != "sidecar"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=internal):
        if how == "alpha":
            with rasterio.open(path, "w", count=4, photometric="RGB", alpha="YES",
                               **profile) as ds:
                ds.write(np.concatenate([np.moveaxis(pixels, 2, 0), valid[None]]))
        else:
            with rasterio.open(path, "w", count=3, photometric="RGB", **profile) as ds:
                ds.write(np.moveaxis(pixels, 2, 0))
                ds.write_mask(np.where(hidden, 0, 255).astype(np.uint8))
        if overviews:
            with rasterio.open(path, "r+") as ds:
                ds.build_overviews(list(overviews), Resampling.nearest)
    assert Path(str(path) + ".msk").exists() == (how == "sidecar")
    return path


#: a 16-bit scene's collar fill (no nodata value says it: only its mask or alpha does)
MASKED_FILL = 0


def masked_16bit_scene(tmp_path: Path, how: str, *, width: int = 1024, height: int = 768,
                       overviews: tuple[int, ...] = (),
                       tiled: bool = True) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 16-bit 3-band scene of real-photo values in a 12-bit range with a dark offset,
    as sensors record them (``photo·12 + 1000``: 1000–4060), whose collar — the left 40 %
    of its columns — is :data:`MASKED_FILL`, said to hold no data only by ``how``
    (:func:`write_validity`); no nodata value. Returns the path, the pixels (h, w, 3) and
    the valid (not hidden) pixels' mask. ``tiled=False``: in strips (the mask too)."""
    from affine import Affine

    photo = build_mosaic(max(width, height))[:height, :width].astype(np.uint16)
    pixels = photo * 12 + 1000
    hidden = np.zeros((height, width), bool)
    hidden[:, : int(width * 0.4)] = True
    pixels[hidden] = MASKED_FILL
    profile = {"driver": "GTiff", "width": width, "height": height, "dtype": "uint16",
               "transform": Affine.translation(*UTM_ORIGIN) @ Affine.scale(PIXEL_METRES,
                                                                            -PIXEL_METRES),
               "crs": f"EPSG:{UTM_EPSG}", "compress": "deflate",
               **({"tiled": True, "blockxsize": 256, "blockysize": 256} if tiled else {})}
    name = f"masked16-{how}{'' if tiled else '-strips'}.tif"
    path = write_validity(pixels, hidden, tmp_path / name, how, profile, overviews)
    return path, pixels, ~hidden
