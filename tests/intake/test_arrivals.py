"""Arrival screening and moves against a real S3 server: nothing is ever lost."""

from __future__ import annotations

import json

import pytest

from tilescope.intake.arrivals import (
    Arrival,
    destination,
    list_arrivals,
    move_to_processed,
    quarantine,
    screen,
)

BUCKET = "arrivals"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100


@pytest.fixture
def s3(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


def put(s3, key: str, body: bytes) -> Arrival:
    etag = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')
    return Arrival(BUCKET, key, etag, len(body))


def keys(s3, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
                  .get("Contents", []))


@pytest.mark.parametrize("key", ["incoming/a.jpg", "incoming/with space/é ü 東京.jpg",
                                 "incoming/" + "deep/" * 20 + "x.jpg",
                                 "incoming/" + "n" * 600 + ".jpg"])
def test_listing_finds_awkward_keys(s3, key):
    put(s3, key, JPEG)
    s3.put_object(Bucket=BUCKET, Key="incoming/folder/", Body=b"")  # a "folder" marker
    s3.put_object(Bucket=BUCKET, Key="other/x.jpg", Body=JPEG)
    found = list_arrivals(s3, BUCKET)
    assert [a.key for a in found] == [key] and found[0].size == len(JPEG)
    assert screen(s3, found[0]) is None


@pytest.mark.parametrize(("key", "body", "reason"), [
    ("incoming/empty.jpg", b"", "empty object"),
    ("incoming/notes.txt", b"hello", "not an image suffix"),
    ("incoming/error.png", b"<html><body>502</body></html>", "not an image: content"),
    ("incoming/text.jpg", b"just words", "not an image: content"),
])
def test_screen_refuses_non_images_with_a_reason(s3, key, body, reason):
    assert reason in screen(s3, put(s3, key, body))


def test_quarantine_keeps_the_original_and_the_reason(s3):
    arrival = put(s3, "incoming/sub dir/bad ü.jpg", b"not a jpeg")
    target = quarantine(s3, BUCKET, arrival.key, arrival.etag, reason="not an image",
                        error_class="BadImageError", run_id="r1")
    assert target == "quarantine/sub dir/bad ü.jpg"
    assert keys(s3) == ["quarantine/sub dir/bad ü.jpg", "quarantine/sub dir/bad ü.jpg.error.json"]
    assert s3.get_object(Bucket=BUCKET, Key=target)["Body"].read() == b"not a jpeg"
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=target + ".error.json")["Body"].read())
    assert record["reason"] == "not an image" and record["error_class"] == "BadImageError"
    assert record["run_id"] == "r1" and record["key"] == arrival.key and record["time"]


def test_processed_move_is_copy_then_delete(s3):
    arrival = put(s3, "incoming/ok.jpg", JPEG)
    assert move_to_processed(s3, BUCKET, arrival.key, arrival.etag) == "processed/ok.jpg"
    assert keys(s3) == ["processed/ok.jpg"]
    assert s3.get_object(Bucket=BUCKET, Key="processed/ok.jpg")["Body"].read() == JPEG


def test_a_newer_version_under_the_same_key_is_never_deleted(s3):
    old = put(s3, "incoming/same.jpg", JPEG)
    put(s3, "incoming/same.jpg", JPEG + b"new")  # re-uploaded while the old one ran
    assert move_to_processed(s3, BUCKET, old.key, old.etag) is None
    assert keys(s3) == ["incoming/same.jpg"]  # the new version waits for its own claim
    assert quarantine(s3, BUCKET, old.key, old.etag, reason="x", error_class="E",
                      run_id=None) is None
    assert keys(s3) == ["incoming/same.jpg"]


def test_destination_keeps_the_path_below_incoming():
    assert destination("incoming/a/b.jpg", "processed/") == "processed/a/b.jpg"
    assert destination("elsewhere/b.jpg", "quarantine/") == "quarantine/elsewhere/b.jpg"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"])
def test_the_screen_reads_the_pixel_size_from_the_same_ranged_get(s3, fmt):
    import io

    from PIL import Image

    from tilescope.intake.arrivals import inspect

    out = io.BytesIO()
    Image.new("RGB", (1234, 567), (10, 200, 30)).save(out, format=fmt)
    seen = inspect(s3, put(s3, f"incoming/x.{fmt.lower()}", out.getvalue()))
    assert (seen.reason, seen.width, seen.height, seen.video) == (None, 1234, 567, False)


def test_the_screen_passes_videos_without_a_size(s3):
    from tilescope.intake.arrivals import inspect

    mp4 = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 100
    seen = inspect(s3, put(s3, "incoming/clip.mp4", mp4))
    assert seen.reason is None and seen.video and seen.width is None


def test_the_screen_does_not_trust_a_wrong_size(s3):
    """A claim or notification may carry a wrong size (0 from a notification without one):
    the ranged GET asks for the head whatever the size says."""
    from tilescope.intake.arrivals import inspect

    real = put(s3, "incoming/sized.jpg", JPEG)
    seen = inspect(s3, Arrival(BUCKET, real.key, real.etag, 1))
    assert seen.reason is None


def test_the_screen_reads_a_whole_small_image_as_the_pipeline_will(s3):
    """A photo that fits in the screen's ranged GET comes back whole: its SHA-256, byte size,
    format and *oriented* pixel size are what the pipeline's own reader reports (an EXIF
    rotation swaps the sides), so a batch run can plan it without reading it again. Seen red
    with the header's raw size instead of the reader's (300×200 for the rotated photo)."""
    import io

    from PIL import Image

    from tilescope.intake.arrivals import HEAD_BYTES, inspect
    from tilescope.readers import open_image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: shown 200 wide, 300 high
    out = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 40, 10)).save(out, format="JPEG", exif=exif)
    arrival = put(s3, "incoming/rotated.jpg", out.getvalue())
    seen = inspect(s3, arrival)
    _, info = open_image(arrival.uri, client=s3)
    assert seen.facts == {"sha256": info.sha256, "bytes": info.bytes, "format": info.format,
                          "width": info.width, "height": info.height}
    assert (info.width, info.height) == (200, 300)
    big = io.BytesIO()
    Image.effect_noise((400, 400), 60).convert("RGB").save(big, format="PNG")
    assert len(big.getvalue()) > HEAD_BYTES
    assert inspect(s3, put(s3, "incoming/big.png", big.getvalue())).facts is None
    tiff = io.BytesIO()
    Image.new("RGB", (64, 64)).save(tiff, format="TIFF")
    assert inspect(s3, put(s3, "incoming/t.tif", tiff.getvalue())).facts is None
    assert inspect(s3, put(s3, "incoming/fake.jpg", JPEG)).facts is None  # unreadable header
