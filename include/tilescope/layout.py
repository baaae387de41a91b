"""Where tilescope's objects live in S3, and how a run's pixels are staged there, read back
and removed: the one description of the key layout, used by the task bodies that write the
objects and by the results viewer that checks a run's XComs against it.

======================================================  =====================================
``scratch/<image-id>/<run>/``                           one run's staged pixels, thumbnail,
                                                        offloaded findings (removed by store)
``scratch/batch/<run>/plan.json``                       a batch run's plan (removed at the end)
``results/<image-id>/<params digest>/result.json``      a stored result, with ``coco.json``,
                                                        ``overlay.<ext>``,
                                                        ``thumbnail.<ext>`` (``webp``,
                                                        ``jpg`` or ``png``: the preview
                                                        format), ``anonymized.<ext>`` if
                                                        asked (and ``evaluation.json``,
                                                        ``evaluation-pr.png`` when scored)
``results/batches/<run>/outcomes.json``                 a batch run's per-image outcomes (kept)
======================================================  =====================================

``<run>`` is the run id made safe for a key (:func:`safe_key_part`). The same image and
parameters always land on the same ``results/`` keys, so a re-run overwrites instead of
duplicating. The preview format is not a parameter (:mod:`tilescope.previews`): which
overlay and thumbnail a result has is what its store summary's (and catalog row's) ``keys``
say — results stored before the format was chosen have ``overlay.png`` and
``thumbnail.png`` (:data:`LEGACY_PREVIEWS`), and no ``thumbnail`` key.

Preprocess stages an image's decoded pixels (or each sampled frame of a video) once as a
*tiled* TIFF under ``scratch/<image_id>/<run>/``, so every analyze task fetches only the
tiles it needs with ranged GETs instead of decoding the whole image again; store removes the
prefix. Both the image and the video steps use this module; it imports neither.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilescope.previews import EXTENSIONS, PreviewFormat, encode_preview
from tilescope.readers import TiffReader
from tilescope.readers.base import DEFAULT_MAX_PIXELS, ImageReader
from tilescope.readers.masks import sidecar_opener
from tilescope.settings import TMP
from tilescope.slicing import Box
from tilescope.storage import S3Client, open_in_place, parse_s3_uri

#: a stored result's files by role, as the store summary and the viewer name them; the
#: previews (:data:`PREVIEWS`) are named by the run's preview format
ARTIFACTS = {"result": "result.json", "coco": "coco.json"}
#: the stored previews by role: the name's stem, its extension the preview format's
PREVIEWS = {"overlay": "overlay", "thumbnail": "thumbnail"}
#: a georeferenced image's extra files beside them (:mod:`tilescope.outputs.geo`)
GEO_ARTIFACTS = {"geojson": "detections.geojson", "geojson_native": "detections.native.geojson",
                 "stac": "item.json"}
#: what the optional evaluate step writes beside a result (:mod:`tilescope.tasks.evaluate`)
EVALUATION_ARTIFACTS = {"evaluation": "evaluation.json", "pr_plot": "evaluation-pr.png"}
#: the previews' names before the preview format existed (always PNG): still shown
LEGACY_PREVIEWS = {role: f"{stem}.png" for role, stem in PREVIEWS.items()}
#: an anonymized copy of the image beside its result: ``anonymized.<ext>`` (tif, png, jpg…)
ANONYMIZED = "anonymized"
PLAN, OUTCOMES = "plan.json", "outcomes.json"
IMAGE_ID = re.compile(r"[0-9a-f]{16}")
PARAMS_DIGEST = re.compile(r"[0-9a-f]{8,64}")

SCRATCH_TILE = 512
THUMBNAIL_SIDE = 2048
#: tiles tifffile holds at once while staging (its default, 512 MB, held copies of most of a
#: 16384² image when the reader's crops are copies): ~40 tiles of 512² keep both encoders busy
STAGING_BUFFER = 32 << 20


@dataclass(frozen=True)
class ScratchLayout:
    """Where one run keeps its intermediate objects: ``scratch/<image_id>/<run>/``."""

    bucket: str
    image_id: str
    run: str

    @property
    def prefix(self) -> str:
        return f"scratch/{self.image_id}/{safe_key_part(self.run)}/"

    @property
    def prefix_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def thumbnail(self, pixels: np.ndarray, fmt: PreviewFormat) -> tuple[str, bytes, str]:
        """The run's staged thumbnail: its URI, bytes and media type, in the run's preview
        format — store keeps these very bytes as the stored thumbnail (one encode a run,
        and ~20× fewer bytes through S3 than a PNG)."""
        return (self.uri(fmt.file_name(PREVIEWS["thumbnail"])), encode_preview(pixels, fmt),
                fmt.media_type)


def preview_names(keys: Mapping[str, Any]) -> dict[str, str]:
    """A stored result's preview file names by role, from its recorded ``keys`` (a store
    summary's, a catalog row's): ``{"overlay": "overlay.webp", "thumbnail": …}``; a result
    stored before the preview format existed has PNGs (:data:`LEGACY_PREVIEWS`)."""
    return {role: str(keys[role]).rsplit("/", 1)[-1] if keys.get(role) else legacy
            for role, legacy in LEGACY_PREVIEWS.items()}


def finding_uri(scratch_prefix_uri: str, index: int) -> str:
    """Where a region's detections go when its finding is too big for an XCom."""
    return f"{scratch_prefix_uri}findings/region-{index:04d}.json"


