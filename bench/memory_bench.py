"""Peak memory of the DAG's heavy steps: preprocess and one analyze task as the image grows,
and one work unit of a batch run.

For each size, a mosaic of real photos is put in a local SeaweedFS S3 server (the demo's) as a
JPEG and as a tiled TIFF; ``tilescope.tasks.image.prepare`` and then
``tilescope.tasks.image.analyze`` of
the largest region run in **separate subprocesses** (as Airflow runs them), each reporting its
own peak RSS. An analyze task reads its region band by band from the staged (or original)
tiled TIFF, so its peak should stay flat while the image grows 16×; preprocess of a JPEG or
PNG decodes the image once, so its peak grows with the pixels (~3 bytes per pixel), while a
tiled TIFF input is only opened (header and tile-by-tile thumbnail).

Then, for each batch (``--units``: 300 small photos of 256×192, 30 photos of 4000×3000),
``tilescope.tasks.batch.prepare_batch`` plans it as the DAG's preprocess does (the model's
slice cost sizes the units) and ``analyze_unit`` runs its largest unit, each in its own
process: a unit's peak should not grow with the number of images it carries.

    python bench/memory_bench.py [--sizes 4096 8192 16384] [--units small photos]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUCKET = "membench"
#: the batches a unit is measured on: (count, width × height) of JPEG photos
UNIT_BATCHES = {"small": (300, (256, 192)), "photos": (30, (4000, 3000))}


def child(step: str, spec: dict) -> None:
    """Run one step in this fresh process and print its result with the peak RSS."""
    from tilescope.models.registry import load_model, model_slice_size
    from tilescope.params import InferenceParams
    from tilescope.stack.procs import peak_rss_mb
    from tilescope.stack.seaweed import S3Credentials, s3_client
    from tilescope.tasks.image import analyze, prepare

    client = s3_client(spec["endpoint"], S3Credentials(spec["access"], spec["secret"]))
    params = InferenceParams.from_dict({"model": "nanodet-coco"})
    started = time.perf_counter()
    if step in ("plan_batch", "unit"):
        result = batch_child(step, spec, params, client)
    elif step == "preprocess":
        regions, out = prepare(spec["uri"], params, client=client, run=spec["run"],
                               model_slice_size=model_slice_size("nanodet-coco"))
        result = {"regions": regions, "source_uri": out.source_uri,
                  "scratch_prefix": out.scratch_prefix}
    else:
        with load_model("nanodet-coco") as model:
            finding = analyze(spec["region"], spec["source_uri"], params, model, client=client,
                              scratch_prefix=spec["scratch_prefix"])
        result = {"seconds": finding["seconds"]}
    result["wall"] = time.perf_counter() - started
    result["peak_rss_mb"] = peak_rss_mb()  # VmHWM: ru_maxrss would include the parent's
    print("RESULT " + json.dumps(result))


def batch_child(step: str, spec: dict, params, client) -> dict:
    """A batch's preprocess (``prepare_batch``: its units) or one unit (``analyze_unit``)."""
    from tilescope.handoffs import BatchPrepared
    from tilescope.models.registry import load_model, model_slice_seconds, model_slice_size
    from tilescope.tasks.batch import analyze_unit, prepare_batch
    from tilescope.tasks.image import XCOM_BUDGET_BYTES

    if step == "plan_batch":
        units, prepared = prepare_batch([{"uri": uri} for uri in spec["uris"]], params,
                                        client=client, run=spec["run"],
                                        model_slice_size=model_slice_size("nanodet-coco"),
                                        slice_seconds=model_slice_seconds("nanodet-coco"))
        return {"units": units, "prepared": prepared.to_dict()}
    with load_model("nanodet-coco") as model:
        finding = analyze_unit(spec["unit"], BatchPrepared.from_dict(spec["prepared"]), params,
                               model, client=client, budget=XCOM_BUDGET_BYTES)
    return {"seconds": finding["seconds"], "bad": finding.get("bad")}


def run_child(step: str, spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", step, json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{step} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def upload_inputs(client, size: int) -> dict[str, str]:
    """The mosaic as a JPEG (q92) and as a zstd tiled TIFF (512-px tiles), built tile row by
    tile row so even 16384² never needs a second full copy in this process."""
    import tifffile
    from PIL import Image

    from tilescope.samples import build_mosaic

    pixels = build_mosaic(size)
    keys = {}
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=92)
    keys["jpeg"] = f"incoming/mosaic-{size}.jpg"
    client.put_object(Bucket=BUCKET, Key=keys["jpeg"], Body=buf.getvalue())
    del buf
    with tempfile.NamedTemporaryFile(suffix=".tif") as tmp:
        tifffile.imwrite(tmp.name, pixels, tile=(512, 512), photometric="rgb",
                         compression="zstd", compressionargs={"level": 1})
        keys["tiff"] = f"incoming/mosaic-{size}.tif"
        client.upload_file(tmp.name, BUCKET, keys["tiff"])
    del pixels
    return keys


