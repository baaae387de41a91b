"""Scale: orchestration overhead at 9, 64, 400 and 1,000 regions, then a 50,000-slice run.

Both parts run the real pipeline: SeaweedFS and Airflow (LocalExecutor, the pool at
``--pool-slots``) from ``stack_bench.py``, ``tiled_inference`` triggered through the REST API,
NanoDet on CPU. Inputs are zstd tiled TIFFs made from repeated real photos, read in place
(preprocess opens only the header, regions fetch only their tiles).

* **Sweep**: one image of ``--sweep-side``² px in ``--slice``-px slices (1,600 slices by
  default) run with grids of 3×3, 8×8, 20×20 and 25×40 regions. For each: wall time from
  trigger to stored result, and the orchestration overhead share
  ``(wall − model only) / wall``, where *model only* is the model alone over every slice of the
  same image in one process (pixels decoded and cut beforehand) — the limit no pipeline beats.
* **Big run**: a ``--big-side``² image of about 50,000 slices with ``grid=auto`` (regions sized
  to stay under ``max_map_length``). Its wall time and overhead share use the sweep's
  measured per-slice model rate, and it reports how many boxes synthesize merged. While it
  runs, the Airflow UI's own endpoints (grid structure, the run's task summaries, the mapped
  task list) and the results viewer's live state are timed every ``--probe-every`` seconds:
  the UI must stay usable with hundreds of mapped tasks in flight.

    python bench/scale_bench.py [--regions 9 64 400 1000] [--big-side 28704] [--slice 160]
                                [--pool-slots 2] [--skip-big] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from e2e_bench import OVERLAP, measure  # bench/ is on sys.path when run as a script
from stack_bench import BUCKET, bench_stack

#: region count → grid (rows × cols); each needs at least that many slices along its sides
GRIDS = {9: "3x3", 64: "8x8", 400: "20x20", 1000: "25x40"}


def side_for(slices_per_side: int, slice_px: int) -> int:
    """The image side that holds exactly this many overlapping slices along it."""
    return (slices_per_side - 1) * (slice_px - int(slice_px * OVERLAP)) + slice_px


def write_tiled_mosaic(path: Path, side: int, tile_px: int = 512) -> None:
    """A ``side``² zstd tiled TIFF of real photos, written tile by tile from a repeated
    4096² mosaic: a gigapixel input without a gigapixel array in this process."""
    import tifffile

    from tilescope.samples import build_mosaic

    base = build_mosaic(4096)

    def tiles():
        for y in range(0, side, tile_px):
            for x in range(0, side, tile_px):
                ys = (np.arange(y, y + tile_px) % base.shape[0])
                xs = (np.arange(x, x + tile_px) % base.shape[1])
                yield base[np.ix_(ys, xs)]

    tifffile.imwrite(path, tiles(), shape=(side, side, 3), dtype=np.uint8,
                     tile=(tile_px, tile_px), photometric="rgb", compression="zstd",
                     compressionargs={"level": 1}, maxworkers=2)


class Probe:
    """Times the Airflow UI's grid endpoints and the viewer's live state on a thread."""

    def __init__(self, base_url: str, token: str, run_id: str, every: float,
                 regions: int) -> None:
        from urllib.parse import quote

        run = quote(run_id, safe="")
        self.paths = {
            "grid structure": "/ui/grid/structure/tiled_inference",
            "grid runs": "/ui/grid/runs/tiled_inference?limit=10",
            "grid task summaries": f"/ui/grid/ti_summaries/tiled_inference?run_ids={run}",
            "mapped task list (50)": f"/api/v2/dags/tiled_inference/dagRuns/{run}/"
                                     f"taskInstances/analyze/listMapped?limit=50",
            "viewer live states": f"/tilescope/api/dags/tiled_inference/runs/{run}/states"
                                  f"?regions={regions}",
        }
        self.base_url, self.token, self.every = base_url.rstrip("/"), token, every
        self.samples: dict[str, list[float]] = {name: [] for name in self.paths}
        self.errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _get(self, path: str) -> float:
        request = urllib.request.Request(self.base_url + path,
                                         headers={"Authorization": f"Bearer {self.token}"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            kind = response.headers.get("Content-Type", "")
        if "json" not in kind:  # the UI's HTML fallback answers unknown paths with 200
            raise ValueError(f"{path} answered {kind!r}, not JSON")
        return time.perf_counter() - started

    def sample_once(self) -> None:
        for name, path in self.paths.items():
            try:
                self.samples[name].append(self._get(path))
            except Exception as exc:  # recorded and printed: a broken endpoint is a finding
                self.errors[name] = str(exc)[:200]

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample_once()

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, values in self.samples.items():
            if values:
                out[name] = {"n": len(values), "median_ms": round(statistics.median(values) * 1e3),
                             "max_ms": round(max(values) * 1e3)}
            if name in self.errors:
                out.setdefault(name, {})["error"] = self.errors[name]
        return out


def run_once(stack: Any, uri: str, conf: dict, probe_every: float | None = None,
             regions: int = 0) -> dict[str, Any]:
    """Trigger one ``tiled_inference`` run and wait; wall time, task counts, task timings."""
    from tilescope.stack.provision import paged, trigger, wait_for_run

    started = time.perf_counter()
    run = trigger(stack.api, "tiled_inference", {"image_uri": uri, **conf})
    run_id = run["dag_run_id"]
    probe = None
    if probe_every:
        probe = Probe(stack.airflow.base_url, stack.api.token, run_id, probe_every, regions)
        probe.__enter__()
    try:
        state = wait_for_run(stack.api, "tiled_inference", run_id, timeout=4 * 3600)
    finally:
        if probe:
            probe.__exit__()
    wall = time.perf_counter() - started
    if probe:
        probe.sample_once()  # and once more on the finished run
    tis = paged(stack.api, f"/api/v2/dags/tiled_inference/dagRuns/{run_id}/taskInstances",
                "task_instances")
    durations: dict[str, list[float]] = {}
    for ti in tis:
        if ti.get("duration") is not None:
            durations.setdefault(ti["task_id"], []).append(float(ti["duration"]))
    out = {"run_id": run_id, "state": state, "wall_s": round(wall, 1),
           "regions": len(durations.get("analyze", [])),
           "task_seconds": {k: {"n": len(v), "sum": round(sum(v), 1),
                                "median": round(statistics.median(v), 2)}
                            for k, v in durations.items()}}
    if probe:
        out["ui_ms"] = probe.summary()
    return out


def stored_result(stack: Any, image_key: str) -> dict[str, Any]:
    """The newest ``result.json`` of the image (found by listing ``results/``)."""
    newest = None
    for page in stack.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                   Prefix="results/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("result.json") and (
                    newest is None or obj["LastModified"] > newest["LastModified"]):
                newest = obj
    assert newest, "no result.json stored"
    doc = json.loads(stack.s3.get_object(Bucket=BUCKET, Key=newest["Key"])["Body"].read())
    assert doc["image"]["uri"].endswith(image_key), (doc["image"]["uri"], image_key)
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regions", type=int, nargs="*", default=[9, 64, 400, 1000],
                        choices=sorted(GRIDS))
    parser.add_argument("--slice", type=int, default=160, help="slice side in px")
    parser.add_argument("--sweep-slices", type=int, default=40, help="slices per side")
    parser.add_argument("--big-side", type=int, default=side_for(224, 160),
                        help="side of the big image (default: 224² = 50,176 slices of 160 px)")
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--pool-slots", type=int, default=2)
    parser.add_argument("--probe-every", type=float, default=20.0)
    parser.add_argument("--score-threshold", type=float, default=0.3,
                        help="the run's score threshold (lower: more boxes to merge)")
    parser.add_argument("--json", help="write every measurement to this file")
    args = parser.parse_args()

    from tilescope.slicing import plan_slices

    report: dict[str, Any] = {"slice": args.slice, "pool_slots": args.pool_slots,
                              "score_threshold": args.score_threshold}
    conf = {"model": "nanodet-coco", "slice_size": str(args.slice), "overlap": OVERLAP,
            "score_threshold": args.score_threshold}  # slice_size: the Params form's string
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sweep_side = side_for(args.sweep_slices, args.slice)
        sweep_image = tmp_path / f"sweep-{sweep_side}.tif"
        write_tiled_mosaic(sweep_image, sweep_side)
        limit = measure("model", sweep_image, args.slice)
        per_slice = limit["wall"] / limit["slices"]
        report["sweep"] = {"side": sweep_side, "slices": limit["slices"],
                           "model_only_s": round(limit["wall"], 1),
                           "model_ms_per_slice": round(per_slice * 1e3, 2), "runs": []}
        print(f"sweep image {sweep_side}² px: {limit['slices']} slices of {args.slice} px; "
              f"model only {limit['wall']:.1f}s ({per_slice * 1e3:.1f} ms/slice)", flush=True)
        big_image = None
        if not args.skip_big:
            big_image = tmp_path / f"big-{args.big_side}.tif"
            started = time.perf_counter()
            write_tiled_mosaic(big_image, args.big_side)
            print(f"big image {args.big_side}² px written in {time.perf_counter() - started:.0f}s"
                  f" ({big_image.stat().st_size / 1e9:.2f} GB)", flush=True)
        # No budget to raise: a tiled TIFF is read region by region, so TILESCOPE_MAX_PIXELS
        # (a decode guard) does not apply, and 50k slices fit TILESCOPE_MAX_SLICES (100k).
        with bench_stack(tmp_path / "stack", pool_slots=args.pool_slots,
                         dags=("tiled_inference",)) as stack:
            key = f"incoming/{sweep_image.name}"
            stack.s3.upload_file(str(sweep_image), BUCKET, key)
            print(f"{'regions':>8}{'wall s':>9}{'model only s':>14}{'overhead':>10}"
                  f"{'analyze median s':>18}", flush=True)
            for regions in args.regions:
                row = run_once(stack, f"s3://{BUCKET}/{key}", {**conf, "grid": GRIDS[regions]})
                if row["state"] != "success":
                    print(f"{regions} regions: run ended {row['state']}")
                    return 1
                row["overhead_share"] = round((row["wall_s"] - limit["wall"]) / row["wall_s"], 3)
                report["sweep"]["runs"].append(row)
                print(f"{row['regions']:>8}{row['wall_s']:>9.1f}{limit['wall']:>14.1f}"
                      f"{row['overhead_share']:>10.0%}"
                      f"{row['task_seconds']['analyze']['median']:>18.2f}", flush=True)
            if big_image is not None:
                key = f"incoming/{big_image.name}"
                started = time.perf_counter()
                stack.s3.upload_file(str(big_image), BUCKET, key)
                print(f"big image uploaded in {time.perf_counter() - started:.0f}s", flush=True)
                expected = plan_slices(args.big_side, args.big_side, args.slice, args.slice,
                                       int(args.slice * OVERLAP), int(args.slice * OVERLAP))
                row = run_once(stack, f"s3://{BUCKET}/{key}", {**conf, "grid": "auto"},
                               probe_every=args.probe_every, regions=len(expected.regions))
                if row["state"] != "success":
                    print(f"big run ended {row['state']}")
                    return 1
                doc = stored_result(stack, key)
                slices = int(doc["plan"]["slices"])
                model_est = slices * per_slice
                row.update({
                    "side": args.big_side, "slices": slices,
                    "model_only_s_from_sweep_rate": round(model_est, 1),
                    "overhead_share": round((row["wall_s"] - model_est) / row["wall_s"], 3),
                    "boxes_before_merge": sum(r["detections_count"] for r in doc["regions"]),
                    "boxes_after_merge": len(doc["detections"]),
                    "result_seconds": doc["seconds"]})
                report["big"] = row
                print(f"\nbig run {args.big_side}² px, {slices:,} slices, {row['regions']} "
                      f"regions: wall {row['wall_s']:.0f}s, model only ≈ {model_est:.0f}s "
                      f"(sweep rate), overhead {row['overhead_share']:.0%}; boxes "
                      f"{row['boxes_before_merge']:,} → {row['boxes_after_merge']:,} merged",
                      flush=True)
                for task_id, stats in row["task_seconds"].items():
                    print(f"  {task_id:12} n={stats['n']:<5} sum {stats['sum']:>8.1f}s  "
                          f"median {stats['median']:.2f}s")
                print("  Airflow UI while it ran (median / max ms):")
                for name, stats in row["ui_ms"].items():
                    print(f"    {name:24} {stats.get('median_ms', '-')!s:>6} / "
                          f"{stats.get('max_ms', '-')!s:>6}  n={stats.get('n', 0)} "
                          f"{stats.get('error', '')}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print("RESULT " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