@dataclass(frozen=True)
class ResultsLayout:
    """Where one image's result is stored: ``results/<image_id>/<params digest>/``."""

    bucket: str
    image_id: str
    digest: str

    @property
    def prefix(self) -> str:
        return f"results/{self.image_id}/{self.digest}/"

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def artifacts(self, fmt: PreviewFormat) -> dict[str, str]:
        """``{"result": uri, "coco": uri, "overlay": uri, "thumbnail": uri}``, the previews
        in ``fmt``: the store summary's ``keys``."""
        return {**{role: self.uri(name) for role, name in ARTIFACTS.items()},
                **{role: self.uri(fmt.file_name(stem)) for role, stem in PREVIEWS.items()}}

    def is_preview(self, role: str, uri: object) -> bool:
        """Whether ``uri`` is this result's ``role`` preview (``overlay``, ``thumbnail``) in
        any preview format — what a recorded key may be, whichever format its run chose."""
        stem = PREVIEWS[role]
        return isinstance(uri, str) and any(
            uri == self.uri(stem + ext) for ext in EXTENSIONS)

    @classmethod
    def of_result(cls, uri: str) -> ResultsLayout | None:
        """The layout whose ``result.json`` is ``uri``, or ``None`` when ``uri`` is not
        exactly such a key (other prefix, a malformed image id or digest, extra segments)."""
        if not uri.startswith("s3://"):
            return None
        bucket, _, key = uri[len("s3://"):].partition("/")
        parts = key.split("/")
        if (len(parts) != 4 or parts[0] != "results" or not IMAGE_ID.fullmatch(parts[1])
                or not PARAMS_DIGEST.fullmatch(parts[2]) or parts[3] != ARTIFACTS["result"]):
            return None
        return cls(bucket, parts[1], parts[2])


@dataclass(frozen=True)
class BatchLayout:
    """A batch run's own documents: its plan under ``scratch/batch/<run>/`` (removed when
    the run ends) and its outcomes under ``results/batches/<run>/`` (kept)."""

    bucket: str
    run: str

    @property
    def scratch_prefix(self) -> str:
        return f"scratch/batch/{safe_key_part(self.run)}/"

    @property
    def results_prefix(self) -> str:
        return f"results/batches/{safe_key_part(self.run)}/"

    @property
    def scratch_uri(self) -> str:
        return f"s3://{self.bucket}/{self.scratch_prefix}"

    @property
    def plan_uri(self) -> str:
        return f"s3://{self.bucket}/{self.scratch_prefix}{PLAN}"

    @property
    def outcomes_uri(self) -> str:
        return f"s3://{self.bucket}/{self.results_prefix}{OUTCOMES}"


