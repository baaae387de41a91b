"""Batch runs' task bodies on a moto S3 server, without Airflow: inputs and manifests, a
1,000-image plan whose XComs stay small, per-image results equal to single-image runs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from support.photos_s3 import CountingClient, tiny_jpeg

from tilescope.errors import ConfigError
from tilescope.params import InferenceParams
from tilescope.storage import read_bytes
from tilescope.tasks.batch import (
    BAD,
    STORED,
    analyze_unit,
    batch_entries,
    combine_batch,
    load_items,
    parse_manifest,
    prepare_batch,
    settle_batch,
    store_batch,
)

BUCKET = "batches"
PARAMS = InferenceParams(model="nanodet-coco")


def test_manifests_in_every_form_and_inputs_listed_once(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    for key in ("in/a.jpg", "in/b.jpg", "in/sub/c.jpg"):
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    assert parse_manifest(b'{"images": ["s3://b/1.jpg", {"uri": "s3://b/2.jpg", '
                          b'"claim": {"k": 1}}]}') == [
        {"uri": "s3://b/1.jpg"}, {"uri": "s3://b/2.jpg", "claim": {"k": 1}}]
    assert parse_manifest(b'["s3://b/1.jpg"]') == [{"uri": "s3://b/1.jpg"}]
    assert parse_manifest(b"# a list\ns3://b/1.jpg\n\n s3://b/2.jpg \n") == [
        {"uri": "s3://b/1.jpg"}, {"uri": "s3://b/2.jpg"}]
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_manifest(b"{oops")
    s3_client.put_object(Bucket=BUCKET, Key="m.txt", Body=b"s3://batches/in/a.jpg\n")
    entries = batch_entries({"images": [f"s3://{BUCKET}/in/"],
                             "manifest": f"s3://{BUCKET}/m.txt"}, client=s3_client)
    assert [e["uri"] for e in entries] == [f"s3://{BUCKET}/in/{k}" for k in
                                           ("a.jpg", "b.jpg", "sub/c.jpg")]  # a.jpg once
    with pytest.raises(ConfigError, match="empty"):
        batch_entries({"images": []}, client=s3_client)
    with pytest.raises(ConfigError, match="s3:// URIs"):
        batch_entries({"images": ["/local/a.jpg"]}, client=s3_client)


def test_a_thousand_image_plan_keeps_every_xcom_small(s3_client):
    """What Airflow maps over and the ``prepared`` XCom stay far under 64 KB for 1,000 images
    (seen red with one unit per image, TILESCOPE_UNIT_SECONDS=0.04: 1,000 mapped items)."""
    s3_client.create_bucket(Bucket=BUCKET)
    body = tiny_jpeg(0)
    entries = []
    for i in range(1000):
        s3_client.put_object(Bucket=BUCKET, Key=f"in/{i:04d}.jpg", Body=body)
        entries.append({"uri": f"s3://{BUCKET}/in/{i:04d}.jpg"})
    mapped, prepared = prepare_batch(entries, PARAMS, client=s3_client, run="r-1000",
                                     model_slice_size=416, slice_seconds=0.04)
    assert len(json.dumps(mapped)) < 16 * 1024 and len(json.dumps(prepared.to_dict())) < 1024
    assert len(mapped) == 2  # 1,000 slices at 750 a unit, balanced: 500 + 500
    assert [m["slice_count"] for m in mapped] == [500, 500]
    assert mapped[0]["name"] == "in/0000.jpg … in/0499.jpg (500 images)"
    items = load_items(prepared, s3_client)
    assert len(items) == 1000 and all(i.whole and not i.bad for i in items)


def test_bad_inputs_are_marked_in_the_plan_and_settled_as_quarantined(s3_client, sql_url):
    from tilescope.intake.claims import QUARANTINED, claim, status_of
    from tilescope.models.nanodet import NanoDetModel
    from tilescope.outputs.catalog import connect

    s3_client.create_bucket(Bucket=BUCKET)
    s3_client.put_object(Bucket=BUCKET, Key="in/good.jpg", Body=tiny_jpeg(1, (300, 200)))
    s3_client.put_object(Bucket=BUCKET, Key="in/empty.jpg", Body=b"")
    s3_client.put_object(Bucket=BUCKET, Key="in/text.jpg", Body=b"hello")
    engine = connect(sql_url)
    entries = []
    for key in ("in/good.jpg", "in/empty.jpg", "in/text.jpg", "in/missing.jpg"):
        size = len(read_bytes(f"s3://{BUCKET}/{key}", s3_client)) if key != \
            "in/missing.jpg" else 1
        owned = claim(engine, BUCKET, key, f"etag-{key}", size)
        entries.append({"uri": f"s3://{BUCKET}/{key}", "claim": owned.to_dict()})
    mapped, prepared = prepare_batch(entries, PARAMS, client=s3_client, run="r-bad",
                                     model_slice_size=416)
    items = load_items(prepared, s3_client)
    assert [bool(i.bad) for i in items] == [False, True, True, True]
    assert "empty" in items[1].bad and "not an image" in items[2].bad
    assert "no such object" in items[3].bad
    with NanoDetModel() as model:
        findings = [analyze_unit(m, prepared, PARAMS, model, client=s3_client, budget=48_000)
                    for m in mapped]
    results = combine_batch(prepared, findings, PARAMS, "nanodet-coco", client=s3_client)
    summary, outcomes = store_batch(results, prepared, PARAMS, client=s3_client,
                                    catalog_url=sql_url, run_id="r-bad")
    assert [o.status for o in outcomes] == [STORED, BAD, BAD, BAD]
    assert summary.stored == 1 and summary.bad == 3
    for outcome in outcomes[1:3]:  # the ones a claim can move: still there, then moved
        s3_client.put_object(Bucket=BUCKET, Key=outcome.uri.split(f"{BUCKET}/")[1],
                             Body=b"" if "empty" in outcome.uri else b"hello")
    settled = settle_batch(prepared, client=s3_client, engine=engine, run_id="r-bad")
    assert [o.status for o in settled] == [STORED, BAD, BAD, BAD]
    assert status_of(engine, BUCKET, "in/text.jpg", "etag-in/text.jpg")["status"] == \
        QUARANTINED
    listed = s3_client.list_objects_v2(Bucket=BUCKET, Prefix="scratch/")
    assert listed.get("KeyCount", 0) == 0  # scratch removed once store has run


def test_screened_images_are_planned_without_a_read_and_checked_by_their_unit(s3_client):
    """Manifest entries with the arrivals screen's facts are planned without reading the
    image; the unit that reads it checks the facts: the true ones give the same result as a
    plan that read the image, a wrong SHA-256 or a wrong pixel size make that image bad (the
    others of the unit go on). Seen red: with ``_plan_screened`` disabled the preprocess read
    every image (gets == 1 each), and without the unit's size check the lying entry was
    analysed as a 64×48 image planned as 640×480."""
    from tilescope.intake.arrivals import whole_facts
    from tilescope.models.nanodet import NanoDetModel

    s3_client.create_bucket(Bucket=BUCKET)
    bodies = {name: tiny_jpeg(seed, (320, 240)) for seed, name in
              enumerate(("good", "other-sha", "other-size"))}
    entries = []
    for name, body in bodies.items():
        s3_client.put_object(Bucket=BUCKET, Key=f"in/{name}.jpg", Body=body)
        facts = whole_facts(body)
        if name == "other-sha":
            facts = {**facts, "sha256": "0" * 64}
        if name == "other-size":
            facts = {**facts, "width": 640, "height": 480}
        entries.append({"uri": f"s3://{BUCKET}/in/{name}.jpg", "screened": facts})
    counting = CountingClient(s3_client)
    mapped, prepared = prepare_batch(entries, PARAMS, client=counting, run="r-screened",
                                     model_slice_size=416)
    assert not any(k.startswith("in/") for k in counting.gets), counting.gets
    plain_mapped, plain = prepare_batch([{"uri": e["uri"]} for e in entries], PARAMS,
                                        client=s3_client, run="r-plain", model_slice_size=416)
    with NanoDetModel() as model:
        results = {}
        for run_mapped, run_prepared in ((mapped, prepared), (plain_mapped, plain)):
            findings = [analyze_unit(m, run_prepared, PARAMS, model, client=s3_client,
                                     budget=48_000) for m in run_mapped]
            uri = combine_batch(run_prepared, findings, PARAMS, "nanodet-coco",
                                client=s3_client)
            results[id(run_prepared)] = json.loads(read_bytes(uri, s3_client))["results"]
    screened, read = results[id(prepared)], results[id(plain)]
    assert [e["status"] for e in screened] == [STORED, BAD, BAD]
    assert "changed since it was planned" in screened[1]["error"]
    assert "planned as 640×480" in screened[2]["error"]
    assert [e["status"] for e in read] == [STORED, STORED, STORED]
    assert screened[0]["result"]["image"] == read[0]["result"]["image"]
    assert screened[0]["result"]["detections"] == read[0]["result"]["detections"]


def test_a_videos_frames_are_packed_into_units_with_the_other_images(s3_client, tmp_path,
                                                                      monkeypatch):
    """A batch's video is not mapped apart: its sampled frames are sources packed together
    with the photos' (a unit holds a photo and frames), and each still gets exactly the
    result of a run of its own — the video merged per frame. (Seen red with the batch's
    combine keeping one unit's regions per source: the frame split over both units lost
    regions and the video came back failed; and with frames numbered from 0, colliding
    with the photo's source.)"""
    from support.blob_model import BrightBlobModel, blob_image
    from support.video_samples import moving_blobs, write_video

    from tilescope.models import register_model
    from tilescope.pipeline import run_image
    from tilescope.readers import reader_for_bytes
    from tilescope.results import ImageInfo
    from tilescope.units import UNIT_SECONDS_ENV, WorkUnit
    from tilescope.video.decoder import VideoSource
    from tilescope.video.pipeline import run_video

    register_model("bright-blobs", BrightBlobModel)
    params = InferenceParams(model="bright-blobs", slice_size=256, overlap=0.3, grid="2x2",
                             score_threshold=0.1, video_fps=5)
    s3_client.create_bucket(Bucket=BUCKET)
    photo = io.BytesIO()
    Image.fromarray(blob_image(600, 400, 6, seed=3)[0]).save(photo, format="PNG")
    clip = write_video(tmp_path / "clip.avi", moving_blobs(12)[0], fps=10)
    inputs = {"in/a.png": photo.getvalue(), "in/clip.avi": clip.read_bytes()}
    for key, body in inputs.items():
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=body)
    entries = [{"uri": f"s3://{BUCKET}/{key}"} for key in inputs]
    monkeypatch.setenv(UNIT_SECONDS_ENV, str(40 * 0.04))  # 40 slices a unit
    mapped, prepared = prepare_batch(entries, params, client=s3_client, run="r-video",
                                     model_slice_size=256, slice_seconds=0.04)
    items = load_items(prepared, s3_client)
    assert items[0].whole and items[1].video and items[1].first_source == 2
    units = [WorkUnit.from_dict(m) for m in mapped]
    assert all("video" not in m and "unit" in m for m in mapped)
    # the photo and 6 frames (sources 2–7), the third frame's regions split over both units
    assert [u.sources for u in units] == [[0, 2, 3, 4], [4, 5, 6, 7]]
    assert [m["name"] for m in mapped] == ["in/a.png … in/clip.avi f4 (4 sources)",
                                           "in/clip.avi f4 … in/clip.avi f10 (4 frames)"]
    findings = [analyze_unit(m, prepared, params, BrightBlobModel(), client=s3_client,
                             budget=48_000) for m in mapped]
    results = combine_batch(prepared, findings, params, "bright-blobs", client=s3_client)
    summary, outcomes = store_batch(results, prepared, params, client=s3_client,
                                    catalog_url=None, run_id="r-video")
    assert [o.status for o in outcomes] == [STORED, STORED] and summary.stored == 2

    def stored(outcome) -> dict:
        return json.loads(read_bytes(outcome.keys["result"], s3_client))

    data = inputs["in/a.png"]
    reader = reader_for_bytes(data)
    info = ImageInfo(entries[0]["uri"], reader.width, reader.height,
                     items[0].image["sha256"], "PNG", len(data))
    alone = run_image(reader, info, params, BrightBlobModel())
    assert stored(outcomes[0])["detections"] == alone.to_dict()["detections"]
    video = stored(outcomes[1])
    with VideoSource(str(clip), container="AVI", name=entries[1]["uri"]) as source:
        info = ImageInfo(entries[1]["uri"], 640, 480, items[1].image["sha256"], "AVI",
                         len(inputs["in/clip.avi"]))
        local, _ = run_video(source, info, params, BrightBlobModel())
    assert video["detections"] == local.to_dict()["detections"]
    assert [f["detections"] for f in video["frames"]] == [3] * 6
    assert [r["name"] for r in video["regions"]] == [r.name for r in local.regions]
    settle_batch(prepared, client=s3_client, engine=None, run_id="r-video")
    assert s3_client.list_objects_v2(Bucket=BUCKET, Prefix="scratch/").get("KeyCount", 0) == 0


