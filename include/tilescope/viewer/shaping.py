"""The viewer's JSON: run plan, live region states, region findings and the final result.

Pure functions from what Airflow stores (task-instance rows, XCom values, ``result.json``)
to compact, columnar payloads the page can draw directly: a 1,000-region run is one list
of states, not 1,000 objects to poll.

A one-image run maps ``analyze`` either over its regions (map index = region index) or
over *work units* of consecutive regions (:mod:`tilescope.units`). States and tries stay
per map index — what Airflow has — and each region row of the plan says which map index
(``task``) runs it, so the page colours a region by its task; a unit's XCom is expanded
into one finding per region, so boxes still arrive under their region's index.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tilescope.evaluation import METRICS
from tilescope.georef import Georeference, GeoreferenceError, lonlat_grid
from tilescope.microscopy import SlideScale
from tilescope.slicing import SlicePlan
from tilescope.units import WorkUnit, is_unit_payload, is_work_unit

#: Airflow task-instance states as the viewer colours them; anything else shows as "none"
REGION_STATES = ("none", "scheduled", "queued", "running", "success", "failed",
                 "up_for_retry", "upstream_failed", "skipped", "removed", "deferred",
                 "restarting", "up_for_reschedule")
#: the DAG's single tasks whose states the page shows next to the grid
STAGE_TASKS = ("preprocess", "synthesize", "store", "finalize")
MAPPED_TASK = "analyze"
TERMINAL_RUN_STATES = ("success", "failed")


@dataclass(frozen=True)
class TaskRow:
    """One task-instance row as read from the metadata DB."""

    task_id: str
    map_index: int
    state: str | None
    try_number: int
    start_date: datetime | None = None
    end_date: datetime | None = None


def viewer_state(state: Any) -> str:
    """An Airflow state (a ``TaskInstanceState``, a string or ``None``) as one of
    :data:`REGION_STATES`."""
    value = str(state.value if hasattr(state, "value") else state or "none")
    return value if value in REGION_STATES else "none"


def region_tasks(units: Sequence[Mapping[str, Any]], region_count: int) -> list[int]:
    """For each region of a one-image plan, the map index of the work unit (the ``analyze``
    instance) that runs it: the unit holding regions ``[first, stop)`` of source 0. ``-1``
    marks a region no unit claims, which the page then shows as never scheduled rather
    than borrowing another task's state."""
    tasks = [-1] * region_count
    for item in units:
        unit = WorkUnit.from_dict(item)
        for part in unit.parts:
            if part.source == 0:  # a one-image run has one source
                for region in range(max(part.first, 0), min(part.stop, region_count)):
                    tasks[region] = unit.index
    return tasks


def maps_units(items: Sequence[Mapping[str, Any]] | None,
               prepared: Mapping[str, Any] | None) -> bool:
    """Whether a one-image run's ``analyze`` maps work units of its plan's regions. A video
    also maps units, but each is drawn as a cell of its own (their ``box`` is the frame),
    so it keeps the one-row-per-mapped-item view."""
    if not items:
        return False
    return not (prepared or {}).get("video") and is_work_unit(items[0])


def _region_row(region: Mapping[str, Any], task: int) -> dict[str, Any]:
    return {"index": int(region["index"]), "name": str(region["name"]),
            "row": int(region["row"]), "col": int(region["col"]),
            "box": [int(v) for v in region["box"]],
            "slices": int(region.get("slice_count", 0)), "task": task}


def level0_factors(image: Mapping[str, Any]) -> tuple[float, float]:
    """What a whole-slide scan's analysed level is multiplied by, across and down, to be in
    level-0 pixels (the result's and the page's): its regions and region findings are in the
    level's pixels (:class:`tilescope.microscopy.SlideScale`); ``(1, 1)`` otherwise."""
    scale = SlideScale.from_dict(image.get("microscopy"))
    return scale.downsample() if scale else (1.0, 1.0)


def _to_level0(box: Sequence[float], factors: tuple[float, float]) -> list[float]:
    sx, sy = factors
    return [round(float(box[0]) * sx, 2), round(float(box[1]) * sy, 2),
            round(float(box[2]) * sx, 2), round(float(box[3]) * sy, 2)]


