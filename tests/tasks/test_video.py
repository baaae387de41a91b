"""The DAG's steps on a video without Airflow, against a real S3 server (moto): one decode in
preprocess, frames staged as tiled TIFFs, the frames' regions packed into work units, per-frame
synthesis, the contact sheet stored, scratch removed — and the same result as the one-process
CLI path."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from support.blob_model import BrightBlobModel
from support.video_samples import moving_blobs, vtest_path, write_video

from tilescope.errors import BadImageError, ConfigError, RegionsFailedError
from tilescope.limits import RunLimits
from tilescope.models import register_model
from tilescope.params import InferenceParams
from tilescope.results import ImageInfo
from tilescope.tasks.image import XCOM_BUDGET_BYTES, combine, prepare, save_result, store
from tilescope.tasks.video import analyze_frames
from tilescope.units import UNIT_SECONDS_ENV, WorkUnit
from tilescope.video.decoder import VideoSource
from tilescope.video.pipeline import run_video

register_model("bright-blobs", BrightBlobModel)
BUCKET = "videos"
RUN = "manual__2026-11-21T00:00:00+00:00"
PARAMS = InferenceParams(model="bright-blobs", slice_size=256, overlap=0.3, grid="2x2",
                         score_threshold=0.1, video_fps=5)


@pytest.fixture
def bucket(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


@pytest.fixture(scope="module")
def blobs_avi(tmp_path_factory):
    frames, truth = moving_blobs(12)
    return write_video(tmp_path_factory.mktemp("v") / "blobs.avi", frames, fps=10), truth


def put(client, key: str, data: bytes) -> str:
    client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def slices_per_unit(monkeypatch, slices: int) -> None:
    """Work units of ``slices`` slices (the blob model costs the default 0.04 s a slice)."""
    monkeypatch.setenv(UNIT_SECONDS_ENV, str(slices * 0.04))


def analyze(unit, prepared, params, client, **kwargs):
    return analyze_frames(unit, prepared, params, BrightBlobModel(), client=client,
                          budget=XCOM_BUDGET_BYTES, **kwargs)


def found(finding) -> int:
    """Region findings in a unit's finding dict."""
    return sum(len(regions) for regions in finding["sources"].values())


def keys(client, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
            .get("Contents", [])]


