"""An analyze task's memory does not grow with the image.

Tiled TIFFs of 4096² and 8192² (4× the pixels) made from real photos go to the S3 server; one
region of each is analyzed with the real NanoDet model in a fresh subprocess — as Airflow runs
a mapped task — reading its tiles with ranged GETs, band by band. Its peak RSS must stay under
a fixed budget and grow far less than the image does.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import tifffile

from tilescope.samples import build_mosaic

BUCKET = "memory"
BUDGET_MB = 300  # the target for one analyze task

ANALYZE = """
import json, sys, boto3
from tilescope.models.registry import load_model
from tilescope.params import InferenceParams
from tilescope.stack.procs import peak_rss_mb
from tilescope.steps import analyze
spec = json.loads(sys.argv[1])
client = boto3.client("s3", endpoint_url=spec["endpoint"], region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
with load_model("nanodet-coco") as model:
    finding = analyze(spec["region"], spec["uri"], InferenceParams(), model, client=client,
                      scratch_prefix=f"s3://{spec['bucket']}/scratch/memory/")
print(json.dumps({"rss_mb": peak_rss_mb(),
                  "detections": len(finding["detections"]["scores"])
                  if finding.get("detections") else None}))
"""


def analyze_peak_mb(endpoint: str, uri: str, region: dict) -> dict:
    spec = {"endpoint": endpoint, "uri": uri, "region": region, "bucket": BUCKET}
    proc = subprocess.run([sys.executable, "-c", ANALYZE, json.dumps(spec)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_analyze_peak_memory_stays_flat_as_the_image_grows(s3_server, s3_client) -> None:
    from tilescope.models.registry import model_slice_size
    from tilescope.params import InferenceParams
    from tilescope.pipeline import plan_image

    s3_client.create_bucket(Bucket=BUCKET)
    peaks = {}
    for size in (4096, 8192):
        out = io.BytesIO()
        tifffile.imwrite(out, build_mosaic(size), tile=(512, 512), photometric="rgb",
                         compression="zstd", compressionargs={"level": 1})
        key = f"incoming/mosaic-{size}.tif"
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=out.getvalue())
        del out
        # regions of about the same slices at both sizes (3×3 grid, then 6×6): only the image grows
        plan = plan_image(size, size, InferenceParams(grid=f"{size // 4096 * 3}x"
                                                            f"{size // 4096 * 3}"),
                          model_slice_size("nanodet-coco"))
        region = plan.regions[0].to_dict()
        peaks[size] = analyze_peak_mb(s3_server, f"s3://{BUCKET}/{key}", region)
        assert peaks[size]["detections"], "a region of real photos has detections"
    print(f"analyze peak RSS by image side: {peaks}")
    small, large = peaks[4096]["rss_mb"], peaks[8192]["rss_mb"]
    assert large <= BUDGET_MB, peaks
    assert large - small < 40, f"analyze memory grew with the image: {peaks}"
