"""A batch run of ``tiled_inference`` (``dag.test()`` on a moto S3 server): mixed inputs in one
run — good JPEGs, a tiled TIFF, a video, a truncated JPEG, a non-image — each image with its
own result equal to a single-image run's, bad ones quarantined with their reasons, claims
settled, nothing lost, every XCom small."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from support.video_samples import write_video
from test_tiled_inference import keys_under, run_xcoms, task_tries, upload

from tilescope.intake.claims import PROCESSED, QUARANTINED, all_claims, claim
from tilescope.models.nanodet import NanoDetModel
from tilescope.outputs.catalog import connect, find_results
from tilescope.params import InferenceParams
from tilescope.pipeline import run_image
from tilescope.readers import reader_for_bytes
from tilescope.results import ImageInfo

pytestmark = pytest.mark.slow
BUCKET = "tilescope"


def jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def tiled_tiff(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, pixels, tile=(256, 256), photometric="rgb")
    return out.getvalue()


def expected_detections(data: bytes, uri: str, params: InferenceParams,
                        video: Path | None = None) -> list[dict]:
    """What a single-image run (the CLI's stages in one process) finds."""
    import hashlib

    if video is not None:
        from tilescope.video.decoder import VideoSource
        from tilescope.video.pipeline import run_video

        info = ImageInfo(uri, 320, 240, hashlib.sha256(data).hexdigest(), "AVI", len(data))
        with VideoSource(str(video), container="AVI", name=uri) as source, \
                NanoDetModel(score_threshold=params.score_threshold) as model:
            return run_video(source, info, params, model)[0].to_dict()["detections"]
    reader = reader_for_bytes(data)
    info = ImageInfo(uri, reader.width, reader.height, hashlib.sha256(data).hexdigest(),
                     reader.header.format, len(data))
    with NanoDetModel(score_threshold=params.score_threshold) as model:
        return run_image(reader, info, params, model).to_dict()["detections"]


def claimed_manifest(client, engine, inputs: dict[str, bytes], name: str) -> str:
    """Upload ``inputs`` (key → bytes), claim each as s3_arrivals does and write the batch's
    manifest ``manifests/<name>.json`` (its entries carry the claims) → its URI."""
    images = []
    for key, data in inputs.items():
        uri = upload(client, key, data)
        head = client.head_object(Bucket=BUCKET, Key=key)
        owned = claim(engine, BUCKET, key, head["ETag"].strip('"'), len(data))
        images.append({"uri": uri, "claim": owned.to_dict()})
    client.put_object(Bucket=BUCKET, Key=f"manifests/{name}.json",
                      Body=json.dumps({"images": images}).encode())
    return f"s3://{BUCKET}/manifests/{name}.json"


def test_a_batch_of_mixed_inputs_stores_each_image_and_quarantines_the_bad(
        dag, airflow_env, sample, tmp_path, monkeypatch):
    monkeypatch.setenv("TILESCOPE_UNIT_SECONDS", "0.5")  # several units for a few images
    client = airflow_env["client"]
    kite = np.asarray(Image.open(sample("kite")).convert("RGB"))
    clip = write_video(tmp_path / "clip.avi", [kite[y:y + 240, x:x + 320] for x, y in
                                               ((300, 100), (340, 120), (380, 140))], fps=1)
    inputs = {
        "incoming/clip.avi": clip.read_bytes(),
        "incoming/kite.jpg": Path(sample("kite")).read_bytes(),
        "incoming/crop.jpg": jpeg(kite[100:292, 300:556]),
        "incoming/scan.tif": tiled_tiff(kite[:768, :1024]),
        "incoming/truncated.jpg": jpeg(kite)[:5000],
        "incoming/notes.jpg": b"this is not a picture",
    }
    engine = connect(airflow_env["catalog"])
    conf = {"manifest": claimed_manifest(client, engine, inputs, "batch"), "images": [],
            "image_uri": "s3://tilescope/incoming/unused.jpg", "grid": "auto",
            "model": "nanodet-coco", "score_threshold": 0.3, "min_success_ratio": 1.0}
    run = dag.test(run_conf=conf)

    # two bad inputs: the run says so (finalize fails naming them), the rest is stored
    assert str(run.state) == "failed"
    assert task_tries(dag.dag_id, run.run_id, "store")[-1][0] == "success"
    assert task_tries(dag.dag_id, run.run_id, "finalize")[-1][0] == "failed"
    params = InferenceParams.from_dict(conf)
    rows = {r["image_uri"]: r for r in find_results(engine)}
    good = ("incoming/kite.jpg", "incoming/crop.jpg", "incoming/scan.tif", "incoming/clip.avi")
    assert sorted(rows) == sorted(f"s3://{BUCKET}/{k}" for k in good)
    for key in good:
        uri = f"s3://{BUCKET}/{key}"
        row = rows[uri]
        assert row["status"] == "complete"
        doc = json.loads(client.get_object(
            Bucket=BUCKET, Key=row["result_keys"]["result"].split(f"{BUCKET}/", 1)[1]
        )["Body"].read())
        assert doc["detections"] == expected_detections(
            inputs[key], uri, params, clip if key.endswith(".avi") else None), key
        prefix = row["result_keys"]["result"].rsplit("/", 1)[0].split(f"{BUCKET}/", 1)[1]
        assert sorted(keys_under(client, prefix + "/")) == sorted(
            f"{prefix}/{n}" for n in ("result.json", "coco.json", "overlay.webp",
                                      "thumbnail.webp"))
    assert rows[f"s3://{BUCKET}/incoming/kite.jpg"]["detections"] >= 10
    assert rows[f"s3://{BUCKET}/incoming/clip.avi"]["regions"] == 3  # one unit per frame

    # originals: good ones in processed/, bad ones in quarantine/ with their reasons
    assert sorted(keys_under(client, "processed/")) == sorted(
        k.replace("incoming/", "processed/") for k in good)
    assert keys_under(client, "incoming/") == []
    for key, reason in (("truncated.jpg", "truncated or corrupt"),
                        ("notes.jpg", "not an image")):
        record = json.loads(client.get_object(
            Bucket=BUCKET, Key=f"quarantine/{key}.error.json")["Body"].read())
        assert reason in record["reason"], record
        original = client.get_object(Bucket=BUCKET, Key=f"quarantine/{key}")["Body"].read()
        assert original == inputs[f"incoming/{key}"]  # byte for byte
    statuses = {c["key"]: c["status"] for c in all_claims(engine)}
    assert statuses == {**{k: PROCESSED for k in good},
                        "incoming/truncated.jpg": QUARANTINED,
                        "incoming/notes.jpg": QUARANTINED}
    assert keys_under(client, "scratch/") == []
    sizes = run_xcoms(dag.dag_id, run.run_id)
    assert max(size for _, _, size in sizes) < 64 * 1024
    assert len(task_tries(dag.dag_id, run.run_id, "analyze")) >= 2  # packed into units
    # one results-asset event per stored image, each with its own image id and counts
    assert sorted(e["image_uri"] for e in asset_event_extras(run.run_id)) == sorted(rows)
    assert {e["image_id"] for e in asset_event_extras(run.run_id)} == {
        r["image_id"] for r in rows.values()}


def asset_event_extras(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        return [dict(e.extra) for e in session.query(AssetEvent).filter(
            AssetEvent.source_run_id == run_id).all()]


def test_a_batch_with_webp_archives_replaces_each_original_by_its_verified_copy(
        dag, airflow_env, sample):
    """``archive_format=webp`` and ``keep_original=replace`` on a claimed batch of photos:
    each image's copy (adaptive quality, SSIM ≥ 0.95) stands in ``processed/`` where its
    original would have gone, the originals are gone, every claim is settled as processed,
    and each catalog row records the bytes saved. (Seen red with the batch refusal back in
    check_transform: preprocess failed and nothing was stored.)"""
    import hashlib

    import cv2

    client = airflow_env["client"]
    engine = connect(airflow_env["catalog"])
    inputs = {f"incoming/{name}.jpg": Path(sample(name)).read_bytes()
              for name in ("person", "horses")}
    run = dag.test(run_conf={"manifest": claimed_manifest(client, engine, inputs, "archive"),
                             "images": [],
                             "model": "nanodet-coco", "archive_format": "webp",
                             "archive_ssim": 0.95, "keep_original": "replace"})
    assert str(run.state) == "success"

    assert keys_under(client, "incoming/") == []
    assert sorted(keys_under(client, "processed/")) == ["processed/horses.webp",
                                                        "processed/person.webp"]
    assert {c["status"] for c in all_claims(engine)} == {PROCESSED}
    for key, data in inputs.items():
        copy_key = key.replace("incoming/", "processed/").replace(".jpg", ".webp")
        copy = client.get_object(Bucket=BUCKET, Key=copy_key)["Body"].read()
        pixels = cv2.imdecode(np.frombuffer(copy, np.uint8), cv2.IMREAD_COLOR)
        original = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert pixels is not None and pixels.shape == original.shape
        [row] = find_results(engine, hashlib.sha256(data).hexdigest())
        assert row["archive_uri"] == f"s3://{BUCKET}/{copy_key}"
        assert row["archive_bytes"] == len(copy) and row["bytes_saved"] == len(data) - len(copy)
        assert row["bytes_saved"] > 0 and row["archive_ssim"] >= 0.95
        doc = json.loads(client.get_object(Bucket=BUCKET, Key=row["result_keys"]["result"]
                                           .split(f"s3://{BUCKET}/", 1)[1])["Body"].read())
        assert doc["archive"]["quality"] == row["archive_quality"]
        assert doc["archive"]["target_met"] and doc["archive"]["keep_original"] == "replace"
    assert keys_under(client, "scratch/") == []