def test_the_run_limits_byte_budget_refuses_an_image_of_the_batch(s3_client):
    """The batch plans each image under the run's byte budget (``RunLimits.max_bytes``):
    the image over it is bad with the numbers, the other one is planned."""
    from tilescope.limits import RunLimits

    s3_client.create_bucket(Bucket=BUCKET)
    small, big = tiny_jpeg(1, (32, 24)), tiny_jpeg(2, (320, 240))
    s3_client.put_object(Bucket=BUCKET, Key="in/small.jpg", Body=small)
    s3_client.put_object(Bucket=BUCKET, Key="in/big.jpg", Body=big)
    entries = [{"uri": f"s3://{BUCKET}/in/small.jpg"}, {"uri": f"s3://{BUCKET}/in/big.jpg"}]
    _, prepared = prepare_batch(entries, PARAMS, client=s3_client, run="r-bytes",
                                model_slice_size=416,
                                limits=RunLimits(max_bytes=len(small)))
    items = load_items(prepared, s3_client)
    assert not items[0].bad
    assert f"{len(big):,} bytes, over the limit of {len(small):,}" in items[1].bad


def test_anonymize_on_a_batch_copies_each_image_in_store(s3_client, tmp_path):
    """``anonymize`` on a batch: store writes each image's anonymized copy beside its result
    — a small photo's from the original read again, a tiled TIFF's from its pixels read in
    place — with every region's detail gone (Laplacian variance down > 90 %), listed in its
    keys and result; a video in the batch is refused before anything is analysed. (Seen red
    with store_batch's anonymize step removed: no copy, no record; and with the video
    check removed: the batch was planned.)"""
    import cv2
    import numpy as np
    import tifffile
    from support.video_samples import moving_blobs, write_video

    from tilescope.models.nanodet import NanoDetModel
    from tilescope.samples import sample_array, sample_path

    params = InferenceParams(model="nanodet-coco", anonymize="person,horse")
    s3_client.create_bucket(Bucket=BUCKET)
    with open(sample_path("person"), "rb") as photo:
        s3_client.put_object(Bucket=BUCKET, Key="in/person.jpg", Body=photo.read())
    tifffile.imwrite(tmp_path / "horses.tif", sample_array("horses"), tile=(256, 256),
                     photometric="rgb")
    s3_client.put_object(Bucket=BUCKET, Key="in/horses.tif",
                         Body=(tmp_path / "horses.tif").read_bytes())
    entries = [{"uri": f"s3://{BUCKET}/in/person.jpg"}, {"uri": f"s3://{BUCKET}/in/horses.tif"}]
    mapped, prepared = prepare_batch(entries, params, client=s3_client, run="r-anon",
                                     model_slice_size=416)
    assert [i.whole for i in load_items(prepared, s3_client)] == [True, False]
    with NanoDetModel() as model:
        findings = [analyze_unit(m, prepared, params, model, client=s3_client, budget=48_000)
                    for m in mapped]
    results = combine_batch(prepared, findings, params, "nanodet-coco", client=s3_client)
    _, outcomes = store_batch(results, prepared, params, client=s3_client, catalog_url=None)
    originals = {"person": cv2.cvtColor(cv2.imread(str(sample_path("person"))),
                                        cv2.COLOR_BGR2RGB), "horses": sample_array("horses")}
    for outcome, name, ext in zip(outcomes, originals, ("jpg", "tif"), strict=True):
        doc = json.loads(read_bytes(outcome.keys["result"], s3_client))
        record = doc["anonymized"]
        assert outcome.keys["anonymized"] == record["uri"] and record["uri"].endswith(ext)
        data = read_bytes(record["uri"], s3_client)
        copy = tifffile.imread(io.BytesIO(data)) if ext == "tif" else cv2.cvtColor(
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert record["regions"] and copy.shape == originals[name].shape
        for x1, y1, x2, y2 in record["regions"]:
            before, after = (cv2.Laplacian(cv2.cvtColor(p[y1:y2, x1:x2], cv2.COLOR_RGB2GRAY),
                                           cv2.CV_64F).var() for p in (originals[name], copy))
            assert after < 0.1 * before, (name, (x1, y1, x2, y2), before, after)
        if ext == "tif":  # lossless: not one pixel outside the regions changed
            inside = np.zeros(copy.shape[:2], bool)
            for x1, y1, x2, y2 in record["regions"]:
                inside[y1:y2, x1:x2] = True
            assert np.array_equal(copy[~inside], originals[name][~inside])

    write_video(tmp_path / "clip.mp4", moving_blobs(3)[0])
    s3_client.put_object(Bucket=BUCKET, Key="in/clip.mp4",
                         Body=(tmp_path / "clip.mp4").read_bytes())
    with pytest.raises(ConfigError, match="is a video: anonymize works on images"):
        prepare_batch([*entries, {"uri": f"s3://{BUCKET}/in/clip.mp4"}], params,
                      client=s3_client, run="r-anon-video", model_slice_size=416)


def test_archive_facts_land_in_each_images_result_and_catalog_row(s3_client, tmp_path):
    """``archive_format`` on a batch: store encodes each image's archival copy — a small
    photo's from its original read again, a tiled TIFF's from its pixels read in place —
    records its facts in the image's ``result.json``, keys and catalog row, and only then
    deletes the originals (``keep_original=delete``); a photo changed since it was planned
    fails on its own and is left, the others are stored. (Seen red with ``_keep_copies`` not
    recording ``result.archive``: no facts, no row columns, no original deleted; and with
    the per-image failure re-raised: the whole store failed.)"""
    from pathlib import Path

    import tifffile

    from tilescope.archival import ArchivePolicy, decode
    from tilescope.models.nanodet import NanoDetModel
    from tilescope.outputs.catalog import connect, find_results
    from tilescope.samples import sample_array, sample_path
    from tilescope.storage import parse_s3_uri

    s3_client.create_bucket(Bucket=BUCKET)
    tifffile.imwrite(tmp_path / "horses.tif", sample_array("horses"), tile=(256, 256),
                     photometric="rgb")
    inputs = {"in/person.jpg": Path(sample_path("person")).read_bytes(),
              "in/horses.tif": (tmp_path / "horses.tif").read_bytes(),
              "in/dog.jpg": Path(sample_path("dog")).read_bytes()}
    for key, data in inputs.items():
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=data)
    entries = [{"uri": f"s3://{BUCKET}/{key}"} for key in inputs]
    mapped, prepared = prepare_batch(entries, PARAMS, client=s3_client, run="r-archive",
                                     model_slice_size=416)
    assert [i.whole for i in load_items(prepared, s3_client)] == [True, False, True]
    with NanoDetModel() as model:
        findings = [analyze_unit(m, prepared, PARAMS, model, client=s3_client, budget=48_000)
                    for m in mapped]
    results = combine_batch(prepared, findings, PARAMS, "nanodet-coco", client=s3_client)
    changed = tiny_jpeg(5, (320, 240))  # a new upload under the same key, after planning
    s3_client.put_object(Bucket=BUCKET, Key="in/dog.jpg", Body=changed)
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    summary, outcomes = store_batch(
        results, prepared, PARAMS, client=s3_client, catalog_url=catalog, run_id="r-archive",
        archive=ArchivePolicy("webp", quality=80, keep_original="delete"))

    assert [o.status for o in outcomes] == [STORED, STORED, "failed"]
    assert summary.stored == 2 and "changed since it was planned" in outcomes[2].error
    assert read_bytes(f"s3://{BUCKET}/in/dog.jpg", s3_client) == changed  # left alone
    rows = {row["image_uri"]: row for row in find_results(connect(catalog))}
    assert sorted(rows) == sorted(o.uri for o in outcomes[:2])
    for outcome, original in zip(outcomes[:2], inputs.values(), strict=False):
        doc = json.loads(read_bytes(outcome.keys["result"], s3_client))
        facts, row = doc["archive"], rows[outcome.uri]
        copy = read_bytes(facts["uri"], s3_client)
        assert outcome.keys["archive"] == facts["uri"] == row["archive_uri"]
        assert facts["uri"] == outcome.keys["result"].replace("result.json", "archive.webp")
        assert decode(copy, "webp").shape == (doc["image"]["height"], doc["image"]["width"], 3)
        assert (facts["format"], facts["quality"], facts["keep_original"]) == (
            "webp", 80, "delete")
        assert facts["bytes"] == len(copy) == row["archive_bytes"]
        assert facts["original_bytes"] == len(original)
        assert facts["bytes_saved"] == len(original) - len(copy) == row["bytes_saved"]
        assert row["archive_quality"] == 80 and row["archive_ssim"] == facts["ssim"] > 0.8
        assert row["result_keys"]["archive"] == facts["uri"]
        with pytest.raises(s3_client.exceptions.NoSuchKey):  # deleted once its copy was kept
            s3_client.get_object(Bucket=BUCKET, Key=parse_s3_uri(outcome.uri).key)
    batch_scratch = parse_s3_uri(prepared.scratch_prefix).key
    left = s3_client.list_objects_v2(Bucket=BUCKET, Prefix="scratch/").get("Contents", [])
    assert all(o["Key"].startswith(batch_scratch) for o in left)  # the TIFF's: removed


