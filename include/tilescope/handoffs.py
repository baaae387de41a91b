"""What the DAG's tasks hand each other over XCom, as typed values.

Task bodies (:mod:`tilescope.tasks`) take and return these; the DAG files, the analyze
operator, the callbacks and the results viewer turn them into (``to_dict``) and back from
(``from_dict``) the JSON an XCom holds. The dict form is the XCom's shape key for key, so
runs in flight, the viewer and older DAG files read them unchanged; ``from_dict`` refuses a
dict with a missing or an unknown key (:class:`~tilescope.errors.HandoffError`) instead of
failing later on a ``KeyError`` far from the cause.

* :class:`Prepared` — preprocess's ``prepared`` XCom of a one-image (or one-video) run;
* :class:`BatchPrepared` — the same XCom of a batch run;
* :class:`StoreSummary` / :class:`BatchStoreSummary` — what ``store`` returns.

A unit's finding is :class:`tilescope.units.UnitFinding`; a work unit
:class:`tilescope.units.WorkUnit`; a claim's state :class:`tilescope.intake.claims.ClaimState`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tilescope.errors import HandoffError
from tilescope.results import ImageInfo
from tilescope.slicing import SlicePlan


def checked_keys(kind: str, data: Any, required: Iterable[str],
                 optional: Iterable[str] = ()) -> Mapping[str, Any]:
    """``data`` if it is a mapping with every ``required`` key and no key outside
    ``required`` and ``optional``; else a :class:`HandoffError` naming them."""
    if not isinstance(data, Mapping):
        raise HandoffError(f"{kind}: expected a JSON object, got {type(data).__name__}")
    required = list(required)
    missing = [k for k in required if k not in data]
    unknown = sorted(set(data) - set(required) - set(optional))
    if missing or unknown:
        raise HandoffError(f"{kind}: " + "; ".join(
            part for part in (f"missing keys {missing}" if missing else "",
                              f"unknown keys {unknown}" if unknown else "") if part))
    return data


@dataclass(frozen=True)
class Prepared:
    """What preprocess hands the rest of a one-image (or one-video) run: boxes and keys
    only, never pixels. The regions (or work units) to map over travel beside it."""

    image: ImageInfo
    #: the plan's :meth:`SlicePlan.summary` (:meth:`slice_plan` rebuilds the plan)
    plan: dict[str, Any]
    #: where analyze reads pixels: the staged tiled TIFF, the input itself when already
    #: tiled, or a video's staged-frames prefix
    source_uri: str
    thumbnail_uri: str
    #: ``s3://bucket/scratch/<image id>/<run>/``: removed by store
    scratch_prefix: str
    #: epoch seconds when regions could start (their queue wait starts there)
    ready_at: float
    #: compact detections of one whole-image pass (``full_image_pass``) and their names
    full_image: dict[str, Any] | None = None
    full_image_names: list[str] | None = None
    #: the moderation gate's verdict of an image it let through
    moderation: dict[str, Any] | None = None
    #: a video's facts, sampled frames (``[frame_index, timestamp_ms]``) and contact sheet
    video: dict[str, Any] | None = None
    #: how many work units analyze maps over when the regions were packed (else absent)
    units: int | None = None
    #: a stored result these bytes, model and parameters already have
    #: (:class:`tilescope.outputs.reuse.StoredResult`'s dict): nothing is analysed
    reused: dict[str, Any] | None = None
    #: the COCO ground truth preprocess found for the image (the ``ground_truth`` Param or
    #: ``<image key>.gt.json``): what ``evaluate`` scores against; absent, it never starts
    ground_truth: str | None = None

    _REQUIRED = ("image", "plan", "source_uri", "thumbnail_uri", "full_image",
                 "full_image_names", "moderation", "scratch_prefix", "ready_at")

    def slice_plan(self) -> SlicePlan:
        return SlicePlan.from_summary(self.plan)

    @property
    def video_frames(self) -> list[list[Any]]:
        """A video's sampled frames as ``[frame_index, timestamp_ms]`` rows (none for an
        image)."""
        return list((self.video or {}).get("frames", []))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "image": self.image.to_dict(), "plan": self.plan, "source_uri": self.source_uri,
            "thumbnail_uri": self.thumbnail_uri, "full_image": self.full_image,
            "full_image_names": self.full_image_names, "moderation": self.moderation,
            "scratch_prefix": self.scratch_prefix, "ready_at": self.ready_at}
        if self.video is not None:
            data["video"] = self.video
        if self.units is not None:
            data["units"] = self.units
        if self.reused is not None:
            data["reused"] = self.reused
        if self.ground_truth is not None:
            data["ground_truth"] = self.ground_truth
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Prepared:
        d = checked_keys("prepared (one-image run)", data, cls._REQUIRED,
                         ("video", "units", "reused", "ground_truth"))
        names = d["full_image_names"]
        return cls(image=ImageInfo.from_dict(d["image"]), plan=dict(d["plan"]),
                   source_uri=str(d["source_uri"]), thumbnail_uri=str(d["thumbnail_uri"]),
                   scratch_prefix=str(d["scratch_prefix"]), ready_at=float(d["ready_at"]),
                   full_image=d["full_image"],
                   full_image_names=[str(n) for n in names] if names is not None else None,
                   moderation=d["moderation"], video=d.get("video"),
                   units=int(d["units"]) if d.get("units") is not None else None,
                   reused=d.get("reused"),
                   ground_truth=str(d["ground_truth"]) if d.get("ground_truth") else None)


@dataclass(frozen=True)
class BatchPrepared:
    """What preprocess hands the rest of a batch run: where its plan and outcomes are, and
    its counts (the plan itself is in ``plan_uri``: XComs stay small)."""

    plan_uri: str
    outcomes_uri: str
    images: int
    bad: int
    units: int
    #: ``s3://bucket/scratch/batch/<run>/``
    scratch_prefix: str
    ready_at: float

    _BATCH = ("plan_uri", "images", "bad", "units", "outcomes_uri")

    def to_dict(self) -> dict[str, Any]:
        return {"batch": {"plan_uri": self.plan_uri, "images": self.images, "bad": self.bad,
                          "units": self.units, "outcomes_uri": self.outcomes_uri},
                "scratch_prefix": self.scratch_prefix, "ready_at": self.ready_at}

    @classmethod
    def from_dict(cls, data: Any) -> BatchPrepared:
        d = checked_keys("prepared (batch run)", data, ("batch", "scratch_prefix", "ready_at"))
        b = checked_keys("prepared['batch']", d["batch"], cls._BATCH)
        return cls(plan_uri=str(b["plan_uri"]), outcomes_uri=str(b["outcomes_uri"]),
                   images=int(b["images"]), bad=int(b["bad"]), units=int(b["units"]),
                   scratch_prefix=str(d["scratch_prefix"]), ready_at=float(d["ready_at"]))


def prepared_from_xcom(data: Any) -> Prepared | BatchPrepared:
    """preprocess's ``prepared`` XCom as what it describes: a batch run's or a one-image
    run's."""
    if isinstance(data, Mapping) and "batch" in data:
        return BatchPrepared.from_dict(data)
    return Prepared.from_dict(data)


