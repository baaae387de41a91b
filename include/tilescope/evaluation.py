"""How good a run is against labelled ground truth: COCO AP, recall at IoU 0.5, duplicates.

The matching and the precision–recall curves are pycocotools' ``COCOeval`` (the reference COCO
evaluator), not ours. Two deliberate differences from ``COCOeval.summarize()``:

* ``maxDets`` is ``[1, 100, 10000]`` and *every* figure (AP too) is read at the last one:
  a large image holds far more than COCO's 100 objects, and ``summarize()`` reads AP at a
  fixed 100 detections per image whatever ``maxDets`` says.
* ``recall50`` counts objects (matched ground-truth objects at IoU 0.5 over all objects, the
  library's own greedy matching), and ``dup_rate`` is the share of detections that are a
  second box on an object: unmatched at IoU 0.5, same class, IoU ≥ 0.5 with an object that a
  higher-scoring detection already matched. A figure with nothing to count is ``None``
  (``COCOeval``'s ``-1``).

Predictions are a COCO results list (ids are the ground truth's), or a tilescope
``result.json`` / ``coco.json``, whose images are matched to the ground truth's by file name
and whose classes by category name; only the images it covers are evaluated.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from tilescope.errors import ConfigError
from tilescope.storage import S3Client, read_bytes

#: detections per image ``COCOeval`` keeps (its default 100 is too few for big images)
MAX_DETS = (1, 100, 10000)
#: the figures of :class:`Evaluation` and of each :class:`ClassEvaluation`, in table order
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "recall50", "dup_rate")


class EvaluationInputError(ConfigError):
    """A prediction or ground-truth file that cannot be evaluated (not JSON, not COCO, or
    sharing no image with the other)."""


@dataclass(frozen=True)
class ClassEvaluation:
    """One category's figures (``None``: nothing to count, e.g. no object of that class)."""

    name: str
    AP: float | None
    AP50: float | None
    recall50: float | None
    dup_rate: float | None
    objects: int
    detections: int
    matched: int
    duplicates: int

    def to_dict(self) -> dict[str, Any]:
        return {"AP": self.AP, "AP50": self.AP50, "recall50": self.recall50,
                "dup_rate": self.dup_rate,
                "counts": {"objects": self.objects, "detections": self.detections,
                           "matched": self.matched, "duplicates": self.duplicates}}


@dataclass(frozen=True)
class Evaluation:
    """COCO figures over every evaluated image and class, and per class."""

    AP: float | None
    AP50: float | None
    AP75: float | None
    APs: float | None
    APm: float | None
    APl: float | None
    recall50: float | None
    dup_rate: float | None
    per_class: dict[str, ClassEvaluation]
    images: int
    objects: int
    detections: int
    #: detections of classes the ground truth does not have (not evaluated), per name
    unknown_classes: dict[str, int] = field(default_factory=dict)
    #: precision at IoU 0.5 on :data:`RECALL_POINTS`, per class (-1: class has no object)
    pr50: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in METRICS},
                "per_class": {name: c.to_dict() for name, c in self.per_class.items()},
                "counts": {"images": self.images, "objects": self.objects,
                           "detections": self.detections},
                "unknown_classes": dict(self.unknown_classes),
                "max_dets": MAX_DETS[-1]}

    def table(self) -> str:
        """A readable table: one row per class, then all classes."""
        def cell(value: float | None) -> str:
            return "    -" if value is None else f"{value:5.3f}"

        rows = [f"{'class':<16} {'AP':>5} {'AP50':>5} {'rec50':>5} {'dup':>5} "
                f"{'objects':>7} {'dets':>6}"]
        for c in self.per_class.values():
            rows.append(f"{c.name[:16]:<16} {cell(c.AP)} {cell(c.AP50)} {cell(c.recall50)} "
                        f"{cell(c.dup_rate)} {c.objects:>7} {c.detections:>6}")
        rows.append(f"{'all':<16} {cell(self.AP)} {cell(self.AP50)} {cell(self.recall50)} "
                    f"{cell(self.dup_rate)} {self.objects:>7} {self.detections:>6}")
        rows.append(f"AP75 {cell(self.AP75)}  APs {cell(self.APs)}  APm {cell(self.APm)}  "
                    f"APl {cell(self.APl)}  ({self.images} images, maxDets {MAX_DETS[-1]})")
        if self.unknown_classes:
            rows.append("not in the ground truth, not evaluated: " + ", ".join(
                f"{n} {name}" for name, n in self.unknown_classes.items()))
        return "\n".join(rows)


#: recall points of the precision–recall curves (COCO's 101)
RECALL_POINTS = tuple(float(r) for r in np.linspace(0.0, 1.0, 101))


