"""Many small images in one process: ``tilescope predict DIR`` vs a SAHI 0.12.8 loop vs the
model alone, in images per minute.

N small JPEGs (256×192 crops of the kite sample, as ``burst_bench`` uploads) in one folder:

* tilescope: ``python -m tilescope.cli predict DIR --slice 416`` (the work units the DAG
  uses, one progress bar, one result per image; ``--out-dir`` with ``--write``);
* SAHI: one process, the same NanoDet behind SAHI's model interface
  (``e2e_bench.sahi_nanodet``), ``get_sliced_prediction`` per file (416 px, overlap 0.2,
  GREEDYNMM / IOS / 0.5, no standard prediction), as ``sahi predict --source DIR`` does;
* model only: every image decoded first, then the model over them all (the limit).

Each side runs in its own subprocess. Images per minute count the work inside the process
(model load included, interpreter start and imports not); the process wall is printed too.

    python bench/cli_bench.py [--count 1000] [--write]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLICE, OVERLAP, SCORE = 416, 0.2, 0.4


def small_photos(count: int) -> list[bytes]:
    """``burst_bench``'s 256×192 kite crops (bench/ is on sys.path when run as a script)."""
    try:
        from burst_bench import photos
    except ImportError:  # before burst_bench took a --size
        from burst_bench import small_images

        return small_images(count)
    return photos(count, (256, 192))


def write_images(count: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, data in enumerate(small_photos(count)):
        path = folder / f"img{number:05d}.jpg"
        path.write_bytes(data)
        paths.append(path)
    return paths


def files(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).glob("*.jpg"))


def run_sahi(folder: str) -> dict:
    from e2e_bench import sahi_nanodet
    from sahi.predict import get_sliced_prediction

    paths = files(folder)
    started = time.perf_counter()
    model = sahi_nanodet(SCORE)
    detections = 0
    for path in paths:
        prediction = get_sliced_prediction(
            path, model, slice_height=SLICE, slice_width=SLICE, overlap_height_ratio=OVERLAP,
            overlap_width_ratio=OVERLAP, perform_standard_pred=False,
            postprocess_type="GREEDYNMM", postprocess_match_metric="IOS",
            postprocess_match_threshold=0.5, verbose=0)
        detections += len(prediction.object_prediction_list)
    return {"images": len(paths), "seconds": time.perf_counter() - started,
            "detections": detections}


def run_model_only(folder: str) -> dict:
    import numpy as np

    from tilescope.models import load_model
    from tilescope.readers import open_image

    views = []
    for path in files(folder):
        reader, _ = open_image(path)
        with reader:
            views.append(np.ascontiguousarray(reader.read_all()))
    model = load_model("nanodet-coco", score_threshold=SCORE)
    started = time.perf_counter()
    found = model.predict(views)
    return {"images": len(views), "seconds": time.perf_counter() - started,
            "detections": sum(len(d) for d in found)}


def run_tilescope(folder: str, out_dir: str | None) -> dict:
    command = [sys.executable, "-m", "tilescope.cli", "predict", folder, "--model", "nanodet-coco",
               "--slice", str(SLICE),
               "--overlap", str(OVERLAP), "--score-threshold", str(SCORE)]
    if out_dir:
        command += ["--out-dir", out_dir]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"tilescope predict failed ({proc.returncode}): {proc.stderr[-2000:]}")
    lines = proc.stdout.strip().splitlines()
    # "N images, F failed, S slices, X.XXs (Y images/min)": the run's own clock
    match = re.match(r"(\d+) images, (\d+) failed, (\d+) slices, ([\d.]+)s", lines[-1])
    if not match:
        raise SystemExit(f"unexpected summary line: {lines[-1]!r}")
    detections = sum(int(m.group(1)) for line in lines[:-1]
                     if (m := re.search(r": (\d+) detections", line)))
    return {"images": int(match.group(1)), "failed": int(match.group(2)),
            "slices": int(match.group(3)), "seconds": float(match.group(4)),
            "detections": detections}


def child(side: str, folder: str) -> None:
    result = {"sahi": run_sahi, "model": run_model_only}[side](folder)
    print("RESULT " + json.dumps(result))


def measure(side: str, folder: str, out_dir: str | None = None) -> dict:
    """One side in its own process (tilescope: the CLI itself)."""
    started = time.perf_counter()
    if side == "tilescope":
        result = run_tilescope(folder, out_dir)
    else:
        proc = subprocess.run([sys.executable, __file__, "--child", side, "--folder", folder],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{side} failed: {proc.stderr[-3000:]}")
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        result = json.loads(line[len("RESULT "):])
    result["process_wall"] = time.perf_counter() - started
    result["images_per_minute"] = 60 * result["images"] / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--write", action="store_true",
                        help="tilescope also writes --out-dir (per-image JSON, COCO, summary)")
    parser.add_argument("--child", choices=["sahi", "model"])
    parser.add_argument("--folder")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        write_images(args.count, folder)
        out_dir = str(Path(tmp) / "out") if args.write else None
        model = measure("model", str(folder))
        ours = measure("tilescope", str(folder), out_dir)
        sahi = measure("sahi", str(folder))
    rows = [("tilescope", ours), ("SAHI 0.12.8", sahi), ("model only", model)]
    print(f"\n{args.count} images of 256×192 (one {SLICE}-px slice each), one process each")
    print(f"{'':14}{'images/min':>12}{'work s':>9}{'process s':>11}{'detections':>12}")
    for name, r in rows:
        print(f"{name:14}{r['images_per_minute']:12.0f}{r['seconds']:9.2f}"
              f"{r['process_wall']:11.2f}{r['detections']:12}")
    summary = {
        "images": args.count, "write": args.write,
        "images_per_minute": {"tilescope": round(ours["images_per_minute"], 1),
                              "sahi": round(sahi["images_per_minute"], 1),
                              "model_only": round(model["images_per_minute"], 1)},
        "seconds": {"tilescope": round(ours["seconds"], 2), "sahi": round(sahi["seconds"], 2),
                    "model_only": round(model["seconds"], 2)},
        "process_wall": {"tilescope": round(ours["process_wall"], 2),
                         "sahi": round(sahi["process_wall"], 2),
                         "model_only": round(model["process_wall"], 2)},
        "ratio_vs_sahi": round(ours["images_per_minute"] / sahi["images_per_minute"], 3),
        "ratio_vs_model_only": round(ours["images_per_minute"] / model["images_per_minute"], 3),
        "detections": {"tilescope": ours["detections"], "sahi": sahi["detections"],
                       "model_only": model["detections"]},
        "failed": ours.get("failed", 0),
    }
    print(f"tilescope / SAHI: {summary['ratio_vs_sahi']:.2f}×   "
          f"tilescope / model-only: {summary['ratio_vs_model_only']:.2f}× (images per minute)")
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