def plan_payload(items: Sequence[dict[str, Any]] | None,
                 prepared: dict[str, Any] | None) -> dict[str, Any]:
    """Image size and the region grid, from preprocess's XComs (``None`` before it ran).

    ``items`` is what ``analyze`` maps over: regions (each row its own task), or work
    units, whose regions are rebuilt from the plan summary (planning is deterministic)
    and each tagged with its unit's map index. ``tasks`` counts the mapped instances:
    what the page asks ``/states`` for.
    """
    image = (prepared or {}).get("image") or {}
    plan = (prepared or {}).get("plan") or {}
    listed = list(items or [])
    if maps_units(listed, prepared):
        # no plan summary (yet): no rows rather than units drawn as regions
        regions = [r.to_dict() for r in SlicePlan.from_summary(plan).regions] if plan else []
        tasks = region_tasks(listed, len(regions))
    else:
        regions = sorted(listed, key=lambda r: int(r["index"]))
        tasks = [int(r["index"]) for r in regions]
    rows = [_region_row(r, task) for r, task in zip(regions, tasks, strict=True)]
    factors = level0_factors(image)
    if factors != (1.0, 1.0):  # a slide's reduced level: drawn over level-0 pixels
        for row in rows:
            row["box"] = _to_level0(row["box"], factors)
    return {
        "image": {"uri": image.get("uri"), "width": image.get("width"),
                  "height": image.get("height"), "image_id": image.get("image_id")}
        if image else None,
        "grid": {"rows": plan.get("grid_rows"), "cols": plan.get("grid_cols"),
                 "slices": plan.get("slices")} if plan else None,
        "regions": rows, "tasks": len(listed),
    }


def states_payload(rows: Iterable[TaskRow], region_count: int,
                   run_state: str | None) -> dict[str, Any]:
    """Every ``analyze`` instance's state and try number, indexed by map index (a region,
    or a work unit whose regions the page colours alike: see :func:`plan_payload`), plus
    the stage tasks.

    Before ``analyze`` is expanded Airflow has a single unmapped row (map index -1) for
    it: its state then applies to no region, so every region shows "none".
    """
    states = ["none"] * region_count
    tries = [0] * region_count
    stages: dict[str, str] = dict.fromkeys(STAGE_TASKS, "none")
    for row in rows:
        if row.task_id == MAPPED_TASK:
            if 0 <= row.map_index < region_count:
                states[row.map_index] = viewer_state(row.state)
                tries[row.map_index] = int(row.try_number or 0)
        elif row.task_id in stages and row.map_index == -1:
            stages[row.task_id] = viewer_state(row.state)
    run = viewer_state(run_state) if run_state else "none"
    return {"run_state": run, "terminal": run in TERMINAL_RUN_STATES,
            "stages": stages, "states": states, "tries": tries,
            "counts": dict(Counter(states)), "result_ready": stages["store"] == "success"}


def _compact(detections: dict[str, Any] | None) -> dict[str, list]:
    """Columnar boxes ``[x0, y0, x1, y1]``, scores and class ids (possibly empty)."""
    det = detections or {}
    boxes = [[float(v) for v in b] for b in det.get("boxes") or []]
    scores = [float(s) for s in det.get("scores") or []]
    classes = [int(c) for c in det.get("category_ids") or []]
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError("detections have mismatched boxes, scores and classes")
    return {"boxes": boxes, "scores": scores, "classes": classes}


def finding_payload(finding: dict[str, Any],
                    detections: dict[str, Any] | None = None) -> dict[str, Any]:
    """One region's finding (an ``analyze`` XCom) for the page.

    ``detections`` replaces the inline ones for a finding whose boxes were offloaded to S3
    (``detections_uri``); ``missing`` says such boxes could not be read any more.
    """
    inline = finding.get("detections")
    offloaded = bool(finding.get("detections_uri"))
    payload = {"index": int(finding["index"]), "name": str(finding.get("name", "")),
               "status": str(finding.get("status", "success")),
               "attempts": int(finding.get("attempts", 1)),
               "seconds": finding.get("seconds") or {},
               "count": int(finding.get("detections_count") or 0),
               "missing": offloaded and detections is None}
    payload.update(_compact(detections if offloaded else inline))
    return payload


