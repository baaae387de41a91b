"""The bad-input corpus (``badinputs.py``) through the very functions the DAGs call, on S3.

Each case is dropped under ``incoming/`` of a moto bucket and taken in as ``s3_arrivals`` does
(``claim_arrivals``: claim, screen, quarantine non-images), then run as ``tiled_inference``
does: ``prepare`` under ``task_outcome`` (bad input → quarantined + a no-retry failure),
``analyze`` per region, ``combine``, ``store`` with a SQL catalog, and ``settle``. Whatever the
outcome, the original is kept (``processed/`` or ``quarantine/`` with its reason), the next
tick starts nothing (no crash loop), and every key written fits S3's 1,024-byte limit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.badinputs import BadInput, corpus
from support.blob_model import BrightBlobModel

from tilescope.airflow.adapters import task_outcome
from tilescope.errors import TilescopeError
from tilescope.intake.arrivals import (
    MAX_KEY_BYTES,
    PROCESSED,
    QUARANTINE,
    destination,
    error_record_key,
)
from tilescope.intake.claims import PROCESSED as CLAIM_PROCESSED
from tilescope.intake.claims import QUARANTINED, status_of
from tilescope.intake.flow import IntakePolicy, claim_arrivals, quarantine_claimed, settle
from tilescope.models import register_model
from tilescope.outputs.catalog import connect, find_results
from tilescope.params import InferenceParams
from tilescope.storage import object_size
from tilescope.tasks.image import analyze, combine, prepare, save_result, store

register_model("bright-blobs", BrightBlobModel)
BUCKET = "corpus"
PARAMS = InferenceParams(model="bright-blobs", score_threshold=0.1)
CASES = corpus()


@pytest.fixture
def env(s3_client, tmp_path):
    s3_client.create_bucket(Bucket=BUCKET)
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    return s3_client, connect(url), url


def keys(client, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def body(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def assert_boxes(found: np.ndarray, case: BadInput) -> None:
    """Exactly the drawn rectangles, in displayed pixels (JPEG: within a pixel or two)."""
    assert len(found) == len(case.boxes), (found.tolist(), case.boxes)
    for box in case.boxes:
        error = np.abs(found - np.array(box, np.float32)).max(axis=1)
        assert error.min() <= case.tolerance, (box, found.tolist())


def test_the_corpus_has_at_least_15_kinds_and_both_outcomes():
    kinds = {case.kind for case in CASES}
    assert len(kinds) == len(CASES) >= 15
    assert {case.outcome for case in CASES} == {"processed", "refused"}
    for case in CASES:
        assert case.key.startswith("incoming/") and len(case.key.encode()) <= MAX_KEY_BYTES
        if case.outcome == "processed":
            assert case.size and case.boxes, case.kind  # never "processed" with nothing to find
        else:
            assert case.error, case.kind


@pytest.mark.parametrize("case", CASES, ids=[case.kind for case in CASES])
def test_each_input_has_its_documented_outcome(env, case: BadInput):
    client, engine, catalog_url = env
    client.put_object(Bucket=BUCKET, Key=case.key, Body=case.data)
    claims, rejected = claim_arrivals(client, engine, BUCKET, IntakePolicy(), run_id="tick-1")
    quarantined_as = destination(case.key, QUARANTINE)
    record_key = error_record_key(quarantined_as)

    if case.screen:  # refused at the screen: quarantined at once, nothing started
        assert claims == [] and len(rejected) == 1 and case.screen in rejected[0]["reason"]
        record = json.loads(body(client, record_key))
        assert record["error_class"] == "NotAnImage" and case.screen in record["reason"]
    else:
        assert rejected == [] and [c.key for c in claims] == [case.key]
        (owned,) = claims
        run_id = f"arrival__{case.kind}"

        def quarantine_bad_input(exc: TilescopeError) -> None:  # the DAG's _quarantine_claimed
            quarantine_claimed(client, engine, owned, reason=str(exc),
                               error_class=type(exc).__name__, run_id=run_id)

        if case.outcome == "refused":
            from airflow.sdk.exceptions import AirflowFailException

            with (pytest.raises(AirflowFailException) as failed,  # fails without retries
                  task_outcome(on_bad_input=quarantine_bad_input)):
                prepare(owned.uri, PARAMS, client=client, run=run_id, model_slice_size=256)
            error_class, fragment = case.error
            assert str(failed.value).startswith(f"{error_class}: ") and fragment in str(
                failed.value)
            assert settle(client, engine, owned, stored=False) == QUARANTINED
            record = json.loads(body(client, record_key))
            assert record["error_class"] == error_class and fragment in record["reason"]
            assert record["key"] == case.key and record["run_id"] == run_id
        else:
            with task_outcome(on_bad_input=quarantine_bad_input):
                regions, prepared = prepare(owned.uri, PARAMS, client=client, run=run_id,
                                            model_slice_size=256)
            width, height = case.size
            assert (prepared.image.width, prepared.image.height) == case.size
            # staged pixels stay proportional to the image (tiles fitted to thin strips)
            assert object_size(prepared.source_uri, client) < 4 * width * height * 3 + 65536
            assert len(json.dumps(prepared.to_dict())) < 64 * 1024
            findings = [analyze(region, prepared.source_uri, PARAMS, BrightBlobModel(),
                                client=client, scratch_prefix=prepared.scratch_prefix)
                        for region in regions]
            result = combine(prepared, findings, PARAMS, "bright-blobs", client=client)
            assert result.status == "complete"
            assert_boxes(result.detections.boxes, case)
            summary = store(save_result(result, prepared.scratch_prefix, client), prepared,
                            PARAMS, client=client, catalog_url=catalog_url, run_id=run_id)
            assert summary.detections == len(case.boxes)
            assert settle(client, engine, owned, stored=True) == CLAIM_PROCESSED
            (row,) = find_results(engine, result.image.sha256)
            assert row["status"] == "complete" and row["detections"] == len(case.boxes)
            assert body(client, destination(case.key, PROCESSED)) == case.data

    if case.outcome == "refused":  # the original is kept, byte for byte, with its reason
        assert body(client, quarantined_as) == case.data
        owned_row = status_of(engine, BUCKET, case.key, client.head_object(
            Bucket=BUCKET, Key=quarantined_as)["ETag"])
        assert owned_row["status"] == QUARANTINED
        assert keys(client, "results/") == []
    assert keys(client, "incoming/") == [] and keys(client, "scratch/") == []
    # No crash loop: the next tick finds nothing to claim, start or quarantine.
    assert claim_arrivals(client, engine, BUCKET, IntakePolicy(), run_id="tick-2") == ([], [])
    assert all(len(key.encode()) <= MAX_KEY_BYTES for key in keys(client))


@pytest.mark.parametrize("case", [c for c in CASES if c.outcome == "refused"],
                         ids=[c.kind for c in CASES if c.outcome == "refused"])
def test_a_direct_trigger_refuses_with_the_same_error(env, case: BadInput):
    """Triggered by hand (no arrivals screen), preprocess names the problem itself."""
    client, _, _ = env
    key = "manual/" + case.key.rsplit("/", 1)[-1][-200:]
    client.put_object(Bucket=BUCKET, Key=key, Body=case.data)
    error_class, fragment = case.error
    with pytest.raises(TilescopeError) as refused:
        prepare(f"s3://{BUCKET}/{key}", PARAMS, client=client, run="manual__1",
                model_slice_size=256)
    assert type(refused.value).__name__ == error_class and fragment in str(refused.value)
    assert not refused.value.retryable
    assert key in str(refused.value)  # the message names the object
    assert body(client, key) == case.data and keys(client, "scratch/") == []


def test_bomb_message_names_the_declared_size(env):
    client, _, _ = env
    bomb = next(c for c in CASES if c.kind == "decompression-bomb")
    client.put_object(Bucket=BUCKET, Key="bomb.png", Body=bomb.data)
    with pytest.raises(TilescopeError, match=r"declares 100000×100000 = 10,000,000,000 pixels, "
                                             r"over the limit of 500,000,000"):
        prepare(f"s3://{BUCKET}/bomb.png", PARAMS, client=client, run="r", model_slice_size=256)


@pytest.mark.parametrize(("filler", "extension"), [("x", ""), ("ü", ".jpg"), ("日本", ".png"),
                                                  ("a/", ".jpeg")])
def test_moved_keys_and_error_records_fit_s3s_limit(filler: str, extension: str):
    """The longest key S3 accepts under incoming/ can still be moved and explained."""
    key = "incoming/"
    while len((key + filler + extension).encode()) <= MAX_KEY_BYTES:
        key += filler
    key += extension
    for folder in (PROCESSED, QUARANTINE):
        moved = destination(key, folder)
        assert len((folder + key).encode()) > MAX_KEY_BYTES  # a plain move would not fit
        assert moved.startswith(folder) and len(moved.encode()) <= MAX_KEY_BYTES
        assert moved.endswith(extension)  # still recognisable as an image
        record = error_record_key(moved)
        assert record.endswith(".error.json") and len(record.encode()) <= MAX_KEY_BYTES
    # distinct long keys stay distinct once shortened; short keys are kept verbatim
    assert destination(key[:-1] + "1", QUARANTINE) != destination(key[:-1] + "2", QUARANTINE)
    assert destination("incoming/a/b c.jpg", QUARANTINE) == "quarantine/a/b c.jpg"
    assert error_record_key("quarantine/a/b c.jpg") == "quarantine/a/b c.jpg.error.json"
