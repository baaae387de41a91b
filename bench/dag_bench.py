"""The DAG through the real scheduler: wall time from trigger to stored result, vs SAHI.

Starts a moto S3 server and Airflow (api-server, scheduler, dag-processor; LocalExecutor,
SQLite) in a temp dir, uploads a mosaic of real photos, triggers ``tiled_inference`` and
waits for the run. Prints wall, the orchestration overhead share (wall − model-only) / wall,
and the ratio against SAHI on the same image and model (measured by ``e2e_bench.py``).

    python bench/dag_bench.py [--size 4096] [--pool-slots 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--pool-slots", type=int, default=2)
    parser.add_argument("--grid", default="auto")
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer
    from PIL import Image

    from tilescope.samples import build_mosaic
    from tilescope.stack.airflow_stack import AirflowStack
    from tilescope.stack.procs import free_ports
    from tilescope.stack.provision import ensure_pool, trigger, unpause, wait_for_dag, wait_for_run

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / f"mosaic-{args.size}.jpg"
        Image.fromarray(build_mosaic(args.size)).save(image, quality=92)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        server.start()
        host, s3_port = server.get_host_and_port()
        endpoint = f"http://{host}:{s3_port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        s3.create_bucket(Bucket="tilescope")
        s3.upload_file(str(image), "tilescope", f"incoming/{image.name}")
        (port,) = free_ports(1)
        airflow = AirflowStack(
            home=Path(tmp) / "airflow", dags_folder=REPO / "dags", port=port,
            components=("api-server", "scheduler", "dag-processor"),
            extra_env={"AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
                "conn_type": "aws", "login": "bench", "password": "bench",
                "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}})})
        airflow.migrate()
        airflow.start()
        try:
            airflow.wait_ready(timeout=300)
            api = airflow.api()
            ensure_pool(api, "tilescope", args.pool_slots)
            wait_for_dag(api, "tiled_inference", timeout=300)
            unpause(api, "tiled_inference")
            started = time.perf_counter()
            run = trigger(api, "tiled_inference", {
                "image_uri": f"s3://tilescope/incoming/{image.name}", "grid": args.grid})
            state = wait_for_run(api, "tiled_inference", run["dag_run_id"], timeout=3600)
            wall = time.perf_counter() - started
            with sqlite3.connect(airflow.db_path) as conn:
                regions = conn.execute(
                    "SELECT COUNT(*) FROM task_instance WHERE task_id='analyze' AND run_id=?",
                    (run["dag_run_id"],)).fetchone()[0]
        finally:
            airflow.stop()
            server.stop()
        if state != "success":
            print(f"run ended {state}")
            return 1
        model = _measure("model", image)
        sahi = _measure("sahi", image)
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


def _measure(side: str, image: Path) -> dict:
    proc = subprocess.run([sys.executable, str(HERE / "e2e_bench.py"), "--child", side,
                           "--image", str(image)], capture_output=True, text=True, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


if __name__ == "__main__":
    sys.exit(main())
