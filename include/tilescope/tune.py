"""Choose slicing and merging settings on labelled images, within a time budget.

``tilescope tune IMAGES GT`` runs the very stage functions of a real run
(:mod:`tilescope.pipeline`) on the user's own images and scores every tried setting with
:func:`tilescope.evaluation.evaluate` against their COCO ground truth. What makes a search
affordable: the model's detections on a slice grid do not depend on how they are merged, so
the model runs **once per slicing** — (slice size, overlap), plus one whole-image call per
image shared by every setting with the full-image pass — and every merge setting
(postprocess, match metric, match threshold, merge scope) is a re-merge of the same
per-slice detections (:func:`tilescope.pipeline.region_finding` then
:func:`tilescope.pipeline.synthesize`, as :func:`~tilescope.pipeline.run_image` does, so a
trial's result is the run's result).

Search order, so a small budget still gives a sensible answer:

1. the starting parameters as given (the defaults, unless changed);
2. coarse slice sizes at the starting overlap, merged the starting way;
3. every merge strategy with either metric (and the seam-aware scope where the strategy has
   one), on the best slicing so far;
4. refinement around the best: neighbouring slice sizes, the other overlaps, the full-image
   pass — each with the best merge so far;
5. the fine merge grid (strategies × metrics × thresholds × scopes) on the best slicing, then on the
   next best ones while time remains.

A model pass is started only if its expected cost (its slices × the seconds per slice
measured so far) fits in what is left of the budget; merges stop when the budget is spent.
The first trial always runs. A trial's time is what a run with its settings would take on
these images: its slicing's read-and-model seconds (plus the full-image calls) and its own
merge seconds, measured here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tilescope.banding import BandedPrediction, predict_region
from tilescope.detections import Detections
from tilescope.errors import ConfigError
from tilescope.evaluation import METRICS, evaluate
from tilescope.models.base import DetectionModel
from tilescope.params import (
    MATCH_METRICS,
    MERGE_SCOPES,
    POSTPROCESS_TYPES,
    SEAM_POSTPROCESS,
    InferenceParams,
)
from tilescope.pipeline import (
    full_image_detections,
    open_names,
    plan_image,
    region_finding,
    synthesize,
)
from tilescope.readers.base import ImageReader
from tilescope.results import ImageInfo, Result, merged_coco
from tilescope.slicing import Region, SlicePlan

#: figures a search may maximise (``dup_rate`` is not one: lower is better there)
TUNE_METRICS = tuple(m for m in METRICS if m != "dup_rate")
#: coarse slice sizes tried first (``None``: the model's own input size)
COARSE_SLICE_SIZES: tuple[int | None, ...] = (None, 256, 512, 1024)
OVERLAPS = (0.1, 0.2, 0.3)
THRESHOLDS = (0.3, 0.5, 0.7)
#: the smallest slice size refinement goes down to
MIN_SLICE = 64

#: ``log(line)``: what the search reports as it goes
Log = Callable[[str], None]


@dataclass(frozen=True)
class Slicing:
    """What the model sees: one model pass over the images per slicing."""

    slice_size: int | None
    overlap: float
    full_image_pass: bool = False

    def label(self) -> str:
        size = "model" if self.slice_size is None else str(self.slice_size)
        return f"{size}/{self.overlap:g}" + ("+full" if self.full_image_pass else "")


@dataclass(frozen=True)
class Merging:
    """How the detections are merged: re-merged from the same pass, no model call."""

    postprocess: str
    match_metric: str
    match_threshold: float
    #: ``"seams"``: only boxes of different slices meeting in their overlap are merged
    merge_scope: str = "all"

    def label(self) -> str:
        scope = "" if self.merge_scope == "all" else f" {self.merge_scope}"
        return f"{self.postprocess} {self.match_metric} {self.match_threshold:g}{scope}"

    def valid(self) -> bool:
        """Whether a run accepts it: the seam-aware scope needs a strategy that has it and a
        threshold above 0 (the rules of :class:`~tilescope.params.InferenceParams`)."""
        return self.merge_scope == "all" or (self.postprocess in SEAM_POSTPROCESS
                                              and self.match_threshold > 0)


@dataclass(frozen=True)
class SearchSpace:
    """Where the search looks (the starting parameters are always tried first)."""

    slice_sizes: tuple[int | None, ...] = COARSE_SLICE_SIZES
    overlaps: tuple[float, ...] = OVERLAPS
    postprocesses: tuple[str, ...] = POSTPROCESS_TYPES
    match_metrics: tuple[str, ...] = MATCH_METRICS
    thresholds: tuple[float, ...] = THRESHOLDS
    #: merge scopes tried with each strategy that has them (seams: greedynmm, nmm, nms)
    merge_scopes: tuple[str, ...] = MERGE_SCOPES
    full_image_pass: bool = True
    #: refine slice sizes between the coarse ones around the best
    refine_sizes: bool = True


@dataclass(frozen=True)
class Trial:
    """One tried setting: its parameters, score and what a run with them takes."""

    params: InferenceParams
    slicing: Slicing
    merging: Merging
    score: float
    figures: dict[str, float | None]
    #: read + model seconds of the slicing (and full-image calls), over all the images
    model_seconds: float
    #: merge seconds of this setting (inside regions and across them), over all the images
    merge_seconds: float
    slices: int

    @property
    def seconds(self) -> float:
        return self.model_seconds + self.merge_seconds

    def to_dict(self) -> dict[str, Any]:
        return {"slicing": self.slicing.label(), "merging": self.merging.label(),
                "score": self.score, **self.figures, "slices": self.slices,
                "seconds": round(self.seconds, 4), "model_seconds": round(self.model_seconds, 4),
                "merge_seconds": round(self.merge_seconds, 4)}


@dataclass
class TuneReport:
    """Every trial in the order tried, the chosen one and the speed/accuracy front."""

    metric: str
    budget: float
    images: int
    trials: list[Trial] = field(default_factory=list)
    #: model passes left out because their expected cost did not fit the budget
    skipped: list[str] = field(default_factory=list)
    spent: float = 0.0

    @property
    def best(self) -> Trial:
        """The highest score; ties go to fewer slices (cheaper), then the earlier trial
        (the starting parameters first) — never to a timing, so the choice is repeatable."""
        return min(self.trials, key=lambda t: (-t.score, t.slices, self.trials.index(t)))

    def pareto(self) -> list[Trial]:
        """Trials no other trial beats on both score and time, fastest first."""
        front: list[Trial] = []
        for trial in sorted(self.trials, key=lambda t: (t.seconds, -t.score)):
            if not front or trial.score > front[-1].score:
                front.append(trial)
        return front

    def table(self) -> str:
        """The Pareto front as a table, the chosen setting marked ``*``."""
        best = self.best
        rows = [f"  {'slicing':<16} {'merging':<28} {self.metric:>7} {'AP50':>6} {'rec50':>6} "
                f"{'dup':>6} {'slices':>6} {'s/image':>8}"]
        front = self.pareto()
        for t in front + ([best] if best not in front else []):
            rows.append(f"{'*' if t is best else ' '} {t.slicing.label():<16} "
                        f"{t.merging.label():<28} {t.score:7.3f} {_cell(t.figures['AP50'])} "
                        f"{_cell(t.figures['recall50'])} {_cell(t.figures['dup_rate'])} "
                        f"{t.slices:>6} {t.seconds / max(self.images, 1):8.3f}")
        if best not in front:
            rows[-1] += "  (chosen: equal score; ties go to fewer slices, then the earlier setting)"
        rows.append(f"{len(self.trials)} settings tried in {self.spent:.1f}s of a "
                    f"{self.budget:g}s budget on {self.images} images"
                    + (f"; {len(self.skipped)} slicings left out (over budget)"
                       if self.skipped else ""))
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "budget": self.budget, "spent": round(self.spent, 3),
                "images": self.images, "best": self.best.to_dict(),
                "params": tuned_conf(self.best.params),
                "pareto": [t.to_dict() for t in self.pareto()],
                "trials": [t.to_dict() for t in self.trials], "skipped": list(self.skipped)}


def _cell(value: float | None) -> str:
    return "     -" if value is None else f"{value:6.3f}"


@dataclass(frozen=True)
class _Pass:
    """One slicing's model output on every image, kept for re-merging."""

    plans: list[SlicePlan]
    regions: list[list[tuple[Region, BandedPrediction]]]
    full: list[Detections] | None
    seconds: float
    slices: int


