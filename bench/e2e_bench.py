"""End-to-end: ``tilescope predict`` vs SAHI 0.12.8 ``get_sliced_prediction`` on one image.

Both sides use the same converted NanoDet ONNX model with the same pre/post-processing
(``NanoDetModel``), the same slices (416 px, 0.2 overlap) and the same postprocess
(GREEDYNMM / IOS / 0.5). Each side runs in its own subprocess so peak RSS is its own.
SAHI gets one session with 2 intra-op threads (its model runs slice by slice); tilescope
uses its default: 2 slices in parallel over one session with 1 thread each.

    python bench/e2e_bench.py [--size 8192] [--image PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SLICE, OVERLAP = 416, 0.2


def build_image(size: int, directory: Path) -> Path:
    from PIL import Image

    from tilescope.samples import build_mosaic

    path = directory / f"mosaic-{size}.jpg"
    Image.fromarray(build_mosaic(size)).save(path, quality=92)
    return path


def run_tilescope(image: str) -> dict:
    from tilescope.models import load_model
    from tilescope.params import InferenceParams
    from tilescope.pipeline import run_image
    from tilescope.readers import open_image

    params = InferenceParams(model="nanodet-coco", slice_size=SLICE, overlap=OVERLAP,
                             score_threshold=0.4)
    model = load_model("nanodet-coco", score_threshold=0.4)
    started = time.perf_counter()
    reader, info = open_image(image)
    result = run_image(reader, info, params, model)
    wall = time.perf_counter() - started
    boxes = result.detections
    return {"wall": wall, "model_seconds": result.seconds["model"],
            "slices": result.plan["slices"], "regions": result.plan["regions"],
            "boxes": boxes.boxes.tolist(), "categories": boxes.category_ids.tolist()}


def sahi_nanodet(score_threshold: float = 0.4) -> Any:
    """Our NanoDet behind SAHI's model interface (loaded): what SAHI runs in every
    comparison (this bench, ``cli_bench``)."""
    from sahi.models.base import DetectionModel as SahiModel
    from sahi.prediction import ObjectPrediction

    from tilescope.models.coco import COCO_NAMES
    from tilescope.models.nanodet import NanoDetModel

    class SahiNanoDet(SahiModel):
        """Our NanoDet (same ONNX, same pre/post-processing) behind SAHI's model interface."""

        def load_model(self) -> None:
            self.model = NanoDetModel(score_threshold=score_threshold, intra_op_threads=2,
                                      parallel_slices=1)
            self.category_mapping = {str(i): n for i, n in enumerate(COCO_NAMES)}

        def perform_inference(self, image: np.ndarray) -> None:
            self._original_predictions = self.model.predict([np.ascontiguousarray(image)])

        @property
        def num_categories(self) -> int:
            return len(COCO_NAMES)

        def _create_object_prediction_list_from_original_predictions(
                self, shift_amount_list=None, full_shape_list=None) -> None:
            shift_amount_list = shift_amount_list or [[0, 0]]
            out = []
            for dets, shift, shape in zip(self._original_predictions, shift_amount_list,
                                          full_shape_list or [None], strict=False):
                out.append([ObjectPrediction(bbox=box.tolist(), category_id=int(c),
                                             category_name=COCO_NAMES[int(c)],
                                             score=float(s), shift_amount=shift,
                                             full_shape=shape)
                            for box, s, c in zip(dets.boxes, dets.scores, dets.category_ids,
                                                 strict=True)])
            self._object_prediction_list_per_image = out

    return SahiNanoDet(confidence_threshold=score_threshold, load_at_init=True)


def run_sahi(image: str) -> dict:
    from sahi.predict import get_sliced_prediction

    model = sahi_nanodet()
    started = time.perf_counter()
    prediction = get_sliced_prediction(
        image, model, slice_height=SLICE, slice_width=SLICE, overlap_height_ratio=OVERLAP,
        overlap_width_ratio=OVERLAP, perform_standard_pred=False, postprocess_type="GREEDYNMM",
        postprocess_match_metric="IOS", postprocess_match_threshold=0.5, verbose=0)
    wall = time.perf_counter() - started
    preds = prediction.object_prediction_list
    return {"wall": wall, "model_seconds": prediction.durations_in_seconds.get("prediction"),
            "boxes": [p.bbox.to_xyxy() for p in preds],
            "categories": [p.category.id for p in preds]}


