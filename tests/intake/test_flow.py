"""Taking arrivals in: claim (in bulk), screen, limit per tick, batch, re-offer unfinished
claims (as the same batch after a claimer killed between claim and trigger), manifests,
settle."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from collections import Counter

import pytest
from PIL import Image
from support.claimer import KILL_POINTS, kill_claimer_at

from tilescope.intake.claims import (
    CLAIMED,
    FAILED,
    PROCESSED,
    QUARANTINED,
    TRIGGERED,
    Claim,
    all_claims,
    batch_run_id,
    status_of,
)
from tilescope.intake.flow import (
    ArrivalIntake,
    Batch,
    IntakePolicy,
    batch_requests,
    claim_arrivals,
    estimate_slices,
    mark_batches_triggered,
    mark_triggered,
    plan_batches,
    settle,
    take_arrivals,
    trigger_requests,
)
from tilescope.outputs.catalog import connect

BUCKET = "intake"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
XCOM_LIMIT = 64 * 1024


@pytest.fixture
def env(s3_client, tmp_path):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client, connect(f"sqlite:///{tmp_path / 'c.sqlite'}")


def keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def png(width: int, height: int) -> bytes:
    """A real PNG of this size (flat colour: a few hundred bytes, whatever the size)."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 160)).save(out, format="PNG")
    return out.getvalue()


def manifest_of(s3, batch) -> dict:
    bucket, _, key = batch.manifest_uri.removeprefix("s3://").partition("/")
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def slices_of(width: int, height: int) -> int:
    from tilescope.params import InferenceParams
    from tilescope.pipeline import plan_image

    return plan_image(width, height, InferenceParams(), 416).slice_count


# --- one tick: claim, screen, batch -------------------------------------------------------

def test_claims_images_quarantines_the_rest_and_respects_the_tick_limit(env):
    s3, engine = env
    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"incoming/{i}.jpg", Body=JPEG + bytes([i]))
    s3.put_object(Bucket=BUCKET, Key="incoming/readme.txt", Body=b"hello")
    policy = IntakePolicy(per_tick_limit=3)
    first = take_arrivals(s3, engine, BUCKET, policy, run_id="tick1")
    assert len(first.claims) == 3 and first.rejected == [] and len(first.batches) == 1
    (batch,) = first.batches
    assert batch.run_id.startswith("arrivals__") and batch.run_id == batch_run_id(batch.claims)
    assert {r["run_id"] for r in all_claims(engine)} == {batch.run_id}  # stored in the rows
    # Not marked triggered (the trigger never happened): the next tick offers the same batch.
    second = take_arrivals(s3, engine, BUCKET, policy, run_id="tick2")
    assert [b.run_id for b in second.batches] == [batch.run_id] and second.rejected == []
    assert set(second.batches[0].claims) == set(batch.claims)
    assert mark_batches_triggered(engine, [batch.run_id]) == 3
    third = take_arrivals(s3, engine, BUCKET, policy, run_id="tick3")
    assert len(third.claims) == 2 and [r["key"] for r in third.rejected] == ["incoming/readme.txt"]
    assert keys(s3, "quarantine/") == ["quarantine/readme.txt", "quarantine/readme.txt.error.json"]
    (request,) = batch_requests(third.batches)
    assert request == {"trigger_run_id": third.batches[0].run_id,
                       "conf": {"manifest": f"s3://{BUCKET}/manifests/"
                                            f"{third.batches[0].run_id}.json"}}
    again = take_arrivals(s3, engine, BUCKET, policy)  # still unfinished: the same batch
    assert [(b.run_id, set(b.claims)) for b in again.batches] == [
        (b.run_id, set(b.claims)) for b in third.batches]
    assert {r["status"] for r in all_claims(engine)} == {TRIGGERED, CLAIMED, QUARANTINED}


def test_claim_arrivals_still_returns_single_claims(env):
    """The unbatched form (tests and tools that trigger one run per image)."""
    s3, engine = env
    s3.put_object(Bucket=BUCKET, Key="incoming/a.jpg", Body=JPEG)
    claims, rejected = claim_arrivals(s3, engine, BUCKET, IntakePolicy())
    assert [c.key for c in claims] == ["incoming/a.jpg"] and rejected == []
    assert claims[0].batch_run_id is None and status_of(
        engine, BUCKET, "incoming/a.jpg", claims[0].etag)["run_id"] is None
    (request,) = trigger_requests(claims)
    assert request["trigger_run_id"].startswith("arrival__")
    assert request["conf"]["image_uri"] == f"s3://{BUCKET}/incoming/a.jpg"
    assert mark_triggered(engine, claims) == 1
    assert claim_arrivals(s3, engine, BUCKET, IntakePolicy()) == ([], [])