def upload_batch(client, kind: str) -> list[str]:
    """The ``kind`` batch's photos under ``incoming/<kind>/`` (8 uploads at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    from burst_bench import photos  # bench/ is on sys.path when run as a script

    count, size = UNIT_BATCHES[kind]
    keys = [f"incoming/{kind}/photo-{i:04d}.jpg" for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda pair: client.put_object(Bucket=BUCKET, Key=pair[0], Body=pair[1]),
                      zip(keys, photos(count, size), strict=True)))
    return [f"s3://{BUCKET}/{key}" for key in keys]


def measure_unit(client, base: dict, kind: str) -> dict:
    """Plan the ``kind`` batch, then run its largest unit, each in a process of its own."""
    uris = upload_batch(client, kind)
    plan = run_child("plan_batch", {**base, "uris": uris, "run": f"unit-{kind}"})
    from tilescope.units import WorkUnit, is_work_unit

    units = [WorkUnit.from_dict(u) for u in plan["units"] if is_work_unit(u)]
    unit = max(units, key=lambda u: u.slice_count)
    done = run_child("unit", {**base, "unit": unit.to_dict(), "prepared": plan["prepared"]})
    count, (width, height) = UNIT_BATCHES[kind]
    row = {"batch": kind, "images": count, "size": f"{width}x{height}", "units": len(units),
           "unit_images": len(unit.sources), "unit_slices": unit.slice_count,
           "plan_rss_mb": round(plan["peak_rss_mb"]), "plan_s": round(plan["wall"], 1),
           "unit_rss_mb": round(done["peak_rss_mb"]), "unit_s": round(done["wall"], 1),
           "unit_model_s": round(done["seconds"].get("model", 0.0), 1)}
    print(f"{count} × {width}×{height} in {len(units)} units | preprocess "
          f"{row['plan_rss_mb']:5d} MB {row['plan_s']:5.1f}s | largest unit "
          f"({row['unit_images']} images, {row['unit_slices']} slices) "
          f"{row['unit_rss_mb']:5d} MB {row['unit_s']:5.1f}s", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[4096, 8192, 16384])
    parser.add_argument("--units", nargs="*", choices=sorted(UNIT_BATCHES),
                        default=["small", "photos"])
    parser.add_argument("--child", choices=["preprocess", "analyze", "plan_batch", "unit"])
    parser.add_argument("spec", nargs="?")
    args = parser.parse_args()
    if args.child:
        child(args.child, json.loads(args.spec))
        return 0

    from tilescope.stack.seaweed import SeaweedPorts, start_seaweed

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        seaweed = start_seaweed(Path(tmp) / "s3", SeaweedPorts.free(), memory_limit="1GiB")
        try:
            seaweed.wait_ready()
            seaweed.ensure_bucket(BUCKET)
            client = seaweed.client()
            creds = seaweed.credentials
            base = {"endpoint": seaweed.endpoint, "access": creds.access_key,
                    "secret": creds.secret_key}
            for size in args.sizes:
                keys = upload_inputs(client, size)
                for kind, key in keys.items():
                    spec = {**base, "uri": f"s3://{BUCKET}/{key}", "run": f"{kind}-{size}"}
                    prep = run_child("preprocess", spec)
                    region = max(prep["regions"], key=lambda r: r["slice_count"])
                    ana = run_child("analyze", {**base, "region": region,
                                                "source_uri": prep["source_uri"],
                                                "scratch_prefix": prep["scratch_prefix"]})
                    rows.append({"size": size, "input": kind, "regions": len(prep["regions"]),
                                 "region_slices": region["slice_count"],
                                 "preprocess_rss_mb": round(prep["peak_rss_mb"]),
                                 "preprocess_s": round(prep["wall"], 1),
                                 "analyze_rss_mb": round(ana["peak_rss_mb"]),
                                 "analyze_s": round(ana["wall"], 1)})
                    print(f"{size:>6}² {kind:5} {len(prep['regions']):3} regions "
                          f"(largest {region['slice_count']} slices) | preprocess "
                          f"{prep['peak_rss_mb']:6.0f} MB {prep['wall']:5.1f}s | analyze "
                          f"{ana['peak_rss_mb']:5.0f} MB {ana['wall']:5.1f}s", flush=True)
            unit_rows = [measure_unit(client, base, kind) for kind in args.units]
        finally:
            seaweed.stop()
    if rows:
        analyze_peaks = [r["analyze_rss_mb"] for r in rows]
        print(f"analyze peak RSS: {min(analyze_peaks)}–{max(analyze_peaks)} MB over "
              f"{args.sizes[0]}²…{args.sizes[-1]}² (target ≤ 300 MB, flat)")
    for row in unit_rows:
        print(f"unit of {row['unit_images']} × {row['size']}: peak RSS {row['unit_rss_mb']} MB "
              f"(target ≤ 300 MB)")
    print("RESULT " + json.dumps(rows + unit_rows))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