def run_steps(client, uri: str, params: InferenceParams, tmp_path, *, drop: set[int] = ()):
    """prepare → analyze (each unit, except ``drop``) → combine → store, as the DAG does."""
    units, prepared = prepare(uri, params, client=client, run=RUN, model_slice_size=256)
    findings = [analyze(c, prepared, params, client) for c in units if c["index"] not in drop]
    result = combine(prepared, findings, params, "bright-blobs", client=client)
    summary = store(save_result(result, prepared.scratch_prefix, client), prepared, params,
                    client=client, catalog_url=f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    return prepared, units, findings, result, summary


def test_video_through_the_steps_equals_the_one_process_path(bucket, blobs_avi, tmp_path,
                                                             monkeypatch):
    path, _ = blobs_avi
    data = path.read_bytes()
    uri = put(bucket, "incoming/clip.bin", data)  # no telling suffix: the bytes decide
    slices_per_unit(monkeypatch, 36)  # 6 frames × 12 slices → 2 units
    prepared, units, findings, _, summary = run_steps(bucket, uri, PARAMS, tmp_path)

    assert prepared.image.format == "AVI" and prepared.plan["regions"] == 4
    assert [c["name"] for c in units] == ["f0.r0c0–f4.r1c1", "f6.r0c0–f10.r1c1"]
    assert [c["slice_count"] for c in units] == [36, 36]
    assert len(json.dumps(prepared.to_dict())) < 8 * 1024 and len(json.dumps(units)) < 8 * 1024
    assert all(len(json.dumps(f)) < XCOM_BUDGET_BYTES for f in findings)
    assert [found(f) for f in findings] == [12, 12]
    assert [WorkUnit.from_dict(c).sources for c in units] == [[0, 1, 2], [3, 4, 5]]
    assert summary.status == "complete" and summary.detections == 18
    # six staged frames, the sheet cells, the first-frame thumbnail, the parked result
    assert summary.regions == 24 and summary.scratch_objects_deleted == 6 + 3

    # the stored documents
    prefix = f"results/{prepared.image.image_id}/{PARAMS.digest()}/"
    assert sorted(keys(bucket, prefix)) == sorted(
        prefix + n for n in ("result.json", "coco.json", "overlay.webp", "thumbnail.webp"))
    doc = json.loads(bucket.get_object(Bucket=BUCKET, Key=prefix + "result.json")["Body"]
                     .read())
    assert [f["frame_index"] for f in doc["frames"]] == [0, 2, 4, 6, 8, 10]
    assert [f["detections"] for f in doc["frames"]] == [3] * 6
    coco = json.loads(bucket.get_object(Bucket=BUCKET, Key=prefix + "coco.json")["Body"].read())
    assert len(coco["images"]) == 6 and len(coco["annotations"]) == 18
    overlay = bucket.get_object(Bucket=BUCKET, Key=prefix + "overlay.webp")["Body"].read()
    with Image.open(io.BytesIO(overlay)) as sheet:
        assert sheet.format == "WEBP"
        assert sheet.size == (4 + 6 * 324, 4 + 262)  # six annotated 320×240 frames
    with Image.open(io.BytesIO(bucket.get_object(
            Bucket=BUCKET, Key=prefix + "thumbnail.webp")["Body"].read())) as first:
        assert first.size == (640, 480)  # the first sampled frame
    assert keys(bucket, "scratch/") == []

    # the CLI's path: the very same detections, frames and units
    with VideoSource(str(path), container="AVI", name=uri) as source:
        info = ImageInfo(uri, 640, 480, prepared.image.sha256, "AVI", len(data))
        local, _ = run_video(source, info, PARAMS, BrightBlobModel())
    assert doc["detections"] == local.to_dict()["detections"]
    assert doc["frames"] == local.to_dict()["frames"]
    assert [r["name"] for r in doc["regions"]] == [r.name for r in local.regions]


def test_frames_are_staged_once_and_units_read_only_their_frames(bucket, blobs_avi,
                                                                 monkeypatch):
    path, _ = blobs_avi
    uri = put(bucket, "incoming/blobs.avi", path.read_bytes())
    slices_per_unit(monkeypatch, 12)  # a frame per unit
    regions, prepared = prepare(uri, PARAMS, client=bucket, run=RUN, model_slice_size=256)
    staged = sorted(k for k in keys(bucket, "scratch/") if "/frames/" in k)
    assert [k.rsplit("/", 1)[1] for k in staged] == [
        f"{i:07d}.tif" for i in (0, 2, 4, 6, 8, 10)]
    assert len(regions) == 6
    requests = []
    bucket.meta.events.register("before-parameter-build.s3.GetObject",
                                lambda params, **_: requests.append(params["Key"]))
    whole = analyze(regions[2], prepared, PARAMS, bucket)
    assert [k.rsplit("/", 1)[1] for k in requests] == ["0000004.tif"]  # one GET, whole
    # frames too large to fetch whole are read band by band with ranged GETs instead
    requests.clear()
    monkeypatch.setattr("tilescope.tasks.video.WHOLE_FRAME_BYTES", 0)
    banded = analyze(regions[2], prepared, PARAMS, bucket)
    assert {k.rsplit("/", 1)[1] for k in requests} == {"0000004.tif"} and len(requests) > 1
    assert list(whole["sources"]) == ["2"] and found(whole) == 4
    assert [f["detections"] for f in banded["sources"]["2"]] == [
        f["detections"] for f in whole["sources"]["2"]]


def test_a_failed_unit_leaves_its_regions_failed(bucket, blobs_avi, tmp_path, monkeypatch):
    path, _ = blobs_avi
    uri = put(bucket, "incoming/blobs.avi", path.read_bytes())
    slices_per_unit(monkeypatch, 24)  # 3 units of 2 frames
    with pytest.raises(RegionsFailedError, match=r"8 of 24 regions failed \(f4\.r0c0, "):
        run_steps(bucket, uri, PARAMS, tmp_path, drop={1})
    params = InferenceParams(**{**PARAMS.to_dict(), "min_success_ratio": 0.6})
    *_, result, summary = run_steps(bucket, uri, params, tmp_path, drop={1})
    assert summary.status == "partial" and len(result.failed_regions) == 8
    frames = result.frame_summaries()
    assert [f["detections"] for f in frames] == [3, 3, 0, 0, 3, 3]
    assert frames[2]["failed_regions"] == ["f4.r0c0", "f4.r0c1", "f4.r1c0", "f4.r1c1"]


def test_bad_videos_are_refused_and_leave_no_scratch(bucket, tmp_path):
    vtest = vtest_path()
    data = vtest.read_bytes()
    cut = put(bucket, "incoming/cut.avi", data[: len(data) // 2])
    with pytest.raises(BadImageError, match=r"s3://videos/incoming/cut\.avi is truncated or "
                                            r"corrupt \(AVI, MP43\): its header declares 795 "
                                            r"frames, 399 could be decoded"):
        prepare(cut, InferenceParams(video_fps=0.1), client=bucket, run=RUN,
                model_slice_size=416)
    assert keys(bucket, "scratch/") == []  # the frames staged before the end: removed
    whole = put(bucket, "incoming/vtest.mp4", data)  # the name says MP4, the bytes AVI
    with pytest.raises(ConfigError, match="makes 795 frames, over the budget of 100"):
        prepare(whole, InferenceParams(video_fps=30), client=bucket, run=RUN,
                model_slice_size=416, limits=RunLimits(max_frames=100))
    with pytest.raises(ConfigError, match="full_image_pass is not supported for video"):
        prepare(whole, InferenceParams(full_image_pass=True), client=bucket, run=RUN,
                model_slice_size=416)
    assert keys(bucket, "scratch/") == []


def test_frames_split_across_units_still_merge_per_frame(bucket, blobs_avi, tmp_path,
                                                        monkeypatch):
    """Units cut through frames (9 slices a unit, 12 a frame): a frame's regions come back
    from two units and are merged together — per frame, never across frames — into exactly
    the one-process path's detections. (Seen red with combine_video keeping only the last
    unit's regions of a frame: 12 of 24 regions failed.)"""
    path, _ = blobs_avi
    data = path.read_bytes()
    uri = put(bucket, "incoming/split.avi", data)
    slices_per_unit(monkeypatch, 9)
    prepared, units, _, result, _ = run_steps(bucket, uri, PARAMS, tmp_path)
    parts = [WorkUnit.from_dict(u).parts for u in units]
    assert len(units) == 8 and [(p.source, p.first, p.stop) for p in parts[1]] == [
        (0, 3, 4), (1, 0, 2)]  # frame 0's last region, then half of frame 1
    with VideoSource(str(path), container="AVI", name=uri) as source:
        info = ImageInfo(uri, 640, 480, prepared.image.sha256, "AVI", len(data))
        local, _ = run_video(source, info, PARAMS, BrightBlobModel())
    assert result.to_dict()["detections"] == local.to_dict()["detections"]
    assert [r.name for r in result.regions] == [r.name for r in local.regions]


def test_units_stay_within_the_region_budget(bucket, blobs_avi, monkeypatch):
    """However small a unit, a video maps at most ``max_regions`` tasks (seen red with
    frame_units not passing max_units: 24 units)."""
    path, _ = blobs_avi
    uri = put(bucket, "incoming/capped.avi", path.read_bytes())
    slices_per_unit(monkeypatch, 1)
    regions, _ = prepare(uri, PARAMS, client=bucket, run=RUN, model_slice_size=256,
                         limits=RunLimits(max_regions=5))
    units = [WorkUnit.from_dict(u) for u in regions]
    assert len(units) == 5 and sum(u.slice_count for u in units) == 72
    covered = [(p.source, r) for u in units for p in u.parts for r in range(p.first, p.stop)]
    assert covered == [(f, r) for f in range(6) for r in range(4)]


def test_arrivals_accept_videos_by_their_bytes(bucket, blobs_avi):
    from tilescope.intake.arrivals import list_arrivals, screen

    path, _ = blobs_avi
    put(bucket, "incoming/street.avi", path.read_bytes())
    put(bucket, "incoming/clip.MP4", b"\x00\x00\x00\x1cftypisom" + b"\x00" * 64)
    put(bucket, "incoming/fake.mp4", b"<!DOCTYPE html><html>not found</html>")
    reasons = {a.key: screen(bucket, a) for a in list_arrivals(bucket, BUCKET)}
    assert reasons["incoming/street.avi"] is None and reasons["incoming/clip.MP4"] is None
    assert reasons["incoming/fake.mp4"] == "not an image: content starts with '<!DOCTYPE ht'"


def test_results_viewer_shapes_a_video_run(bucket, blobs_avi, tmp_path, monkeypatch):
    """The viewer draws the first sampled frame (the run's thumbnail) with that frame's
    boxes, and work units as cells of the frame (their live states)."""
    from tilescope.viewer.shaping import finding_payload, plan_payload, result_payload

    path, truth = blobs_avi
    uri = put(bucket, "incoming/blobs.avi", path.read_bytes())
    slices_per_unit(monkeypatch, 36)
    prepared, units, findings, result, _ = run_steps(bucket, uri, PARAMS, tmp_path)
    plan = plan_payload(units, prepared.to_dict())  # the viewer reads the XCom
    assert plan["image"]["width"] == 640 and [r["box"] for r in plan["regions"]] == [
        [0, 0, 640, 480]] * 2
    assert finding_payload(findings[0])["boxes"] == []  # region boxes travel inside the unit
    shown = result_payload(result.to_dict())
    assert len(shown["boxes"]) == 3
    for gt in truth[0]:
        assert any(abs(b[0] - gt[0]) < 1 and abs(b[3] - gt[3]) < 1 for b in shown["boxes"])


@pytest.mark.contract
def test_moderation_gate_looks_at_the_sampled_frames(bucket, blobs_avi, tmp_path,
                                                     monkeypatch):
    """The gate sees the contact sheet's frames (one call per video); a blocked video
    leaves nothing staged and is recorded as a blocked result."""
    import base64

    from support import cloud_wire as wire

    from tilescope.errors import ImageBlockedError
    from tilescope.moderation import ModerationPolicy
    from tilescope.tasks.image import record_blocked

    def reply(*labels):
        return wire.Reply(200, {"ModerationLabels": [
            {"Name": n, "ParentName": p, "Confidence": c, "TaxonomyLevel": 2}
            for n, p, c in labels], "ModerationModelVersion": "7.0"},
            content_type="application/x-amz-json-1.1")

    path, _ = blobs_avi
    uri = put(bucket, "incoming/blobs.avi", path.read_bytes())
    with wire.LocalServer(signing_service="rekognition") as server:
        wire.aws_connection(monkeypatch, "moderation_test", server.url)
        gate = ModerationPolicy.from_options("rekognition", {
            "conn_id": "moderation_test", "base_delay": 0.01, "max_delay": 0.05})
        server.queue.append(reply(("Graphic Violence", "Violence", 99.0)))
        with pytest.raises(ImageBlockedError, match="Graphic Violence") as caught:
            prepare(uri, PARAMS, client=bucket, run="r1", model_slice_size=256,
                    moderation=gate)
        assert keys(bucket, "scratch/") == []
        sent = base64.b64decode(server.requests[-1].json()["Image"]["Bytes"])
        with Image.open(io.BytesIO(sent)) as seen:
            assert seen.size == (6 * 320, 240)  # the six sampled frames side by side
        record = record_blocked(caught.value, PARAMS, client=bucket, catalog_url=None)
        doc = json.loads(bucket.get_object(Bucket=BUCKET, Key=record.split(
            f"{BUCKET}/", 1)[1])["Body"].read())
        assert doc["status"] == "blocked" and doc["image"]["format"] == "AVI"
        server.queue.append(reply())
        _, prepared = prepare(uri, PARAMS, client=bucket, run="r2", model_slice_size=256,
                              moderation=gate)
        assert prepared.moderation["blocked"] is False
