"""Work units: the slices of many sources packed into tasks sized by their model cost.

A *source* is one picture a run analyzes — an image of a batch, one big image, or one
sampled frame of a video (all frames share the video's plan) — planned exactly as before
(:func:`tilescope.pipeline.plan_image`: slices grouped into regions). A *work unit* is what
one mapped ``analyze`` task (or one step of the CLI) runs: a list of (source, regions) parts
whose slices together cost about ``TILESCOPE_UNIT_SECONDS`` of single-thread model time.
Units change only *where* a region runs, never *what* it is: each region's finding is
computed and merged exactly as before, so results do not move.

Why: a mapped task costs ~1–1.6 s of a pool slot besides its model work (process start, DAG
parse, imports, model session), while a 416-px NanoDet slice costs ~25–65 ms of one core.
One task per small photo spent ~95 % of a burst on orchestration; 1,000 photos packed into
two units spend it on the model.

Packing rules:

* a source read **whole** (an image small enough to download and decode in the unit) is
  never split: all its regions go to one unit, so its object is read once;
* a source read by ranges (a staged or in-place tiled TIFF, a video's staged frame)
  contributes its regions one by one, so a big image spreads over several units as its
  regions did over tasks (and a frame may be split between two units: it is merged per
  frame afterwards all the same);
* units are consecutive runs of these atoms in input order, cut where the running slice
  count crosses each k/n of the total (n = ⌈total / budget⌉, at most ``max_units``), so
  units are about equal and the same inputs always give the same units (CLI and DAG alike).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

import numpy as np

from tilescope.banding import nodata_slices
from tilescope.detections import Detections
from tilescope.errors import BadImageError, ConfigError, ModelOutputError
from tilescope.handoffs import checked_keys
from tilescope.models.base import DetectionModel
from tilescope.params import InferenceParams
from tilescope.pipeline import analyze_region, region_finding
from tilescope.readers.base import ImageReader
from tilescope.results import RegionFinding
from tilescope.settings import UNIT_SECONDS
from tilescope.slicing import MAX_MAP_LENGTH, Box, Region, SlicePlan
from tilescope.storage import S3Client, read_bytes, write_bytes

#: model seconds (one thread) a unit should carry: well over 10× a task's fixed cost
DEFAULT_UNIT_SECONDS: float = UNIT_SECONDS.default
UNIT_SECONDS_ENV = UNIT_SECONDS.name
#: a model's cost per slice when it does not say (NanoDet 416 px, one core: 25–65 ms)
DEFAULT_SLICE_SECONDS = 0.04
#: fewest slices handed to one model call when small images are batched together
MIN_BATCH_SLICES = 8
#: small images opened ahead of the model (each a GET and a decode, on READ_THREADS threads)
READ_AHEAD = 24
READ_THREADS = 2
#: …and at most this many decoded bytes of them held at once (12 MP photos: two)
READ_AHEAD_BYTES = 64 << 20
#: a whole-read source with more slices than this runs region by region, band by band
#: (no full-image array copy), like ``tilescope.pipeline.run_image``
BATCHED_SOURCE_SLICES = 64


def unit_seconds(environ: Mapping[str, str] | None = None) -> float:
    """``TILESCOPE_UNIT_SECONDS`` (model seconds per unit), default 30."""
    return UNIT_SECONDS.get(environ)


def unit_slice_budget(slice_seconds: float | None = None,
                      seconds: float | None = None) -> int:
    """Slices per unit: the unit's model seconds over the model's cost per slice."""
    per_slice = slice_seconds or DEFAULT_SLICE_SECONDS
    return max(1, round((seconds if seconds is not None else unit_seconds()) / per_slice))


@dataclass(frozen=True)
class SourcePlan:
    """One picture of a run as the packer sees it: its plan, and how a unit reads it."""

    index: int
    plan: SlicePlan
    #: read whole: the unit downloads and decodes the object itself (kept in one unit)
    whole: bool = True


@dataclass(frozen=True)
class UnitPart:
    """Regions ``[first, stop)`` of source ``source``."""

    source: int
    first: int
    stop: int


@dataclass(frozen=True)
class WorkUnit:
    """What one analyze task runs: parts of sources, in order."""

    index: int
    parts: tuple[UnitPart, ...]
    slice_count: int
    #: how many sources the unit touches and a short label for the UI (set by the planner)
    label: str = ""

    @property
    def sources(self) -> list[int]:
        """The sources this unit touches, in order, each once."""
        return list(dict.fromkeys(p.source for p in self.parts))

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON form (what Airflow maps over): parts as ``[source, first, stop]``,
        runs of consecutive single-region sources as ``[first_source, last_source]``."""
        singles: list[list[int]] = []
        parts: list[list[int]] = []
        for part in self.parts:
            if part.first == 0 and part.stop == 1 and not parts:
                if singles and singles[-1][1] == part.source - 1:
                    singles[-1][1] = part.source
                else:
                    singles.append([part.source, part.source])
                continue
            parts.append([part.source, part.first, part.stop])
        return {"index": self.index, "name": self.label or f"unit {self.index}",
                "slice_count": self.slice_count, "unit": {"singles": singles,
                                                          "parts": parts}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkUnit:
        body = data["unit"]
        parts = [UnitPart(s, 0, 1) for first, last in body.get("singles", [])
                 for s in range(int(first), int(last) + 1)]
        parts += [UnitPart(int(s), int(a), int(b)) for s, a, b in body.get("parts", [])]
        return cls(int(data["index"]), tuple(parts), int(data["slice_count"]),
                   str(data.get("name", "")))


def is_work_unit(item: Mapping[str, Any]) -> bool:
    """Whether a mapped ``analyze`` item is a work unit (a batch run's), not a region."""
    return "unit" in item


def balanced_cuts(counts: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of consecutive items, ``parts`` of them (fewer if there are
    fewer items), cut where the running total crosses each k/parts of the whole."""
    weights = np.asarray(counts, np.int64)
    if not len(weights):
        return []
    parts = max(1, min(parts, len(weights)))
    total = int(weights.sum())
    ends = np.cumsum(weights)
    cuts = np.searchsorted(ends, np.arange(1, parts) * total / parts, side="left") + 1
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 1, len(weights)), [len(weights)]]))
    return [(int(a), int(b)) for a, b in pairwise(bounds)]


def pack_units(sources: Sequence[SourcePlan], max_slices: int, *,
               max_units: int = MAX_MAP_LENGTH, count: int | None = None) -> list[WorkUnit]:
    """Pack the sources' regions into about-equal units of at most ~``max_slices`` slices
    (see the module docstring). Deterministic: the same sources give the same units.
    ``count`` asks for that many units instead (fewer when there are fewer atoms)."""
    if max_slices < 1:
        raise ConfigError(f"a unit must hold at least one slice, got {max_slices}")
    atoms: list[UnitPart] = []
    weights: list[int] = []
    for source in sources:
        regions = source.plan.regions
        if source.whole:
            atoms.append(UnitPart(source.index, 0, len(regions)))
            weights.append(source.plan.slice_count)
        else:
            for region in regions:
                atoms.append(UnitPart(source.index, region.index, region.index + 1))
                weights.append(region.slice_count)
    total = sum(weights)
    wanted = min(max_units, max(1, count or math.ceil(total / max_slices)))
    units = []
    for number, (start, stop) in enumerate(balanced_cuts(weights, wanted)):
        merged: list[UnitPart] = []
        for atom in atoms[start:stop]:  # adjacent regions of one source: one part
            if merged and merged[-1].source == atom.source and merged[-1].stop == atom.first:
                merged[-1] = UnitPart(atom.source, merged[-1].first, atom.stop)
            else:
                merged.append(atom)
        units.append(WorkUnit(number, tuple(merged), int(sum(weights[start:stop]))))
    return units


def region_units(plan: SlicePlan, max_slices: int, *, workers: int,
                 max_units: int = MAX_MAP_LENGTH) -> list[WorkUnit] | None:
    """One big image's regions packed into the units of its own run, or ``None`` where
    packing would not save a task start (then each region is its own task, as before).

    A region task pays a task start, imports, the model session and the image's header and
    first tiles; a unit of several regions pays them once (at 16384², 4 unit tasks instead
    of 9 region tasks: 1.20× SAHI instead of 1.26×, measured). The count is what the slice
    budget asks for, but at least ``workers`` (every core of the worker gets a unit: units
    hold one core each and borrow idle ones) and rounded up to a multiple of ``workers``, so
    the last round of units is not one unit alone on a machine whose other cores have
    nothing left to do. Units are consecutive regions (row-major), about equal in slices,
    labelled ``r0c0–r1c2``.
    """
    workers = max(1, workers)
    wanted = max(math.ceil(plan.slice_count / max(1, max_slices)), workers)
    wanted = min(math.ceil(wanted / workers) * workers, max_units)
    if wanted >= len(plan.regions):
        return None
    units = pack_units([SourcePlan(0, plan, whole=False)], max_slices, max_units=max_units,
                       count=wanted)
    names = [region.name for region in plan.regions]
    return [WorkUnit(u.index, u.parts, u.slice_count,
                     span_label(names[u.parts[0].first], names[u.parts[-1].stop - 1]))
            for u in units]


def span_label(first: str, last: str) -> str:
    """A unit's name in the UI from the names of its first and last region: ``r0c0–r1c2``,
    or one name when they are the same."""
    return first if first == last else f"{first}–{last}"


@dataclass
class UnitFinding:
    """A unit's outcome: per source, the findings of its regions (full-image pixels, merged
    inside each region as always), and the sources that turned out unreadable. Its dict is
    what an ``analyze`` task of units returns (:func:`unit_payload`)."""

    index: int
    findings: dict[int, list[RegionFinding]] = field(default_factory=dict)
    #: source → why it could not be analyzed (bad input found when the unit read it)
    bad: dict[int, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    attempts: int = 1
    #: the unit's slices (set on the finding a task returns)
    slice_count: int | None = None
    #: where the whole finding went when it was over the XCom budget: the XCom then keeps
    #: only this key, the timings and the bad sources (:func:`load_unit_finding` reads it)
    finding_uri: str | None = None

    _KEYS = ("index", "attempts", "seconds", "sources", "bad", "slice_count", "finding_uri")

    def to_dict(self) -> dict[str, Any]:
        seconds = {k: round(v, 4) for k, v in self.seconds.items()}
        bad = {str(s): why for s, why in self.bad.items()}
        if self.finding_uri is not None:
            return {"index": self.index, "slice_count": self.slice_count,
                    "attempts": self.attempts, "seconds": seconds,
                    "finding_uri": self.finding_uri, "bad": bad}
        data: dict[str, Any] = {
            "index": self.index, "attempts": self.attempts, "seconds": seconds,
            "sources": {str(s): [f.to_dict() for f in found]
                        for s, found in self.findings.items()}, "bad": bad}
        if self.slice_count is not None:
            data["slice_count"] = self.slice_count
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitFinding:
        d = checked_keys("unit finding", data, ("index",), cls._KEYS[1:])
        return cls(index=int(d["index"]), attempts=int(d.get("attempts", 1)),
                   seconds={k: float(v) for k, v in (d.get("seconds") or {}).items()},
                   findings={int(s): [RegionFinding.from_dict(f) for f in found]
                             for s, found in (d.get("sources") or {}).items()},
                   bad={int(s): str(why) for s, why in (d.get("bad") or {}).items()},
                   slice_count=int(d["slice_count"]) if d.get("slice_count") is not None
                   else None, finding_uri=d.get("finding_uri"))


def unit_payload(finding: UnitFinding, unit: WorkUnit, scratch_prefix: str, budget: int,
                 client: S3Client) -> dict[str, Any]:
    """A unit's finding as its XCom dict; over ``budget`` bytes it is written to
    ``<scratch>/findings/unit-NNNN.json`` and the dict keeps only its key and timings."""
    finding = replace(finding, slice_count=unit.slice_count)
    data = finding.to_dict()
    if len(json.dumps(data)) > budget:
        uri = f"{scratch_prefix}findings/unit-{unit.index:04d}.json"
        write_bytes(uri, json.dumps(data).encode(), "application/json", client)
        data = replace(finding, finding_uri=uri).to_dict()
    return data


def load_unit_finding(data: Mapping[str, Any], client: S3Client) -> UnitFinding:
    """A unit's finding from its XCom dict (an offloaded one fetched back); the task's queue
    wait (added to the dict by the task) is kept in its ``seconds``."""
    wait = (data.get("seconds") or {}).get("queue_wait")
    if data.get("finding_uri"):
        data = json.loads(read_bytes(data["finding_uri"], client))
    finding = UnitFinding.from_dict(data)
    if wait is not None:
        finding.seconds["queue_wait"] = float(wait)
    return finding


def is_unit_payload(data: Mapping[str, Any]) -> bool:
    """Whether an ``analyze`` XCom is a unit's finding (:func:`unit_payload`), not a
    region's."""
    return "sources" in data or "finding_uri" in data


def source_findings(payloads: Iterable[Mapping[str, Any] | None], client: S3Client
                    ) -> tuple[dict[int, list[RegionFinding]], dict[int, str]]:
    """The region findings of every source from the units' XComs, and the sources a unit
    found unreadable (source → reason). Missing units — failed tasks — simply add nothing:
    their regions count as failed where they are merged. A unit task's queue wait goes on
    its first region finding, so a run's sum counts it once."""
    per_source: dict[int, list[RegionFinding]] = {}
    bad: dict[int, str] = {}
    for data in payloads:
        if not data:
            continue
        unit = load_unit_finding(data, client)
        wait = unit.seconds.get("queue_wait")
        for number, (source, found) in enumerate(unit.findings.items()):
            if number == 0 and found and wait is not None:
                found[0].seconds["queue_wait"] = wait
            per_source.setdefault(source, []).extend(found)
        bad.update(unit.bad)
    return per_source, bad


#: opens a source's reader: raises :class:`BadImageError` for unreadable input
OpenReader = Callable[[int], ImageReader]


@dataclass
class _Pending:
    """Slices of whole-read regions waiting for one shared model call."""

    #: (source, region, its slices, read wait, per slice: skipped as entirely nodata)
    regions: list[tuple[int, Region, list[Box], float, list[bool]]] = field(
        default_factory=list)
    views: list[np.ndarray] = field(default_factory=list)  # the slices not skipped


#: called once a whole-read source is analyzed, with its findings and its still-open reader
SourceDone = Callable[[int, list[RegionFinding], ImageReader], None]


def run_unit(unit: WorkUnit, plans: Mapping[int, SlicePlan], whole: Mapping[int, bool],
             open_reader: OpenReader, model: DetectionModel, params: InferenceParams, *,
             attempt: int = 1, progress: Callable[[int], None] | None = None,
             on_source_done: SourceDone | None = None) -> UnitFinding:
    """Every region of ``unit`` through ``model`` → the unit's finding.

    Whole-read sources (small images) are opened one ahead on a background thread while the
    model works, and their slices are batched across images into model calls of at least
    :data:`MIN_BATCH_SLICES` (the model's own thread pool then has work for every core).
    Range-read sources run region by region through :func:`tilescope.pipeline.analyze_region`
    (banded reads); small ones (a video's staged frames) are opened ahead too, and the wait
    to open a source is charged to its first region, as a whole-read source's read is. A
    source whose bytes turn out bad (truncated, corrupt, replaced since it was planned) is
    reported in ``bad`` and the unit goes on with the others; any other error fails the unit
    (Airflow retries it). ``on_source_done`` sees each whole-read source once
    all its regions are done, while its pixels are still at hand (e.g. to write its
    thumbnail and overlay without reading it again).
    """
    started = time.perf_counter()
    outcome = UnitFinding(unit.index, attempts=attempt)
    order = unit.sources
    parts = {s: [p for p in unit.parts if p.source == s] for s in order}
    pending = _Pending()
    held: dict[int, ImageReader] = {}  # batched sources waiting for their model call
    model_seconds = read_wait = 0.0

    def finish(source: int, reader: ImageReader) -> None:
        try:
            if on_source_done is not None:
                on_source_done(source, outcome.findings.get(source, []), reader)
        finally:
            reader.close()

    def flush() -> None:
        nonlocal model_seconds
        if not pending.regions:
            return
        began = time.perf_counter()
        try:
            per_view_found = model.predict(pending.views) if pending.views else []
        except ModelOutputError as exc:
            names = ", ".join(f"{s}:{r.name}" for s, r, _, _, _ in pending.regions[:5])
            raise ModelOutputError(f"regions {names}: {exc}") from exc
        spent = time.perf_counter() - began
        model_seconds += spent
        per_view = spent / len(pending.views) if pending.views else 0.0
        found = iter(per_view_found)
        for source, region, slices, waited, skip in pending.regions:
            count, kept = len(slices), len(slices) - sum(skip)
            per_slice = [Detections.empty() if s else next(found) for s in skip]
            finding = region_finding(region, per_slice, slices,
                                     model, params, attempt=attempt, read=waited,
                                     model_seconds=per_view * kept,
                                     elapsed=waited + per_view * kept, skipped=sum(skip))
            outcome.findings.setdefault(source, []).append(finding)
            if progress:
                progress(count)
        pending.regions.clear()
        pending.views.clear()
        for source in list(held):
            finish(source, held.pop(source))

    with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="unit-read") as io:
        ahead: dict[int, Future[ImageReader]] = {}

        def prefetch(position: int) -> None:
            """Open the next small sources while the model works — enough of them that a
            model call never waits for its images (a big image is opened when its turn
            comes: one decoded copy in memory at a time). Small range-read sources (a
            video's staged frames) are opened ahead too: one GET each, no decoding."""
            held_bytes = sum(3 * plans[s].width * plans[s].height for s in ahead)
            for source in order[position + 1:position + 1 + READ_AHEAD]:
                if plans[source].slice_count > BATCHED_SOURCE_SLICES \
                        or held_bytes > READ_AHEAD_BYTES:
                    break
                if source not in ahead:
                    ahead[source] = io.submit(open_reader, source)
                    held_bytes += 3 * plans[source].width * plans[source].height

        for position, source in enumerate(order):
            prefetch(position)
            began = time.perf_counter()
            try:
                reader = ahead.pop(source).result() if source in ahead else open_reader(source)
            except BadImageError as exc:
                outcome.bad[source] = str(exc)
                continue
            waited = time.perf_counter() - began
            read_wait += waited
            plan = plans[source]
            if whole.get(source, True) and plan.slice_count <= BATCHED_SOURCE_SLICES:
                try:
                    pixels = reader.read_all()
                except BadImageError as exc:
                    outcome.bad[source] = str(exc)
                    reader.close()
                    continue
                for part in parts[source]:
                    for region in plan.regions[part.first:part.stop]:
                        slices = region.slices()
                        skip = nodata_slices(reader, pixels, Box(0, 0, plan.width,
                                                                 plan.height), slices)
                        pending.regions.append((source, region, slices, waited, skip))
                        pending.views.extend(pixels[s.y1:s.y2, s.x1:s.x2]
                                             for s, skipped in zip(slices, skip, strict=True)
                                             if not skipped)
                        waited = 0.0  # the read is charged to the source's first region
                held[source] = reader
                del pixels
                if len(pending.views) >= MIN_BATCH_SLICES:
                    flush()
                continue
            flush()  # keep region order: batched small regions first
            try:
                for part in parts[source]:
                    for region in plan.regions[part.first:part.stop]:
                        finding = analyze_region(reader, region, model, params,
                                                 attempt=attempt)
                        for key in ("read", "total"):  # the wait to open the source, once
                            finding.seconds[key] = finding.seconds.get(key, 0.0) + waited
                        waited = 0.0
                        model_seconds += finding.seconds.get("model", 0.0)
                        outcome.findings.setdefault(source, []).append(finding)
                        if progress:
                            progress(region.slice_count)
            except BadImageError as exc:  # found bad while decoding its first band
                if not whole.get(source, True):
                    raise
                outcome.bad[source] = str(exc)
                outcome.findings.pop(source, None)
                reader.close()
                continue
            if whole.get(source, True):
                finish(source, reader)
            else:
                reader.close()
        flush()
    outcome.seconds = {"read": read_wait, "model": model_seconds,
                       "total": time.perf_counter() - started}
    return outcome
