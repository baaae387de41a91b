"""Why tilescope's recall trailed SAHI's with the same model and settings, counted.

Runs SAHI 0.12.8 ``get_sliced_prediction`` and ``tilescope.pipeline.run_image`` on the same
mosaic of real photos (``tilescope.samples.build_mosaic``) with the same NanoDet ONNX
(``e2e_bench.sahi_nanodet`` wraps ``NanoDetModel`` for SAHI: same decoder, same per-slice
NMS) and SAHI's settings: 416 px slices, overlap 0.2, GREEDYNMM / IOS / 0.5, score 0.4, no
full-image pass. Both runs record their raw per-slice detections, so every SAHI detection
without a counterpart in tilescope's output (same class, IoU ≥ 0.5) can be put down to one
cause, tried in this order:

* ``slice grid``: it came from a slice tilescope's plan does not have;
* ``decoder``: tilescope's raw slice outputs differ from SAHI's (same pixels, same model);
* ``merge implementation``: tilescope's ``merge`` on SAHI's own raw boxes does not give it;
* ``second merge``: a single merge over tilescope's raw boxes keeps it, the per-region
  merges alone keep it, and the merge *across* regions of already-merged boxes drops it
  (greedy NMM is not idempotent: union boxes are larger and absorb their neighbours);
* ``region merge``: a single merge keeps it but the per-region merges already lose it
  (e.g. rounding of findings);
* ``other``.

Score threshold placement and the full-image pass are the same on both sides (``>=`` 0.4
at decoding; no full-image pass), which the script prints rather than assumes.

Recall at IoU 0.5 and the duplicate rate (``tilescope.evaluation``) are measured against a
reference built from the photos themselves: NanoDet on each whole photo (score ≥ 0.5), moved
to where the mosaic placed it, objects entirely visible only. It is the same yardstick for
both sides; what matters is the difference.

    python bench/recall_gap.py [--size 4096] [--json OUT]
    PYTHONPATH=OTHER/include python bench/recall_gap.py   # measure another checkout's code
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "include"))  # after PYTHONPATH: another checkout can be measured

from tilescope.detections import Detections  # noqa: E402
from tilescope.postprocess import merge  # noqa: E402

SLICE, OVERLAP, SCORE = 416, 0.2, 0.4
NAMES = ("kite", "astronaut", "dog", "horses", "chelsea", "person", "coffee", "giraffe")
TEACHER_SCORE = 0.5
CAUSES = ("slice grid", "decoder", "merge implementation", "second merge", "region merge",
          "other")


def mosaic_with_reference(size: int, seed: int = 0) -> tuple[np.ndarray, Detections]:
    """``build_mosaic(size)`` pixel for pixel, and the reference objects on it."""
    from tilescope.models.nanodet import NanoDetModel
    from tilescope.samples import build_mosaic, sample_array

    canvas = build_mosaic(size, NAMES, seed)
    teacher = NanoDetModel(score_threshold=TEACHER_SCORE)
    photos = [sample_array(n) for n in NAMES]
    found = [teacher.predict_one(p) for p in photos]
    teacher.close()
    rng = np.random.default_rng(seed)  # build_mosaic's own placement, replayed
    parts, y = [], 0
    while y < size:
        x, row_height = 0, 0
        while x < size:
            k = int(rng.integers(len(photos)))
            h, w = min(photos[k].shape[0], size - y), min(photos[k].shape[1], size - x)
            dets = found[k]
            inside = (dets.boxes[:, 2] <= w) & (dets.boxes[:, 3] <= h)
            parts.append(dets.select(inside).shifted(x, y))
            x += w
            row_height = max(row_height, h)
        y += row_height
    return canvas, Detections.concat(parts)


def run_sahi(image: np.ndarray) -> tuple[Detections, list[tuple[list[int], Detections]], float]:
    """SAHI's result and its raw per-slice detections (slice box, detections in slice px)."""
    from e2e_bench import sahi_nanodet
    from sahi.predict import get_sliced_prediction
    from sahi.slicing import get_slice_bboxes

    model = sahi_nanodet(SCORE)
    raw: list[Detections] = []
    predict = model.model.predict

    def recording(images: Sequence[np.ndarray]) -> list[Detections]:
        out = predict(images)
        raw.extend(out)
        return out

    model.model.predict = recording
    started = time.perf_counter()
    result = get_sliced_prediction(
        image, model, slice_height=SLICE, slice_width=SLICE, overlap_height_ratio=OVERLAP,
        overlap_width_ratio=OVERLAP, perform_standard_pred=False, postprocess_type="GREEDYNMM",
        postprocess_match_metric="IOS", postprocess_match_threshold=0.5, verbose=0)
    wall = time.perf_counter() - started
    boxes = get_slice_bboxes(image.shape[0], image.shape[1], SLICE, SLICE, False, OVERLAP,
                             OVERLAP)
    preds = result.object_prediction_list
    final = Detections(np.array([p.bbox.to_xyxy() for p in preds], np.float32).reshape(-1, 4),
                       np.array([p.score.value for p in preds], np.float32),
                       np.array([p.category.id for p in preds], np.int32))
    return final, list(zip(boxes, raw, strict=True)), wall