def load_json(uri: str, what: str, client: S3Client | None = None) -> Any:
    """A JSON file or ``s3://`` object, or :class:`EvaluationInputError` saying what is wrong
    with it (a missing one: :class:`~tilescope.errors.BadImageError`, as for any input)."""
    data = read_bytes(uri, client)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvaluationInputError(f"{what} {uri} is not JSON: {exc}") from None


def _check_ground_truth(gt: Any) -> dict[str, Any]:
    if not isinstance(gt, dict) or not all(isinstance(gt.get(key), list) for key in
                                           ("images", "annotations", "categories")):
        raise EvaluationInputError("ground truth is not COCO annotations (an object with "
                                   "images, annotations and categories lists)")
    if not all(isinstance(img, dict) and "id" in img for img in gt["images"]) or \
            not all(isinstance(c, dict) and "id" in c and "name" in c
                    for c in gt["categories"]):
        raise EvaluationInputError("ground truth is not COCO annotations: every image needs "
                                   "an id, every category an id and a name")
    gt = copy.deepcopy(gt)
    for ann in gt["annotations"]:
        _check_box(ann, "ground-truth annotation")
        # COCOeval needs both; many hand-made files leave them out
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
    for position, ann in enumerate(gt["annotations"], start=1):
        ann.setdefault("id", position)
    return gt


def _check_box(ann: Any, what: str, category: str = "category_id") -> None:
    if not isinstance(ann, dict) or "image_id" not in ann or category not in ann or \
            not isinstance(ann.get("bbox"), list) or len(ann["bbox"]) != 4:
        raise EvaluationInputError(f"{what} is not COCO (image_id, {category}, bbox "
                                   f"[x, y, w, h]): {str(ann)[:120]}")


def _file_key(name: str) -> str:
    return PurePosixPath(str(name).replace("\\", "/")).name


def predictions_as_results(pred: Any, gt: Mapping[str, Any]
                           ) -> tuple[list[dict[str, Any]], list[int] | None, dict[str, int]]:
    """Any accepted prediction → (COCO results in the ground truth's ids, the ground-truth
    image ids it covers or ``None`` for all, detections per class unknown to the ground
    truth)."""
    if isinstance(pred, list):
        for ann in pred:
            _check_box(ann, "prediction")
            if "score" not in ann:
                raise EvaluationInputError(f"prediction has no score: {str(ann)[:120]}")
        known = {img["id"] for img in gt["images"]}
        stray = {ann["image_id"] for ann in pred} - known
        if stray:
            raise EvaluationInputError(f"predictions refer to image ids the ground truth "
                                       f"does not have: {sorted(stray)[:5]}")
        return [dict(ann) for ann in pred], None, {}
    if not isinstance(pred, dict):
        raise EvaluationInputError("predictions are neither a COCO results list nor a "
                                   "tilescope result.json / coco.json")
    if isinstance(pred.get("detections"), list) and isinstance(pred.get("image"), dict):
        name = _file_key(pred["image"].get("uri", ""))
        images = {1: name}
        records = [{"image_id": 1, "category_name": d.get("category_name"),
                    "bbox": d.get("bbox"), "score": d.get("score")}
                   for d in pred["detections"]]
    elif isinstance(pred.get("annotations"), list) and isinstance(pred.get("images"), list) \
            and isinstance(pred.get("categories"), list):
        names = {c["id"]: c["name"] for c in pred["categories"]}
        images = {img["id"]: _file_key(img.get("file_name", "")) for img in pred["images"]}
        records = [{"image_id": a.get("image_id"), "category_name":
                    names.get(a.get("category_id")), "bbox": a.get("bbox"),
                    "score": a.get("score")} for a in pred["annotations"]]
    else:
        raise EvaluationInputError("predictions are neither a COCO results list nor a "
                                   "tilescope result.json / coco.json")
    gt_images = {_file_key(img.get("file_name", "")): img["id"] for img in gt["images"]}
    to_gt = {pid: gt_images[name] for pid, name in images.items() if name in gt_images}
    if not to_gt:
        raise EvaluationInputError(f"no prediction image ({', '.join(sorted(images.values()))}"
                                   ") is among the ground truth's file names")
    categories = {c["name"]: c["id"] for c in gt["categories"]}
    results: list[dict[str, Any]] = []
    unknown: dict[str, int] = {}
    for record in records:
        _check_box(record, "prediction", "category_name")
        if record["score"] is None:
            raise EvaluationInputError(f"prediction has no score: {str(record)[:120]}")
        if record["image_id"] not in to_gt:
            continue
        if record["category_name"] not in categories:
            key = str(record["category_name"])
            unknown[key] = unknown.get(key, 0) + 1
            continue
        results.append({"image_id": to_gt[record["image_id"]],
                        "category_id": categories[record["category_name"]],
                        "bbox": [float(v) for v in record["bbox"]],
                        "score": float(record["score"])})
    return results, sorted(set(to_gt.values())), unknown


