"""Georeferenced results: detections as GeoJSON (WGS 84 and the scene's own CRS) and a STAC
Item, for images that carry a CRS (a GeoTIFF/COG scene).

* ``detections.geojson`` — RFC 7946: a FeatureCollection in WGS 84 longitude/latitude, one
  Polygon per detection (its pixel box's four corners through the geotransform, so a rotated
  scene gives rotated polygons), properties ``class``, ``score``, ``pixel_box``
  (``[x1, y1, x2, y2]`` in image pixels) and ``image_id``.
* ``detections.native.geojson`` — the same features in the scene's native CRS, named by a
  GeoJSON-2008 ``crs`` member (``urn:ogc:def:crs:EPSG::<code>``). RFC 7946 dropped that
  member, but GDAL/OGR (hence QGIS) still reads it; a GeoPackage would need a second GDAL
  binding (pyogrio or fiona) for the same information.
* ``item.json`` — a STAC 1.1 Item with the label extension (pystac): its geometry is the
  scene's footprint in lon/lat, its ``labels`` asset the GeoJSON above, a ``source`` link and
  a ``scene`` asset point at the image, and the result JSON is an asset too.

Pixel-only images have none of these (:func:`has_crs` is false; callers say so).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

import numpy as np

from tilescope.errors import ConfigError
from tilescope.georef import Georeference, box_corners
from tilescope.results import BOX_DECIMALS, Result

#: coordinates are written to 1e-9 degrees (~0.1 mm) and 1e-4 CRS units
LONLAT_DECIMALS, NATIVE_DECIMALS = 9, 4


def has_crs(result: Result) -> bool:
    """Whether the result's image is placed on the Earth (a CRS and a geotransform)."""
    geo = result.image.georeference
    return geo is not None and geo.crs_wkt is not None


def require_crs(result: Result, what: str) -> Georeference:
    """The image's georeference, or :class:`ConfigError` saying ``what`` needs one."""
    geo = result.image.georeference
    if geo is None or geo.crs_wkt is None:
        raise ConfigError(f"{result.image.uri} has no CRS (a plain image: pixel boxes only); "
                          f"{what} needs a georeferenced image such as a GeoTIFF/COG")
    return geo


def _rings(xs: np.ndarray, ys: np.ndarray, decimals: int) -> list[list[list[list[float]]]]:
    """(n, 4) corner coordinates → one closed, counterclockwise ring per row (RFC 7946's
    right-hand rule, whatever the geotransform's flips and rotation)."""
    # shoelace: positive = counterclockwise in an x-east, y-north plane
    area = np.sum(xs * np.roll(ys, -1, axis=1) - np.roll(xs, -1, axis=1) * ys, axis=1)
    rings = []
    for x, y, signed in zip(np.round(xs, decimals), np.round(ys, decimals), area, strict=True):
        points = list(zip(x.tolist(), y.tolist(), strict=True))
        if signed < 0:
            points.reverse()
        rings.append([[list(p) for p in [*points, points[0]]]])
    return rings


def detection_features(result: Result, *, lonlat: bool = True) -> list[dict[str, Any]]:
    """One GeoJSON Feature per detection: its box as a Polygon in lon/lat (or the scene's
    CRS), with class, score, pixel box and image id."""
    geo = require_crs(result, "GeoJSON")
    boxes = result.detections.boxes.astype(np.float64)
    cols, rows = box_corners(boxes)
    if lonlat:
        xs, ys = geo.pixel_to_lonlat(cols, rows)
        decimals = LONLAT_DECIMALS
    else:
        xs, ys = geo.pixel_to_crs(cols, rows)
        decimals = NATIVE_DECIMALS
    records = result.detection_records()
    features = []
    for ring, record, box in zip(_rings(xs, ys, decimals), records,
                                 np.round(boxes, BOX_DECIMALS).tolist(), strict=True):
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": ring},
                         "properties": {"class": record["category_name"],
                                        "score": record["score"], "pixel_box": box,
                                        "image_id": result.image.image_id}})
    return features


