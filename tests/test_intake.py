"""Taking arrivals in: claim, screen, limit per tick, re-offer unfinished claims, settle."""

from __future__ import annotations

import pytest

from tilescope.catalog import connect
from tilescope.claims import FAILED, PROCESSED, QUARANTINED, claim, status_of
from tilescope.intake import (
    IntakePolicy,
    claim_arrivals,
    mark_triggered,
    settle,
    trigger_requests,
)

BUCKET = "intake"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


@pytest.fixture
def env(s3_client, tmp_path):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client, connect(f"sqlite:///{tmp_path / 'c.sqlite'}")


def keys(s3, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
                  .get("Contents", []))


def test_claims_images_quarantines_the_rest_and_respects_the_tick_limit(env):
    s3, engine = env
    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"incoming/{i}.jpg", Body=JPEG + bytes([i]))
    s3.put_object(Bucket=BUCKET, Key="incoming/readme.txt", Body=b"hello")
    policy = IntakePolicy(per_tick_limit=3)
    claims, rejected = claim_arrivals(s3, engine, BUCKET, policy, run_id="tick1")
    assert len(claims) == 3 and rejected == []
    claims2, rejected2 = claim_arrivals(s3, engine, BUCKET, policy, run_id="tick2")
    # the 3 unfinished ones are re-offered first (same run ids), so no room for new ones
    assert [c.run_id for c in claims2] == [c.run_id for c in claims] and rejected2 == []
    assert mark_triggered(engine, claims) == 3
    claims3, rejected3 = claim_arrivals(s3, engine, BUCKET, policy, run_id="tick3")
    assert len(claims3) == 2 and [r["key"] for r in rejected3] == ["incoming/readme.txt"]
    assert keys(s3, "quarantine/") == ["quarantine/readme.txt", "quarantine/readme.txt.error.json"]
    requests = trigger_requests(claims3)
    assert requests[0]["trigger_run_id"].startswith("arrival__")
    assert requests[0]["conf"]["image_uri"].startswith(f"s3://{BUCKET}/incoming/")
    assert claim_arrivals(s3, engine, BUCKET, policy)[0] == claims3  # still unfinished


def test_an_object_deleted_after_listing_is_skipped(env, monkeypatch):
    s3, engine = env
    s3.put_object(Bucket=BUCKET, Key="incoming/gone.jpg", Body=JPEG)
    import tilescope.intake as intake

    real_screen = intake.screen

    def screen_after_delete(client, arrival, suffixes):
        client.delete_object(Bucket=BUCKET, Key=arrival.key)  # a concurrent mover wins
        return real_screen(client, arrival, suffixes)

    monkeypatch.setattr(intake, "screen", screen_after_delete)
    claims, rejected = claim_arrivals(s3, engine, BUCKET, IntakePolicy())
    assert claims == [] and rejected == []


def test_settle_moves_or_releases(env):
    s3, engine = env
    etag = s3.put_object(Bucket=BUCKET, Key="incoming/a.jpg", Body=JPEG)["ETag"]
    owned = claim(engine, BUCKET, "incoming/a.jpg", etag, len(JPEG))
    mark_triggered(engine, [owned])
    assert settle(s3, engine, owned, stored=False) == FAILED
    assert keys(s3, "incoming/") == ["incoming/a.jpg"]  # stays for another attempt
    assert settle(s3, engine, owned, stored=True) == PROCESSED
    assert keys(s3, "incoming/") == [] and keys(s3, "processed/") == ["processed/a.jpg"]
    assert status_of(engine, BUCKET, "incoming/a.jpg", etag)["status"] == PROCESSED


def test_settle_keeps_a_quarantine(env):
    from tilescope.claims import mark

    s3, engine = env
    etag = s3.put_object(Bucket=BUCKET, Key="incoming/b.jpg", Body=JPEG)["ETag"]
    owned = claim(engine, BUCKET, "incoming/b.jpg", etag, len(JPEG))
    mark(engine, owned, QUARANTINED, error="BadImageError: truncated")
    assert settle(s3, engine, owned, stored=False) == QUARANTINED
    assert status_of(engine, BUCKET, "incoming/b.jpg", etag)["status"] == QUARANTINED