def test_an_object_deleted_after_listing_is_skipped(env, monkeypatch):
    s3, engine = env
    s3.put_object(Bucket=BUCKET, Key="incoming/gone.jpg", Body=JPEG)
    import tilescope.intake.flow as intake

    real_inspect = intake.inspect

    def inspect_after_delete(client, arrival, suffixes):
        client.delete_object(Bucket=BUCKET, Key=arrival.key)  # a concurrent mover wins
        return real_inspect(client, arrival, suffixes)

    monkeypatch.setattr(intake, "inspect", inspect_after_delete)
    got = take_arrivals(s3, engine, BUCKET, IntakePolicy())
    assert got.batches == [] and got.rejected == []
    assert [r["status"] for r in all_claims(engine)] == [FAILED]
    assert keys(s3, "manifests/") == []


# --- batch bounds --------------------------------------------------------------------------

def test_batches_are_bounded_by_images_per_run(env):
    s3, engine = env
    for i in range(7):
        s3.put_object(Bucket=BUCKET, Key=f"incoming/{i}.jpg", Body=JPEG + bytes([i]))
    got = take_arrivals(s3, engine, BUCKET, IntakePolicy(images_per_run=3))
    assert [len(b.claims) for b in got.batches] == [3, 3, 1]
    assert len({b.run_id for b in got.batches}) == 3
    assert Counter(c.key for c in got.claims) == Counter(f"incoming/{i}.jpg" for i in range(7))
    assert sorted(keys(s3, "manifests/")) == sorted(
        f"manifests/{b.run_id}.json" for b in got.batches)


def test_runs_per_tick_stay_below_the_mapping_limit(env):
    """Every image over the slice bound runs alone: past ``max_runs_per_tick`` batches the
    rest stays claimed (no batch id) and the next tick batches it."""
    s3, engine = env
    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"incoming/{i}.png", Body=png(2000, 2000))
    policy = IntakePolicy(slices_per_run=10, max_runs_per_tick=2)
    first = take_arrivals(s3, engine, BUCKET, policy)
    assert [len(b.claims) for b in first.batches] == [1, 1]
    assert sorted(r["run_id"] is None for r in all_claims(engine)) == [False] * 2 + [True] * 3
    mark_batches_triggered(engine, [b.run_id for b in first.batches])
    second = take_arrivals(s3, engine, BUCKET, policy)
    assert len(second.batches) == 2 and not {c.key for c in second.claims} & {
        c.key for c in first.claims}


def test_batches_are_bounded_by_estimated_slices_from_the_headers(env):
    """Sizes come from the screen's ranged GET (PNG header): 1024×768 is 9 slices, 4000×3000
    is 108 — over a 40-slice bound it runs alone; the 9-slice ones go four to a run."""
    s3, engine = env
    sizes = [(1024, 768)] * 5 + [(4000, 3000)] + [(1024, 768)] * 3
    for i, (w, h) in enumerate(sizes):
        s3.put_object(Bucket=BUCKET, Key=f"incoming/{i}.png", Body=png(w, h))
    assert slices_of(1024, 768) == 9 and slices_of(4000, 3000) == 108
    got = take_arrivals(s3, engine, BUCKET, IntakePolicy(slices_per_run=40))
    assert [[c.key for c in b.claims] for b in got.batches] == [
        [f"incoming/{i}.png" for i in range(4)], ["incoming/4.png"], ["incoming/5.png"],
        [f"incoming/{i}.png" for i in range(6, 9)]]
    assert [b.slices for b in got.batches] == [36, 9, 108, 27]