def geojson_lonlat(result: Result) -> bytes:
    """The RFC 7946 FeatureCollection in WGS 84 lon/lat."""
    doc = {"type": "FeatureCollection", "features": detection_features(result)}
    return json.dumps(doc).encode()


def native_crs_name(geo: Georeference) -> str:
    """The CRS as GeoJSON 2008 names it: an OGC URN for an EPSG code, otherwise its WKT
    (which GDAL also accepts there)."""
    return f"urn:ogc:def:crs:EPSG::{geo.epsg}" if geo.epsg is not None else str(geo.crs_wkt)


def geojson_native(result: Result) -> bytes:
    """The same features in the scene's CRS, named by a ``crs`` member."""
    geo = require_crs(result, "GeoJSON")
    doc = {"type": "FeatureCollection",
           "crs": {"type": "name", "properties": {"name": native_crs_name(geo)}},
           "features": detection_features(result, lonlat=False)}
    return json.dumps(doc).encode()


def footprint(result: Result) -> dict[str, Any]:
    """The scene's outline as a lon/lat Polygon (its four corners)."""
    geo = require_crs(result, "a footprint")
    cols, rows = box_corners(np.array([[0, 0, result.image.width, result.image.height]]))
    xs, ys = geo.pixel_to_lonlat(cols, rows)
    return {"type": "Polygon", "coordinates": _rings(xs, ys, LONLAT_DECIMALS)[0]}


def _href(target: str, item_uri: str | None) -> str:
    """``target`` as the Item refers to it: relative to the Item's folder when both are local
    files, else as given (``s3://`` URIs stay absolute)."""
    if item_uri and "://" not in target and "://" not in item_uri:
        return os.path.relpath(os.path.abspath(target),
                               os.path.dirname(os.path.abspath(item_uri)))
    return target


def stac_item(result: Result, *, labels: str, result_uri: str | None = None,
              item_uri: str | None = None,
              created: dt.datetime | None = None) -> dict[str, Any]:
    """A STAC Item (label extension, vector detection labels) for the result: ``labels`` is
    where the lon/lat GeoJSON is, ``result_uri`` the result JSON, ``item_uri`` where the Item
    itself goes (local hrefs are written relative to it)."""
    import pystac
    from pystac.extensions.label import LabelClasses, LabelExtension, LabelType

    geo = require_crs(result, "a STAC Item")
    geometry = footprint(result)
    ring = np.array(geometry["coordinates"][0])
    bbox = [*ring.min(axis=0).tolist(), *ring.max(axis=0).tolist()]
    item = pystac.Item(id=f"tilescope-{result.image.image_id}", geometry=geometry, bbox=bbox,
                       datetime=created or dt.datetime.now(dt.UTC),
                       properties={"tilescope:model": result.model,
                                   "tilescope:detections": len(result.detections),
                                   "tilescope:crs": geo.crs})
    label = LabelExtension.ext(item, add_if_missing=True)
    classes = sorted(result.counts())
    label.apply(label_description=f"objects detected by {result.model} (tilescope)",
                label_type=LabelType.VECTOR, label_properties=["class"],
                label_classes=[LabelClasses.create(classes=classes, name="class")],
                label_tasks=["detection"], label_methods=["automated"])
    label.add_geojson_labels(_href(labels, item_uri), title="detections (WGS 84)")
    item.assets["labels"].roles = ["labels"]
    scene = _href(result.image.uri, item_uri)
    item.add_asset("scene", pystac.Asset(href=scene, media_type=pystac.MediaType.GEOTIFF,
                                         title="the analysed scene", roles=["source"]))
    if result_uri:
        item.add_asset("result", pystac.Asset(href=_href(result_uri, item_uri),
                                              media_type=pystac.MediaType.JSON,
                                              title="tilescope result", roles=["metadata"]))
    item.add_link(pystac.Link("source", scene, media_type=pystac.MediaType.GEOTIFF,
                              title="the analysed scene"))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def stac_item_json(result: Result, **kwargs: Any) -> bytes:
    return json.dumps(stac_item(result, **kwargs), indent=1).encode()
