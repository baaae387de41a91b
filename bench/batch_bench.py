"""One batch run through the real scheduler: N images in one ``tiled_inference`` run (a
manifest, as ``s3_arrivals`` writes it) → trigger to stored, images per minute, and the same
images through the model alone in the same sitting.

SeaweedFS + Airflow (LocalExecutor) with ``make run``'s pool (4 slots); the images are the
burst bench's (256×192 kite crops by default, ``--size 4000x3000`` for 12 MP photos). The
model-only limit decodes every image and runs all their slices through one instance of the
model the runs use (the default, ``InferenceParams().model``, cut at its own slice size) in
calls of 16 (both cores busy), with nothing else: no S3, no Airflow, no merging. Prints the
per-task timeline and the ratio.

    python bench/batch_bench.py [--count 1000] [--size 256x192] [--pool-slots 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from burst_bench import DEFAULT_POOL_SLOTS, parse_size, photos
from dag_bench import _print_timeline
from stack_bench import BUCKET, bench_stack  # bench/ is on sys.path when run as a script

OVERLAP = 0.2  # the runs' default


def model_child(folder: str) -> None:
    """Every slice of every image through one model in calls of 16: ``RESULT {...}``."""
    import numpy as np

    from tilescope.models import load_model, model_slice_size
    from tilescope.params import InferenceParams
    from tilescope.readers import open_image
    from tilescope.slicing import plan_slices

    name = InferenceParams().model  # what the arrivals' runs use: both sides one model
    size = model_slice_size(name)

    views: list[np.ndarray] = []
    paths = sorted(Path(folder).glob("*.jpg"))
    for path in paths:
        reader, _ = open_image(str(path))
        pixels = reader.read_all()
        overlap = int(size * OVERLAP)
        plan = plan_slices(reader.width, reader.height, size, size, overlap, overlap)
        views.extend(pixels[s.y1:s.y2, s.x1:s.x2] for s in plan.slices())
    model = load_model(name, score_threshold=0.3)
    model.predict(views[:2])  # session warm-up, not timed
    started = time.perf_counter()
    for first in range(0, len(views), 16):
        model.predict(views[first:first + 16])
    print("RESULT " + json.dumps({"wall": time.perf_counter() - started,
                                  "images": len(paths), "slices": len(views)}))


def measure_model(images: list[bytes]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        for i, body in enumerate(images):
            (Path(tmp) / f"{i:05d}.jpg").write_bytes(body)
        proc = subprocess.run([sys.executable, __file__, "--model-child", tmp],
                              capture_output=True, text=True, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=parse_size, default=(256, 192), help="WxH of each image")
    parser.add_argument("--pool-slots", type=int, default=DEFAULT_POOL_SLOTS)
    parser.add_argument("--model-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model_child:
        model_child(args.model_child)
        return 0

    from tilescope.stack.provision import paged, trigger, wait_for_run

    images = photos(args.count, args.size)
    with tempfile.TemporaryDirectory() as tmp, bench_stack(
            Path(tmp), pool_slots=args.pool_slots, dags=("tiled_inference",)) as stack:
        keys = [f"incoming/batch/{i:05d}.jpg" for i in range(args.count)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda pair: stack.s3.put_object(Bucket=BUCKET, Key=pair[0],
                                                           Body=pair[1]),
                          zip(keys, images, strict=True)))
        manifest = {"images": [f"s3://{BUCKET}/{key}" for key in keys]}
        stack.s3.put_object(Bucket=BUCKET, Key="manifests/bench.json",
                            Body=json.dumps(manifest).encode())
        started = time.perf_counter()
        run = trigger(stack.api, "tiled_inference",
                      {"manifest": f"s3://{BUCKET}/manifests/bench.json"})
        state = wait_for_run(stack.api, "tiled_inference", run["dag_run_id"], timeout=7200)
        wall = time.perf_counter() - started
        path = f"/api/v2/dags/tiled_inference/dagRuns/{run['dag_run_id']}"
        tis = paged(stack.api, f"{path}/taskInstances", "task_instances")
        _print_timeline(stack.api.request("GET", path), tis)
    if state != "success":
        print(f"run ended {state}")
        return 1
    model = measure_model(images)
    rate, model_rate = 60 * args.count / wall, 60 * model["images"] / model["wall"]
    units = [t for t in tis if t["task_id"] == "analyze"]
    summary = {"images": args.count, "size": "x".join(map(str, args.size)),
               "slices": model["slices"], "pool_slots": args.pool_slots, "units": len(units),
               "trigger_to_stored_s": round(wall, 1), "images_per_minute": round(rate, 1),
               "model_only_s": round(model["wall"], 1),
               "model_only_images_per_minute": round(model_rate, 1),
               "share_of_model_rate": round(rate / model_rate, 3)}
    print(f"batch of {args.count} images of {summary['size']} ({model['slices']} slices, "
          f"{len(units)} units, pool {args.pool_slots}): trigger→stored {wall:.1f}s → "
          f"{rate:.0f} images/min | model only {model['wall']:.1f}s → {model_rate:.0f}/min | "
          f"{100 * rate / model_rate:.1f} % of the model's rate")
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
