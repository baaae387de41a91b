"""``store`` seen by a reader and under a crash, against a real S3 server (moto):

* a reader polling ``result.json`` while store writes (and then overwrites) it only ever
  finds nothing or a complete document — S3 makes each PUT visible whole, and store writes
  the result JSON after its companions;
* a process SIGKILLed between the writes leaves no ``result.json`` (or, past it, a complete
  one without its catalog row) and keeps scratch, so store's retry completes the result with
  exactly one catalog row.
"""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from PIL import Image
from support.blob_model import BrightBlobModel, blob_image
from support.crashing_store import assert_killed, crashing_store

from tilescope.models import register_model
from tilescope.outputs.catalog import connect, find_results
from tilescope.params import InferenceParams
from tilescope.storage import parse_s3_uri
from tilescope.tasks.image import analyze, combine, prepare, result_targets, save_result, store

register_model("bright-blobs", BrightBlobModel)
BUCKET = "store-faults"

#: where the child running store dies (support.crashing_store)
CRASH_BEFORE = {
    "result.json": """
crash_on("before-parameter-build.s3.PutObject",
         lambda params: params["Key"].endswith("/result.json"))
""",
    "catalog row": """
import tilescope.outputs.catalog

tilescope.outputs.catalog.record_result = lambda *a, **k: crash()
""",
}


@pytest.fixture
def staged(s3_client, tmp_path) -> dict[str, Any]:
    """A real run up to ``synthesize``: a crowded image (3,000 objects) prepared, analysed
    and merged, its result parked in scratch for ``store``."""
    s3_client.create_bucket(Bucket=BUCKET)
    pixels, truth = blob_image(1400, 1400, 3000, seed=7, max_side=12)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    s3_client.put_object(Bucket=BUCKET, Key="incoming/crowded.png", Body=out.getvalue())
    params = InferenceParams(model="bright-blobs", slice_size=256, overlap=0.3, grid="1x1",
                             score_threshold=0.1)
    regions, prepared = prepare(f"s3://{BUCKET}/incoming/crowded.png", params, client=s3_client,
                                run="manual__faults", model_slice_size=256)
    finding = analyze(regions[0], prepared.source_uri, params, BrightBlobModel(),
                      client=s3_client, scratch_prefix=prepared.scratch_prefix)
    result = combine(prepared, [finding], params, "bright-blobs", client=s3_client)
    assert len(result.detections) == len(truth)
    return {"client": s3_client, "params": params, "prepared": prepared, "result": result,
            "result_uri": save_result(result, prepared.scratch_prefix, s3_client),
            "catalog": f"sqlite:///{tmp_path / 'catalog.sqlite'}",
            "targets": result_targets(BUCKET, result.image.image_id, params)}


def keys(client, prefix: str) -> list[str]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_a_reader_polling_during_store_sees_nothing_or_a_complete_result(staged, s3_server):
    client, params, prepared = staged["client"], staged["params"], staged["prepared"]
    key = parse_s3_uri(staged["targets"].result).key
    reader = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
    puts: list[tuple[float, float]] = []  # (start, end) of each result.json PUT

    def put_started(params, **_):
        if params["Key"] == key:
            puts.append((time.monotonic(), float("inf")))

    def put_done(model, **_):
        if puts and puts[-1][1] == float("inf"):
            puts[-1] = (puts[-1][0], time.monotonic())

    client.meta.events.register("before-parameter-build.s3.PutObject", put_started)
    client.meta.events.register("after-call.s3.PutObject", put_done)
    seen: list[tuple[float, bytes | None]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                body = reader.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            except ClientError as exc:  # anything but "not there yet" fails the check below
                code = exc.response["Error"]["Code"]
                body = None if code == "NoSuchKey" else f"error {code}".encode()
            seen.append((started, body))

    polling = [threading.Thread(target=poll) for _ in range(3)]
    for thread in polling:
        thread.start()
    try:
        time.sleep(0.05)
        store(staged["result_uri"], prepared, params, client=client,
              catalog_url=staged["catalog"])
        first = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        # A re-run (its own scratch) with a different outcome overwrites the same keys.
        _, rerun = prepare(prepared.image.uri, params, client=client, run="manual__rerun",
                           model_slice_size=256)
        fewer = staged["result"]
        fewer.detections = fewer.detections.select(slice(0, len(fewer.detections) // 2))
        store(save_result(fewer, rerun.scratch_prefix, client), rerun, params,
              client=client, catalog_url=staged["catalog"])
        second = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        time.sleep(0.05)
    finally:
        stop.set()
        for thread in polling:
            thread.join()

    assert first != second and len(json.loads(first)["detections"]) == 3000
    seen.sort(key=lambda observation: observation[0])
    bodies = [body for _, body in seen]
    assert set(bodies) <= {None, first, second}  # never a partial or mixed document
    assert bodies[0] is None and bodies[-1] == second
    during = [t for t, _ in seen if any(start <= t <= end for start, end in puts)]
    assert len(puts) == 2 and during, "some reads must have raced the result.json writes"
    print(f"{len(seen)} reads, {len(during)} during the result.json PUTs "
          f"({len(first) // 1024} KiB), each absent or complete")
    assert len(find_results(connect(staged["catalog"]))) == 1


@pytest.mark.parametrize("crash_before", ["result.json", "catalog row"])
def test_a_crash_inside_store_leaves_no_partial_result_and_the_retry_completes_it(
        staged, crash_before):
    client, params, prepared = staged["client"], staged["params"], staged["prepared"]
    results = parse_s3_uri(staged["targets"].result).key.rsplit("/", 1)[0] + "/"
    assert_killed(crashing_store(CRASH_BEFORE[crash_before], result_uri=staged["result_uri"],
                                 prepared=prepared, params=params, catalog=staged["catalog"],
                                 timeout=120))

    written = [k.rsplit("/", 1)[1] for k in keys(client, results)]
    companions = ["coco.json", "overlay.webp", "thumbnail.webp"]
    engine = connect(staged["catalog"])
    assert find_results(engine) == []  # a catalog row only ever follows a stored result.json
    if crash_before == "result.json":
        assert written == companions  # the crash came mid-store, and result.json is last
    else:
        assert written == sorted([*companions, "result.json"])
        doc = json.loads(client.get_object(Bucket=BUCKET, Key=results + "result.json")
                         ["Body"].read())
        assert len(doc["detections"]) == 3000  # complete, only its catalog row is missing
    assert keys(client, prepared.scratch_prefix.split(f"{BUCKET}/", 1)[1])  # kept: retry

    summary = store(staged["result_uri"], prepared, params, client=client,
                    catalog_url=staged["catalog"], run_id="retry")  # Airflow's retry
    doc = json.loads(client.get_object(Bucket=BUCKET, Key=results + "result.json")
                     ["Body"].read())
    assert doc["status"] == "complete" and len(doc["detections"]) == 3000
    rows = find_results(engine)
    assert [(r["run_id"], r["detections"]) for r in rows] == [("retry", 3000)]
    assert summary.scratch_objects_deleted > 0