def safe_key_part(text: str) -> str:
    """``text`` made safe for one S3 key segment (run ids contain ``:`` and ``+``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "run"


def scratch_tile_shape(width: int, height: int) -> tuple[int, int]:
    """(tile height, tile width): ``SCRATCH_TILE`` square, but never much larger than the
    image along a side — TIFF pads every tile to full size, so a 100000×8 strip in 512² tiles
    would stage 64 times its pixels. Sides are multiples of 16, as TIFF requires."""
    def fit(side: int) -> int:
        return min(SCRATCH_TILE, -(-side // 16) * 16)

    return fit(height), fit(width)


def tiles(reader: ImageReader, tile_h: int, tile_w: int,
           alpha: bool = False) -> Iterator[np.ndarray]:
    """The image as ``tile_h × tile_w`` tiles in row-major order, edge tiles zero-padded (as
    TIFF stores them), read one at a time so no second full copy of the image is made; with
    ``alpha``, a fourth channel: 255 where the source has data, 0 where it has none
    (:meth:`~tilescope.readers.base.ImageReader.valid_mask`)."""
    for y in range(0, reader.height, tile_h):
        for x in range(0, reader.width, tile_w):
            box = Box(x, y, x + tile_w, y + tile_h)
            pixels = reader.read(box)
            if alpha:
                valid = reader.valid_mask(box)
                pixels = np.dstack([pixels, np.where(valid, 255, 0).astype(np.uint8)
                                    if valid is not None else
                                    np.full(pixels.shape[:2], 255, np.uint8)])
            if pixels.shape[:2] != (tile_h, tile_w):
                tile = np.zeros((tile_h, tile_w, pixels.shape[2]), np.uint8)
                tile[: pixels.shape[0], : pixels.shape[1]] = pixels
                pixels = tile
            yield pixels


def upload_tiled_tiff(reader: ImageReader, uri: str, client: S3Client) -> None:
    """Write the image as a zstd-compressed tiled TIFF and upload it with a managed multipart
    transfer, staging on local disk rather than in memory.

    Lossless, so regions see the very pixels ``tilescope predict`` sees. zstd level 1 encodes
    at several hundred MB/s and halves photos or better: on a loopback S3 server, where uploads
    run at ~60 MB/s, sending half the bytes saves far more than the encoding costs, and every
    region task reads half as much.

    A source that says where it has no data (a stretched scene's nodata, a mask, an alpha
    band: :meth:`~tilescope.readers.base.ImageReader.valid_mask`) is staged as RGBA with that
    validity as its alpha band, so regions reading the staged pixels skip the slices
    ``tilescope predict`` skips (:func:`tilescope.banding.nodata_slices`)."""
    loc = parse_s3_uri(uri)
    alpha = reader.valid_mask(Box(0, 0, 1, 1)) is not None
    with tempfile.NamedTemporaryFile(suffix=".tif", dir=TMP.get()) as tmp:
        write_tiled_tiff(reader, tmp.name, alpha=alpha)
        client.upload_file(tmp.name, loc.bucket, loc.key,
                           ExtraArgs={"ContentType": "image/tiff"})


def write_tiled_tiff(reader: ImageReader, path: str, *, alpha: bool = False) -> None:
    """The image as a zstd-compressed tiled TIFF at a local ``path``, read and encoded one
    tile at a time (what :func:`upload_tiled_tiff` stages; anonymized copies use it too);
    ``alpha``: with the source's validity as a fourth, alpha band (see :func:`tiles`)."""
    import tifffile

    tile = scratch_tile_shape(reader.width, reader.height)
    tifffile.imwrite(path, tiles(reader, *tile, alpha=alpha),
                     shape=(reader.height, reader.width, 4 if alpha else 3), dtype=np.uint8,
                     extrasamples=("unassalpha",) if alpha else None,
                     tile=tile, photometric="rgb",
                     compression="zstd", compressionargs={"level": 1}, maxworkers=2,
                     buffersize=STAGING_BUFFER)


def open_source(source_uri: str, client: S3Client, *, size: int | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS,
                bands: Sequence[int] | None = None,
                magnification: float | None = None) -> TiffReader:
    """A reader over a TIFF in S3 (the staged pixels, or a tiled input) that fetches only the
    tiles a read needs (``magnification``: of a whole-slide scan's pyramid level), and a
    GeoTIFF's ``.msk`` mask sidecar beside it when it has one. ``size`` (if known) saves a
    HEAD request."""
    return TiffReader(open_in_place(source_uri, client, size=size),
                      max_pixels=max_pixels, name=source_uri, bands=bands,
                      magnification=magnification,
                      mask_sidecar=sidecar_opener(source_uri, client))


def delete_prefix(prefix_uri: str, client: S3Client) -> int:
    """Delete every object under an ``s3://bucket/prefix/`` (scratch clean-up)."""
    loc = parse_s3_uri(prefix_uri)
    if not loc.key.startswith("scratch/"):
        raise ValueError(f"refusing to delete outside scratch/: {prefix_uri}")
    deleted = 0
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.key):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=loc.bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    return deleted
