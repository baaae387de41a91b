"""The DAG through the real scheduler: wall time from trigger to stored result, vs SAHI.

Starts SeaweedFS and Airflow (LocalExecutor) in a temp dir (see ``stack_bench.py``),
uploads a mosaic of real photos, triggers ``tiled_inference`` and waits for the run.
Prints wall, the orchestration overhead share (wall − model-only) / wall, and the ratio
against SAHI on the same image and model (measured by ``e2e_bench.py``).

    python bench/dag_bench.py [--size 4096] [--pool-slots 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from e2e_bench import measure  # bench/ is on sys.path when run as a script
from stack_bench import BUCKET, bench_stack

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--pool-slots", type=int, default=2)
    parser.add_argument("--grid", default="auto")
    parser.add_argument("--conf", default="{}", help="more run conf as JSON, e.g. "
                        "'{\"model_options\": {\"parallel_slices\": 1}}'")
    args = parser.parse_args()

    from PIL import Image

    from tilescope.samples import build_mosaic
    from tilescope.stack.provision import paged, trigger, wait_for_run

    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / f"mosaic-{args.size}.jpg"
        Image.fromarray(build_mosaic(args.size)).save(image, quality=92)
        with bench_stack(Path(tmp) / "stack", pool_slots=args.pool_slots,
                         dags=("tiled_inference",)) as stack:
            stack.s3.upload_file(str(image), BUCKET, f"incoming/{image.name}")
            started = time.perf_counter()
            run = trigger(stack.api, "tiled_inference", {
                "image_uri": f"s3://{BUCKET}/incoming/{image.name}", "grid": args.grid,
                "model": "nanodet-coco",  # as the SAHI and model-only sides
                **json.loads(args.conf)})
            state = wait_for_run(stack.api, "tiled_inference", run["dag_run_id"],
                                 timeout=3600)
            wall = time.perf_counter() - started
            tis = paged(stack.api, f"/api/v2/dags/tiled_inference/dagRuns/"
                        f"{run['dag_run_id']}/taskInstances", "task_instances")
            dag_run = stack.api.request(
                "GET", f"/api/v2/dags/tiled_inference/dagRuns/{run['dag_run_id']}")
            regions = sum(1 for t in tis if t["task_id"] == "analyze")
            _print_timeline(dag_run, tis)
            _print_region_seconds(stack.s3)
        if state != "success":
            print(f"run ended {state}")
            return 1
        model = measure("model", image)
        sahi = measure("sahi", image)
    overhead = (wall - model["wall"]) / wall
    summary = {"size": args.size, "regions": regions, "slices": model["slices"],
               "pool_slots": args.pool_slots, "dag_wall_s": round(wall, 2),
               "sahi_s": round(sahi["wall"], 2), "model_only_s": round(model["wall"], 2),
               "ratio_vs_sahi": round(wall / sahi["wall"], 3),
               "overhead_share": round(overhead, 3)}
    print(f"DAG {args.size}² ({model['slices']} slices, {regions} regions, pool "
          f"{args.pool_slots}): trigger→stored {wall:.1f}s | SAHI {sahi['wall']:.1f}s | "
          f"model only {model['wall']:.1f}s | DAG/SAHI {summary['ratio_vs_sahi']:.2f}× | "
          f"overhead {overhead:.0%}")
    print("RESULT " + json.dumps(summary))
    return 0


def _print_region_seconds(s3: object) -> None:
    """Where the analyze tasks' time went, summed over the stored result's regions: reading
    pixels (waits for bands), the model, and the rest (slicing, merging)."""
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="results/").get("Contents", [])
    key = next((o["Key"] for o in listed if o["Key"].endswith("result.json")), None)
    if key is None:
        return
    doc = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    sums: dict[str, float] = {}
    for region in doc.get("regions") or []:
        for name, value in (region.get("seconds") or {}).items():
            sums[name] = sums.get(name, 0.0) + float(value)
    slices = sum(int(r.get("slice_count") or 0) for r in doc.get("regions") or [])
    print("region seconds (sum): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(sums.items()))
          + (f"; model {1000 * sums.get('model', 0) / slices:.1f} ms a slice" if slices else ""))


def _print_timeline(dag_run: dict, tis: list[dict]) -> None:
    """When each task was queued, started and ended, relative to the run's start."""
    from datetime import datetime

    origin = datetime.fromisoformat(dag_run["start_date"])

    def at(value: str | None) -> float:
        return (datetime.fromisoformat(value) - origin).total_seconds() if value else float("nan")

    print(f"{'task':22}{'queued':>8}{'start':>8}{'end':>8}{'ran s':>8}")
    for ti in sorted(tis, key=lambda t: t.get("start_date") or ""):
        index = ti.get("map_index", -1)
        name = f"{ti['task_id']}[{index}]" if index is not None and index >= 0 else ti["task_id"]
        print(f"{name:22}{at(ti.get('queued_when')):8.1f}{at(ti.get('start_date')):8.1f}"
              f"{at(ti.get('end_date')):8.1f}"
              f"{at(ti.get('end_date')) - at(ti.get('start_date')):8.1f}")
    print(f"{'run':22}{'':8}{0.0:8.1f}{at(dag_run.get('end_date')):8.1f}")


if __name__ == "__main__":
    sys.exit(main())
