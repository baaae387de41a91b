"""Regions whose model answers later: submit every slice now, finish once the outputs exist.

A SageMaker asynchronous endpoint takes each slice from S3 and writes its answer to S3,
possibly minutes later. Waiting for it in a worker would hold a worker (and pool) slot doing
nothing, so the DAG's ``analyze`` cuts a region in two: :func:`submit_region` reads the
region's pixels band by band and submits every slice, the task defers on
:class:`~tilescope.airflow.triggers.AsyncInferenceTrigger` (the triggerer waits), and
:func:`finish_region` turns the outcomes into the very :class:`RegionFinding` that
:func:`tilescope.pipeline.analyze_region` returns — same shift, threshold and merge
(:func:`tilescope.pipeline.region_finding`), same errors. Nothing here imports Airflow.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from tilescope.banding import nodata_slices, region_bands
from tilescope.detections import Detections
from tilescope.errors import ModelOutputError, ModelThrottledError
from tilescope.models.base import DetectionModel
from tilescope.models.sagemaker import AsyncInvocation, AsyncOutcome, SageMakerAsyncModel
from tilescope.params import InferenceParams
from tilescope.pipeline import region_finding
from tilescope.readers.base import ImageReader
from tilescope.results import RegionFinding
from tilescope.slicing import Region


def is_deferrable(model: DetectionModel) -> TypeGuard[SageMakerAsyncModel]:
    """Whether a task should submit ``model``'s work and wait in the triggerer."""
    return isinstance(model, SageMakerAsyncModel) and model.deferrable


@dataclass(frozen=True)
class SubmittedRegion:
    """A region's submitted slices (in the region's slice order) and the time spent so far.

    ``carry`` is the JSON-able part the resumed task gets back through the trigger's event;
    the invocations travel as the trigger's own argument.
    """

    invocations: list[AsyncInvocation]
    read: float  # seconds reading the region's pixels
    submit: float  # seconds encoding, staging and submitting the slices
    started_at: float  # epoch seconds: the region's first read
    submitted_at: float  # epoch seconds: the last slice submitted
    #: positions (in the region's slice order) of the slices entirely nodata, not submitted
    skipped: tuple[int, ...] = ()

    @property
    def carry(self) -> dict[str, Any]:
        return {"read": self.read, "submit": self.submit, "started_at": self.started_at,
                "submitted_at": self.submitted_at, "skipped": list(self.skipped)}

    @classmethod
    def from_parts(cls, invocations: Sequence[Mapping[str, Any]],
                   carry: Mapping[str, Any]) -> SubmittedRegion:
        return cls([AsyncInvocation.from_dict(i) for i in invocations], float(carry["read"]),
                   float(carry["submit"]), float(carry["started_at"]),
                   float(carry["submitted_at"]),
                   tuple(int(i) for i in carry.get("skipped") or ()))


def submit_region(reader: ImageReader, region: Region,
                  model: SageMakerAsyncModel) -> SubmittedRegion:
    """Stage and submit every slice of ``region`` but those entirely nodata
    (:func:`tilescope.banding.nodata_slices`, as the synchronous path); on a failed
    submission the slices already staged are removed before the error propagates."""
    started_at = time.time()
    calls: list[AsyncInvocation] = []
    skipped: list[int] = []
    position = 0
    read = submit = 0.0
    try:
        for band in region_bands(region):
            began = time.perf_counter()
            pixels = reader.read(band.box)
            read += time.perf_counter() - began
            began = time.perf_counter()
            origin = band.box
            skip = nodata_slices(reader, pixels, origin, band.slices)
            for s, empty in zip(band.slices, skip, strict=True):
                if empty:
                    skipped.append(position)
                else:
                    calls.append(model.submit(pixels[s.y1 - origin.y1:s.y2 - origin.y1,
                                                     s.x1 - origin.x1:s.x2 - origin.x1]))
                position += 1
            submit += time.perf_counter() - began
    except BaseException as exc:
        if not model.keep_objects:
            model.delete(calls, [])
        if isinstance(exc, ModelOutputError):
            raise ModelOutputError(f"region {region.name}: {exc}") from exc
        raise
    return SubmittedRegion(calls, read, submit, started_at, time.time(), tuple(skipped))


def finish_region(region: Region, submitted: SubmittedRegion,
                  outcomes: Sequence[AsyncOutcome] | None, model: SageMakerAsyncModel,
                  params: InferenceParams, *, attempt: int = 1) -> RegionFinding:
    """The region's finding from its invocations' outcomes (staged objects removed after).

    ``outcomes`` is ``None`` when the wait timed out: the staged inputs are removed and a
    retryable :class:`ModelThrottledError` names the region.
    """
    if outcomes is None:
        if not model.keep_objects:
            model.delete(submitted.invocations, [])
        raise ModelThrottledError(f"region {region.name}: {model.describe()}: outputs did not "
                                  f"appear within {model.max_wait:.0f} s")
    try:
        found = iter(model.finish(submitted.invocations, outcomes) if submitted.invocations
                     else [])
    except ModelOutputError as exc:  # as analyze_region: the backend names itself, we add where
        raise ModelOutputError(f"region {region.name}: {exc}") from exc
    skipped = set(submitted.skipped)
    slices = region.slices()
    per_slice = [Detections.empty() if i in skipped else next(found)
                 for i in range(len(slices))]
    now = time.time()
    # "model" is submit + wait + reading the outputs: the endpoint's wall time for the region.
    return region_finding(region, per_slice, slices, model, params, attempt=attempt,
                          read=submitted.read,
                          model_seconds=submitted.submit + now - submitted.submitted_at,
                          elapsed=now - submitted.started_at, skipped=len(skipped))
