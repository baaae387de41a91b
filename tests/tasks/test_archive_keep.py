"""The store step's archival copy and keep policy against a real S3 server (moto), with a
fault injected between writing the copy and touching the original: whatever the policy and
wherever the process dies, the original is never lost, and store's retry completes."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image
from support.blob_model import BrightBlobModel
from support.crashing_store import assert_killed, crashing_store

from tilescope.archival import ArchivePolicy
from tilescope.errors import StorageError
from tilescope.models import register_model
from tilescope.outputs.catalog import connect, find_results
from tilescope.params import InferenceParams
from tilescope.samples import sample_array
from tilescope.storage import parse_s3_uri
from tilescope.tasks.image import analyze, combine, prepare, result_targets, save_result, store

register_model("bright-blobs", BrightBlobModel)
BUCKET = "archive-keep"
ORIGINAL = "incoming/astronaut.png"

#: where the child running store dies (support.crashing_store); ``args["original"]`` is
#: the original's key
CRASH_AT = {
    # the copy is written (or, with replace, moved to processed/): die before anything else
    "after the copy is written": """
written = {}
client.meta.events.register("before-parameter-build.s3.PutObject",
                            lambda params, **_: written.__setitem__("key", params["Key"]))
crash_on("after-call.s3.PutObject", lambda _: "/archive." in written["key"]
         or written["key"].startswith("processed/"))
""",
    # about to delete the original
    "before the original goes": """
crash_on("before-parameter-build.s3.DeleteObject",
         lambda params: params["Key"] == args["original"])
""",
    # the original is already gone
    "at the scratch clean-up": """
crash_on("before-parameter-build.s3.DeleteObjects")
""",
    # a batch's: its originals are gone, its outcomes.json not written yet
    "after the originals went": """
crash_on("before-parameter-build.s3.PutObject",
         lambda params: params["Key"].endswith("/outcomes.json"))
""",
}


@pytest.fixture
def staged(s3_client, tmp_path, request) -> dict[str, Any]:
    """A real photo (PNG, as cameras rarely send it: its WebP copy is far smaller) run up to
    ``synthesize``, its result parked in scratch for ``store`` (run parameters added by an
    indirect parameter, e.g. ``anonymize``)."""
    s3_client.create_bucket(Bucket=BUCKET)
    out = io.BytesIO()
    Image.fromarray(sample_array("astronaut")).save(out, format="PNG")
    s3_client.put_object(Bucket=BUCKET, Key=ORIGINAL, Body=out.getvalue())
    params = InferenceParams(model="bright-blobs", slice_size=256, grid="1x1",
                             **getattr(request, "param", {}))
    regions, prepared = prepare(f"s3://{BUCKET}/{ORIGINAL}", params, client=s3_client,
                                run="manual__archive", model_slice_size=256)
    finding = analyze(regions[0], prepared.source_uri, params, BrightBlobModel(),
                      client=s3_client, scratch_prefix=prepared.scratch_prefix)
    result = combine(prepared, [finding], params, "bright-blobs", client=s3_client)
    return {"client": s3_client, "params": params, "prepared": prepared,
            "original": out.getvalue(),
            "result_uri": save_result(result, prepared.scratch_prefix, s3_client),
            "catalog": f"sqlite:///{tmp_path / 'catalog.sqlite'}",
            "results": parse_s3_uri(result_targets(BUCKET, result.image.image_id, params)
                                    .result).key.rsplit("/", 1)[0] + "/"}


def body(client, key: str) -> bytes | None:
    try:
        return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


#: where each policy leaves the archival copy, relative to the results prefix or absolute
COPY_AT = {"keep": "archive.webp", "delete": "archive.webp",
           "replace": "/processed/astronaut.webp"}


@pytest.mark.parametrize("crash", ["after the copy is written", "before the original goes"])
@pytest.mark.parametrize("policy", ["keep", "replace", "delete"])
def test_a_crash_between_copy_and_original_loses_nothing_and_the_retry_completes(
        staged, policy, crash):
    client, prepared = staged["client"], staged["prepared"]
    archive = {"format": "webp", "quality": 80, "keep_original": policy}  # no search: quick
    crashed = crashing_store(CRASH_AT[crash], result_uri=staged["result_uri"],
                             prepared=prepared, params=staged["params"],
                             catalog=staged["catalog"], archive=archive, original=ORIGINAL)
    expect_crash = policy != "keep" or crash == "after the copy is written"
    if expect_crash:
        assert_killed(crashed)
    else:  # keep never deletes the original: there was no delete to die at
        assert crashed.returncode == 0, crashed.stderr[-2000:]
    assert body(client, ORIGINAL) == staged["original"]  # nothing lost

    if expect_crash:
        store(staged["result_uri"], prepared, staged["params"], client=client,
              catalog_url=staged["catalog"], run_id="retry",
              archive=ArchivePolicy(**archive))  # Airflow's retry
    copy_key = COPY_AT[policy].lstrip("/") if COPY_AT[policy].startswith("/") \
        else staged["results"] + COPY_AT[policy]
    copy = body(client, copy_key)
    assert copy is not None
    with Image.open(io.BytesIO(copy)) as image:
        assert image.format == "WEBP" and image.size == (512, 512)
    assert (body(client, ORIGINAL) == staged["original"]) == (policy == "keep")
    doc = json.loads(body(client, staged["results"] + "result.json") or b"{}")
    assert doc["archive"]["keep_original"] == policy and doc["archive"]["target_met"]
    assert doc["archive"]["bytes_saved"] == len(staged["original"]) - len(copy) > 0
    [row] = find_results(connect(staged["catalog"]))
    assert (row["archive_bytes"], row["bytes_saved"]) == (len(copy),
                                                          len(staged["original"]) - len(copy))
    assert row["archive_ssim"] > 0.9 and row["archive_uri"] == f"s3://{BUCKET}/{copy_key}"
    assert row["archive_quality"] == 80


def has_the_anonymized_pixels(copy: np.ndarray, original: np.ndarray,
                              anonymized: np.ndarray, regions: list) -> None:
    """Inside every anonymized region the (lossy) copy has the anonymized pixels, not the
    original's: it is far nearer the first. (The detail test on people is
    tests/test_cli_archive.py's, with a real detector.)"""
    assert regions
    for x1, y1, x2, y2 in regions:
        near, far = (np.abs(copy[y1:y2, x1:x2].astype(int) - p[y1:y2, x1:x2]).mean()
                     for p in (anonymized, original))
        assert near < 0.5 * far, ((x1, y1, x2, y2), near, far)