def run_model_only(image: str, slice_px: int = SLICE) -> dict:
    """The limit: the model alone over every slice (pixels already decoded and cut)."""
    from tilescope.models import load_model
    from tilescope.readers import open_image
    from tilescope.slicing import plan_slices

    reader, _ = open_image(image)
    pixels = reader.read_all()
    overlap = int(slice_px * OVERLAP)
    plan = plan_slices(reader.width, reader.height, slice_px, slice_px, overlap, overlap)
    views = [pixels[s.y1:s.y2, s.x1:s.x2] for s in plan.slices()]
    model = load_model("nanodet-coco", score_threshold=0.4)
    started = time.perf_counter()
    model.predict(views)
    return {"wall": time.perf_counter() - started, "slices": len(views)}


def agreement(a: dict, b: dict) -> float:
    """Share of ``a``'s boxes matched one-to-one by a same-class box of ``b`` with IoU ≥ 0.5."""
    if not a["boxes"]:
        return 1.0 if not b["boxes"] else 0.0
    boxes_b = np.array(b["boxes"], np.float64).reshape(-1, 4)
    cats_b = np.array(b["categories"])
    used = np.zeros(len(boxes_b), bool)
    matched = 0
    for box, cat in zip(a["boxes"], a["categories"], strict=True):
        ix = np.clip(np.minimum(box[2], boxes_b[:, 2]) - np.maximum(box[0], boxes_b[:, 0]), 0, None)
        iy = np.clip(np.minimum(box[3], boxes_b[:, 3]) - np.maximum(box[1], boxes_b[:, 1]), 0, None)
        inter = ix * iy
        union = ((box[2] - box[0]) * (box[3] - box[1]) + (boxes_b[:, 2] - boxes_b[:, 0])
                 * (boxes_b[:, 3] - boxes_b[:, 1]) - inter)
        iou = np.where((cats_b == cat) & ~used, inter / np.maximum(union, 1e-9), 0)
        if len(iou) and iou.max() >= 0.5:
            used[int(iou.argmax())] = True
            matched += 1
    return matched / len(a["boxes"])


def child(side: str, image: str, slice_px: int = SLICE) -> None:
    from tilescope.stack.procs import peak_rss_mb

    if side == "model":
        result = run_model_only(image, slice_px)
    else:  # the SAHI comparison is fixed at SLICE
        result = {"tilescope": run_tilescope, "sahi": run_sahi}[side](image)
    result["peak_rss_mb"] = peak_rss_mb()  # VmHWM, not the parent-inherited ru_maxrss
    print("RESULT " + json.dumps(result))


def measure(side: str, image: str, slice_px: int = SLICE) -> dict:
    """``side`` (tilescope, sahi or model) on ``image`` in its own process: its own peak RSS.
    Also what the DAG, memory and scale benchmarks compare against."""
    proc = subprocess.run([sys.executable, __file__, "--child", side, "--image", str(image),
                           "--slice", str(slice_px)], capture_output=True, text=True,
                          check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--image")
    parser.add_argument("--child", choices=["tilescope", "sahi", "model"])
    parser.add_argument("--slice", type=int, default=SLICE, help="slice side (model only)")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.image, args.slice)
        return
    with tempfile.TemporaryDirectory() as tmp:
        image = args.image or str(build_image(args.size, Path(tmp)))
        model = measure("model", image)
        ours = measure("tilescope", image)
        sahi = measure("sahi", image)
    rows = [("tilescope", ours), ("SAHI 0.12.8", sahi), ("model only", model)]
    print(f"\nend to end on {Path(image).name} ({ours['slices']} slices of {SLICE} px, "
          f"{ours['regions']} regions)")
    print(f"{'':14}{'wall s':>9}{'peak RSS MB':>13}{'detections':>12}")
    for name, r in rows:
        print(f"{name:14}{r['wall']:9.2f}{r['peak_rss_mb']:13.0f}"
              f"{len(r.get('boxes', [])) if 'boxes' in r else '-':>12}")
    summary = {
        "slices": ours["slices"], "tilescope_s": round(ours["wall"], 2),
        "sahi_s": round(sahi["wall"], 2), "model_only_s": round(model["wall"], 2),
        "wall_ratio_vs_sahi": round(ours["wall"] / sahi["wall"], 3),
        "wall_ratio_vs_model_only": round(ours["wall"] / model["wall"], 3),
        "peak_rss_mb": {"tilescope": round(ours["peak_rss_mb"]),
                        "sahi": round(sahi["peak_rss_mb"])},
        "detections": {"tilescope": len(ours["boxes"]), "sahi": len(sahi["boxes"])},
        "agreement": {"tilescope_in_sahi": round(agreement(ours, sahi), 3),
                      "sahi_in_tilescope": round(agreement(sahi, ours), 3)},
    }
    print(f"tilescope / SAHI wall: {summary['wall_ratio_vs_sahi']:.2f}×   "
          f"tilescope / model-only: {summary['wall_ratio_vs_model_only']:.2f}×   "
          f"agreement {summary['agreement']}")
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
