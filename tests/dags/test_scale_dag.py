"""A 50,000-slice image end to end through ``tiled_inference`` (``dag.test()``, moto S3).

The image is a tiled TIFF of 40,000 known rectangles, read in place (preprocess opens only its
header and a thumbnail; each unit task fetches its regions' tiles). With 48-px slices it makes
224 × 224 = 50,176 slices; ``grid=auto`` sizes ~200 regions under ``max_map_length`` and packs
them into a few work units (one task each), every XCom stays small (a unit's finding goes to
S3), and merging (inside regions, then across them in synthesize, which reads all findings in
one bulk request) gives back exactly one box per rectangle. The detector is
the bright-blob test model, so the run is about orchestration and merging at scale rather
than a neural model's judgement (``bench/scale_bench.py`` runs this scale with NanoDet
through the real scheduler).
"""

from __future__ import annotations

import io
import json
import math
import os

import pytest
import tifffile
from support.blob_model import BrightBlobModel, blob_image
from test_tiled_inference import BUCKET, run_xcoms, task_tries

from tilescope.models import register_model
from tilescope.outputs.catalog import connect, find_results
from tilescope.slicing import MAX_MAP_LENGTH

pytestmark = pytest.mark.slow

SLICE, OVERLAP = 48, 0.25  # 12-px overlap: every rectangle (≤ 11 px) fits whole in a slice
SIDE = 223 * (SLICE - int(SLICE * OVERLAP)) + SLICE  # 224 slices along each side: 8076 px
XCOM_LIMIT = 64 * 1024


class ScaleBlobModel(BrightBlobModel):
    """The blob detector as an embedded model: it runs on the worker's cores and says what a
    slice costs, so ``grid=auto`` packs the image's regions into work units."""

    slice_seconds = 0.002  # → 50,176 × 2 ms = 100 s of model time: units of ~30 s


register_model("bright-blobs-scale", ScaleBlobModel)  # in-process: dag.test() runs tasks here


def test_a_50k_slice_image_runs_end_to_end_with_small_xcoms(dag, airflow_env):
    client = airflow_env["client"]
    pixels, truth = blob_image(SIDE, SIDE, 40_000, seed=7, max_side=12)
    out = io.BytesIO()
    tifffile.imwrite(out, pixels, tile=(512, 512), photometric="rgb", compression="zstd")
    del pixels
    key = "incoming/scale/blobs-50k-slices.tif"
    client.put_object(Bucket=BUCKET, Key=key, Body=out.getvalue())

    run = dag.test(run_conf={
        "image_uri": f"s3://{BUCKET}/{key}", "model": "bright-blobs-scale",
        "slice_size": str(SLICE), "overlap": OVERLAP, "grid": "auto",
        "postprocess": "greedynmm", "match_metric": "ios", "match_threshold": 0.5,
        "class_agnostic": False, "score_threshold": 0.1, "full_image_pass": False,
        "min_success_ratio": 1.0})
    assert str(run.state) == "success"

    tries = task_tries(dag.dag_id, run.run_id, "analyze")
    workers = os.cpu_count() or 1
    # ⌈100 s / 30 s⌉ = 4 units, at least one per core, a multiple of the cores
    assert len(tries) == math.ceil(max(4, workers) / workers) * workers
    assert {state for state, _ in tries.values()} == {"success"}
    xcoms = run_xcoms(dag.dag_id, run.run_id)
    too_big = [(task, index, size) for task, index, size in xcoms if size >= XCOM_LIMIT]
    assert too_big == [], too_big
    prepared = next(size for task, _, size in xcoms if task == "preprocess")
    assert prepared < XCOM_LIMIT

    result_key = next(o["Key"] for o in client.list_objects_v2(
        Bucket=BUCKET, Prefix="results/")["Contents"] if o["Key"].endswith("result.json"))
    doc = json.loads(client.get_object(Bucket=BUCKET, Key=result_key)["Body"].read())
    assert doc["image"]["uri"] == f"s3://{BUCKET}/{key}"  # read in place, not restaged
    assert doc["plan"]["slices"] == 224 * 224
    assert 150 <= len(doc["regions"]) <= MAX_MAP_LENGTH  # auto: ≥ 256 slices per region
    assert {r["status"] for r in doc["regions"]} == {"success"}
    region_boxes = sum(r["detections_count"] for r in doc["regions"])
    assert region_boxes > len(truth)  # rectangles on region borders are found by both sides
    assert len(doc["detections"]) == len(truth)
    found = sorted(tuple(round(v) for v in (d["bbox"][0], d["bbox"][1],
                                            d["bbox"][0] + d["bbox"][2],
                                            d["bbox"][1] + d["bbox"][3]))
                   for d in doc["detections"])
    assert found == sorted(tuple(b) for b in truth)
    (row,) = find_results(connect(airflow_env["catalog"]))
    assert row["status"] == "complete" and row["detections"] == len(truth)