@pytest.mark.parametrize("staged", [{"anonymize": "white", "anonymize_margin": 4}],
                         indirect=True)
@pytest.mark.parametrize("crash", ["after the copy is written", "before the original goes"])
@pytest.mark.parametrize("policy", ["replace", "delete"])
def test_an_anonymized_archive_stands_in_for_the_original_and_a_crash_loses_nothing(
        staged, policy, crash):
    """transform then store, as the DAG's store task runs them: the archival copy is of the
    anonymized pixels, and a crash between writing it and removing the original leaves the
    original; the retry completes with only anonymized pixels kept. Seen red with
    store_archive encoding the plain source (the detail inside the regions survived)."""
    import cv2

    from tilescope.tasks.transform import transform

    client, prepared, params = staged["client"], staged["prepared"], staged["params"]
    archive = {"format": "webp", "quality": 80, "keep_original": policy}
    assert_killed(crashing_store(CRASH_AT[crash], result_uri=staged["result_uri"],
                                 prepared=prepared, params=params, catalog=staged["catalog"],
                                 archive=archive, original=ORIGINAL))
    assert body(client, ORIGINAL) == staged["original"]  # nothing lost

    transform(staged["result_uri"], prepared, params, client=client)  # Airflow's retry
    store(staged["result_uri"], prepared, params, client=client,
          catalog_url=staged["catalog"], run_id="retry", archive=ArchivePolicy(**archive))
    assert body(client, ORIGINAL) is None
    copy_key = COPY_AT[policy].lstrip("/") if COPY_AT[policy].startswith("/") \
        else staged["results"] + COPY_AT[policy]
    copy = cv2.cvtColor(cv2.imdecode(np.frombuffer(body(client, copy_key) or b"", np.uint8),
                                     cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    doc = json.loads(body(client, staged["results"] + "result.json") or b"{}")
    original = np.asarray(Image.open(io.BytesIO(staged["original"])).convert("RGB"))
    anonymized = np.asarray(Image.open(io.BytesIO(body(client, parse_s3_uri(
        doc["anonymized"]["uri"]).key) or b"")).convert("RGB"))  # lossless: PNG
    has_the_anonymized_pixels(copy, original, anonymized, doc["anonymized"]["regions"])
    assert doc["archive"]["uri"] == f"s3://{BUCKET}/{copy_key}"
    [row] = find_results(connect(staged["catalog"]))
    assert row["result_keys"]["anonymized"] == doc["anonymized"]["uri"]


@pytest.mark.parametrize("policy", ["replace", "delete"])
def test_a_copy_that_does_not_read_back_leaves_the_original_and_stores_nothing(staged,
                                                                                policy):
    client, prepared = staged["client"], staged["prepared"]

    def damage(params, **_):  # the store keeps only half of the copy (not of the previews)
        if params["Key"].endswith(".webp") and not params["Key"].endswith(
                ("/overlay.webp", "/thumbnail.webp")):
            params["Body"] = params["Body"].read()[: 500]

    client.meta.events.register("before-parameter-build.s3.PutObject", damage)
    with pytest.raises(StorageError, match="not what was written"):
        store(staged["result_uri"], prepared, staged["params"], client=client,
              catalog_url=staged["catalog"], archive=ArchivePolicy("webp", 80,
                                                                   keep_original=policy))
    assert body(client, ORIGINAL) == staged["original"]
    assert body(client, staged["results"] + "result.json") is None
    assert find_results(connect(staged["catalog"])) == []


def test_a_failed_transform_leaves_the_original_where_it_was(staged):
    client, prepared = staged["client"], staged["prepared"]
    client.delete_object(Bucket=BUCKET, Key=parse_s3_uri(prepared.source_uri).key)
    with pytest.raises(Exception):  # noqa: B017 - the staged pixels are gone: any error
        store(staged["result_uri"], prepared, staged["params"], client=client,
              catalog_url=staged["catalog"], archive=ArchivePolicy("webp", 80,
                                                                   keep_original="delete"))
    assert body(client, ORIGINAL) == staged["original"]
    assert body(client, staged["results"] + "result.json") is None


def test_the_original_is_deleted_only_while_it_is_the_analysed_bytes(staged):
    client = staged["client"]
    changed = np.asarray(Image.open(io.BytesIO(staged["original"])))[::-1]
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(changed)).save(out, format="PNG")
    client.put_object(Bucket=BUCKET, Key=ORIGINAL, Body=out.getvalue())  # a new upload
    store(staged["result_uri"], staged["prepared"], staged["params"], client=client,
          catalog_url=staged["catalog"], archive=ArchivePolicy("webp", 80, keep_original="delete"))
    assert body(client, ORIGINAL) == out.getvalue()  # a new arrival: left alone


@pytest.mark.parametrize("anonymize", ["", "white"])
def test_a_tiled_original_read_in_place_survives_a_crash_after_its_delete(s3_client,
                                                                          tmp_path, anonymize):
    """A tiled TIFF is the run's source itself: once ``delete`` has removed it, a retry of
    ``store`` cannot encode it again and completes from the copy already verified — and,
    anonymizing, transform's retry keeps the anonymized copy already stored. (The anonymized
    case seen red without transform's earlier_record: the retry failed on the gone source.)"""
    import tifffile

    from tilescope.anonymize import replayed_reader
    from tilescope.readers.array import ArrayReader
    from tilescope.tasks.transform import transform

    s3_client.create_bucket(Bucket=BUCKET)
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, sample_array("astronaut"), tile=(256, 256), photometric="rgb")
    key = "incoming/scene.tif"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    params = InferenceParams(model="bright-blobs", slice_size=256, grid="1x1",
                             anonymize=anonymize)
    regions, prepared = prepare(f"s3://{BUCKET}/{key}", params, client=s3_client,
                                run="manual__tiled", model_slice_size=256)
    assert prepared.source_uri == f"s3://{BUCKET}/{key}"  # read in place
    finding = analyze(regions[0], prepared.source_uri, params, BrightBlobModel(),
                      client=s3_client, scratch_prefix=prepared.scratch_prefix)
    result = combine(prepared, [finding], params, "bright-blobs", client=s3_client)
    archive = {"format": "tiff", "keep_original": "delete"}
    result_uri = save_result(result, prepared.scratch_prefix, s3_client)
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    assert_killed(crashing_store(CRASH_AT["at the scratch clean-up"], result_uri=result_uri,
                                 prepared=prepared, params=params, catalog=catalog,
                                 archive=archive))
    assert body(s3_client, key) is None  # deleted: its verified copy stands in for it
    transform(result_uri, prepared, params, client=s3_client)
    summary = store(result_uri, prepared, params, client=s3_client, catalog_url=catalog,
                    archive=ArchivePolicy(**archive))
    copy = body(s3_client, parse_s3_uri(summary.keys["archive"]).key)
    expected = sample_array("astronaut")
    if anonymize:  # the lossless copy is the anonymized pixels, exactly
        record = json.loads(body(s3_client, parse_s3_uri(summary.keys["result"]).key)
                            or b"{}")["anonymized"]
        assert record["regions"] and summary.keys["anonymized"] == record["uri"]
        expected = replayed_reader(ArrayReader(expected), record).read_all()
        assert not np.array_equal(expected, sample_array("astronaut"))
    assert np.array_equal(tifffile.imread(io.BytesIO(copy)), expected)
    assert summary.scratch_objects_deleted > 0