def test_plan_batches_bounds_both_ways():
    claims = [Claim("b", f"k{i}", "e", 1, 1) for i in range(10)]
    plan = plan_batches(list(zip(claims, [5] * 10, strict=True)), 4, 12)
    assert [len(b) for b in plan] == [2, 2, 2, 2, 2]  # slices bind first (2 × 5 ≤ 12)
    plan = plan_batches(list(zip(claims, [1] * 10, strict=True)), 4, 12)
    assert [len(b) for b in plan] == [4, 4, 2]  # images bind first
    plan = plan_batches([(claims[0], 500), (claims[1], 1), (claims[2], 500)], 10, 100)
    assert [[c.key for c, _ in b] for b in plan] == [["k0"], ["k1"], ["k2"]]
    mixed = [Claim("b1", "x", "e", 1, 1), Claim("b2", "y", "e", 1, 1), Claim("b1", "z", "e", 1, 1)]
    plan = plan_batches([(c, 1) for c in mixed], 10, 100)  # a manifest lives in one bucket
    assert [[c.key for c, _ in b] for b in plan] == [["x", "z"], ["y"]]


def test_sizes_from_partial_headers_jpeg_and_a_tiff_whose_ifd_is_at_the_end(env):
    from tilescope.intake.arrivals import HEAD_BYTES, Arrival, inspect

    s3, _ = env
    rng = __import__("numpy").random.default_rng(0)
    noisy = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (900, 1300, 3), dtype="uint8")).save(
        noisy, format="JPEG", quality=95)
    assert len(noisy.getvalue()) > 4 * HEAD_BYTES  # only the head is read
    # A classic little-endian TIFF: 200 KB of strip data first, its only IFD at the end.
    data = b"\x00" * 200_000
    offset = 8 + len(data)
    entries = [(256, 4, 1, 5000), (257, 3, 1, 4000), (277, 3, 1, 3)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", t, k, n, v) if k == 4 else struct.pack("<HHIHH", t, k, n, v, 0)
        for t, k, n, v in entries) + struct.pack("<I", 0)
    tiff = b"II*\x00" + struct.pack("<I", offset) + data + ifd
    # A JPEG whose size marker lies past the head: two full APP segments before it.
    app = b"\xff\xe1" + struct.pack(">H", 65535) + b"\x00" * 65533
    late = b"\xff\xd8" + app + app + noisy.getvalue()[2:]
    found = {}
    for key, body in {"a.jpg": noisy.getvalue(), "b.tif": tiff, "c.jpg": late}.items():
        etag = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')
        found[key] = inspect(s3, Arrival(BUCKET, key, etag, len(body)))
    assert (found["a.jpg"].reason, found["a.jpg"].width, found["a.jpg"].height) == (
        None, 1300, 900)
    assert (found["b.tif"].width, found["b.tif"].height) == (5000, 4000)
    assert found["c.jpg"].reason is None and found["c.jpg"].width is None  # not in the head
    # Unknown size: the byte-size estimate is conservative (more slices than the truth).
    assert estimate_slices(None, None, len(late)) >= slices_of(1300, 900)
    assert estimate_slices(1300, 900, len(late)) == slices_of(1300, 900)


# --- deterministic run ids, manifests ------------------------------------------------------

def test_batch_run_ids_are_deterministic_from_the_claims():
    a, b = Claim("bk", "incoming/a.jpg", "e1", 5, 1), Claim("bk", "incoming/b.jpg", "e2", 5, 1)
    assert batch_run_id([a, b]) == batch_run_id([b, a])  # order does not matter
    assert batch_run_id([a, b]) != batch_run_id([a])
    assert batch_run_id([a, b]) != batch_run_id([a, Claim("bk", "incoming/b.jpg", "e2", 5, 2)])
    assert batch_run_id([a]) != batch_run_id([Claim("bk", "incoming/a.jpg", "e9", 5, 1)])
    assert len(batch_run_id([a])) <= 250  # Airflow's run id column
    assert Claim.from_dict(Claim(**{**a.__dict__, "batch_run_id": "arrivals__x"}).to_dict()
                           ).batch_run_id == "arrivals__x"
    assert Claim.from_dict(a.to_dict()) == a


def test_the_same_arrivals_give_the_same_run_ids_in_any_catalog(s3_client, tmp_path):
    s3_client.create_bucket(Bucket=BUCKET)
    for i in range(5):
        s3_client.put_object(Bucket=BUCKET, Key=f"incoming/{i}.jpg", Body=JPEG + bytes([i]))
    runs = []
    for name in ("one", "two"):
        engine = connect(f"sqlite:///{tmp_path / name}.sqlite")
        runs.append([b.run_id for b in take_arrivals(
            s3_client, engine, BUCKET, IntakePolicy(images_per_run=2)).batches])
    assert runs[0] == runs[1] and len(runs[0]) == 3