@dataclass(frozen=True)
class StoreSummary:
    """What ``store`` returns for a one-image run: where the result went and what it holds
    (finalize, the notifications and the results viewer read it)."""

    image_id: str
    image_uri: str
    status: str
    detections: int
    counts: dict[str, int]
    failed_regions: list[str]
    regions: int
    model_share: float | None
    #: ``{"result": uri, "coco": uri, "overlay": uri, "thumbnail": uri, ...}`` (no
    #: ``thumbnail`` from versions before the preview format: its ``thumbnail.png``)
    keys: dict[str, str]
    scratch_objects_deleted: int

    _KEYS = ("image_id", "image_uri", "status", "detections", "counts", "failed_regions",
             "regions", "model_share", "keys", "scratch_objects_deleted")

    def to_dict(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "image_uri": self.image_uri, "status": self.status,
                "detections": self.detections, "counts": dict(self.counts),
                "failed_regions": list(self.failed_regions), "regions": self.regions,
                "model_share": self.model_share, "keys": dict(self.keys),
                "scratch_objects_deleted": self.scratch_objects_deleted}

    @classmethod
    def from_dict(cls, data: Any) -> StoreSummary:
        d = checked_keys("store summary", data, cls._KEYS)
        share = d["model_share"]
        return cls(image_id=str(d["image_id"]), image_uri=str(d["image_uri"]),
                   status=str(d["status"]), detections=int(d["detections"]),
                   counts={str(k): int(v) for k, v in d["counts"].items()},
                   failed_regions=[str(r) for r in d["failed_regions"]],
                   regions=int(d["regions"]),
                   model_share=float(share) if share is not None else None,
                   keys={str(k): str(v) for k, v in d["keys"].items()},
                   scratch_objects_deleted=int(d["scratch_objects_deleted"]))

    def asset_extra(self) -> dict[str, Any]:
        """The results-asset event's extra for this image."""
        return {"image_id": self.image_id, "image_uri": self.image_uri, "status": self.status,
                "detections": self.detections, "counts": dict(self.counts),
                "result": self.keys["result"]}


@dataclass(frozen=True)
class BatchStoreSummary:
    """What ``store`` returns for a batch run: its totals (each image's outcome is in the
    batch's ``outcomes.json``)."""

    images: int
    stored: int
    bad: int
    failed: int
    detections: int

    _KEYS = ("batch", "images", "stored", "bad", "failed", "detections")

    def to_dict(self) -> dict[str, Any]:
        return {"batch": True, "images": self.images, "stored": self.stored, "bad": self.bad,
                "failed": self.failed, "detections": self.detections}

    @classmethod
    def from_dict(cls, data: Any) -> BatchStoreSummary:
        d = checked_keys("store summary (batch run)", data, cls._KEYS)
        if d["batch"] is not True:
            raise HandoffError(f"store summary (batch run): 'batch' is {d['batch']!r}, not true")
        return cls(images=int(d["images"]), stored=int(d["stored"]), bad=int(d["bad"]),
                   failed=int(d["failed"]), detections=int(d["detections"]))
