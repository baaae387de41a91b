"""``make bench``: every benchmark, printed as ratios measured in the same run.

    python bench/run.py [--size 8192] [--merge-sizes 10000 100000 300000] [--burst 1000]
                        [--memory-sizes 4096 8192 16384] [--skip-scale] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=8192, help="mosaic side for end to end")
    parser.add_argument("--merge-sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--burst", type=int, default=1000, help="images in the arrival burst")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--skip-scale", action="store_true",
                        help="skip the region sweep and the 50,000-slice run (~35 min)")
    parser.add_argument("--quick", action="store_true", help="small sizes (CI-sized)")
    args = parser.parse_args()
    size = 2048 if args.quick else args.size
    merge_sizes = [10_000] if args.quick else args.merge_sizes
    print("== merge only: tilescope vs SAHI 0.12.8 postprocess ==", flush=True)
    subprocess.run([sys.executable, str(HERE / "merge_bench.py"), "--sizes",
                    *map(str, merge_sizes)], check=True)
    print("\n== model=onnx: slices per session.run, batched / unbatched ==", flush=True)
    subprocess.run([sys.executable, str(HERE / "onnx_batch_bench.py"), "--slices",
                    "8" if args.quick else "16"], check=True)
    print(f"\n== end to end: {size}×{size} mosaic of real photos ==", flush=True)
    subprocess.run([sys.executable, str(HERE / "e2e_bench.py"), "--size", str(size)], check=True)
    dag_size = 1024 if args.quick else 4096
    print(f"\n== the DAG through the real scheduler: {dag_size}×{dag_size} mosaic ==", flush=True)
    subprocess.run([sys.executable, str(HERE / "dag_bench.py"), "--size", str(dag_size)],
                   check=True)
    memory_sizes = [2048, 4096] if args.quick else args.memory_sizes
    print(f"\n== peak RSS of preprocess and of one analyze task: {memory_sizes} ==", flush=True)
    subprocess.run([sys.executable, str(HERE / "memory_bench.py"), "--sizes",
                    *map(str, memory_sizes)], check=True)
    if not args.skip_scale:
        scale = (["--regions", "9", "64", "--sweep-slices", "16", "--big-side", "4096"]
                 if args.quick else [])
        print("\n== scale: overhead at 9/64/400/1,000 regions, a 50,000-slice run ==",
              flush=True)
        subprocess.run([sys.executable, str(HERE / "scale_bench.py"), *scale], check=True)
    batch = 100 if args.quick else args.burst
    print(f"\n== one batch run of {batch} small images vs the model alone ==", flush=True)
    subprocess.run([sys.executable, str(HERE / "batch_bench.py"), "--count", str(batch)],
                   check=True)
    print("\n== the results viewer on a 961-region run, mid-run ==", flush=True)
    subprocess.run([sys.executable, str(HERE / "viewer_bench.py")], check=True)
    burst = 50 if args.quick else args.burst
    print(f"\n== a burst of {burst} arrivals through s3_arrivals ==", flush=True)
    subprocess.run([sys.executable, str(HERE / "burst_bench.py"), "--count", str(burst)],
                   check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