def run_tilescope(path: Path, **overrides: Any) -> tuple[Any, list[tuple[Any, list, list]]]:
    """tilescope's result and, per region, (region, per-slice detections, slice boxes)."""
    from tilescope import pipeline
    from tilescope.models import load_model
    from tilescope.params import InferenceParams
    from tilescope.readers import open_image

    params = InferenceParams(model="nanodet-coco", slice_size=SLICE, overlap=OVERLAP,
                             score_threshold=SCORE, postprocess="greedynmm", match_metric="ios",
                             match_threshold=0.5,
                             **overrides)
    model = load_model("nanodet-coco", score_threshold=SCORE)
    recorded: list[tuple[Any, list, list]] = []
    finding = pipeline.region_finding

    def recording(region, per_slice, slices, *args, **kwargs):  # type: ignore[no-untyped-def]
        recorded.append((region, list(per_slice), list(slices)))
        return finding(region, per_slice, slices, *args, **kwargs)

    pipeline.region_finding = recording  # type: ignore[assignment]
    try:
        reader, info = open_image(str(path))
        result = pipeline.run_image(reader, info, params, model)
    finally:
        pipeline.region_finding = finding  # type: ignore[assignment]
        model.close()
    return result, recorded


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def has_counterpart(dets: Detections, other: Detections) -> np.ndarray:
    """Per detection of ``dets``: does ``other`` hold a same-class box at IoU ≥ 0.5?"""
    out = np.zeros(len(dets), bool)
    for cat in np.unique(dets.category_ids):
        mine, theirs = dets.category_ids == cat, other.category_ids == cat
        if theirs.any():
            out[mine] = (iou_matrix(dets.boxes[mine].astype(np.float64),
                                    other.boxes[theirs].astype(np.float64)) >= 0.5).any(axis=1)
    return out


def sahi_merge(dets: Detections) -> Detections:
    return merge(dets, "greedynmm", "ios", 0.5, False)


def classify(sahi: Detections, sahi_raw: list, ours: Detections, recorded: list) -> dict:
    """Counts of SAHI detections without a counterpart in ``ours``, by cause (see the module
    docstring), and how the raw slice outputs compare."""
    from tilescope.results import quantize

    sahi_slices = {tuple(box): dets for box, dets in sahi_raw}
    ours_raw = {(s.x1, s.y1, s.x2, s.y2): d for _, per_slice, slices in recorded
                for d, s in zip(per_slice, slices, strict=True)}
    grid_same = set(sahi_slices) == set(ours_raw)
    differing = [k for k in sahi_slices if k in ours_raw and not (
        len(sahi_slices[k]) == len(ours_raw[k])
        and np.allclose(sahi_slices[k].boxes, ours_raw[k].boxes, atol=1e-3)
        and np.array_equal(sahi_slices[k].category_ids, ours_raw[k].category_ids))]

    def shifted(table: dict, keep: Any = None) -> Detections:
        return Detections.concat(d.shifted(k[0], k[1]) for k, d in table.items()
                                 if keep is None or keep(k))

    sahi_raw_all = shifted(sahi_slices)
    ours_raw_all = shifted(ours_raw)
    only_sahi_slices = shifted(sahi_slices, lambda k: k not in ours_raw)
    single_on_sahi_raw = sahi_merge(sahi_raw_all)
    single_on_ours = sahi_merge(ours_raw_all.select(ours_raw_all.scores >= SCORE))
    per_region = Detections.concat(
        quantize(sahi_merge(Detections.concat(d.shifted(s.x1, s.y1)
                                              for d, s in zip(per_slice, slices, strict=True))))
        for _, per_slice, slices in recorded)
    per_region_unrounded = Detections.concat(
        sahi_merge(Detections.concat(d.shifted(s.x1, s.y1)
                                     for d, s in zip(per_slice, slices, strict=True)))
        for _, per_slice, slices in recorded)

    missing = sahi.select(~has_counterpart(sahi, ours))
    counts = dict.fromkeys(CAUSES, 0)
    for i in range(len(missing)):
        one = missing.select(np.array([i]))
        if len(only_sahi_slices) and has_counterpart(one, only_sahi_slices)[0] \
                and not has_counterpart(one, ours_raw_all)[0]:
            cause = "slice grid"
        elif not has_counterpart(one, single_on_sahi_raw)[0]:
            cause = "merge implementation"
        elif not has_counterpart(one, single_on_ours)[0]:
            cause = "decoder"
        elif has_counterpart(one, per_region)[0]:
            cause = "second merge"
        elif has_counterpart(one, per_region_unrounded)[0]:
            cause = "region merge"
        else:
            cause = "other"
        counts[cause] += 1
    extra = ours.select(~has_counterpart(ours, sahi))
    return {"missing_in_tilescope": len(missing), "causes": counts,
            "extra_in_tilescope": len(extra),
            "slice_grid_identical": grid_same, "slices": len(sahi_slices),
            "slices_with_different_raw_output": len(differing),
            "single_merge_equals_sahi": same_boxes(single_on_ours, sahi)}