def unit_findings(payload: Mapping[str, Any],
                  stored: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One :func:`finding_payload` per region finding of source 0 of a one-image run's
    unit XCom, in region order. An offloaded unit (``finding_uri``) takes them from
    ``stored``, the document at that key: none when it could not be read (scratch already
    cleaned up — the stored result has the boxes)."""
    body = stored if payload.get("finding_uri") else payload
    found = ((body or {}).get("sources") or {}).get("0") or []
    return [finding_payload(f) for f in sorted(found, key=lambda f: int(f["index"]))]


def findings_payload(values: Iterable[Any], read_json: Callable[[str], Any | None], *,
                     video: bool = False,
                     factors: tuple[float, float] = (1.0, 1.0)) -> list[dict[str, Any]]:
    """The page's region findings from ``analyze`` XCom values, in the order given.

    ``read_json`` reads one of the run's own scratch objects by URI (``None`` when it is
    gone or not the run's): a region's offloaded boxes, or an offloaded unit. A unit of a
    one-image run becomes its regions' findings; a video's units keep one (boxless) row
    each, as their cells are units, not regions. ``factors`` (:func:`level0_factors`) puts
    the boxes of a slide's reduced level in level-0 pixels, as the result has them.
    """
    out: list[dict[str, Any]] = []
    for value in values:
        if not isinstance(value, dict) or "index" not in value:
            continue
        if not video and is_unit_payload(value):
            uri = value.get("finding_uri")
            out.extend(unit_findings(value, read_json(str(uri)) if uri else None))
            continue
        uri = value.get("detections_uri")
        out.append(finding_payload(value, read_json(str(uri)) if uri else None))
    if factors != (1.0, 1.0):
        for finding in out:
            finding["boxes"] = [_to_level0(box, factors) for box in finding["boxes"]]
    return out


def result_payload(doc: dict[str, Any]) -> dict[str, Any]:
    """The stored ``result.json`` as columnar boxes ``[x0, y0, x1, y1]`` with class ids."""
    names = list(doc.get("category_names") or [])
    boxes, scores, classes = [], [], []
    records = doc.get("detections") or []
    if doc.get("frames"):  # a video: its thumbnail is the first sampled frame, so are boxes
        first = doc["frames"][0]["frame_index"]
        records = [r for r in records if r.get("frame_index") == first]
    for record in records:
        x, y, w, h = (float(v) for v in record["bbox"])
        cid = int(record["category_id"])
        while cid >= len(names):  # an older document without category_names
            names.append(str(len(names)))
        names[cid] = str(record.get("category_name", names[cid]))
        boxes.append([x, y, round(x + w, 2), round(y + h, 2)])
        scores.append(float(record["score"]))
        classes.append(cid)
    summary = doc.get("summary") or {}
    return {"status": doc.get("status"), "failed_regions": doc.get("failed_regions") or [],
            "counts": summary.get("counts") or class_counts(classes, names),
            "description": summary.get("description"),
            "model_seconds": summary.get("model_seconds"),
            "total_seconds": summary.get("total_seconds"),
            "category_names": names, "boxes": boxes, "scores": scores, "classes": classes,
            "georef": georef_payload(doc.get("image") or {}),
            "microscopy": microscopy_payload(doc.get("image") or {})}


def _figure(value: Any) -> float | None:
    """A figure of ``evaluation.json``: a number, or ``None`` (nothing to count, or not one;
    a NaN, which Python's JSON reader accepts, would break the page's JSON)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def precision50(per_class: Mapping[str, Any]) -> float | None:
    """Detections matched to an object at IoU 0.5 ÷ detections, over the ground truth's
    classes (``per_class`` counts of ``evaluation.json``): recall50's counterpart, which
    the file does not hold as a figure of its own. ``None`` without detections."""
    matched = detections = 0
    for figures in per_class.values():
        counts = figures.get("counts") if isinstance(figures, Mapping) else None
        if isinstance(counts, Mapping):
            matched += _count(counts.get("matched"))
            detections += _count(counts.get("detections"))
    return matched / detections if detections else None


def evaluation_payload(doc: Any, plot_key: str | None = None) -> dict[str, Any] | None:
    """A run's stored evaluation (``evaluation.json``, written by the DAG's ``evaluate``
    step) for the page: the figures it holds (``AP50``, ``recall50``, … as
    :data:`~tilescope.evaluation.METRICS`; ``null`` where nothing was counted) with
    ``precision50`` derived from its per-class counts, its counts, a short per-class table,
    the ground truth used and the PR plot's key. ``None`` when there is no evaluation (or
    the document is not one), so the page shows nothing."""
    if not isinstance(doc, Mapping):
        return None
    per_class = _mapping(doc.get("per_class"))
    figures = {name: _figure(doc[name]) for name in METRICS if name in doc}
    if not figures:
        return None
    figures["precision50"] = precision50(per_class)
    classes = {}
    for name, row in per_class.items():
        if isinstance(row, Mapping):
            counts = _mapping(row.get("counts"))
            classes[str(name)] = {"AP50": _figure(row.get("AP50")),
                                  "recall50": _figure(row.get("recall50")),
                                  "objects": _count(counts.get("objects")),
                                  "detections": _count(counts.get("detections"))}
    counts = _mapping(doc.get("counts"))
    ground_truth = doc.get("ground_truth")
    return {"figures": figures, "counts": {k: _count(v) for k, v in counts.items()},
            "per_class": classes,
            "ground_truth": ground_truth if isinstance(ground_truth, str) else None,
            "pr_plot": plot_key}


def microscopy_payload(image: Mapping[str, Any]) -> dict[str, Any] | None:
    """A whole-slide scan's scale for the page (``None``: not a slide): ``mpp`` (µm per
    level-0 pixel across and down, ``None`` when the slide does not say), the slide's
    ``objective_power`` and the ``level`` and ``level_magnification`` analysed. The page
    shows ``col × mpp[0]``, ``row × mpp[1]`` µm under the pointer (``micronsAt``)."""
    scale = SlideScale.from_dict(image.get("microscopy"))
    if scale is None:
        return None
    return {"mpp": list(scale.mpp) if scale.mpp else None,
            "objective_power": scale.objective_power, "level": scale.level,
            "level_magnification": scale.magnification()}


def georef_payload(image: Mapping[str, Any]) -> dict[str, Any] | None:
    """A result image's georeference for the page: ``None`` for a plain image (pixels
    only); else its ``crs``, ``epsg`` and affine ``transform`` (GDAL order ``a, b, c, d, e,
    f``: ``x = a·col + b·row + c``, ``y = d·col + e·row + f``) and, when it has a CRS,
    ``lonlat``: WGS 84 control points the page interpolates under the pointer, with their
    measured ``max_error_deg`` (:func:`tilescope.georef.lonlat_grid`)."""
    geo = Georeference.from_dict(image)
    if geo is None:
        return None
    lonlat = None
    width, height = image.get("width"), image.get("height")
    if geo.crs_wkt is not None and width and height:
        try:
            lonlat = lonlat_grid(geo, int(width), int(height))
        except (GeoreferenceError, ValueError, ImportError):  # PROJ cannot place it
            lonlat = None
    return {"crs": geo.crs, "epsg": geo.epsg, "transform": list(geo.transform),
            "lonlat": lonlat}


def has_crs(payload: Mapping[str, Any]) -> bool:
    """Whether a result payload's image has a CRS: the DAG then stored its GeoJSON,
    native GeoJSON and STAC Item beside ``coco.json`` (:data:`tilescope.layout.GEO_ARTIFACTS`)."""
    return bool((payload.get("georef") or {}).get("crs"))


def class_counts(classes: Iterable[int], names: Sequence[str],
                 scores: Sequence[float] | None = None, min_score: float = 0.0
                 ) -> dict[str, int]:
    """Detections per class name (most frequent first), optionally above a score."""
    def name(cid: int) -> str:
        return names[cid] if 0 <= cid < len(names) else str(cid)

    picked = [c for i, c in enumerate(classes) if scores is None or scores[i] >= min_score]
    return dict(Counter(name(int(c)) for c in picked).most_common())


# --- batch runs (many images in one run; see tilescope.tasks.batch) ---------------------

#: a batch image's status before store wrote its outcome (the plan only knows bad inputs)
PENDING = "pending"
BATCH_STATUSES = ("stored", "bad", "failed", PENDING)
#: a refusal reason as the image list shows it (the full text is in the task log)
ERROR_MAX = 500


def _object_name(uri: str) -> str:
    """``incoming/a.jpg`` for ``s3://bucket/incoming/a.jpg`` (what the pipeline shows)."""
    return uri.split("/", 3)[3] if uri.startswith("s3://") and uri.count("/") >= 3 else uri


def _error(text: Any) -> str | None:
    if not text:
        return None
    text = str(text)
    return text if len(text) <= ERROR_MAX else text[:ERROR_MAX - 1] + "…"


def batch_plan_payload(units: Sequence[dict[str, Any]] | None,
                       prepared: dict[str, Any] | None) -> dict[str, Any]:
    """A batch run's plan: how many images and units, and the mapped units in map-index
    order (``{"index", "name", "slices"}``) — the page lists their live states."""
    batch = (prepared or {}).get("batch") or {}
    rows = [{"index": int(u["index"]), "name": str(u.get("name", "")),
             "slices": int(u.get("slice_count") or 0)}
            for u in sorted(units or [], key=lambda u: int(u["index"]))]
    return {"mode": "batch",
            "batch": {"images": int(batch.get("images") or 0), "bad": int(batch.get("bad") or 0),
                      "units": int(batch.get("units") or 0)} if batch else None,
            "units": rows, "image": None, "grid": None, "regions": []}


def batch_images_payload(outcomes_doc: dict[str, Any] | None = None,
                         plan_doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """The batch's images for the page's list: from ``outcomes.json`` once store wrote it
    (``final``), else from the run's ``plan.json`` (bad inputs known, the rest pending)."""
    images = []
    if outcomes_doc is not None:
        for o in outcomes_doc.get("outcomes") or []:
            status = str(o.get("status"))
            images.append({
                "index": int(o["index"]), "name": _object_name(str(o.get("uri", ""))),
                "status": status if status in BATCH_STATUSES else "failed",
                "image_id": o.get("image_id"),
                "detections": int(o["detections"]) if o.get("detections") is not None
                else None,
                "counts": dict(o.get("counts") or {}), "result_status": o.get("result_status"),
                "error": _error(o.get("error")), "error_class": o.get("error_class"),
                "viewable": status == "stored"})
    elif plan_doc is not None:
        for item in plan_doc.get("items") or []:
            bad = bool(item.get("bad"))
            images.append({
                "index": int(item["index"]), "name": _object_name(str(item.get("uri", ""))),
                "status": "bad" if bad else PENDING,
                "image_id": (item.get("image") or {}).get("image_id"),
                "detections": None, "counts": {}, "result_status": None,
                "error": _error(item.get("bad")), "error_class": item.get("error_class"),
                "viewable": False})
    images.sort(key=lambda i: i["index"])
    return {"final": outcomes_doc is not None, "images": images,
            "counts": dict(Counter(i["status"] for i in images)),
            "detections": sum(i["detections"] or 0 for i in images)}


def batch_image_payload(doc: dict[str, Any]) -> dict[str, Any]:
    """One stored image of a batch, from its ``result.json``: what a single-image run's
    ``plan`` and ``result`` give together — the image size, its region grid (numbered in
    order, each with the state its region ended in) and the merged detections."""
    regions = list(doc.get("regions") or [])
    if doc.get("frames"):  # a video: the grid of the first sampled frame, like its boxes
        first = doc["frames"][0]["frame_index"]
        regions = [r for r in regions if r.get("frame_index", first) == first]
    regions.sort(key=lambda r: int(r["index"]))
    shaped = plan_payload([{**r, "index": n} for n, r in enumerate(regions)],
                          {"image": doc.get("image") or {}, "plan": doc.get("plan") or {}})
    return {**result_payload(doc), **shaped,
            "region_states": [viewer_state(str(r.get("status") or "none")) for r in regions]}