class _Search:
    """The search's state: model passes done, trials scored, time spent."""

    def __init__(self, images: Sequence[tuple[ImageReader, ImageInfo]], gt: Mapping[str, Any],
                 model: DetectionModel, base: InferenceParams, metric: str, budget: float,
                 log: Log) -> None:
        self.images, self.gt, self.model, self.base = list(images), gt, model, base
        self.started = time.perf_counter()
        self.budget, self.log = budget, log
        self.report = TuneReport(metric=metric, budget=budget, images=len(self.images))
        self.passes: dict[tuple[int | None, float], _Pass] = {}
        self.full: tuple[list[Detections], float] | None = None
        self.tried: set[tuple[Slicing, Merging]] = set()

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def _slices(self, slicing: Slicing) -> int:
        params = self._params(slicing, self._base_merging())
        return sum(plan_image(*info.analysed_size, params,
                              self.model.preferred_slice_size).slice_count
                   for _, info in self.images)

    def _seconds_per_slice(self) -> float | None:
        done = [p for p in self.passes.values() if p.slices]
        if not done:
            return None
        return sum(p.seconds for p in done) / sum(p.slices for p in done)

    def _base_merging(self) -> Merging:
        return Merging(self.base.postprocess, self.base.match_metric,
                       self.base.match_threshold, self.base.merge_scope)

    def _params(self, slicing: Slicing, merging: Merging) -> InferenceParams:
        return replace(self.base, slice_size=slicing.slice_size, overlap=slicing.overlap,
                       full_image_pass=slicing.full_image_pass,
                       postprocess=merging.postprocess, match_metric=merging.match_metric,
                       match_threshold=merging.match_threshold,
                       merge_scope=merging.merge_scope)

    def affordable(self, slicing: Slicing) -> bool:
        """Whether this slicing's model pass is done, or expected to fit what is left."""
        if (slicing.slice_size, slicing.overlap) in self.passes and (
                not slicing.full_image_pass or self.full is not None):
            return True
        if not self.report.trials:
            return True  # the first trial always runs
        per_slice = self._seconds_per_slice() or 0.0
        cost = 0.0
        if (slicing.slice_size, slicing.overlap) not in self.passes:
            cost += per_slice * self._slices(slicing)
        if slicing.full_image_pass and self.full is None:
            cost += per_slice * len(self.images)
        if cost <= self.left():
            return True
        if slicing.label() not in self.report.skipped:
            self.report.skipped.append(slicing.label())
        self.log(f"left out {slicing.label()}: ~{cost:.1f}s expected, {self.left():.1f}s left")
        return False

    def _model_pass(self, slicing: Slicing) -> _Pass:
        key = (slicing.slice_size, slicing.overlap)
        if key not in self.passes:
            params = self._params(slicing, self._base_merging())
            started = time.perf_counter()
            plans, regions = [], []
            for reader, info in self.images:
                plan = plan_image(*info.analysed_size, params,
                                  self.model.preferred_slice_size)
                plans.append(plan)
                regions.append([(region, predict_region(reader, region, self.model))
                                for region in plan.regions])
            seconds = time.perf_counter() - started
            self.passes[key] = _Pass(plans, regions, None, seconds,
                                     sum(p.slice_count for p in plans))
            self.log(f"model on {slicing.label()}: {self.passes[key].slices} slices, "
                     f"{seconds:.1f}s")
        if slicing.full_image_pass and self.full is None:
            started = time.perf_counter()
            full = [full_image_detections(reader, self.model, self.base)
                    for reader, _ in self.images]
            self.full = (full, time.perf_counter() - started)
        return self.passes[key]

    def trial(self, slicing: Slicing, merging: Merging) -> Trial | None:
        """Score one setting (``None``: already tried)."""
        if (slicing, merging) in self.tried:
            return None
        self.tried.add((slicing, merging))
        done = self._model_pass(slicing)
        params = self._params(slicing, merging)
        full = self.full[0] if slicing.full_image_pass and self.full else None
        started = time.perf_counter()
        results = [self._result(k, done, params, full) for k in range(len(self.images))]
        merge_seconds = time.perf_counter() - started
        evaluation = evaluate(merged_coco(results), self.gt)
        figures = evaluation.to_dict()
        score = figures[self.report.metric]
        model_seconds = done.seconds + (self.full[1] if full is not None and self.full else 0)
        trial = Trial(params=params, slicing=slicing, merging=merging,
                      score=float(score) if score is not None else 0.0,
                      figures={k: figures[k] for k in ("AP", "AP50", "recall50", "dup_rate")},
                      model_seconds=model_seconds, merge_seconds=merge_seconds,
                      slices=done.slices + (len(self.images) if full is not None else 0))
        better = not self.report.trials or trial.score > self.report.best.score
        self.report.trials.append(trial)
        if better:
            self.log(f"best so far: {slicing.label()} {merging.label()} "
                     f"{self.report.metric} {trial.score:.3f}")
        return trial

    def _result(self, k: int, done: _Pass, params: InferenceParams,
                full: list[Detections] | None) -> Result:
        """Image ``k``'s result under ``params`` from the pass's per-slice detections:
        :func:`~tilescope.pipeline.run_image`'s merges, without its model calls."""
        info = self.images[k][1]
        findings = [region_finding(region, banded.per_slice, banded.slices, self.model, params,
                                   attempt=1, read=banded.read_wait, model_seconds=banded.model,
                                   elapsed=0.0, skipped=banded.skipped)
                    for region, banded in done.regions[k]]
        return synthesize(info, done.plans[k], findings, params, self.model,
                          full_image=full[k] if full is not None else None,
                          full_image_names=open_names(self.model))


