"""A burst of arrivals: N small images uploaded at once under ``incoming/`` → time until every
result is stored, images per minute, and the longest wait in the backlog.

Runs the real path: SeaweedFS + Airflow, ``s3_arrivals`` ticks back to back (as its
schedule would, minus the wait for the next minute), ``tiled_inference`` per image.

    python bench/burst_bench.py [--count 1000] [--pool-slots 2] [--per-tick 50]
"""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from stack_bench import BUCKET, bench_stack  # bench/ is on sys.path when run as a script


def small_images(count: int) -> list[bytes]:
    from PIL import Image

    from tilescope.samples import sample_path

    base = Image.open(sample_path("kite")).convert("RGB")
    out = []
    for i in range(count):
        x, y = (i * 37) % 1100, (i * 53) % 700
        buf = io.BytesIO()
        base.crop((x, y, x + 256, y + 192)).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--pool-slots", type=int, default=2)
    parser.add_argument("--per-tick", type=int, default=50)
    args = parser.parse_args()

    from tilescope.stack.provision import list_runs, trigger, wait_for_run

    env = {"TILESCOPE_ARRIVALS_SCHEDULE": "none", "TILESCOPE_ARRIVALS_WAIT_SECONDS": "20",
           "TILESCOPE_ARRIVALS_POKE_SECONDS": "2", "TILESCOPE_MAX_ACTIVE_RUNS": "16",
           "TILESCOPE_ARRIVALS_PER_TICK": str(args.per_tick),
           "AIRFLOW__CORE__PARALLELISM": "8"}
    images = small_images(args.count)
    with tempfile.TemporaryDirectory() as tmp, bench_stack(
            Path(tmp), pool_slots=args.pool_slots, dags=("tiled_inference", "s3_arrivals"),
            extra_env=env) as stack:
        uploaded_at = datetime.now(UTC)
        started = time.perf_counter()
        for i, body in enumerate(images):
            stack.s3.put_object(Bucket=BUCKET, Key=f"incoming/burst/{i:05d}.jpg", Body=body)
        upload_s = time.perf_counter() - started
        ticks = 0
        while True:
            with sqlite3.connect(stack.catalog) as conn:
                try:
                    done = conn.execute("SELECT COUNT(*) FROM tilescope_results").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
            if done >= args.count:
                break
            listing = stack.s3.list_objects_v2(Bucket=BUCKET, Prefix="incoming/", MaxKeys=1)
            if listing.get("KeyCount", 0):
                run_id = trigger(stack.api, "s3_arrivals", {})["dag_run_id"]
                wait_for_run(stack.api, "s3_arrivals", run_id, timeout=3600)
                ticks += 1
            else:
                time.sleep(2)
        wall = time.perf_counter() - started
        waits = [(datetime.fromisoformat(r["start_date"]) - uploaded_at).total_seconds()
                 for r in list_runs(stack.api, "tiled_inference") if r.get("start_date")]
        metadata = stack.metadata
    summary = {"images": args.count, "pool_slots": args.pool_slots, "per_tick": args.per_tick,
               "upload_s": round(upload_s, 1), "all_stored_s": round(wall, 1),
               "images_per_minute": round(60 * args.count / wall, 1),
               "max_backlog_s": round(max(waits), 1), "arrival_ticks": ticks,
               "metadata_db": metadata}
    print(f"burst of {args.count} images (pool {args.pool_slots} slots, {args.per_tick} per "
          f"tick): all stored after {wall:.0f}s → {summary['images_per_minute']} images/min, "
          f"longest backlog wait {summary['max_backlog_s']:.0f}s, {ticks} arrival ticks")
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