def _mean(values: np.ndarray) -> float | None:
    """``summarize()``'s rule: the mean over entries that exist (> -1)."""
    kept = values[values > -1]
    return float(np.mean(kept)) if kept.size else None


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def evaluate(pred: Any, gt: Any) -> Evaluation:
    """Evaluate predictions (a COCO results list, a tilescope result or COCO document, as
    parsed JSON) against COCO ground truth (parsed JSON)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _check_ground_truth(gt)
    results, image_ids, unknown = predictions_as_results(pred, gt)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools talks on stdout
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        else:  # loadRes refuses an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt["images"]), "annotations": [],
                               "categories": copy.deepcopy(gt["categories"])}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.maxDets = list(MAX_DETS)
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    precision = evaluator.eval["precision"][..., -1]  # T × R × K × A at MAX_DETS[-1]
    area = {label: i for i, label in enumerate(params.areaRngLbl)}
    at50 = int(np.argmin(np.abs(params.iouThrs - 0.5)))
    at75 = int(np.argmin(np.abs(params.iouThrs - 0.75)))
    everything = precision[:, :, :, area["all"]]

    # object matches at IoU 0.5 from the library's own per-image matching (area "all")
    cat_index = {cat: k for k, cat in enumerate(params.catIds)}
    objects = np.zeros(len(params.catIds), int)
    matched = np.zeros(len(params.catIds), int)
    detections = np.zeros(len(params.catIds), int)
    duplicates = np.zeros(len(params.catIds), int)
    for entry in evaluator.evalImgs:
        if entry is None or entry["aRng"] != params.areaRng[area["all"]]:
            continue
        k = cat_index[entry["category_id"]]
        gt_kept = ~np.asarray(entry["gtIgnore"], bool)
        gt_match = np.asarray(entry["gtMatches"][at50])
        dt_match = np.asarray(entry["dtMatches"][at50])
        dt_kept = ~np.asarray(entry["dtIgnore"][at50], bool)
        objects[k] += int(gt_kept.sum())
        matched[k] += int(((gt_match > 0) & gt_kept).sum())
        detections[k] += int(dt_kept.sum())
        duplicates[k] += _duplicates(entry, gt_match, dt_match, dt_kept, coco_gt, coco_dt,
                                     mask_utils)
    per_class: dict[str, ClassEvaluation] = {}
    pr50: dict[str, list[float]] = {}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    for k, cat in enumerate(params.catIds):
        name = names[cat]
        per_class[name] = ClassEvaluation(
            name=name, AP=_mean(everything[:, :, k]), AP50=_mean(everything[at50, :, k]),
            recall50=_ratio(int(matched[k]), int(objects[k])),
            dup_rate=_ratio(int(duplicates[k]), int(detections[k])),
            objects=int(objects[k]), detections=int(detections[k]),
            matched=int(matched[k]), duplicates=int(duplicates[k]))
        pr50[name] = [float(v) for v in everything[at50, :, k]]
    return Evaluation(
        AP=_mean(everything), AP50=_mean(everything[at50]), AP75=_mean(everything[at75]),
        APs=_mean(precision[:, :, :, area["small"]]),
        APm=_mean(precision[:, :, :, area["medium"]]),
        APl=_mean(precision[:, :, :, area["large"]]),
        recall50=_ratio(int(matched.sum()), int(objects.sum())),
        dup_rate=_ratio(int(duplicates.sum()), int(detections.sum())),
        per_class=per_class, images=len(params.imgIds), objects=int(objects.sum()),
        detections=int(detections.sum()), unknown_classes=unknown, pr50=pr50)


def _duplicates(entry: Mapping[str, Any], gt_match: np.ndarray, dt_match: np.ndarray,
                dt_kept: np.ndarray, coco_gt: Any, coco_dt: Any, mask_utils: Any) -> int:
    """Unmatched detections of one image and class lying at IoU ≥ 0.5 on an object that an
    earlier (higher-scoring: ``COCOeval`` matches in score order) detection matched."""
    dt_ids: Sequence[int] = entry["dtIds"]
    if not (gt_match > 0).any() or not dt_ids:
        return 0
    position = {int(d): j for j, d in enumerate(dt_ids)}
    gt_ids: Sequence[int] = entry["gtIds"]
    count = 0
    for j, d in enumerate(dt_ids):
        if dt_match[j] > 0 or not dt_kept[j]:
            continue
        candidates = [gt_ids[i] for i, m in enumerate(gt_match)
                      if m > 0 and position.get(int(m), len(dt_ids)) < j]
        if not candidates:
            continue
        box = [coco_dt.anns[d]["bbox"]]
        boxes = [coco_gt.anns[g]["bbox"] for g in candidates]
        ious = mask_utils.iou(box, boxes, [0] * len(boxes))
        if float(np.max(ious)) >= 0.5:
            count += 1
    return count