def merge_grid(space: SearchSpace, fine: bool, base: Merging) -> list[Merging]:
    """The merge settings to try: each strategy with either metric at the starting threshold
    (coarse), or at every threshold too (fine), in each merge scope the strategy has.
    Gaussian Soft-NMS ignores the threshold. Scopes cost no model call (a re-merge), so
    they are tried wherever a strategy is."""
    thresholds = space.thresholds if fine else (base.match_threshold,)
    grid = [base]
    for strategy in space.postprocesses:
        for metric in space.match_metrics:
            for threshold in thresholds:
                if strategy == "softnms":
                    threshold = base.match_threshold
                for scope in space.merge_scopes:
                    setting = Merging(strategy, metric, threshold, scope)
                    if setting.valid() and setting not in grid:
                        grid.append(setting)
    return grid


def _pixels_or_model(slice_size: int | str | None) -> int | None:
    """A parameter's slice size as a slicing's (``"auto"`` was replaced in :func:`tune`)."""
    return None if slice_size in (None, "auto") else int(slice_size)


def _size_of(slice_size: int | None, model_size: int) -> int:
    return int(slice_size or model_size)


def refined_sizes(best: int, tried: Sequence[int]) -> list[int]:
    """Slice sizes between the best and its tried neighbours (geometric midpoints, multiples
    of 32), or a step beyond it at either end of what was tried."""
    below = [s for s in tried if s < best]
    above = [s for s in tried if s > best]
    low = math.sqrt(best * max(below)) if below else best * 0.75
    high = math.sqrt(best * min(above)) if above else best * 1.5
    out = []
    for value in (low, high):
        size = max(MIN_SLICE, round(value / 32) * 32)
        if size not in tried and size != best and size not in out:
            out.append(size)
    return out