@pytest.mark.parametrize(("crash", "policy", "anonymize"), [
    ("after the copy is written", "replace", ""),
    ("before the original goes", "replace", ""),
    ("after the originals went", "replace", ""),
    ("before the original goes", "delete", "white"),
    ("after the originals went", "delete", "white")])
def test_a_batch_store_killed_between_copies_and_originals_loses_nothing_and_its_retry_completes(
        s3_client, tmp_path, crash, policy, anonymize):
    """A batch's store killed after writing a copy, before removing an original, or once the
    originals are gone (before its outcomes.json): no original goes before its copy is
    stored and read back and every row committed, and the retry completes — for an original
    already removed from the copies its first attempt verified (a photo is its own source:
    it cannot be read again), anonymized ones included. (Seen red with the originals settled
    before the catalog rows: killed before an original's delete, no row was committed; and
    with _keep_copies not taking back the earlier records: the retry after the originals
    went failed on the missing photo.)"""
    from tilescope.tasks.batch import (
        STORED,
        analyze_unit,
        combine_batch,
        prepare_batch,
        store_batch,
    )

    s3_client.create_bucket(Bucket=BUCKET)
    originals = {}
    for name in ("astronaut", "coffee"):
        out = io.BytesIO()
        Image.fromarray(sample_array(name)).save(out, format="PNG")
        originals[f"incoming/{name}.png"] = out.getvalue()
        s3_client.put_object(Bucket=BUCKET, Key=f"incoming/{name}.png", Body=out.getvalue())
    params = InferenceParams(model="bright-blobs", slice_size=256, grid="1x1",
                             anonymize=anonymize, anonymize_margin=4)
    mapped, prepared = prepare_batch([{"uri": f"s3://{BUCKET}/{key}"} for key in originals],
                                     params, client=s3_client, run="manual__batch",
                                     model_slice_size=256)
    findings = [analyze_unit(m, prepared, params, BrightBlobModel(), client=s3_client,
                             budget=48_000) for m in mapped]
    results = combine_batch(prepared, findings, params, "bright-blobs", client=s3_client)
    archive = {"format": "webp", "quality": 80, "keep_original": policy}
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    assert_killed(crashing_store(CRASH_AT[crash], result_uri=results, prepared=prepared,
                                 params=params, catalog=catalog, archive=archive,
                                 original=ORIGINAL))
    kept = {key: body(s3_client, key) for key in originals}
    rows_before = len(find_results(connect(catalog)))
    if crash == "after the originals went":
        assert kept == dict.fromkeys(originals)  # both gone: their copies stand in
    else:
        assert kept[ORIGINAL] == originals[ORIGINAL]  # nothing lost
    # every row committed before any original is touched
    assert rows_before == (0 if crash == "after the copy is written" else 2)

    _, outcomes = store_batch(results, prepared, params, client=s3_client,
                              catalog_url=catalog, run_id="retry",
                              archive=ArchivePolicy(**archive))  # Airflow's retry
    assert [o.status for o in outcomes] == [STORED, STORED], [o.error for o in outcomes]
    rows = {row["image_uri"]: row for row in find_results(connect(catalog))}
    for outcome, key in zip(outcomes, originals, strict=True):
        assert body(s3_client, key) is None
        doc = json.loads(body(s3_client, parse_s3_uri(outcome.keys["result"]).key) or b"{}")
        copy_key = parse_s3_uri(doc["archive"]["uri"]).key
        assert copy_key == (key.replace("incoming/", "processed/").replace(".png", ".webp")
                            if policy == "replace" else
                            parse_s3_uri(outcome.keys["result"]).key.replace("result.json",
                                                                             "archive.webp"))
        copy = body(s3_client, copy_key) or b""
        assert rows[outcome.uri]["archive_uri"] == doc["archive"]["uri"]
        assert rows[outcome.uri]["archive_bytes"] == len(copy) == doc["archive"]["bytes"]
        if anonymize and key == ORIGINAL:  # a copy of the anonymized pixels
            import cv2

            pixels = cv2.cvtColor(cv2.imdecode(np.frombuffer(copy, np.uint8),
                                               cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            anonymized = np.asarray(Image.open(io.BytesIO(body(s3_client, parse_s3_uri(
                doc["anonymized"]["uri"]).key) or b"")).convert("RGB"))
            has_the_anonymized_pixels(pixels, sample_array("astronaut"), anonymized,
                                      doc["anonymized"]["regions"])
