"""The embedded COCO detectors side by side, in one sitting: accuracy against hand-boxed
ground truth and speed per slice, on the real sample photos and on mosaics of them.

Usage::

    python bench/model_compare.py [--models nanodet-coco centernet-coco] [--mosaic 2048]
                                  [--seeds 0 1]

Ground truth: ``bench/photo_truth.json`` (the photos' objects, boxed by hand). A mosaic
tiles the photos at their native scale (the placement of ``samples.build_mosaic``, offsets
kept): each photo's boxes are moved with it and cut to the part placed; a box keeping less
than half its area is left out of the truth, and so are the detections centred on it (an
object cut that much is neither a miss nor a false positive).

Every run goes through ``tilescope.pipeline.run_image`` with the model's own slice size and
default overlap/merge, detections at score ≥ 0.1 (AP needs the low scores); AP50 and
recall50 come from ``tilescope.evaluation.evaluate`` (pycocotools), recall50 also at the
default score threshold 0.3. ``s/slice`` is the model's seconds over the slices it ran
(``Result.seconds["model"]``, one model instance, default threads). The last line is
``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from tilescope.evaluation import evaluate
from tilescope.models import load_model
from tilescope.models.coco import COCO_NAMES
from tilescope.params import InferenceParams
from tilescope.pipeline import run_image
from tilescope.readers.array import ArrayReader
from tilescope.results import ImageInfo
from tilescope.samples import sample_array

TRUTH = Path(__file__).with_name("photo_truth.json")
LOW_SCORE = 0.1
DEFAULT_SCORE = 0.3

Box = tuple[str, float, float, float, float]


def mosaic(size: int, names: list[str], truth: dict[str, list[Box]],
           seed: int) -> tuple[np.ndarray, list[Box], list[list[float]]]:
    """A ``size²`` tiling of the photos and its truth; also the cut boxes to ignore."""
    rng = np.random.default_rng(seed)
    photos = [sample_array(n) for n in names]
    canvas = np.zeros((size, size, 3), np.uint8)
    boxes: list[Box] = []
    ignored: list[list[float]] = []
    y = 0
    while y < size:
        x, row_height = 0, 0
        while x < size:
            k = int(rng.integers(len(photos)))
            photo = photos[k]
            h, w = min(photo.shape[0], size - y), min(photo.shape[1], size - x)
            canvas[y:y + h, x:x + w] = photo[:h, :w]
            for name, x1, y1, x2, y2 in truth[names[k]]:
                cx2, cy2 = min(x2, w), min(y2, h)
                kept = max(0, cx2 - x1) * max(0, cy2 - y1) / ((x2 - x1) * (y2 - y1))
                box = [x + x1, y + y1, x + cx2, y + cy2]
                if kept >= 0.5:
                    boxes.append((name, *box))
                elif kept > 0:
                    ignored.append(box)
            x += w
            row_height = max(row_height, h)
        y += row_height
    return canvas, boxes, ignored


def coco_truth(images: list[tuple[str, int, int, list[Box]]]) -> dict[str, Any]:
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(COCO_NAMES)]
    imgs, anns = [], []
    for image_id, (name, width, height, boxes) in enumerate(images, 1):
        imgs.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for cls, x1, y1, x2, y2 in boxes:
            anns.append({"id": len(anns) + 1, "image_id": image_id,
                         "category_id": COCO_NAMES.index(cls) + 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    return {"images": imgs, "annotations": anns, "categories": categories}


def predictions(model: Any, images: list[tuple[str, np.ndarray, list[list[float]]]]
                ) -> tuple[list[dict[str, Any]], int, float, float]:
    """COCO results of the model on the images, slices run, model seconds, wall seconds."""
    results: list[dict[str, Any]] = []
    slices, model_s, wall_s = 0, 0.0, 0.0
    params = InferenceParams(model=model.name, score_threshold=LOW_SCORE)
    for image_id, (name, pixels, ignored) in enumerate(images, 1):
        info = ImageInfo(f"mem://{name}", pixels.shape[1], pixels.shape[0], "0" * 64, "PNG",
                         pixels.nbytes)
        result = run_image(ArrayReader(pixels, format="PNG"), info, params, model)
        slices += int(result.plan["slices"])
        model_s += float(result.seconds["model"])
        wall_s += float(result.seconds["total"])
        dets = result.detections
        for box, score, cls in zip(dets.boxes.tolist(), dets.scores.tolist(),
                                   dets.category_ids.tolist(), strict=True):
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            if any(i[0] <= cx <= i[2] and i[1] <= cy <= i[3] for i in ignored):
                continue
            name_ = result.category_names[int(cls)]
            results.append({"image_id": image_id, "category_id": COCO_NAMES.index(name_) + 1,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                            "score": score})
    return results, slices, model_s, wall_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["nanodet-coco", "centernet-coco"])
    parser.add_argument("--mosaic", type=int, default=2048)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    truth = {k: [tuple(b) for b in v] for k, v in json.loads(TRUTH.read_text())["photos"].items()}
    names = sorted(truth)
    sets: dict[str, list[tuple[str, np.ndarray, list[list[float]]]]] = {
        "photos": [(n, sample_array(n), []) for n in names]}
    gts = {"photos": coco_truth([(n, a.shape[1], a.shape[0], truth[n])
                                 for n, a, _ in sets["photos"]])}
    mosaics, mosaic_truth = [], []
    for seed in args.seeds:
        pixels, boxes, ignored = mosaic(args.mosaic, names, truth, seed)
        mosaics.append((f"mosaic-{seed}", pixels, ignored))
        mosaic_truth.append((f"mosaic-{seed}", args.mosaic, args.mosaic, boxes))
    sets["mosaics"], gts["mosaics"] = mosaics, coco_truth(mosaic_truth)
    report: dict[str, Any] = {}
    print(f"{'set':8} {'model':15} {'objects':>7} {'AP50':>6} {'rec50@.1':>8} "
          f"{'rec50@.3':>8} {'slices':>6} {'s/slice':>7} {'wall s':>7}")
    for set_name, images in sets.items():
        for model_name in args.models:
            with load_model(model_name, score_threshold=LOW_SCORE) as model:
                results, slices, model_s, wall_s = predictions(model, images)
            low = evaluate(results, gts[set_name])
            high = evaluate([r for r in results if r["score"] >= DEFAULT_SCORE], gts[set_name])
            row = {"objects": len(gts[set_name]["annotations"]), "AP50": low.AP50,
                   "recall50_at_0.1": low.recall50, "recall50_at_0.3": high.recall50,
                   "slices": slices, "s_per_slice": model_s / max(1, slices), "wall_s": wall_s}
            report.setdefault(set_name, {})[model_name] = row
            print(f"{set_name:8} {model_name:15} {row['objects']:7d} {row['AP50'] or 0:6.3f} "
                  f"{row['recall50_at_0.1'] or 0:8.3f} {row['recall50_at_0.3'] or 0:8.3f} "
                  f"{slices:6d} {row['s_per_slice']:7.3f} {wall_s:7.1f}", flush=True)
    print("RESULT " + json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
