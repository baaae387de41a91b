"""A burst of arrivals: N images uploaded at once under ``incoming/`` → time until every result
is stored, images per minute, the longest wait in the backlog — and the model alone on the
same images, for the ratio.

Runs the real path with ``make run``'s settings: SeaweedFS + Airflow, the `tilescope` pool at
its default 4 slots (``TILESCOPE_POOL_SLOTS``), every ``TILESCOPE_ARRIVALS_*`` setting at its
default (claims per tick, images and slices per batch run); only the schedule is off, because
``s3_arrivals`` ticks are triggered here: the first right after the upload (its sensor would
see the burst within a poke), then at most one a minute, as its schedule runs them, each
starting one ``tiled_inference`` run per batch it claims.

The model-only rate runs the same images in one process: decoded and cut into the same
slices (the default model's size) beforehand, then every slice through one instance of the
model the runs use in calls of 16 (both cores busy), only ``model.predict`` timed
(``batch_bench.measure_model``).

    python bench/burst_bench.py [--count 1000] [--size 256x192]
    python bench/burst_bench.py --count 100 --size 4000x3000     # ~12 MP photos
    python bench/burst_bench.py --count 100 --size 4000x3000 --reuse

``--reuse``: once the fresh burst is stored, the same bytes are uploaded again under new keys
(``incoming/again/``) and timed the same way until every one has its reused catalog row
(result reuse: nothing analysed again); the ratio of the two walls is printed.
"""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from stack_bench import BUCKET, bench_stack  # bench/ is on sys.path when run as a script

DEFAULT_POOL_SLOTS = 4  # TILESCOPE_POOL_SLOTS' default (include/tilescope/stack/settings.py)
TICK_SECONDS = 60  # s3_arrivals' schedule: a tick a minute


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--size wants WxH (e.g. 4000x3000), got {text!r}") from None
    if min(size) < 16:
        raise argparse.ArgumentTypeError(f"--size {text}: at least 16 px a side")
    return size


