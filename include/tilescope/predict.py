"""Many images in one process: plan them all, pack their slices into work units, run them.

The same units the DAG maps over (:func:`tilescope.units.pack_units`, every source read
whole), run one after the other here by :func:`tilescope.units.run_unit`; each image's
result is then synthesized exactly as :func:`tilescope.pipeline.run_image` does, so an
image analyzed among a thousand gives the very same detections as analyzed alone.

A bad input (missing, not an image, over the pixel limit, truncated, replaced since it was
planned) becomes that image's error outcome and the others go on; a model error stops the
run (it would fail the next image too).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from tilescope.errors import BadImageError, ConfigError, RegionsFailedError, TilescopeError
from tilescope.models.base import DetectionModel
from tilescope.params import InferenceParams
from tilescope.pipeline import open_names, plan_image, run_image, synthesize
from tilescope.readers import open_image, reopen_planned
from tilescope.readers.base import DEFAULT_MAX_PIXELS, ImageReader
from tilescope.results import ImageInfo, RegionFinding, Result
from tilescope.slicing import SlicePlan
from tilescope.storage import S3Client
from tilescope.units import SourcePlan, pack_units, run_unit, unit_slice_budget

#: ``progress(slices_done, slices_total, images_done, images_total)``
ManyProgress = Callable[[int, int, int, int], None]
Outcome = tuple[str, "Result | TilescopeError"]


@dataclass
class _Planned:
    image: ImageInfo
    plan: SlicePlan
    bands: list[int] | None = None
    magnification: float | None = None


def _plan(uri: str, params: InferenceParams, model: DetectionModel, max_pixels: int,
          client: S3Client | None) -> _Planned:
    """Open ``uri`` (header only: no pixels decoded), plan it, close it."""
    reader, image = open_image(uri, client=client, max_pixels=max_pixels,
                               bands=params.band_list(),
                               magnification=params.slide_magnification())
    with reader:
        plan = plan_image(*image.analysed_size, params, model.preferred_slice_size)
    return _Planned(image, plan, params.band_list(), params.slide_magnification())


def _reopen(planned: _Planned, max_pixels: int, client: S3Client | None) -> ImageReader:
    """The image again, for its unit: the same bytes as planned, decoded (so bad pixels are
    found here, as the unit's bad input, on the read-ahead thread)."""
    return reopen_planned(planned.image.uri, planned.image.sha256, client=client,
                          max_pixels=max_pixels, bands=planned.bands,
                          magnification=planned.magnification)


def predict_many(uris: Sequence[str], params: InferenceParams, model: DetectionModel, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS, client: S3Client | None = None,
                 progress: ManyProgress | None = None) -> Iterator[Outcome]:
    """``(uri, Result or the error that made it bad)`` for every input, in input order,
    each as soon as its unit is done. Raises :class:`tilescope.errors.ModelError` (and
    other non-input errors) as they happen."""
    total_images = len(uris)
    if params.full_image_pass:  # one model call on each whole image: image by image
        yield from _one_by_one(uris, params, model, max_pixels, client, progress)
        return
    planned: dict[int, _Planned] = {}
    errors: dict[int, TilescopeError] = {}
    for index, uri in enumerate(uris):
        try:
            planned[index] = _plan(uri, params, model, max_pixels, client)
        except (BadImageError, ConfigError) as exc:  # ImageTooLargeError is a BadImageError
            errors[index] = exc
    total_slices = sum(p.plan.slice_count for p in planned.values())
    done_slices = done_images = 0

    def report() -> None:
        if progress:
            progress(done_slices, total_slices, done_images, total_images)

    def advance(count: int) -> None:
        nonlocal done_slices
        done_slices += count
        report()

    report()
    sources = [SourcePlan(index, p.plan, whole=True) for index, p in planned.items()]
    units = pack_units(sources, unit_slice_budget(getattr(model, "slice_seconds", None)))
    plans = {index: p.plan for index, p in planned.items()}
    whole = dict.fromkeys(plans, True)
    findings: dict[int, list[RegionFinding]] = {}
    next_out = 0

    def outcome(index: int) -> Outcome:
        uri = uris[index]
        if index in errors:
            return uri, errors[index]
        p = planned[index]
        started = time.perf_counter()
        found = findings.pop(index, [])
        try:
            result = synthesize(p.image, p.plan, found, params, model,
                                full_image_names=open_names(model))
        except RegionsFailedError as exc:
            return uri, exc
        result.seconds["total"] = (sum(f.seconds.get("total", 0.0) for f in found)
                                   + time.perf_counter() - started)
        return uri, result

    def flush(upto: int) -> Iterator[Outcome]:
        """Every outcome before input ``upto`` not yet given."""
        nonlocal next_out, done_images
        while next_out < upto:
            item = outcome(next_out)
            next_out += 1
            done_images += 1
            report()
            yield item

    for unit in units:
        result = run_unit(unit, plans, whole,
                          lambda source: _reopen(planned[source], max_pixels, client),
                          model, params, progress=advance)
        for source, why in result.bad.items():
            errors[source] = BadImageError(why)
            done_slices += plans[source].slice_count  # never analyzed: count it as passed
        for source, found in result.findings.items():
            if source not in result.bad:
                findings.setdefault(source, []).extend(found)
        yield from flush(max(unit.sources) + 1)  # whole sources: a unit finishes its own
    yield from flush(total_images)


def _one_by_one(uris: Sequence[str], params: InferenceParams, model: DetectionModel,
                max_pixels: int, client: S3Client | None,
                progress: ManyProgress | None) -> Iterator[Outcome]:
    """``run_image`` per image (the full-image pass needs each whole image once more)."""
    done_before = 0

    for number, uri in enumerate(uris):
        def image_progress(done: int, total: int, number: int = number,
                           before: int = done_before) -> None:
            if progress:
                progress(before + done, before + total, number, len(uris))

        try:
            reader, image = open_image(uri, client=client, max_pixels=max_pixels,
                                       bands=params.band_list(),
                                       magnification=params.slide_magnification())
            with reader:
                reader.validate()
                result = run_image(reader, image, params, model, progress=image_progress)
        except (BadImageError, ConfigError, RegionsFailedError) as exc:
            yield uri, exc
            continue
        done_before += int(result.plan["slices"])
        if progress:
            progress(done_before, done_before, number + 1, len(uris))
        yield uri, result