def same_boxes(a: Detections, b: Detections) -> bool:
    """The same detections, in any order (coordinates to 1e-3 px)."""
    if len(a) != len(b):
        return False
    ka = np.lexsort((a.boxes[:, 3], a.boxes[:, 2], a.boxes[:, 1], a.boxes[:, 0], a.category_ids))
    kb = np.lexsort((b.boxes[:, 3], b.boxes[:, 2], b.boxes[:, 1], b.boxes[:, 0], b.category_ids))
    return bool(np.allclose(a.boxes[ka], b.boxes[kb], atol=1e-3)
                and np.array_equal(a.category_ids[ka], b.category_ids[kb]))


def scores(dets: Detections, reference: Detections, size: int) -> dict:
    """recall50 and dup_rate of ``dets`` against the reference (``tilescope.evaluation``)."""
    from tilescope.evaluation import evaluate
    from tilescope.models.coco import COCO_NAMES

    def xywh(box: np.ndarray) -> list[float]:
        return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]

    gt = {"images": [{"id": 1, "file_name": "mosaic.jpg", "width": size, "height": size}],
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(COCO_NAMES)],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": int(c) + 1,
                           "bbox": xywh(b), "area": float((b[2] - b[0]) * (b[3] - b[1])),
                           "iscrowd": 0}
                          for i, (b, c) in enumerate(zip(reference.boxes,
                                                         reference.category_ids, strict=True))]}
    pred = [{"image_id": 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
            for b, s, c in zip(dets.boxes, dets.scores, dets.category_ids, strict=True)]
    ev = evaluate(pred, gt).to_dict()
    return {"recall50": round(ev["recall50"], 4), "dup_rate": round(ev["dup_rate"], 4),
            "detections": len(dets)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()
    import tempfile

    from PIL import Image

    image, reference = mosaic_with_reference(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"mosaic-{args.size}.png"  # lossless: both sides read these pixels
        Image.fromarray(image).save(path, compress_level=1)
        sahi, sahi_raw, sahi_wall = run_sahi(image)
        started = time.perf_counter()
        result, recorded = run_tilescope(path)
        ours_wall = time.perf_counter() - started
    ours = result.detections
    summary = {
        "size": args.size, "regions": len(recorded), "reference_objects": len(reference),
        "score_threshold": {"sahi": "model decode >= 0.4", "tilescope": "model decode >= 0.4, "
                            "then params.score_threshold 0.4 before merging"},
        "full_image_pass": {"sahi": False, "tilescope": result.params["full_image_pass"]},
        **classify(sahi, sahi_raw, ours, recorded),
        "scores": {"sahi": scores(sahi, reference, args.size),
                   "tilescope": scores(ours, reference, args.size)},
        "wall_s": {"sahi": round(sahi_wall, 2), "tilescope": round(ours_wall, 2)},
    }
    print(f"{args.size}² mosaic, {summary['slices']} slices, {summary['regions']} regions, "
          f"{len(reference)} reference objects")
    print(f"slice grid identical: {summary['slice_grid_identical']}; slices whose raw output "
          f"differs: {summary['slices_with_different_raw_output']}")
    print(f"SAHI detections without a tilescope counterpart: "
          f"{summary['missing_in_tilescope']} of {len(sahi)}; tilescope's without a SAHI one: "
          f"{summary['extra_in_tilescope']} of {len(ours)}")
    for cause, n in summary["causes"].items():
        print(f"  {cause:22}{n:6}")
    print(f"a single merge over tilescope's raw slice detections equals SAHI's output: "
          f"{summary['single_merge_equals_sahi']}")
    for side in ("sahi", "tilescope"):
        s = summary["scores"][side]
        print(f"{side:10} recall50 {s['recall50']:.4f}  dup_rate {s['dup_rate']:.4f}  "
              f"detections {s['detections']}  wall {summary['wall_s'][side]:.1f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