def photos(count: int, size: tuple[int, int]) -> list[bytes]:
    """``count`` distinct JPEG photos of ``size``: crops of the kite photo at shifting
    offsets, scaled to the size when it is larger than the crop allows."""
    from PIL import Image

    from tilescope.samples import sample_path

    base = Image.open(sample_path("kite")).convert("RGB")
    width, height = size
    crop_w, crop_h = min(width, base.width // 2), min(height, base.height // 2)
    out = []
    for i in range(count):
        x = (i * 37) % (base.width - crop_w + 1)
        y = (i * 53) % (base.height - crop_h + 1)
        picture = base.crop((x, y, x + crop_w, y + crop_h))
        if picture.size != size:
            picture = picture.resize(size, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        picture.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def stored_rows(catalog: Path, reused: bool) -> int:
    """Computed (or reused) catalog rows so far (0 before the catalog exists)."""
    where = "reused_from IS NOT NULL" if reused else "reused_from IS NULL"
    with sqlite3.connect(catalog) as conn:
        try:
            return int(conn.execute(
                f"SELECT COUNT(*) FROM tilescope_results WHERE {where}").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def run_burst(stack, images: list[bytes], prefix: str, *, reused: bool = False
              ) -> tuple[datetime, float, float, int]:
    """Upload ``images`` under ``incoming/<prefix>/`` at once and tick s3_arrivals as its
    schedule would until each has its catalog row. Returns (uploaded at, upload s, wall s,
    ticks)."""
    from tilescope.stack.provision import trigger, wait_for_run

    uploaded_at = datetime.now(UTC)
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as uploads:  # as `aws s3 cp --recursive` would
        list(uploads.map(lambda pair: stack.s3.put_object(
            Bucket=BUCKET, Key=f"incoming/{prefix}/{pair[0]:05d}.jpg", Body=pair[1]),
            enumerate(images)))
    upload_s = time.perf_counter() - started
    ticks, next_tick = 0, 0.0
    while stored_rows(stack.catalog, reused) < len(images):
        listing = stack.s3.list_objects_v2(Bucket=BUCKET, Prefix="incoming/", MaxKeys=1)
        if listing.get("KeyCount", 0) and time.perf_counter() >= next_tick:
            # at most one tick a minute, as s3_arrivals' schedule runs them
            next_tick = time.perf_counter() + TICK_SECONDS
            run_id = trigger(stack.api, "s3_arrivals", {})["dag_run_id"]
            wait_for_run(stack.api, "s3_arrivals", run_id, timeout=3600)
            ticks += 1
        else:
            time.sleep(1)
    return uploaded_at, upload_s, time.perf_counter() - started, ticks


def finish_runs(stack) -> float:
    """Seconds until every ``tiled_inference`` run has ended (its last tasks — finalize, and
    evaluate when it runs — come after the catalog rows ``run_burst`` waits for)."""
    from tilescope.stack.provision import list_runs, wait_for_run

    started = time.perf_counter()
    for run in list_runs(stack.api, "tiled_inference"):
        wait_for_run(stack.api, "tiled_inference", run["dag_run_id"], timeout=3600)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=parse_size, default=(256, 192), help="WxH of each image")
    parser.add_argument("--pool-slots", type=int, default=DEFAULT_POOL_SLOTS)
    parser.add_argument("--skip-model-only", action="store_true")
    parser.add_argument("--reuse", action="store_true",
                        help="then the same bytes again under new keys: reuse's speed-up")
    parser.add_argument("--unit-seconds", type=float, default=None,
                        help="TILESCOPE_UNIT_SECONDS for the run (default: the setting's)")
    args = parser.parse_args()

    from dag_bench import _print_timeline

    from tilescope.stack.provision import list_runs, paged

    env = {"TILESCOPE_ARRIVALS_SCHEDULE": "none"}  # ticks are triggered back to back below
    if args.unit_seconds is not None:
        env["TILESCOPE_UNIT_SECONDS"] = str(args.unit_seconds)
    images = photos(args.count, args.size)
    with tempfile.TemporaryDirectory() as tmp, bench_stack(
            Path(tmp), pool_slots=args.pool_slots, dags=("tiled_inference", "s3_arrivals"),
            extra_env=env) as stack:
        uploaded_at, upload_s, wall, ticks = run_burst(stack, images, "burst")
        runs_done = wall + finish_runs(stack)
        reuse = None
        if args.reuse:  # the same bytes again under new keys, once the first burst is done
            reuse = run_burst(stack, images, "again", reused=True)
        for tick in [r for r in list_runs(stack.api, "s3_arrivals") if r.get("start_date")][:1]:
            path = f"/api/v2/dags/s3_arrivals/dagRuns/{tick['dag_run_id']}"  # the first tick
            _print_timeline(stack.api.request("GET", path),
                            paged(stack.api, f"{path}/taskInstances", "task_instances"))
        runs = [r for r in list_runs(stack.api, "tiled_inference") if r.get("start_date")
                 and (reuse is None  # the fresh burst's runs only
                      or datetime.fromisoformat(r["start_date"]) < reuse[0])]
        evaluate = []  # each run's evaluate instance: did it start a worker?
        for number, run in enumerate(runs):
            path = f"/api/v2/dags/tiled_inference/dagRuns/{run['dag_run_id']}"
            tis = paged(stack.api, f"{path}/taskInstances", "task_instances")
            evaluate += [{"state": t["state"], "try_number": t["try_number"],
                          "started": t.get("start_date") is not None}
                         for t in tis if t["task_id"] == "evaluate"]
            if number < 3:  # where a batch run's time went
                _print_timeline(stack.api.request("GET", path), tis)
        waits = [(datetime.fromisoformat(r["start_date"]) - uploaded_at).total_seconds()
                 for r in runs]
        metadata = stack.metadata
    rate = 60 * args.count / wall
    summary = {"images": args.count, "size": "x".join(map(str, args.size)),
               "pool_slots": args.pool_slots, "upload_s": round(upload_s, 1),
               "all_stored_s": round(wall, 1), "images_per_minute": round(rate, 1),
               "max_backlog_s": round(max(waits), 1), "arrival_ticks": ticks,
               "all_runs_done_s": round(runs_done, 1),
               "pipeline_runs": len(runs), "evaluate": evaluate, "metadata_db": metadata}
    print(f"burst of {args.count} images of {summary['size']} (pool {args.pool_slots} slots): "
          f"all stored after {wall:.0f}s → {summary['images_per_minute']} images/min, "
          f"longest wait for a run {summary['max_backlog_s']:.0f}s, {ticks} arrival ticks, "
          f"{len(runs)} tiled_inference runs, all ended after {runs_done:.0f}s")
    if not args.skip_model_only:
        from batch_bench import measure_model  # one model-only limit for both benches

        model = measure_model(images)
        model_rate = 60 * model["images"] / model["wall"]
        summary.update(model_only_s=round(model["wall"], 1),
                       model_only_images_per_minute=round(model_rate, 1),
                       slices=model["slices"],
                       share_of_model_rate=round(rate / model_rate, 3))
        print(f"model only on the same images: {model['wall']:.1f}s for {model['slices']} "
              f"slices → {model_rate:.0f} images/min; the burst ran at "
              f"{100 * rate / model_rate:.1f} % of the model's rate")
    if reuse is not None:
        _, _, reuse_wall, reuse_ticks = reuse
        summary.update(reuse_all_stored_s=round(reuse_wall, 1), reuse_ticks=reuse_ticks,
                       reuse_speedup=round(wall / reuse_wall, 1))
        print(f"the same {args.count} images again under new keys (results reused): all "
              f"recorded after {reuse_wall:.0f}s, {reuse_ticks} arrival ticks → "
              f"{wall / reuse_wall:.1f}× faster than the fresh burst")
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
