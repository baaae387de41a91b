"""Typed results: what a region task returns, and the document a run stores.

``RegionFinding`` is deliberately small (it travels through Airflow's XCom); ``Result`` is the
whole run, serialised to one JSON document and exported to COCO.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilescope.detections import Detections
from tilescope.georef import Georeference
from tilescope.instance_masks import Mask
from tilescope.microscopy import SlideScale

RESULT_SCHEMA = "tilescope.result/1"


@dataclass(frozen=True)
class ImageInfo:
    """The input image: where it came from, its size and the sha256 that names its results."""

    uri: str
    width: int
    height: int
    sha256: str
    format: str
    bytes: int
    #: the scene's CRS and geotransform (``None``: a plain image, pixels only)
    georeference: Georeference | None = None
    #: bands chosen and the 8-bit stretch applied (``None``: plain 8-bit pixels)
    pixels: dict[str, Any] | None = None
    #: a whole-slide scan's µm per pixel, objective power and the pyramid level analysed
    #: (``None``: not a slide); ``width``/``height`` and every box are in level-0 pixels
    microscopy: SlideScale | None = None

    @property
    def analysed_size(self) -> tuple[int, int]:
        """The width and height of the pixels the model sees — a slide's analysed level;
        slices and regions are planned on them."""
        return self.microscopy.size if self.microscopy else (self.width, self.height)

    @property
    def image_id(self) -> str:
        """Results live under ``results/<image_id>/``: the content hash, shortened."""
        return self.sha256[:16]

    def to_dict(self) -> dict[str, Any]:
        data = {"uri": self.uri, "width": self.width, "height": self.height,
                "sha256": self.sha256, "format": self.format, "bytes": self.bytes,
                "image_id": self.image_id,
                # explicit for every image: "crs": null says "pixels only, not placed"
                "crs": None, "transform": None}
        if self.georeference is not None:
            data.update(self.georeference.to_dict())
        if self.pixels is not None:
            data["pixels"] = self.pixels
        if self.microscopy is not None:
            data["microscopy"] = self.microscopy.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageInfo:
        return cls(str(data["uri"]), int(data["width"]), int(data["height"]),
                   str(data["sha256"]), str(data["format"]), int(data["bytes"]),
                   georeference=Georeference.from_dict(data), pixels=data.get("pixels"),
                   microscopy=SlideScale.from_dict(data.get("microscopy")))


@dataclass(frozen=True)
class VideoFrame:
    """One sampled frame of a video: its number in the stream and when it is shown."""

    frame_index: int
    timestamp_ms: float

    @property
    def name(self) -> str:
        return f"f{self.frame_index}"

    def to_dict(self) -> dict[str, Any]:
        return {"frame_index": self.frame_index, "timestamp_ms": self.timestamp_ms}


BOX_DECIMALS = 2
SCORE_DECIMALS = 4


def quantize(dets: Detections) -> Detections:
    """Detections rounded to what results keep (0.01 px, 4-digit scores).

    Region findings are quantized where they are made, so a finding that travelled through
    JSON (an XCom) and one that stayed in memory (the CLI) are the same numbers.
    """
    return Detections(np.round(dets.boxes.astype(np.float64), BOX_DECIMALS),
                      np.round(dets.scores.astype(np.float64), SCORE_DECIMALS),
                      dets.category_ids, dets.slices, dets.masks)


def detections_to_compact(dets: Detections) -> dict[str, list]:
    """Columnar lists rounded as :func:`quantize` does: small and JSON-able. Raw detections'
    slices travel as the distinct slice boxes (``slice_boxes``) and an index per detection
    (``slice_of``): a region has a few hundred slices and thousands of detections. Masks
    travel as their box-local RLE windows
    (``masks``, :meth:`tilescope.instance_masks.Mask.to_list`)."""
    data = {"boxes": np.round(dets.boxes.astype(np.float64), BOX_DECIMALS).tolist(),
            "scores": np.round(dets.scores.astype(np.float64), SCORE_DECIMALS).tolist(),
            "category_ids": dets.category_ids.tolist()}
    if dets.slices is not None and len(dets):
        boxes, index = np.unique(dets.slices, axis=0, return_inverse=True)
        data["slice_boxes"] = boxes.tolist()
        data["slice_of"] = index.reshape(-1).tolist()
    if dets.masks is not None and len(dets):
        data["masks"] = [m.to_list() for m in dets.masks]
    return data


def detections_from_compact(data: dict[str, list]) -> Detections:
    if not data.get("scores"):
        return Detections.empty()
    slices = None
    if data.get("slice_boxes") is not None:
        slices = np.asarray(data["slice_boxes"], np.int32).reshape(-1, 4)[
            np.asarray(data["slice_of"], np.int64)]
    masks = None if data.get("masks") is None else \
        tuple(Mask.from_list(m) for m in data["masks"])
    return Detections(np.asarray(data["boxes"], np.float32), np.asarray(data["scores"]),
                      np.asarray(data["category_ids"]), slices, masks)


@dataclass
class RegionFinding:
    """One region's outcome: its raw detections in full-image pixels (thresholded, each
    with its slice, not merged: the image's one merge happens at synthesis), timings in
    seconds, and which attempt produced it."""

    index: int
    name: str
    row: int
    col: int
    box: list[int]
    slice_count: int
    detections: Detections = field(default_factory=Detections.empty)
    status: str = "success"
    attempts: int = 1
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    #: the count when the boxes themselves were not kept (result documents list regions
    #: without their boxes, which are merged into the image-level detections)
    detections_count: int | None = None
    #: names of this finding's category ids, for open-vocabulary models whose ids are
    #: per-model-instance; ``None`` = the model's fixed ``CATEGORY_NAMES``
    category_names: list[str] | None = None
    #: the video frame this region belongs to (``None`` for images)
    frame: VideoFrame | None = None
    #: slices entirely nodata, not sent to the model (``tilescope.banding.nodata_slices``);
    #: in the JSON only when some were
    skipped_slices: int = 0

    def to_dict(self, *, with_detections: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "index": self.index, "name": self.name, "row": self.row, "col": self.col,
            "box": list(self.box), "slice_count": self.slice_count, "status": self.status,
            "attempts": self.attempts,
            "detections_count": len(self.detections) if self.detections_count is None
            or len(self.detections) else self.detections_count,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()}, "error": self.error,
        }
        if self.frame is not None:
            data.update(self.frame.to_dict())
        if self.skipped_slices:
            data["skipped_slices"] = self.skipped_slices
        if with_detections:
            data["detections"] = detections_to_compact(self.detections)
            if self.category_names is not None:
                data["category_names"] = list(self.category_names)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegionFinding:
        dets = data.get("detections")
        return cls(index=int(data["index"]), name=str(data["name"]), row=int(data["row"]),
                   col=int(data["col"]), box=[int(v) for v in data["box"]],
                   slice_count=int(data["slice_count"]),
                   detections=detections_from_compact(dets) if dets else Detections.empty(),
                   status=str(data.get("status", "success")),
                   attempts=int(data.get("attempts", 1)),
                   seconds={k: float(v) for k, v in (data.get("seconds") or {}).items()},
                   error=data.get("error"),
                   detections_count=None if dets else data.get("detections_count"),
                   category_names=data.get("category_names"),
                   skipped_slices=int(data.get("skipped_slices") or 0),
                   frame=VideoFrame(int(data["frame_index"]), float(data["timestamp_ms"]))
                   if data.get("frame_index") is not None else None)


@dataclass
class Result:
    """A finished (or partial) run over one image."""

    image: ImageInfo
    model: str
    params: dict[str, Any]
    plan: dict[str, Any]
    regions: list[RegionFinding]
    detections: Detections
    category_names: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    coco_category_ids: list[int] | None = None
    description: str | None = None
    #: the moderation gate's verdict (``tilescope.moderation.Verdict.to_dict()``), if one ran
    moderation: dict[str, Any] | None = None
    #: where ``description`` came from when not the deterministic summary, e.g.
    #: ``{"model": "bedrock-converse", "model_id": ..., "error": ...}``
    description_source: dict[str, Any] | None = None
    #: a video's sampled frames in time order (``None`` for an image); ``detection_frames``
    #: then gives each detection's position in this list, and ``video`` the stream's facts
    frames: list[VideoFrame] | None = None
    detection_frames: np.ndarray | None = None
    video: dict[str, Any] | None = None
    #: the archival copy's facts (``tilescope.archival.ArchiveOutcome.to_dict()``), if made
    archive: dict[str, Any] | None = None
    #: the anonymized copy written after synthesis (``uri``, ``mode``, ``margin``, boxes per
    #: target; :mod:`tilescope.anonymize`), ``None`` when none was asked for
    anonymized: dict[str, Any] | None = None

    @property
    def failed_regions(self) -> list[str]:
        return [r.name for r in self.regions if r.status != "success"]

    @property
    def partial(self) -> bool:
        return bool(self.failed_regions)

    @property
    def blocked(self) -> bool:
        """The moderation gate refused the image: nothing was analysed."""
        return bool(self.moderation and self.moderation.get("blocked"))

    @property
    def status(self) -> str:
        if self.blocked:
            return "blocked"
        return "partial" if self.partial else "complete"

    def category_name(self, category_id: int) -> str:
        if 0 <= category_id < len(self.category_names):
            return self.category_names[category_id]
        return str(category_id)

    def counts(self) -> dict[str, int]:
        """Detections per category name, most frequent first."""
        counter = Counter(self.category_name(int(c)) for c in self.detections.category_ids)
        return dict(counter.most_common())

    @property
    def skipped_slices(self) -> int:
        """Slices of every region that were entirely nodata and not sent to the model."""
        return sum(r.skipped_slices for r in self.regions)

    def summary(self) -> dict[str, Any]:
        # From the seconds as stored (4 decimals), so a result read back from its JSON
        # summarizes to the very same numbers.
        total = round(self.seconds.get("total", 0.0), 4)
        model = round(self.seconds.get("model", 0.0), 4)
        return {"detections": len(self.detections), "counts": self.counts(),
                "regions": len(self.regions), "failed_regions": len(self.failed_regions),
                "model_seconds": round(model, 3), "total_seconds": round(total, 3),
                "model_share": round(model / total, 3) if total else None,
                "description": self.description or describe_counts(self.counts()),
                **({"description_source": self.description_source}
                   if self.description_source else {}),
                **({"frames": len(self.frames)} if self.frames is not None else {}),
                **({"skipped_slices": self.skipped_slices} if self.skipped_slices else {})}

    def detection_records(self) -> list[dict[str, Any]]:
        """Detections as ``{bbox: [x, y, w, h], score, category_id, category_name}``, plus
        ``segmentation`` (COCO compressed RLE of the image's size) and its pixel ``area``
        when the model gave masks."""
        boxes = self.detections.boxes.astype(np.float64)
        xywh = np.round(np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]),
                        BOX_DECIMALS)
        scores = np.round(self.detections.scores.astype(np.float64), SCORE_DECIMALS)
        records = [{"bbox": xywh[i].tolist(), "score": float(scores[i]),
                    "category_id": int(c), "category_name": self.category_name(int(c))}
                   for i, c in enumerate(self.detections.category_ids)]
        if self.frames is not None:  # a video: say which frame each box is on
            for record, position in zip(records, self._detection_frames(), strict=True):
                record.update(self.frames[position].to_dict())
        for record, mask in zip(records, self.detections.masks or (), strict=False):
            record["segmentation"] = mask.to_coco(self.image.height, self.image.width)
            record["area"] = mask.area
        return records

    def _detection_frames(self) -> np.ndarray:
        if self.detection_frames is None:
            return np.zeros(len(self.detections), np.int64)
        return np.asarray(self.detection_frames, np.int64)

    def frame_detections(self, position: int) -> Detections:
        """The detections on the ``position``-th sampled frame of a video."""
        return self.detections.select(self._detection_frames() == position)

    def frame_summaries(self) -> list[dict[str, Any]]:
        """Per sampled frame: where it is in the video, its detections per class and the
        regions of it that failed."""
        failed: dict[int, list[str]] = {}
        for region in self.regions:
            if region.status != "success" and region.frame is not None:
                failed.setdefault(region.frame.frame_index, []).append(region.name)
        per_frame = self._detection_frames()
        out = []
        for position, frame in enumerate(self.frames or []):
            ids = self.detections.category_ids[per_frame == position]
            counts = Counter(self.category_name(int(c)) for c in ids)
            out.append({**frame.to_dict(), "detections": len(ids),
                        "counts": dict(counts.most_common()),
                        "failed_regions": failed.get(frame.frame_index, [])})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The results JSON document."""
        return {
            "schema": RESULT_SCHEMA,
            "image": self.image.to_dict(),
            **({"video": self.video or {}, "frames": self.frame_summaries()}
               if self.frames is not None else {}),
            "model": self.model,
            "params": self.params,
            "plan": self.plan,
            "status": self.status,
            "partial": self.partial,
            "failed_regions": self.failed_regions,
            "summary": self.summary(),
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "regions": [r.to_dict(with_detections=False) for r in self.regions],
            "category_names": list(self.category_names),
            "coco_category_ids": self.coco_category_ids,
            "detections": self.detection_records(),
            **({"moderation": self.moderation} if self.moderation is not None else {}),
            **({"archive": self.archive} if self.archive is not None else {}),
            **({"anonymized": self.anonymized} if self.anonymized is not None else {}),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Result:
        """Rebuild a result from its JSON document (inverse of :meth:`to_dict`)."""
        names: dict[int, str] = {}
        records = doc.get("detections") or []
        for record in records:
            names[int(record["category_id"])] = str(record["category_name"])
        category_names = doc.get("category_names") or [
            names.get(i, str(i)) for i in range(max(names, default=-1) + 1)]
        boxes = np.array([r["bbox"] for r in records], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        masks = tuple(Mask.from_coco(r["segmentation"]) for r in records) \
            if records and all("segmentation" in r for r in records) else None
        dets = Detections(boxes, np.array([r["score"] for r in records]),
                          np.array([r["category_id"] for r in records]), masks=masks)
        frames = ([VideoFrame(int(f["frame_index"]), float(f["timestamp_ms"]))
                   for f in doc["frames"]] if doc.get("frames") is not None else None)
        positions = None
        if frames is not None:
            where = {f.frame_index: i for i, f in enumerate(frames)}
            positions = np.array([where[int(r["frame_index"])] for r in records], np.int64)
        return cls(image=ImageInfo.from_dict(doc["image"]), model=str(doc["model"]),
                   params=dict(doc["params"]), plan=dict(doc["plan"]),
                   regions=[RegionFinding.from_dict(r) for r in doc.get("regions", [])],
                   detections=dets, category_names=list(category_names),
                   seconds={k: float(v) for k, v in (doc.get("seconds") or {}).items()},
                   coco_category_ids=doc.get("coco_category_ids"),
                   description=(doc.get("summary") or {}).get("description"),
                   moderation=doc.get("moderation"),
                   description_source=(doc.get("summary") or {}).get("description_source"),
                   frames=frames, detection_frames=positions, video=doc.get("video"),
                   archive=doc.get("archive"),
                   anonymized=doc.get("anonymized"))

    def to_coco(self, image_id: int = 1) -> dict[str, Any]:
        """A COCO document: ``images``, ``categories`` and scored ``annotations``.

        ``annotations`` alone is the COCO *results* format evaluation tools read. A video
        has one image per sampled frame (ids from ``image_id`` on, with ``frame_index`` and
        ``timestamp_ms``), and each annotation refers to its frame's image.
        """
        ids = self.coco_category_ids or [i + 1 for i in range(len(self.category_names))]
        file_name = self.image.uri.rsplit("/", 1)[-1]
        if self.frames is None:
            images = [{"id": image_id, "file_name": file_name,
                       "width": self.image.width, "height": self.image.height}]
            image_ids = np.full(len(self.detections), image_id, np.int64)
        else:
            images = [{"id": image_id + k, "file_name": file_name, **frame.to_dict(),
                       "width": self.image.width, "height": self.image.height}
                      for k, frame in enumerate(self.frames)]
            image_ids = image_id + self._detection_frames()
        annotations = []
        for number, record in enumerate(self.detection_records(), start=1):
            x, y, w, h = record["bbox"]
            annotations.append({"id": number, "image_id": int(image_ids[number - 1]),
                                "category_id": ids[record["category_id"]], "bbox": [x, y, w, h],
                                "area": record.get("area", round(w * h, 2)), "iscrowd": 0,
                                "score": record["score"],
                                **({"segmentation": record["segmentation"]}
                                   if "segmentation" in record else {})})
        return {
            "info": {"description": f"tilescope {self.model} on {self.image.uri}"},
            "images": images,
            "categories": [{"id": ids[i], "name": n} for i, n in enumerate(self.category_names)],
            "annotations": annotations,
        }


def merged_coco(results: Sequence[Result]) -> dict[str, Any]:
    """One COCO document for many results: image ids 1..N in order (a video's sampled
    frames take one id each), annotation ids 1..M, categories of them all."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    categories: dict[int, dict[str, Any]] = {}
    for result in results:
        doc = result.to_coco(image_id=len(images) + 1)
        images.extend(doc["images"])
        for category in doc["categories"]:
            categories.setdefault(int(category["id"]), category)
        for annotation in doc["annotations"]:
            annotations.append({**annotation, "id": len(annotations) + 1})
    return {"info": {"description": f"tilescope {results[0].model if results else ''} on "
                                    f"{len(images)} images".replace("  ", " ")},
            "images": images, "categories": [categories[k] for k in sorted(categories)],
            "annotations": annotations}


def describe_counts(counts: dict[str, int]) -> str:
    """A deterministic one-line scene summary, e.g. ``"12 persons, 3 kites"``."""
    if not counts:
        return "nothing detected"
    return ", ".join(f"{n} {name}{'' if n == 1 else 's'}" for name, n in counts.items())