def test_manifest_content_reads_back_as_the_batch_claims(env):
    from tilescope.tasks.batch import parse_manifest

    s3, engine = env
    names = ["incoming/z last.jpg", "incoming/ü/ünï.jpg", "incoming/a #1.jpg"]
    for i, key in enumerate(names):
        s3.put_object(Bucket=BUCKET, Key=key, Body=JPEG + bytes([i]))
    (batch,) = take_arrivals(s3, engine, BUCKET, IntakePolicy()).batches
    manifest = manifest_of(s3, batch)
    assert [item["uri"] for item in manifest["images"]] == [
        f"s3://{BUCKET}/{k}" for k in sorted(names)]
    claims = [Claim.from_dict(item["claim"]) for item in manifest["images"]]
    assert set(claims) == set(batch.claims)
    assert all(c.batch_run_id == batch.run_id for c in claims)
    bucket, _, key = batch.manifest_uri.removeprefix("s3://").partition("/")
    raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert raw == batch.manifest_bytes()  # deterministic bytes, whatever the claims' order
    assert Batch(batch.run_id, tuple(reversed(batch.claims)), batch.manifest_uri
                 ).manifest_bytes() == raw
    assert [e["uri"] for e in parse_manifest(raw)] == [i["uri"] for i in manifest["images"]]
    # Settling an image from its manifest entry keeps the batch run id on the row.
    assert settle(s3, engine, claims[0], stored=True) == PROCESSED
    row = status_of(engine, BUCKET, claims[0].key, claims[0].etag)
    assert row["status"] == PROCESSED and row["run_id"] == batch.run_id


def test_a_thousand_image_burst_is_one_tick_one_run_and_small_xcoms(env):
    s3, engine = env
    for i in range(1000):
        s3.put_object(Bucket=BUCKET, Key=f"incoming/burst/{i:04d}.jpg", Body=JPEG + b"%d" % i)
    started = time.perf_counter()
    got = take_arrivals(s3, engine, BUCKET, IntakePolicy())
    took = time.perf_counter() - started
    assert len(got.claims) == 1000 and [len(b.claims) for b in got.batches] == [1000]
    assert len(json.dumps(batch_requests(got.batches))) < 1024
    assert len(manifest_of(s3, got.batches[0])["images"]) == 1000
    assert took < 120, f"claiming 1,000 arrivals took {took:.0f}s"
    print(f"\n1,000 arrivals claimed, screened and batched in {took:.1f}s")
    assert take_arrivals(s3, engine, BUCKET, IntakePolicy()).batches[0].run_id == \
        got.batches[0].run_id


# --- crash between claim and trigger, races -------------------------------------------------

