"""Tiled TIFF (whole-slide scans, GeoTIFF/COG-style tiling) read tile by tile with tifffile.

A whole-slide scan (Aperio SVS, pyramidal OME-TIFF: :mod:`tilescope.microscopy`) may be read
at a reduced pyramid level chosen by its magnification; the reader then serves that level's
pixels, and its :attr:`~ImageReader.microscopy` says which level and by how much it is reduced.

Over a seekable file — a local file or :class:`~tilescope.storage.RangedS3File` — only the
tiles that intersect the requested box are fetched and decoded, so reading a region costs
memory in proportion to the region, not to the image. Strip-organised TIFFs fall back to a
one-time full decode.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import IO, Any, cast

import numpy as np

from tilescope.errors import BadImageError, ConfigError
from tilescope.microscopy import (
    SlideError,
    choose_level,
    not_a_slide,
    read_slide_scale,
    slide_pages,
)
from tilescope.readers.base import (
    DEFAULT_MAX_PIXELS,
    ImageHeader,
    ImageReader,
    clip_box,
    downscale,
    refuse_over_pixel_limit,
    to_rgb8,
)
from tilescope.readers.masks import GdalMask, MaskOpener, internal_mask, read_sidecar
from tilescope.slicing import Box

#: the per-scene stretch of a GeoTIFF's (or a chosen band's) values to 8 bits: these
#: percentiles of its valid pixels (not nodata, not hidden by its alpha band or GDAL mask)
#: become 0 and 255
STRETCH_PERCENTILES = (2.0, 98.0)
#: at most this many pixels are sampled (evenly, from the coarsest pyramid level that has
#: them) to find the stretch: memory stays flat on any scene
STRETCH_SAMPLES = 1 << 20


class TiffReader(ImageReader):
    """The first (full-resolution) page of a TIFF — or a whole-slide scan's pyramid level
    chosen by magnification — read tile by tile where it is tiled."""

    def __init__(self, handle: IO[bytes], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 name: str = "image", bands: Sequence[int] | None = None,
                 magnification: float | None = None,
                 mask_sidecar: MaskOpener | None = None) -> None:
        """``bands``: the 1-based bands shown as R, G, B (one band: grey); default the first
        three (or the one grey band). A GeoTIFF, or any TIFF read with chosen ``bands``, is
        stretched to 8 bits per band between :data:`STRETCH_PERCENTILES` of its values.
        ``magnification`` (a whole-slide scan's, e.g. 20 of a 40× scan): read the pyramid
        level at that magnification instead of the full-resolution one. ``mask_sidecar``
        opens GDAL's external ``<image>.msk`` (:mod:`tilescope.readers.masks`), called only
        for a GeoTIFF that says nothing of its validity itself."""
        import tifffile

        self._name = name
        self._handle = handle  # the reader's own from here: closed with it
        try:
            self._tiff = tifffile.TiffFile(handle)
            page = self._tiff.pages.first
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error...
            raise BadImageError(f"{name} is not a readable TIFF: {exc}") from exc
        try:
            self._pyramid: list[Any] = self._open_level(magnification)
        except (SlideError, ConfigError):
            self._tiff.close()
            raise
        except Exception as exc:  # a slide's pages tifffile cannot parse
            self._tiff.close()
            raise BadImageError(f"{name} is not a readable TIFF: {exc}") from exc
        if self.microscopy is not None:
            page = self._pyramid[self.microscopy.level]
        self._page = page
        width, height = int(page.imagewidth), int(page.imagelength)
        if not page.is_tiled:
            # Tiled images are read by region, so only strip images need a full-decode guard.
            refuse_over_pixel_limit(name, width, height, max_pixels, " in strips")
        self._tiled = bool(page.is_tiled) and page.planarconfig == 1 and page.imagedepth == 1
        self._full: np.ndarray | None = None
        self.tiles_read = 0
        #: decoded tiles of the last read, reused by an overlapping next read
        self._recent: dict[int, tuple[np.ndarray, int, int]] = {}
        self.header = ImageHeader(format="TIFF", width=width, height=height,
                                  mode=f"{page.dtype}x{page.samplesperpixel}",
                                  frames=len(self._tiff.pages), tiled=self._tiled)
        if page.is_geotiff:
            from tilescope.georef import read_georeference

            self.georeference = read_georeference(handle, name=name,
                                                  geokeys=page.geotiff_tags)
        self._bands = self._choose_bands(bands)
        self._alpha = self._alpha_band()
        try:
            self._mask = self._gdal_mask(mask_sidecar) if page.is_geotiff else None
        except BaseException:  # a bad sidecar: the image is not analysed
            self._tiff.close()
            raise
        self._mask_full: dict[int, np.ndarray] = {}  # a strip mask page, decoded whole
        #: validity of each read's box, made by :meth:`read` (on the band-reading thread)
        #: from the raw tiles it decodes anyway, collected once by :meth:`valid_mask`
        self._masks: dict[Box, np.ndarray] = {}
        self._masks_lock = threading.Lock()
        self._full_valid: np.ndarray | None = None
        self._stretch: tuple[np.ndarray, np.ndarray] | None = None
        if bands is not None or (self.georeference is not None and page.dtype != np.uint8):
            self._stretch = self._find_stretch() if page.dtype != np.uint8 else None
            self.pixels = {"dtype": str(page.dtype), "band_count": int(page.samplesperpixel),
                           "bands": [b + 1 for b in self._bands], "stretch": None}
            if self._stretch is not None:
                self.pixels["stretch"] = {
                    "method": "percentile", "percentiles": list(STRETCH_PERCENTILES),
                    "low": [float(v) for v in self._stretch[0]],
                    "high": [float(v) for v in self._stretch[1]],
                    "excluded": self._excluded()}
                if self._mask is not None and self._mask.uri:
                    self.pixels["stretch"]["mask"] = self._mask.uri

    def _open_level(self, magnification: float | None) -> list[Any]:
        """A whole-slide scan's pyramid pages (``[]``: not a slide), its scale set as
        :attr:`microscopy` with the level at ``magnification`` (``None``: level 0)."""
        pyramid = slide_pages(self._tiff, self._name)
        if pyramid is None:
            if magnification:
                raise not_a_slide(self._name, float(magnification))
            return []
        self.microscopy = read_slide_scale(self._tiff, pyramid, self._name)
        if magnification:
            level = choose_level(self.microscopy, float(magnification), self._name)
            self.microscopy = replace(self.microscopy, level=level)
        return pyramid

    def _choose_bands(self, bands: Sequence[int] | None) -> list[int]:
        """0-based band indices to show: the ones asked for, or the first three (one: grey)."""
        count = int(self._page.samplesperpixel)
        if bands is None:
            return [0, 1, 2] if count >= 3 else [0]
        chosen = [int(b) for b in bands]
        if len(chosen) not in (1, 3) or not all(1 <= b <= count for b in chosen):
            raise ConfigError(f"{self._name}: bands must be 1 or 3 band numbers in 1..{count} "
                              f"(it has {count}), got {','.join(map(str, chosen))}")
        return [b - 1 for b in chosen]

    @property
    def rgb_nodata(self) -> float | None:
        """The scene's nodata when its 8-bit pixels are shown as they are (no bands chosen,
        no stretch): the RGB of :meth:`read` is then the raw bands, nodata where all of
        them are; a converted scene says ``None`` (its nodata became black)."""
        nodata = self.georeference.nodata if self.georeference else None
        if nodata is None or self.pixels is not None or self._page.dtype != np.uint8 \
                or not float(nodata).is_integer() or not 0 <= float(nodata) <= 255:
            return None
        return float(nodata)

    def _alpha_band(self) -> int | None:
        """0-based index of an alpha band (TIFF ExtraSamples associated/unassociated alpha,
        as GDAL writes for ``ALPHA=YES`` or a band whose colour is alpha), else ``None``."""
        extras = tuple(int(e) for e in (self._page.extrasamples or ()))
        count = int(self._page.samplesperpixel)
        for position, kind in enumerate(extras):
            if kind in (1, 2):
                return count - len(extras) + position
        return None

    def _gdal_mask(self, sidecar: MaskOpener | None) -> GdalMask | None:
        """GDAL's per-dataset mask: the internal one, else — only when the scene says
        nothing of its validity (no nodata value, no alpha band) — its ``.msk`` sidecar,
        looked for once (``sidecar``; ``None``: not looked for)."""
        found = internal_mask(self._tiff, self.width, self.height)
        nodata = self.georeference.nodata if self.georeference else None
        if found is not None or sidecar is None or nodata is not None \
                or self._alpha is not None:
            return found
        handle = sidecar()
        return None if handle is None else read_sidecar(handle, self._name, self.width,
                                                         self.height)

    def _excluded(self) -> list[str]:
        """What the stretch's percentiles leave out, as recorded in the result."""
        nodata = self.georeference.nodata if self.georeference else None
        return ([] if nodata is None else ["nodata"]) \
            + ([] if self._alpha is None else ["alpha"]) \
            + ([] if self._mask is None else [f"{self._mask.source}_mask"])

    @property
    def _has_validity(self) -> bool:
        """Whether the source says where it has no data in a way :attr:`rgb_nodata` does
        not already tell from the RGB (a stretched scene's nodata, an alpha band, a mask)."""
        nodata = self.georeference.nodata if self.georeference else None
        return self.rgb_nodata is None and (nodata is not None or self._alpha is not None
                                            or self._mask is not None)

    def _raw_valid(self, tile: np.ndarray) -> np.ndarray:
        """(h, w) mask of raw pixels with data: not nodata in every chosen band, alpha ≠ 0."""
        tile = self._as_bands(tile)
        valid = self._valid(tile)
        if self._alpha is not None:
            valid &= tile[:, :, self._alpha] != 0
        return valid

    def _mask_region(self, box: Box, page: Any = None) -> np.ndarray:
        """GDAL's mask over ``box`` (clipped) of its level ``page`` (default: full
        resolution), True where it is not 0; read tile by tile (a strip mask: whole, once)."""
        page = page if page is not None else cast(GdalMask, self._mask).full
        if not page.is_tiled:
            key = id(page)
            if key not in self._mask_full:
                try:
                    self._mask_full[key] = np.asarray(page.asarray()).reshape(
                        int(page.imagelength), int(page.imagewidth)) != 0
                except Exception as exc:
                    raise BadImageError(f"{self._name}: its mask is corrupt: {exc}") from exc
            return self._mask_full[key][box.y1:box.y2, box.x1:box.x2]
        tile_w, tile_h = int(page.tilewidth), int(page.tilelength)
        across = math.ceil(int(page.imagewidth) / tile_w)
        out = np.zeros((box.height, box.width), bool)
        for tile_row in range(box.y1 // tile_h, math.ceil(box.y2 / tile_h)):
            indices = [tile_row * across + col
                       for col in range(box.x1 // tile_w, math.ceil(box.x2 / tile_w))]
            for index, encoded in self._read_tiles(indices, page).items():
                decoded, x, y = self._decode_tile(index, encoded, page)
                tile = np.asarray(decoded).reshape(decoded.shape[0], decoded.shape[1])
                x1, y1 = max(box.x1, x), max(box.y1, y)
                x2, y2 = min(box.x2, x + tile.shape[1]), min(box.y2, y + tile.shape[0])
                out[y1 - box.y1:y2 - box.y1, x1 - box.x1:x2 - box.x1] = \
                    tile[y1 - y:y2 - y, x1 - x:x2 - x] != 0
        return out

    def valid_mask(self, box: Box) -> np.ndarray | None:
        if not self._has_validity:
            return None
        box = clip_box(box, self.width, self.height)
        if not self._tiled:
            if self._full_valid is None:
                self._full_valid = self._raw_valid(self._raw_full())
                if self._mask is not None:
                    self._full_valid &= self._mask_region(Box(0, 0, self.width, self.height))
            return self._full_valid[box.y1:box.y2, box.x1:box.x2]
        with self._masks_lock:
            mask = self._masks.pop(box, None)
        if mask is None:  # not read yet (or read long ago): read it now
            self.read(box)
            with self._masks_lock:
                mask = self._masks.pop(box)
        return mask

    def _valid(self, tile: np.ndarray) -> np.ndarray:
        """(h, w) mask of the pixels that are not nodata in every chosen band."""
        nodata = self.georeference.nodata if self.georeference else None
        if nodata is None:
            return np.ones(tile.shape[:2], bool)
        return ~np.all(tile[:, :, self._bands] == nodata, axis=2)

    def _find_stretch(self) -> tuple[np.ndarray, np.ndarray]:
        """Per chosen band, the :data:`STRETCH_PERCENTILES` of the scene's valid values —
        not nodata, alpha ≠ 0, GDAL mask ≠ 0 (a masked collar's fill would drag the low
        percentile down and flatten the scene) — sampled evenly from the coarsest level
        that still has :data:`STRETCH_SAMPLES` (and, for a masked scene, its mask)."""
        page = self._thumbnail_level(int(math.sqrt(STRETCH_SAMPLES)),
                                     masked=self._mask is not None) if self._tiled \
            else self._page
        mask = self._mask.level(page) if self._mask is not None else None
        step = max(1, math.ceil(math.sqrt(int(page.imagewidth) * int(page.imagelength)
                                          / STRETCH_SAMPLES)))
        samples = []
        pieces = (self._decode_tile(index, encoded, page)
                  for index, encoded in self._all_tiles(page)) if self._tiled \
            else iter([(self._raw_full(), 0, 0)])
        for raw, x, y in pieces:
            tile = self._as_bands(raw)[::step, ::step]
            valid = self._raw_valid(tile)
            if mask is not None:
                box = Box(x, y, x + raw.shape[1], y + raw.shape[0])
                valid &= self._mask_region(box, mask)[::step, ::step]
            samples.append(tile[valid])
        values = np.concatenate(samples)[:, self._bands].astype(np.float64)
        if not len(values):  # nothing but nodata: any stretch will do
            return np.zeros(len(self._bands)), np.ones(len(self._bands))
        low, high = np.percentile(values, STRETCH_PERCENTILES, axis=0)
        return low, np.maximum(high, low + 1e-9)

    @staticmethod
    def _as_bands(pixels: np.ndarray) -> np.ndarray:
        return pixels if pixels.ndim == 3 else pixels[:, :, None]

    def _to_rgb8(self, pixels: np.ndarray) -> np.ndarray:
        """Raw pixels of the page → RGB ``uint8``: the chosen bands, stretched (nodata → 0)
        when this reader stretches, else today's plain conversion."""
        if not self.pixels:
            return to_rgb8(pixels)
        pixels = self._as_bands(pixels)
        chosen = pixels[:, :, self._bands]
        if self._stretch is not None:
            low, high = self._stretch
            scaled = (chosen.astype(np.float32) - low) * (255.0 / (high - low))
            chosen = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
            chosen[~self._valid(pixels)] = 0
        return to_rgb8(chosen)

    def _read_tiles(self, indices: list[int], page: Any = None) -> dict[int, bytes]:
        """The encoded bytes of ``indices`` of ``page`` (default: full resolution); a run of
        tiles stored back to back (one tile row, usually) is fetched with one read — one
        ranged GET over S3."""
        page = page or self._page
        handle = page.parent.filehandle  # a mask sidecar's pages read from its own file
        offsets, counts = page.dataoffsets, page.databytecounts
        start = min(offsets[i] for i in indices)
        end = max(offsets[i] + counts[i] for i in indices)
        if end - start <= 2 * sum(counts[i] for i in indices):
            handle.seek(start)
            blob = handle.read(end - start)
            return {i: blob[offsets[i] - start:offsets[i] - start + counts[i]] for i in indices}
        out = {}
        for i in indices:
            handle.seek(offsets[i])
            out[i] = handle.read(counts[i])
        return out

    def _decode_tile(self, index: int, data: bytes | None = None,
                     page: Any = None) -> tuple[np.ndarray, int, int]:
        """Tile ``index`` of ``page`` (default: full resolution) as (pixels, x, y) — pixels
        cropped to the page at the edges."""
        page = page or self._page
        if data is None:
            data = self._read_tiles([index], page)[index]
        try:
            segment, indices, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:
            raise BadImageError(f"{self._name}: tile {index} is corrupt: {exc}") from exc
        self.tiles_read += 1
        y, x = int(indices[2]), int(indices[3])
        tile = segment[0]
        return tile[: int(page.imagelength) - y, : int(page.imagewidth) - x], x, y

    def read(self, box: Box) -> np.ndarray:
        box = clip_box(box, self.width, self.height)
        if not self._tiled:
            return self._read_full()[box.y1:box.y2, box.x1:box.x2]
        page = self._page
        tile_w, tile_h = int(page.tilewidth), int(page.tilelength)
        tiles_across = math.ceil(self.width / tile_w)
        out = np.zeros((box.height, box.width, 3), np.uint8)
        valid = np.ones((box.height, box.width), bool) if self._has_validity else None
        decoded: dict[int, tuple[np.ndarray, int, int]] = {}
        for tile_row in range(box.y1 // tile_h, math.ceil(box.y2 / tile_h)):
            indices = [tile_row * tiles_across + tile_col for tile_col in
                       range(box.x1 // tile_w, math.ceil(box.x2 / tile_w))]
            missing = [i for i in indices if i not in self._recent]
            encoded = self._read_tiles(missing) if missing else {}
            for index in indices:
                cached = self._recent.get(index)
                tile, x, y = cached if cached else self._decode_tile(index, encoded[index])
                decoded[index] = (tile, x, y)
                x1, y1 = max(box.x1, x), max(box.y1, y)
                x2, y2 = min(box.x2, x + tile.shape[1]), min(box.y2, y + tile.shape[0])
                out[y1 - box.y1:y2 - box.y1, x1 - box.x1:x2 - box.x1] = self._to_rgb8(
                    tile[y1 - y:y2 - y, x1 - x:x2 - x])
                if valid is not None:
                    valid[y1 - box.y1:y2 - box.y1, x1 - box.x1:x2 - box.x1] = \
                        self._raw_valid(tile[y1 - y:y2 - y, x1 - x:x2 - x])
        # Keep this read's tiles (one more band's worth of memory): the next band of a region
        # (tilescope.banding) starts inside this one — by the slice overlap, or by nearly a
        # whole slice at the image's bottom edge, where SAHI shifts the last slice back.
        self._recent = decoded
        if valid is not None:
            if self._mask is not None:
                valid &= self._mask_region(box)
            with self._masks_lock:
                self._masks[box] = valid
                while len(self._masks) > 4:  # boxes read but never asked about
                    self._masks.pop(next(iter(self._masks)))
        return out

    def _read_full(self) -> np.ndarray:
        if self._full is None:
            self._full = self._to_rgb8(self._raw_full())
        return self._full

    def _raw_full(self) -> np.ndarray:
        try:
            return self._page.asarray()
        except Exception as exc:
            raise BadImageError(f"{self._name} is truncated or corrupt (TIFF): {exc}") from exc

    def thumbnail(self, max_side: int) -> np.ndarray:
        if not self._tiled:
            return downscale(self._read_full(), max_side)
        # Downscale tile by tile so a gigapixel image never sits in memory whole, from the
        # coarsest pyramid level that still has the detail (whole-slide scans and COGs carry
        # reduced levels: a thumbnail then reads a few tiles, not the whole image).
        import cv2

        out_w = max(1, round(self.width * min(1.0, max_side / max(self.width, self.height))))
        out_h = max(1, round(self.height * min(1.0, max_side / max(self.width, self.height))))
        page = self._thumbnail_level(max(out_w, out_h))
        scale = out_w / int(page.imagewidth)
        out = np.zeros((out_h, out_w, 3), np.uint8)
        for index, encoded in self._all_tiles(page):
            tile, x, y = self._decode_tile(index, encoded, page)
            x1, y1 = round(x * scale), round(y * scale)
            x2 = min(out_w, round((x + tile.shape[1]) * scale))
            y2 = min(out_h, round((y + tile.shape[0]) * scale))
            if x2 > x1 and y2 > y1:
                out[y1:y2, x1:x2] = cv2.resize(self._to_rgb8(tile), (x2 - x1, y2 - y1),
                                               interpolation=cv2.INTER_AREA)
        return out

    def _all_tiles(self, page: Any) -> Iterator[tuple[int, bytes]]:
        """Every tile's encoded bytes, fetched a tile row at a time (one ranged GET per row
        over S3, not one per tile) and never more than one row held."""
        per_row = math.ceil(int(page.imagewidth) / int(page.tilewidth))
        count = len(page.dataoffsets)
        for start in range(0, count, per_row):
            row = list(range(start, min(count, start + per_row)))
            yield from self._read_tiles(row, page).items()

    def _thumbnail_level(self, side: int, *, masked: bool = False) -> Any:
        """The smallest tiled pyramid level no larger than the one read and still ≥ ``side``
        px along the image's long side (the page read when there is no such level);
        ``masked``: only a level whose GDAL mask is there too."""
        best = self._page
        for page in self._pyramid_levels():
            long_side = max(int(page.imagewidth), int(page.imagelength))
            usable = (page.is_tiled and page.planarconfig == 1 and page.imagedepth == 1
                      and page.samplesperpixel == self._page.samplesperpixel
                      and (not masked or cast(GdalMask, self._mask).level(page) is not None))
            if usable and side <= long_side < max(int(best.imagewidth), int(best.imagelength)):
                best = page
        return best

    def _pyramid_levels(self) -> list[Any]:
        """The reduced levels of the image's pyramid: a slide's (checked when opened), or a
        COG's overviews — the first series' levels when it is this image's pyramid."""
        if self._pyramid:
            return self._pyramid[1:]
        first = self._tiff.pages.first
        try:
            series = self._tiff.series[0]
            if tuple(series.levels[0].keyframe.shape[:2]) != (int(first.imagelength),
                                                               int(first.imagewidth)):
                return []  # the first series is not this page's pyramid
            return [level.keyframe for level in series.levels[1:]]
        except Exception:  # an odd layout: the page read always works
            return []

    def close(self) -> None:
        if self._mask is not None:
            self._mask.close()
        self._tiff.close()  # tifffile leaves a handle it was given open
        self._handle.close()
