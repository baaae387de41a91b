"""Where an image sits on the Earth: its CRS and affine geotransform, and pixel → CRS → lon/lat.

A GeoTIFF's georeference is read by GDAL (through rasterio, whose wheel bundles GDAL and
PROJ): GDAL is what QGIS, ``gdalinfo`` and every STAC tool use to turn GeoKeys into a CRS,
so tilescope never parses GeoKeys itself. GDAL reads only the TIFF's header, through the very
file handle the tile reader uses (over S3 that is :class:`~tilescope.storage.RangedS3File`:
a few ranged GETs, memory flat). Pixels are still read by tifffile, tile by tile.

The geometry is plain numpy: ``X = a·col + b·row + c``, ``Y = d·col + e·row + f`` (GDAL's
and rasterio's affine, rotation and shear included) with pixel coordinates at pixel corners
(``(0, 0)`` is the top-left corner of the top-left pixel, as GDAL counts); lon/lat come from
PROJ (:func:`rasterio.warp.transform`), in longitude, latitude order (OGC:CRS84).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from tilescope.errors import BadImageError

#: the CRS of RFC 7946 GeoJSON: WGS 84, longitude then latitude
LONLAT = "OGC:CRS84"


class GeoreferenceError(BadImageError):
    """A GeoTIFF whose CRS GDAL cannot turn into one it can place on the Earth."""


@dataclass(frozen=True)
class Georeference:
    """A scene's CRS (WKT 2, plus its EPSG code when it has one), its affine geotransform
    ``(a, b, c, d, e, f)`` from pixel (col, row) to CRS (x, y), and its nodata value."""

    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]
    epsg: int | None = None
    nodata: float | None = None

    @property
    def crs(self) -> str | None:
        """``EPSG:<code>`` when the CRS has one, otherwise its WKT; ``None``: no CRS."""
        if self.epsg is not None:
            return f"EPSG:{self.epsg}"
        return self.crs_wkt

    def pixel_to_crs(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel (col, row) → the scene's CRS (x, y), by the affine geotransform."""
        a, b, c, d, e, f = self.transform
        cols, rows = np.asarray(cols, float), np.asarray(rows, float)
        return a * cols + b * rows + c, d * cols + e * rows + f

    def pixel_to_lonlat(self, cols: np.ndarray,
                        rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel (col, row) → WGS 84 (longitude, latitude) in degrees."""
        if self.crs_wkt is None:
            raise GeoreferenceError("the image has no CRS: its pixels cannot be placed on "
                                    "the Earth")
        from rasterio.crs import CRS
        from rasterio.warp import transform

        xs, ys = self.pixel_to_crs(cols, rows)
        lon, lat = transform(CRS.from_wkt(self.crs_wkt), CRS.from_user_input(LONLAT),
                             xs.ravel().tolist(), ys.ravel().tolist())
        return np.reshape(lon, xs.shape), np.reshape(lat, ys.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"crs": self.crs, "crs_wkt": self.crs_wkt, "epsg": self.epsg,
                "transform": list(self.transform), "nodata": self.nodata}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Georeference | None:
        if not data or data.get("transform") is None:
            return None
        return cls(crs_wkt=data.get("crs_wkt"),
                   transform=tuple(float(v) for v in data["transform"]),  # type: ignore[arg-type]
                   epsg=data.get("epsg"), nodata=data.get("nodata"))


def box_corners(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) pixel boxes ``x1, y1, x2, y2`` → their corners as (n, 4) cols and rows, in the
    order top-left, top-right, bottom-right, bottom-left."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    return np.stack([x1, x2, x2, x1], axis=1), np.stack([y1, y1, y2, y2], axis=1)


class _SharedHandle(io.RawIOBase):
    """A view of a file handle with its own position, which GDAL may close: GDAL reads the
    header through it while tifffile keeps the handle for the tiles."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle, self._pos = handle, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            theirs = self._handle.tell()
            offset += self._handle.seek(0, io.SEEK_END)
            self._handle.seek(theirs)
        elif whence == io.SEEK_CUR:
            offset += self._pos
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        theirs = self._handle.tell()  # the tile reader's position: left where it was
        self._handle.seek(self._pos)
        data = self._handle.read(len(buffer))
        self._handle.seek(theirs)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:  # the handle belongs to the tile reader
        pass


def _one_file_opener(handle: IO[bytes], name: str) -> Any:
    """A rasterio file opener that serves ``handle`` as ``name`` and nothing else (no
    side-car ``.aux.xml``/``.ovr``/``.msk`` files: GDAL probes for them)."""
    from rasterio.abc import FileContainer

    theirs = handle.tell()
    size = handle.seek(0, io.SEEK_END)
    handle.seek(theirs)

    class OneFile(FileContainer):
        def open(self, path: str, mode: str = "r", **kwargs: Any) -> IO[bytes]:
            if path != name:
                raise FileNotFoundError(path)
            return _SharedHandle(handle)  # type: ignore[return-value]

        def isfile(self, path: str) -> bool:
            return path == name

        def isdir(self, path: str) -> bool:
            return False

        def ls(self, path: str) -> list[str]:
            return []

        def mtime(self, path: str) -> int:
            return 0

        def size(self, path: str) -> int:
            return size

        def rm(self, path: str) -> None:
            raise PermissionError(path)

    return OneFile()


def read_georeference(handle: IO[bytes], *, name: str = "image",
                      geokeys: dict[str, Any] | None = None) -> Georeference | None:
    """The georeference GDAL reads from the GeoTIFF open as ``handle`` (``None``: no
    geotransform at all). A CRS GDAL cannot resolve to a geographic or projected one (an
    unknown EPSG code, broken GeoKeys) is :class:`GeoreferenceError`, naming what the file
    declares (``geokeys``: tifffile's decoded GeoKey directory, for the message)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    file_name = "scene.tif"
    try:
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), \
                rasterio.open(file_name, opener=_one_file_opener(handle, file_name)) as ds:
            crs, affine, nodata = ds.crs, ds.transform, ds.nodata
    except RasterioIOError as exc:
        raise GeoreferenceError(f"{name}: GDAL cannot read its GeoTIFF header: {exc}") from exc
    transform = (affine.a, affine.b, affine.c, affine.d, affine.e, affine.f)
    has_geotransform = transform != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    if crs is None:
        if geokeys and any(k.endswith("CSTypeGeoKey") for k in geokeys):
            raise GeoreferenceError(f"{name}: its GeoTIFF CRS cannot be read "
                                    f"({_declared(geokeys)}): not analysed")
        if not has_geotransform:
            return None
        return Georeference(None, transform, None, _nodata(nodata))
    if not (crs.is_projected or crs.is_geographic):
        raise GeoreferenceError(f"{name}: its GeoTIFF CRS cannot be read: GDAL makes it "
                                f"{crs.to_wkt()[:60]}… ({_declared(geokeys)}), which cannot be "
                                "placed on the Earth: not analysed")
    return Georeference(crs.to_wkt(version="WKT2_2019"), transform, crs.to_epsg(),
                        _nodata(nodata))


def _nodata(value: Any) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def _declared(geokeys: dict[str, Any] | None) -> str:
    """The CRS GeoKeys a file declares, for an error message."""
    keys = {k: v for k, v in (geokeys or {}).items() if "CSType" in k or k == "GTModelTypeGeoKey"}
    return ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in keys.items()) or "no CRS keys"


#: control points per image side the viewer gets (:func:`lonlat_grid`): 17 × 17 = 289 pairs
VIEWER_GRID_CELLS = 16


def lonlat_grid(geo: Georeference, width: int, height: int,
                cells: int = VIEWER_GRID_CELLS) -> dict[str, Any]:
    """Lon/lat control points for a viewer that has no PROJ: the exact WGS 84 position
    (PROJ, as :meth:`Georeference.pixel_to_lonlat`) of a ``(cells + 1)²`` grid of pixel
    corners spanning the image, which the page interpolates bilinearly
    (:func:`interpolate_lonlat` is the same arithmetic).

    ``max_error_deg`` is the interpolation's largest error measured at every cell's centre
    and edge midpoints against PROJ — where a bilinear fit of a smooth map is furthest from
    it — the figure the page quotes as "±". Exact at the control points; for a geographic
    CRS the map is affine and the interpolation is exact everywhere.
    """
    cols = np.linspace(0.0, float(width), cells + 1)
    rows = np.linspace(0.0, float(height), cells + 1)
    cc, rr = np.meshgrid(cols, rows)  # [row][col]
    lon, lat = geo.pixel_to_lonlat(cc, rr)
    grid = {"cols": cols.tolist(), "rows": rows.tolist(),
            "lon": np.round(lon, 9).tolist(), "lat": np.round(lat, 9).tolist()}
    # probes: cell centres and edge midpoints (half-steps on the grid)
    half_c = np.linspace(0.0, float(width), 2 * cells + 1)
    half_r = np.linspace(0.0, float(height), 2 * cells + 1)
    pc, pr = np.meshgrid(half_c, half_r)
    true_lon, true_lat = geo.pixel_to_lonlat(pc, pr)
    est_lon, est_lat = interpolate_lonlat(grid, pc, pr)
    error = max(float(np.max(np.abs(est_lon - true_lon))),
                float(np.max(np.abs(est_lat - true_lat))))
    grid["max_error_deg"] = float(f"{error * 1.005:.3g}")  # rounded up, never down
    return grid


def interpolate_lonlat(grid: Mapping[str, Any], cols: Any,
                       rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear lon/lat at pixel (col, row) from a :func:`lonlat_grid` — what the viewer's
    page computes under the pointer (``viewer.js``, ``lonlatAt``)."""
    gc, gr = np.asarray(grid["cols"], float), np.asarray(grid["rows"], float)
    lon, lat = np.asarray(grid["lon"], float), np.asarray(grid["lat"], float)
    cols, rows = np.asarray(cols, float), np.asarray(rows, float)
    i = np.clip(np.searchsorted(gc, cols, side="right") - 1, 0, len(gc) - 2)
    j = np.clip(np.searchsorted(gr, rows, side="right") - 1, 0, len(gr) - 2)
    u = (cols - gc[i]) / (gc[i + 1] - gc[i])
    v = (rows - gr[j]) / (gr[j + 1] - gr[j])

    def bilinear(z: np.ndarray) -> np.ndarray:
        top = z[j, i] * (1 - u) + z[j, i + 1] * u
        bottom = z[j + 1, i] * (1 - u) + z[j + 1, i + 1] * u
        return np.asarray(top * (1 - v) + bottom * v)

    return bilinear(lon), bilinear(lat)
