"""Exactly-once claims under concurrency, on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections import Counter

from tilescope.catalog import connect
from tilescope.claims import (
    FAILED,
    PROCESSED,
    TRIGGERED,
    all_claims,
    claim,
    mark,
    status_of,
    unfinished,
)


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