def _plan(search: _Search, space: SearchSpace) -> Iterator[tuple[Slicing, Merging]]:
    """The settings in search order (see the module docstring); each step looks at the
    trials scored so far."""
    base = search.base
    start = Slicing(_pixels_or_model(base.slice_size), base.overlap, base.full_image_pass)
    base_merge = search._base_merging()
    model_size = search.model.preferred_slice_size
    yield start, base_merge
    for size in space.slice_sizes:  # coarse slicing, the starting merge
        yield Slicing(size, base.overlap), base_merge

    def best() -> Trial:
        return search.report.best

    for merging in merge_grid(space, False, base_merge):  # coarse merging, best slicing
        yield best().slicing, merging
    top = best().slicing  # refinement around the best
    if space.refine_sizes:
        tried = sorted({_size_of(t.slicing.slice_size, model_size)
                        for t in search.report.trials})
        for size in refined_sizes(_size_of(top.slice_size, model_size), tried):
            yield Slicing(size, top.overlap, top.full_image_pass), best().merging
    top = best().slicing
    for overlap in space.overlaps:
        yield Slicing(top.slice_size, overlap, top.full_image_pass), best().merging
    if space.full_image_pass:
        top = best().slicing
        yield Slicing(top.slice_size, top.overlap, not top.full_image_pass), best().merging
    ranked: list[Slicing] = []  # fine merging: the best slicing first, then the next ones
    for trial in sorted(search.report.trials, key=lambda t: (-t.score, t.slices)):
        if trial.slicing not in ranked:
            ranked.append(trial.slicing)
    for slicing in ranked:
        for merging in merge_grid(space, True, best().merging):
            yield slicing, merging