def test_reoffer_after_a_crash_between_storing_and_triggering(env, s3_server, tmp_path):
    """A claimer SIGKILLed after the batch ids are stored (before any manifest or trigger):
    the next tick offers those claims as the same batches, with the same manifests; claims
    that never got a batch id (a second claimer killed before batching) and new arrivals are
    batched anew. Both claimers run the real ``take_arrivals`` in a process killed for real
    (``support.claimer``). Seen red with ``unfinished`` returning no rows, with
    ``_split_pending`` treating stored claims as loose and with ``_form_batches`` dropping
    the stored batches."""
    s3, engine = env
    catalog = f"sqlite:///{tmp_path / 'c.sqlite'}"
    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"incoming/{i}.jpg", Body=JPEG + bytes([i]))
    policy = IntakePolicy(images_per_run=2)

    kill_claimer_at("manifest", endpoint=s3_server, catalog=catalog, bucket=BUCKET,
                    policy={"images_per_run": 2})
    stored = {}
    for row in all_claims(engine):
        assert row["status"] == CLAIMED and row["run_id"].startswith("arrivals__")
        stored.setdefault(row["run_id"], set()).add(row["key"])
    assert sorted(len(v) for v in stored.values()) == [1, 2, 2] and keys(s3, "manifests/") == []

    # Meanwhile: a claimer killed after claiming, before batching, and a new upload.
    s3.put_object(Bucket=BUCKET, Key="incoming/loose.jpg", Body=JPEG + b"loose")
    kill_claimer_at("batching", endpoint=s3_server, catalog=catalog, bucket=BUCKET,
                    policy={"images_per_run": 2})
    loose = status_of(engine, BUCKET, "incoming/loose.jpg",
                      s3.head_object(Bucket=BUCKET, Key="incoming/loose.jpg")["ETag"])
    assert loose["status"] == CLAIMED and loose["run_id"] is None
    assert keys(s3, "manifests/") == []
    s3.put_object(Bucket=BUCKET, Key="incoming/new.jpg", Body=JPEG + b"new")

    got = take_arrivals(s3, engine, BUCKET, policy)
    again = {b.run_id: {c.key for c in b.claims} for b in got.batches}
    for run_id, members in stored.items():
        assert again.pop(run_id) == members  # same run id, same members
        batch = next(b for b in got.batches if b.run_id == run_id)
        assert {i["claim"]["key"] for i in manifest_of(s3, batch)["images"]} == members
    assert list(again.values()) == [{"incoming/loose.jpg", "incoming/new.jpg"}]
    assert mark_batches_triggered(engine, [b.run_id for b in got.batches]) == 7
    assert take_arrivals(s3, engine, BUCKET, policy).batches == []


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_a_claimer_killed_anywhere_between_claim_and_trigger_loses_and_doubles_nothing(
        env, s3_server, tmp_path, kill_at):
    """The real claim step SIGKILLed at each point between its claims and the trigger
    (``support.claimer``): the next tick offers every image exactly once — in the killed
    claimer's batches (same run id; a manifest it wrote byte for byte) once their ids were
    stored — and the tick after that offers nothing. Seen red with ``unfinished`` returning
    no rows (all three points: the killed claimer's images never offered again) and with
    ``_form_batches`` dropping the stored batches (``manifest`` and ``trigger``)."""
    s3, engine = env
    catalog = f"sqlite:///{tmp_path / 'c.sqlite'}"
    images = {f"incoming/{i}.jpg": JPEG + bytes([i]) for i in range(5)}
    for key, body in images.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    kill_claimer_at(kill_at, endpoint=s3_server, catalog=catalog, bucket=BUCKET,
                    policy={"images_per_run": 2})
    rows = all_claims(engine)
    assert sorted(r["key"] for r in rows) == sorted(images)
    assert {r["status"] for r in rows} == {CLAIMED}
    stored: dict[str, set[str]] = {}
    for row in rows:
        stored.setdefault(row["run_id"], set()).add(row["key"])
    written = {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()
               for k in keys(s3, "manifests/")}
    if kill_at == "batching":
        assert list(stored) == [None] and written == {}
    else:
        assert sorted(len(v) for v in stored.values()) == [1, 2, 2]
        assert len(written) == (3 if kill_at == "trigger" else 0)

    got = take_arrivals(s3, engine, BUCKET, IntakePolicy(images_per_run=2))
    offered = [c.key for b in got.batches for c in b.claims]
    assert sorted(offered) == sorted(images)  # each image once
    if kill_at != "batching":
        assert {b.run_id: {c.key for c in b.claims} for b in got.batches} == stored
    for batch in got.batches:
        key = batch.manifest_uri.split("/", 3)[3]
        assert {i["claim"]["key"] for i in manifest_of(s3, batch)["images"]} == \
            {c.key for c in batch.claims}
        if key in written:
            assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == written[key]
    assert mark_batches_triggered(engine, [b.run_id for b in got.batches]) == len(images)
    assert take_arrivals(s3, engine, BUCKET, IntakePolicy(images_per_run=2)).batches == []


def test_an_existing_manifest_is_never_rewritten(env):
    """A re-offered batch whose run already started (crash between trigger and marking) may
    have settled some of its images: its manifest stays as the run read it."""
    s3, engine = env
    for i in range(3):
        s3.put_object(Bucket=BUCKET, Key=f"incoming/{i}.jpg", Body=JPEG + bytes([i]))
    (batch,) = take_arrivals(s3, engine, BUCKET, IntakePolicy()).batches
    before = manifest_of(s3, batch)
    settle(s3, engine, batch.claims[0], stored=True)  # the run got that far
    (again,) = take_arrivals(s3, engine, BUCKET, IntakePolicy()).batches
    assert again.run_id == batch.run_id and len(again.claims) == 2
    assert manifest_of(s3, again) == before