def test_two_originals_replaced_to_one_key_keep_the_second_original(s3_client):
    """``keep_original=replace`` puts ``incoming/a.jpg``'s and ``incoming/a.png``'s copies at
    ``processed/a.webp``: the first image takes the place, the second fails on its own with
    its original kept (its copy would have overwritten the first's, leaving ``a.jpg`` deleted
    for a copy of another picture). Seen red with the clash check off: the two copies raced
    for ``processed/a.webp`` and the whole store failed (``read back … is not what was
    written``); made one after the other, the later would have replaced the verified one."""
    from tilescope.archival import ArchivePolicy, decode
    from tilescope.models.nanodet import NanoDetModel

    s3_client.create_bucket(Bucket=BUCKET)
    png = io.BytesIO()
    Image.open(io.BytesIO(tiny_jpeg(7, (160, 120)))).save(png, format="PNG")
    inputs = {"incoming/a.jpg": tiny_jpeg(6, (160, 120)), "incoming/a.png": png.getvalue()}
    for key, data in inputs.items():
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=data)
    mapped, prepared = prepare_batch([{"uri": f"s3://{BUCKET}/{key}"} for key in inputs],
                                     PARAMS, client=s3_client, run="r-clash",
                                     model_slice_size=416)
    with NanoDetModel() as model:
        findings = [analyze_unit(m, prepared, PARAMS, model, client=s3_client, budget=48_000)
                    for m in mapped]
    results = combine_batch(prepared, findings, PARAMS, "nanodet-coco", client=s3_client)
    _, outcomes = store_batch(results, prepared, PARAMS, client=s3_client, catalog_url=None,
                              archive=ArchivePolicy("webp", 90, keep_original="replace"))
    assert [o.status for o in outcomes] == [STORED, "failed"]
    assert "would take processed/a.webp, the place of s3://batches/incoming/a.jpg's" in \
        outcomes[1].error
    assert read_bytes(f"s3://{BUCKET}/incoming/a.png", s3_client) == inputs["incoming/a.png"]
    with pytest.raises(s3_client.exceptions.NoSuchKey):
        s3_client.get_object(Bucket=BUCKET, Key="incoming/a.jpg")
    kept = decode(read_bytes(f"s3://{BUCKET}/processed/a.webp", s3_client), "webp")
    jpeg = np.asarray(Image.open(io.BytesIO(inputs["incoming/a.jpg"])).convert("RGB"))
    assert np.abs(kept.astype(int) - jpeg).mean() < 10  # a.jpg's picture (random noise)