def tune(images: Sequence[tuple[ImageReader, ImageInfo]], gt: Mapping[str, Any],
         model: DetectionModel, base: InferenceParams, *, budget: float,
         metric: str = "AP50", space: SearchSpace | None = None,
         log: Log | None = None) -> TuneReport:
    """Search settings for ``images`` (opened readers and their identities, matched to the
    ground truth's images by file name) against COCO ground truth ``gt`` (parsed JSON),
    starting from ``base``, within ``budget`` seconds; ``metric`` is the figure maximised."""
    if metric not in TUNE_METRICS:
        raise ConfigError(f"metric must be one of {', '.join(TUNE_METRICS)}, got {metric!r}")
    if not budget > 0:
        raise ConfigError(f"budget must be a positive number of seconds, got {budget}")
    if not images:
        raise ConfigError("tune needs at least one image")
    if base.slice_size == "auto":  # SAHI's rule picks per image; the search picks sizes
        base = replace(base, slice_size=None)
    search = _Search(images, gt, model, base, metric, budget, log or (lambda line: None))
    for slicing, merging in _plan(search, space or SearchSpace()):
        if search.report.trials and search.left() <= 0:
            break
        if (slicing, merging) in search.tried or not search.affordable(slicing):
            continue
        search.trial(slicing, merging)
    search.report.spent = time.perf_counter() - search.started
    return search.report


def tuned_conf(params: InferenceParams) -> dict[str, Any]:
    """The chosen settings as a DAG run's ``conf``
    (:meth:`~tilescope.params.InferenceParams.to_conf`), ``merge_scope`` only when it is not
    the default: a file choosing the default merge then reads as before the scope existed,
    and a DAG or CLI without the parameter still takes it."""
    conf = params.to_conf()
    if conf.get("merge_scope") == "all":
        del conf["merge_scope"]
    return conf


def params_json(params: InferenceParams) -> bytes:
    """The chosen settings as the Params JSON ``tilescope predict --params`` and the DAG's
    ``conf`` take (:func:`tuned_conf`)."""
    return (json.dumps(tuned_conf(params), indent=1, sort_keys=False) + "\n").encode()