def test_two_claimers_racing_start_each_version_in_exactly_one_batch(s3_client, tmp_path):
    """Two ticks at once (s3_arrivals beside an s3_events run re-offering the same unfinished
    claims): every version ends up in exactly one stored batch, and each batch a claimer
    returns holds exactly the claims stored under its run id."""
    s3_client.create_bucket(Bucket=BUCKET)
    for i in range(120):
        s3_client.put_object(Bucket=BUCKET, Key=f"incoming/{i:03d}.jpg", Body=JPEG + b"%d" % i)
    url = f"sqlite:///{tmp_path / 'race.sqlite'}"
    connect(url)
    results: list[ArrivalIntake] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def claimer(limit: int) -> None:
        try:
            engine = connect(url)
            barrier.wait()
            for _ in range(6):  # ticks, each marking what it started (as the DAG does)
                got = take_arrivals(s3_client, engine, BUCKET, IntakePolicy(
                    per_tick_limit=limit, images_per_run=7, screen_threads=3))
                results.append(got)
                mark_batches_triggered(engine, [b.run_id for b in got.batches])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in (40, 50, 60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    engine = connect(url)
    rows = all_claims(engine)
    assert len(rows) == 120 and all(r["run_id"] for r in rows)
    by_run: dict[str, set[str]] = {}
    for row in rows:
        by_run.setdefault(row["run_id"], set()).add(row["key"])
    for result in results:
        for batch in result.batches:
            assert {c.key for c in batch.claims} == by_run[batch.run_id]
    assert sum(len(v) for v in by_run.values()) == 120  # each version in one batch
    assert {r["status"] for r in rows} == {TRIGGERED}
    started = Counter(b.run_id for result in results for b in result.batches)
    assert set(started) == set(by_run)  # a run id may be offered twice (no-op trigger) …
    offered = Counter(c.version for result in results for b in result.batches for c in b.claims)
    assert all(offered[v] == started[b] for b in by_run for v in [  # … never a version alone
        (BUCKET, k, next(r["etag"] for r in rows if r["key"] == k)) for k in by_run[b]])


def test_the_manifest_carries_what_the_screen_read_of_small_photos(env):
    """A photo read whole by the screen is described in its manifest entry (``screened``:
    what the run plans it from, without a second read); one it could not read whole is not.
    Seen red with the facts left out of ``Batch`` in ``_form_batches``."""
    from tilescope.intake.arrivals import whole_facts

    s3, engine = env
    photo = io.BytesIO()
    Image.new("RGB", (320, 240), (9, 99, 199)).save(photo, format="JPEG")
    s3.put_object(Bucket=BUCKET, Key="incoming/photo.jpg", Body=photo.getvalue())
    s3.put_object(Bucket=BUCKET, Key="incoming/header-only.jpg", Body=JPEG)
    (batch,) = take_arrivals(s3, engine, BUCKET, IntakePolicy()).batches
    entries = {e["uri"].rsplit("/", 1)[1]: e for e in manifest_of(s3, batch)["images"]}
    assert entries["photo.jpg"]["screened"] == whole_facts(photo.getvalue())
    assert entries["photo.jpg"]["screened"]["width"] == 320
    assert "screened" not in entries["header-only.jpg"]


def test_a_batch_from_an_arrivals_manifest_plans_small_photos_without_reading_them(env):
    """The tick's manifest, read by the batch run's preprocess: the screened photos are
    planned without a GET (only the manifest is read). Seen red with ``parse_manifest``
    dropping the ``screened`` entries: every photo read again."""
    from support.photos_s3 import CountingClient, tiny_jpeg

    from tilescope.params import InferenceParams
    from tilescope.tasks.batch import batch_entries, load_items, prepare_batch

    s3, engine = env
    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"incoming/p{i}.jpg", Body=tiny_jpeg(i, (320, 240)))
    (batch,) = take_arrivals(s3, engine, BUCKET, IntakePolicy()).batches
    counting = CountingClient(s3)
    entries = batch_entries({"manifest": batch.manifest_uri}, client=counting)
    _, prepared = prepare_batch(entries, InferenceParams(model="nanodet-coco"),
                                client=counting, run=batch.run_id, model_slice_size=416)
    assert [k for k in counting.gets if k.startswith("incoming/")] == []
    items = load_items(prepared, s3)
    assert [(i.image["width"], i.image["height"]) for i in items] == [(320, 240)] * 5
