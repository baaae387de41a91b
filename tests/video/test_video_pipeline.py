"""The video stages on known ground truth and on Debian's real street video: per-frame merge
(never across frames), results with frame index and time, COCO per frame, the contact sheet,
and ``tilescope predict`` on a video."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from support.blob_model import BrightBlobModel
from support.video_samples import moving_blobs, vtest_path, write_video

from tilescope.cli import main
from tilescope.detections import Detections
from tilescope.errors import RegionsFailedError
from tilescope.models import register_model
from tilescope.outputs.contact_sheet import render_contact_sheet
from tilescope.outputs.overlay import category_colour
from tilescope.params import InferenceParams
from tilescope.pipeline import plan_image
from tilescope.previews import preview_format
from tilescope.results import ImageInfo, RegionFinding, Result, VideoFrame
from tilescope.video.decoder import VideoSource
from tilescope.video.pipeline import run_video, synthesize_video, video_units
from tilescope.video.sampling import SheetCells

register_model("bright-blobs", BrightBlobModel)
BLOBS = InferenceParams(model="bright-blobs", slice_size=256, overlap=0.3, grid="2x2",
                        score_threshold=0.1, video_fps=5)


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def blob_run(tmp_path_factory):
    """12 frames at 10 fps of three bright rectangles (one still), sampled at 5 fps."""
    frames, truth = moving_blobs(12)
    path = write_video(tmp_path_factory.mktemp("v") / "blobs.avi", frames, fps=10)
    model = BrightBlobModel()
    with VideoSource(str(path), container="AVI", name="blobs.avi") as source:
        info = ImageInfo("blobs.avi", 640, 480, "1" * 64, "AVI", path.stat().st_size)
        result, sheet = run_video(source, info, BLOBS, model)
    return result, sheet, truth, model


def test_every_object_found_once_per_frame_across_slice_and_region_borders(blob_run):
    result, _, truth, model = blob_run
    assert [f.frame_index for f in result.frames] == [0, 2, 4, 6, 8, 10]
    assert [f.timestamp_ms for f in result.frames] == [0, 200, 400, 600, 800, 1000]
    assert result.plan["regions"] == 4 and result.plan["units"] == 24
    assert model.slices_seen == 6 * result.plan["slices"]
    for position, frame in enumerate(result.frames):
        boxes = result.frame_detections(position).boxes.tolist()
        expected = truth[frame.frame_index]
        assert len(boxes) == len(expected), frame
        for gt in expected:
            assert max(iou(gt, b) for b in boxes) > 0.99
    # the rectangle that never moves is found on every frame, not merged into one
    still = [r for r in result.detection_records()
             if iou([200, 200, 260, 250], [r["bbox"][0], r["bbox"][1],
                                          r["bbox"][0] + r["bbox"][2],
                                          r["bbox"][1] + r["bbox"][3]]) > 0.99]
    assert [r["frame_index"] for r in still] == [0, 2, 4, 6, 8, 10]


def test_result_document_carries_frames_and_round_trips(blob_run):
    result, *_ = blob_run
    doc = result.to_dict()
    assert doc["video"]["sampled_frames"] == 6 and doc["video"]["sample_fps"] == 5
    assert doc["video"]["frame_count"] == 12 and doc["video"]["decoded_frames"] == 12
    assert doc["params"]["video_fps"] == 5
    assert doc["summary"]["frames"] == 6 and doc["summary"]["detections"] == 18
    assert [f["detections"] for f in doc["frames"]] == [3] * 6
    assert doc["frames"][1] == {"frame_index": 2, "timestamp_ms": 200.0, "detections": 3,
                                "counts": {"white": 3}, "failed_regions": []}
    assert all({"frame_index", "timestamp_ms"} <= d.keys() for d in doc["detections"])
    assert doc["regions"][5]["name"] == "f2.r0c1" and doc["regions"][5]["frame_index"] == 2
    again = Result.from_dict(json.loads(json.dumps(doc)))
    assert again.to_dict() == doc
    assert np.array_equal(again.detection_frames, result.detection_frames)


def test_image_results_have_no_video_fields():
    image = Result(ImageInfo("a.png", 10, 10, "2" * 64, "PNG", 1), "m", InferenceParams()
                   .to_dict(), {}, [], Detections.empty(), [])
    doc = image.to_dict()
    assert "video" not in doc and "frames" not in doc and "video_fps" not in doc["params"]
    assert "frames" not in doc["summary"]


def test_coco_has_one_image_per_frame(blob_run):
    result, *_ = blob_run
    coco = result.to_coco()
    assert [(i["id"], i["frame_index"], i["timestamp_ms"]) for i in coco["images"]] == [
        (k + 1, 2 * k, 200.0 * k) for k in range(6)]
    assert all(i["file_name"] == "blobs.avi" and (i["width"], i["height"]) == (640, 480)
               for i in coco["images"])
    per_image = {}
    for annotation in coco["annotations"]:
        per_image[annotation["image_id"]] = per_image.get(annotation["image_id"], 0) + 1
    assert per_image == {k + 1: 3 for k in range(6)}
    first = coco["annotations"][0]
    record = result.detection_records()[0]
    assert first["bbox"] == record["bbox"] and first["image_id"] == 1 + result.frames.index(
        VideoFrame(record["frame_index"], record["timestamp_ms"]))


def _finding(unit, boxes) -> RegionFinding:
    region = unit.region
    return RegionFinding(unit.index, unit.name, region.row, region.col, region.box.as_list(),
                         region.slice_count,
                         Detections(np.array(boxes, np.float32).reshape(-1, 4),
                                    np.full(len(boxes), 0.9), np.zeros(len(boxes))),
                         frame=unit.frame)


def test_units_are_every_region_of_every_frame_in_time_order():
    plan = plan_image(1920, 1080, InferenceParams(grid="2x2"), 416)
    frames = [VideoFrame(i * 30, i * 1000.0) for i in range(3)]
    units = video_units(frames, plan)
    assert [u.index for u in units] == list(range(12))
    assert [u.name for u in units[:5]] == ["f0.r0c0", "f0.r0c1", "f0.r1c0", "f0.r1c1",
                                           "f30.r0c0"]
    assert {u.region.index for u in units} == {0, 1, 2, 3}


def test_merging_never_crosses_frames_and_failed_units_count():
    frames = [VideoFrame(0, 0.0), VideoFrame(25, 1000.0), VideoFrame(50, 2000.0)]
    plan = plan_image(640, 480, InferenceParams(grid="1x2"), 416)
    units = video_units(frames, plan)
    box = [100, 100, 150, 150]
    # the same box from both regions of frame 0 (overlap) merges; frames 25 and 50 keep theirs
    findings = [_finding(units[0], [box]), _finding(units[1], [box]),
                _finding(units[2], [box]), _finding(units[4], [box, [300, 300, 340, 360]])]
    image = ImageInfo("v.mp4", 640, 480, "3" * 64, "MP4", 1)
    params = InferenceParams(min_success_ratio=0.8)
    with pytest.raises(RegionsFailedError, match=r"2 of 6 regions failed \(f25\.r0c1, "
                                                 r"f50\.r0c1\)"):
        synthesize_video(image, frames, plan, findings, params, model_name="m",
                         category_names=["thing"])
    result = synthesize_video(image, frames, plan, findings,
                              InferenceParams(min_success_ratio=0.5), model_name="m",
                              category_names=["thing"])
    assert result.status == "partial" and result.failed_regions == ["f25.r0c1", "f50.r0c1"]
    assert [f["detections"] for f in result.frame_summaries()] == [1, 1, 2]
    assert result.frame_summaries()[1]["failed_regions"] == ["f25.r0c1"]
    assert result.detection_frames.tolist() == [0, 1, 2, 2]


def test_sheet_cells_stay_few_and_evenly_spread():
    cells = SheetCells(limit=24, side=32)
    frame = np.zeros((48, 64, 3), np.uint8)
    held = 0
    for position in range(1000):
        cells.offer(position, frame)
        held = max(held, len(cells._cells))
    assert held < 48  # never more than twice what the sheet shows
    chosen = [p for p, _ in cells.chosen()]
    assert len(chosen) == 24 and chosen[0] == 0 and chosen[-1] >= 900
    gaps = np.diff(chosen)
    assert gaps.max() <= 2 * gaps.min()
    assert cells.chosen()[0][1].shape == (24, 32, 3)  # downscaled, aspect kept
    few = SheetCells(limit=24)
    for position in range(5):
        few.offer(position, frame)
    assert [p for p, _ in few.chosen()] == [0, 1, 2, 3, 4]


def test_contact_sheet_draws_each_frame_with_its_own_boxes(blob_run):
    result, sheet, *_ = blob_run
    cells = sheet.chosen()
    assert [p for p, _ in cells] == [0, 1, 2, 3, 4, 5]
    # lossless, so the 1-px outlines keep their colour exactly (WebP halves chroma)
    png = render_contact_sheet(result, cells, fmt=preview_format("png"))
    with Image.open(io.BytesIO(png)) as picture:
        canvas = np.asarray(picture.convert("RGB"))
    cell_w, cell_h = cells[0][1].shape[1], cells[0][1].shape[0]  # 320 × 240
    assert (cell_w, cell_h) == (320, 240)
    assert canvas.shape == (4 + 1 * (240 + 18 + 4), 4 + 6 * (320 + 4), 3)
    colour = np.array(category_colour(0))
    scale = cell_w / 640
    for number, frame in enumerate(result.frames):
        x0, y0 = 4 + number * (cell_w + 4), 4 + 18
        # the moving rectangle's left edge is outlined in the box colour on *this* frame
        left = round((20 + 37 * frame.frame_index) * scale)
        column = canvas[y0 + round(70 * scale):y0 + round(95 * scale), x0 + left]
        assert (np.abs(column.astype(int) - colour).sum(axis=1) < 40).mean() > 0.8, frame


def test_failed_regions_are_hatched_on_their_frame():
    frames = [VideoFrame(0, 0.0), VideoFrame(10, 1000.0)]
    plan = plan_image(640, 480, InferenceParams(grid="1x2"), 416)
    units = video_units(frames, plan)
    image = ImageInfo("v.mp4", 640, 480, "3" * 64, "MP4", 1)
    result = synthesize_video(image, frames, plan, [_finding(u, []) for u in units[:3]],
                              InferenceParams(min_success_ratio=0.5), model_name="m",
                              category_names=["thing"])
    grey = np.full((240, 320, 3), 128, np.uint8)
    with Image.open(io.BytesIO(render_contact_sheet(result, [(0, grey), (1, grey)]))) as p:
        canvas = np.asarray(p.convert("RGB")).astype(int)
    right_half = (slice(22 + 100, 22 + 140), slice(4 + 324 + 250, 4 + 324 + 300))
    red = canvas[right_half]
    assert (red[:, :, 0] - red[:, :, 1]).mean() > 20  # frame 10's failed r0c1: reddened
    healthy = canvas[22 + 100:22 + 140, 4 + 250:4 + 300]
    assert np.abs(healthy - 128).max() < 5  # frame 0: untouched


@pytest.fixture(scope="module")
def vtest():
    return vtest_path()


def test_nanodet_finds_pedestrians_on_sampled_frames_of_vtest(vtest):
    from tilescope.models.nanodet import NanoDetModel

    params = InferenceParams(model="nanodet-coco", video_fps=0.05)  # frames at 0, 20, 40, 60 s
    with VideoSource(str(vtest), container="AVI") as source, \
            NanoDetModel(score_threshold=params.score_threshold) as model:
        info = ImageInfo(str(vtest), 768, 576, "4" * 64, "AVI", vtest.stat().st_size)
        result, _ = run_video(source, info, params, model)
    assert [(f.frame_index, f.timestamp_ms) for f in result.frames] == [
        (0, 0.0), (200, 20000.0), (400, 40000.0), (600, 60000.0)]
    for summary in result.frame_summaries():
        assert summary["counts"].get("person", 0) >= 4, summary  # 5–9 people walk by
    people = [d for d in result.detection_records() if d["category_name"] == "person"]
    assert all(d["score"] >= 0.3 for d in people)
    for d in people:  # inside the frame
        x, y, w, h = d["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 768 and y + h <= 576
    upright = [d for d in people if d["bbox"][3] > d["bbox"][2]]
    assert len(upright) >= 0.8 * len(people)  # pedestrians are taller than wide


def test_cli_predicts_a_video(vtest, tmp_path, capsys):
    out, coco, overlay = tmp_path / "r.json", tmp_path / "c.json", tmp_path / "o.png"
    code = main(["predict", str(vtest), "--video-fps", "0.05", "--quiet", "--out", str(out),
                 "--coco", str(coco), "--overlay", str(overlay)])
    assert code == 0
    line = capsys.readouterr().out
    # 768×576 frames: 4 slices of the default CenterNet's 512 px (6 of NanoDet's 416)
    assert " in 4 frames × 4 slices / 4 units, " in line and "person" in line
    doc = json.loads(out.read_text())
    assert doc["image"]["format"] == "AVI" and len(doc["frames"]) == 4
    assert len(json.loads(coco.read_text())["images"]) == 4
    with Image.open(overlay) as sheet:
        assert sheet.size == (4 + 4 * 324, 4 + 262)


def test_cli_refuses_bad_video_input(vtest, tmp_path, capsys):
    assert main(["predict", str(vtest), "--video-fps", "0"]) == 2
    assert "video_fps must be in (0, 60], got 0" in capsys.readouterr().err
    cut = tmp_path / "cut.avi"
    cut.write_bytes(vtest.read_bytes()[:3_000_000])
    assert main(["predict", str(cut), "--quiet", "--video-fps", "0.05"]) == 2
    assert "is truncated or corrupt (AVI, MP43): its header declares 795 frames" in \
        capsys.readouterr().err
    assert main(["predict", str(vtest), "--quiet", "--video-fps", "10",
                 "--max-frames", "500"]) == 2
    assert "makes 795 frames, over the budget of 500" in capsys.readouterr().err
