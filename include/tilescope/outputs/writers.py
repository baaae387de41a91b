"""Serialise a :class:`~tilescope.results.Result` into the files a run stores.

Shared by the CLI (local paths) and the DAG's store task (``s3://`` keys): the same bytes
either way, written through :func:`tilescope.storage.write_bytes`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tilescope.outputs.overlay import DEFAULT_OVERLAY_SIDE, render_overlay
from tilescope.previews import PreviewFormat, format_of_path
from tilescope.readers.base import ImageReader
from tilescope.results import Result
from tilescope.storage import S3Client, write_bytes


def result_json(result: Result) -> bytes:
    return json.dumps(result.to_dict(), indent=1).encode()


def coco_json(result: Result) -> bytes:
    return json.dumps(result.to_coco()).encode()


def overlay_bytes(result: Result, thumbnail: np.ndarray, fmt: PreviewFormat) -> bytes:
    """The overlay picture drawn on ``thumbnail`` (the whole image downscaled), failed
    regions marked, encoded as ``fmt``."""
    failed = [i for i, r in enumerate(result.regions) if r.status != "success"]
    return render_overlay(thumbnail, result.image.width, result.image.height,
                          result.detections, result.category_names,
                          regions=[r.box for r in result.regions] if len(result.regions) > 1
                          else (), failed=failed, fmt=fmt)


@dataclass(frozen=True)
class OutputTargets:
    """Where to write each artefact (a path or ``s3://`` URI); ``None`` skips it."""

    result: str | None = None
    coco: str | None = None
    overlay: str | None = None
    #: georeferenced outputs (:mod:`tilescope.outputs.geo`): only for an image with a CRS
    geojson: str | None = None
    geojson_native: str | None = None
    stac: str | None = None

    @property
    def georeferenced(self) -> bool:
        """Whether any georeferenced output is asked for."""
        return bool(self.geojson or self.geojson_native or self.stac)


@dataclass(frozen=True)
class ResultTargets(OutputTargets):
    """A stored result's artefacts, every one written (the DAG's ``results/`` keys): the
    overlay and the thumbnail in the run's preview format."""

    result: str
    coco: str
    overlay: str
    thumbnail: str = ""

    def keys(self) -> dict[str, str]:
        """``{"result": uri, "coco": uri, "overlay": uri, "thumbnail": uri}`` (the store
        summary's ``keys``)."""
        return {"result": self.result, "coco": self.coco, "overlay": self.overlay,
                "thumbnail": self.thumbnail}


def write_outputs(result: Result, reader: ImageReader, targets: OutputTargets,
                  client: S3Client | None = None) -> dict[str, str]:
    """Write the requested artefacts; returns ``{"result": uri, ...}`` of what was written.
    The overlay's format is its path's extension (:func:`tilescope.previews.format_of_path`)."""
    return _write(result, targets, lambda fmt: overlay_bytes(
        result, reader.thumbnail(DEFAULT_OVERLAY_SIDE), fmt), client)


def write_video_outputs(result: Result, cells: Sequence[tuple[int, np.ndarray]],
                        targets: OutputTargets, client: S3Client | None = None) -> dict[str, str]:
    """:func:`write_outputs` for a video: the overlay is its contact sheet, drawn on
    ``cells`` ((frame position, downscaled frame) pairs, see
    :class:`tilescope.video.sampling.SheetCells`)."""
    from tilescope.outputs.contact_sheet import render_contact_sheet

    return _write(result, targets, lambda fmt: render_contact_sheet(result, cells, fmt=fmt),
                  client)


def _write(result: Result, targets: OutputTargets,
           overlay: Callable[[PreviewFormat], bytes], client: S3Client | None
           ) -> dict[str, str]:
    # a bad overlay extension is refused before anything is written
    fmt = format_of_path(targets.overlay) if targets.overlay else None
    written: dict[str, str] = {}
    if targets.georeferenced:
        written.update(write_geo_outputs(result, targets, client))
    if targets.coco:
        write_bytes(targets.coco, coco_json(result), "application/json", client=client)
        written["coco"] = targets.coco
    if targets.overlay and fmt is not None:
        write_bytes(targets.overlay, overlay(fmt), fmt.media_type, client=client)
        written["overlay"] = targets.overlay
    if targets.result:  # last, so a reader who sees the result JSON finds its companions too
        write_bytes(targets.result, result_json(result), "application/json", client=client)
        written["result"] = targets.result
    return written


def write_geo_outputs(result: Result, targets: OutputTargets,
                      client: S3Client | None = None) -> dict[str, str]:
    """The GeoJSON files and the STAC Item asked for in ``targets``
    (:class:`~tilescope.errors.ConfigError` before anything is written if the image has no
    CRS). The Item's ``labels`` asset is the lon/lat GeoJSON (written beside the Item as
    ``<item>.geojson`` when no ``geojson`` target is given)."""
    from tilescope.outputs.geo import geojson_lonlat, geojson_native, require_crs, stac_item_json

    require_crs(result, "--geojson/--geojson-native/--stac")
    written: dict[str, str] = {}
    geojson = targets.geojson
    if targets.stac and not geojson:
        geojson = f"{targets.stac.removesuffix('.json')}.geojson"
    if geojson:
        write_bytes(geojson, geojson_lonlat(result), "application/geo+json", client=client)
        written["geojson"] = geojson
    if targets.geojson_native:
        write_bytes(targets.geojson_native, geojson_native(result), "application/geo+json",
                    client=client)
        written["geojson_native"] = targets.geojson_native
    if targets.stac:
        item = stac_item_json(result, labels=str(geojson), result_uri=targets.result,
                              item_uri=targets.stac)
        write_bytes(targets.stac, item, "application/json", client=client)
        written["stac"] = targets.stac
    return written
