"""Exactly-once claims under concurrency, on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace

from tilescope.intake.claims import (
    CLAIMS,
    FAILED,
    PROCESSED,
    TRIGGERED,
    all_claims,
    assign_batch,
    batch_members,
    batch_run_id,
    claim,
    claim_versions,
    mark,
    mark_runs,
    status_of,
    unfinished,
)
from tilescope.outputs.catalog import connect


def test_racing_claimers_claim_each_version_exactly_once(sql_url):
    engine = connect(sql_url)
    keys = [f"incoming/img-{i:03d}.jpg" for i in range(200)]
    won: list[str] = []
    lock = threading.Lock()

    def claimer(order: list[str]) -> None:
        mine = [k for k in order if claim(engine, "b", k, f"etag-{k}", 10)]
        with lock:
            won.extend(mine)

    threads = [threading.Thread(target=claimer, args=(keys[::1] if i % 2 else keys[::-1],))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(won) == Counter(keys)  # every key once, none twice
    assert len(all_claims(engine)) == 200


def test_a_new_version_is_a_new_claim_and_the_same_version_is_not(sql_url):
    engine = connect(sql_url)
    first = claim(engine, "b", "incoming/a b/ü.jpg", '"etag1"', 5)
    assert first and first.attempts == 1 and first.etag == "etag1"
    assert claim(engine, "b", "incoming/a b/ü.jpg", "etag1", 5) is None
    second = claim(engine, "b", "incoming/a b/ü.jpg", "etag2", 6)
    assert second and second.run_id != first.run_id


def test_failed_claims_come_back_after_a_rest_until_attempts_run_out(sql_url):
    engine = connect(sql_url)
    c1 = claim(engine, "b", "k.jpg", "e", 1, max_attempts=2, retry_after_seconds=0.2)
    assert mark(engine, c1, FAILED, error="S3 went away")
    assert claim(engine, "b", "k.jpg", "e", 1, max_attempts=2, retry_after_seconds=60) is None
    time.sleep(0.3)
    c2 = claim(engine, "b", "k.jpg", "e", 1, max_attempts=2, retry_after_seconds=0.2)
    assert c2 and c2.attempts == 2 and c2.run_id.endswith("__a2") and c2.run_id != c1.run_id
    assert mark(engine, c2, FAILED)
    time.sleep(0.3)
    assert claim(engine, "b", "k.jpg", "e", 1, max_attempts=2, retry_after_seconds=0.2) is None


def test_unfinished_claims_are_found_for_crash_recovery(sql_url):
    engine = connect(sql_url)
    c = claim(engine, "b", "crash.jpg", "e", 1)
    assert [u.key for u in unfinished(engine)] == ["crash.jpg"]
    assert unfinished(engine)[0].run_id == c.run_id  # same run id: re-trigger is idempotent
    assert mark(engine, c, TRIGGERED, only_if=("claimed",))
    assert unfinished(engine) == []
    assert not mark(engine, c, TRIGGERED, only_if=("claimed",))
    assert mark(engine, c, PROCESSED)
    assert status_of(engine, "b", "crash.jpg", "e")["status"] == PROCESSED


# --- bulk claims and batches ---------------------------------------------------------------

def test_bulk_claimers_racing_own_each_version_exactly_once(sql_url):
    """Four claimers take overlapping listings in one transaction each, in opposite orders
    (on PostgreSQL that deadlocks unless rows are inserted in one global order), while two
    of them also race to re-claim the same rested failed versions."""
    engine = connect(sql_url)
    failed = [("b", f"incoming/failed-{i}.jpg", "e", 1) for i in range(30)]
    for version in failed:
        assert mark(engine, claim(engine, *version), FAILED)
    listing = [("b", f"incoming/img-{i:04d}.jpg", f"etag-{i}", 10) for i in range(600)]
    won: list[tuple[str, str, str]] = []
    errors: list[Exception] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def claimer(order: list[tuple[str, str, str, int]]) -> None:
        own = connect(sql_url)
        with own.connect():  # a pooled connection open before the start
            pass
        barrier.wait()
        try:
            mine = claim_versions(own, order, max_attempts=3, retry_after_seconds=0)
        except Exception as exc:  # a deadlock would end here: reported below
            errors.append(exc)
            return
        with lock:
            won.extend(c.version for c in mine)

    orders = [listing + failed, failed[::-1] + listing[::-1], listing[::2] + failed[::3],
              listing[300:] + listing[:300]]
    threads = [threading.Thread(target=claimer, args=(o,)) for o in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Counter(won) == Counter((b, k, e) for b, k, e, _ in listing + failed)
    rows = {r["key"]: r for r in all_claims(engine)}
    assert len(rows) == 630
    assert all(rows[k]["attempts"] == 2 and rows[k]["status"] == "claimed"
               for _, k, _, _ in failed)


def test_bulk_claim_returns_what_it_won_in_order(sql_url):
    engine = connect(sql_url)
    assert claim(engine, "b", "incoming/taken.jpg", "e", 1)
    got = claim_versions(engine, [("b", "incoming/z.jpg", '"e1"', 3),
                                  ("b", "incoming/taken.jpg", "e", 1),
                                  ("b", "incoming/a.jpg", "e2", 4),
                                  ("b", "incoming/z.jpg", "e1", 3)])  # listed twice: once
    assert [(c.key, c.etag, c.size, c.attempts) for c in got] == [
        ("incoming/z.jpg", "e1", 3, 1), ("incoming/a.jpg", "e2", 4, 1)]
    assert claim_versions(engine, []) == []


def test_batch_ids_are_stored_once_and_survive_for_reoffer(sql_url):
    engine = connect(sql_url)
    claims = claim_versions(engine, [("b", f"k{i}", "e", 1) for i in range(4)])
    first = batch_run_id(claims[:3])
    stored = assign_batch(engine, claims[:3], first)
    assert [c.batch_run_id for c in stored] == [first] * 3
    # Another claimer batched k2 and k3 differently at the same moment: only k3 is free.
    second = batch_run_id(claims[2:])
    assert [c.key for c in assign_batch(engine, claims[2:], second)] == ["k3"]
    offered = {c.key: c.batch_run_id for c in unfinished(engine)}
    assert offered == {"k0": first, "k1": first, "k2": first, "k3": second}
    assert {k: [c.key for c in v] for k, v in batch_members(engine, [first, second]).items()} \
        == {first: ["k0", "k1", "k2"], second: ["k3"]}
    assert mark_runs(engine, [first]) == 3
    assert [c.key for c in unfinished(engine)] == ["k3"]
    # Settled claims keep their batch's run id; a failed one re-claimed starts batch-less.
    k0 = replace(stored[0])
    assert mark(engine, k0, FAILED) and status_of(engine, "b", "k0", "e")["run_id"] == first
    (again,) = claim_versions(engine, [("b", "k0", "e", 1)], retry_after_seconds=0)
    assert again.attempts == 2 and again.batch_run_id is None
    assert status_of(engine, "b", "k0", "e")["run_id"] is None
    assert batch_run_id([again]) != batch_run_id([stored[0]])


def test_a_single_claims_run_id_in_a_row_is_not_taken_for_a_batch(sql_url):
    """Rows written by older releases hold single-claim run ids (``arrival__…``): a claim
    re-claimed by those releases kept it. It must be batched anew, not 're-triggered'."""
    engine = connect(sql_url)
    c = claim(engine, "b", "old.jpg", "e", 1)
    with engine.begin() as conn:
        conn.execute(CLAIMS.update().values(run_id=c.run_id))
    (offered,) = unfinished(engine)
    assert offered.batch_run_id is None and offered.pipeline_run_id == c.run_id


def test_claim_states_are_the_strings_the_catalog_stores(sql_url):
    """``ClaimState`` members are plain strings in the ``status`` column and read back equal
    to them; a row's status is always one of the five states."""
    from tilescope.intake.claims import CLAIMED, ClaimState

    assert [s.value for s in ClaimState] == ["claimed", "triggered", "processed",
                                             "quarantined", "failed"]
    assert CLAIMED is ClaimState.CLAIMED and FAILED == "failed"
    engine = connect(sql_url)
    won = claim(engine, "b", "incoming/s.png", '"e1"', 10)
    assert won is not None
    assert status_of(engine, "b", "incoming/s.png", "e1")["status"] == "claimed"
    for state in (ClaimState.TRIGGERED, ClaimState.QUARANTINED):
        assert mark(engine, won, state)
        row = status_of(engine, "b", "incoming/s.png", "e1")
        assert type(row["status"]) is str and row["status"] == state.value
        assert ClaimState(row["status"]) is state
    assert {ClaimState(r["status"]) for r in all_claims(engine)} <= set(ClaimState)
