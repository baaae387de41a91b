"""The example consumer's logic: results-asset events → per-class tally rows (SQLite and
PostgreSQL), re-recorded results replacing their rows instead of double-counting."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from tilescope.outputs.catalog import connect
from tilescope.outputs.tallies import class_totals, record_tallies, tallies_from_events

WHEN = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def event(image_id: str, counts: dict, *, run: str = "run-1", **extra) -> SimpleNamespace:
    """An asset event as the Task SDK hands it to a consumer (extra as ``store`` sets it)."""
    key = f"s3://tilescope/results/{image_id}/p1/result.json"
    return SimpleNamespace(extra={"image_id": image_id, "image_uri": f"s3://tilescope/in/{image_id}",
                                  "status": "complete", "detections": sum(counts.values()),
                                  "counts": counts, "result": key, **extra},
                           source_run_id=run, timestamp=WHEN)


def test_events_become_tallies_and_odd_events_are_skipped_with_a_reason():
    tallies, skipped = tallies_from_events([
        event("aaa", {"person": 3, "kite": 1}),
        SimpleNamespace(extra={"from_trigger": True}),  # e.g. an event created by hand
        {"image_id": "bbb", "result": "k", "counts": {"person": "many"}},
        "not an event"])
    assert len(tallies) == 1 and len(skipped) == 3
    (tally,) = tallies
    assert tally.counts == {"person": 3, "kite": 1} and tally.detections == 4
    assert tally.source_run_id == "run-1" and tally.event_at == WHEN
    assert tally.describe() == ("aaa complete: 3 person, 1 kite "
                                "(s3://tilescope/results/aaa/p1/result.json)")
    assert "counts are not numbers" in skipped[1]


def test_recording_replaces_a_results_rows(sql_url):
    engine = connect(sql_url)
    try:
        first, _ = tallies_from_events([event("aaa", {"person": 3, "kite": 1}),
                                        event("bbb", {"person": 2})])
        assert record_tallies(engine, first) == 3
        assert class_totals(engine) == {"person": 5, "kite": 1}

        # The same result again (re-run, or the consumer retried), now without kites.
        again, _ = tallies_from_events([event("aaa", {"person": 4}, run="run-2")])
        assert record_tallies(engine, again) == 1
        assert class_totals(engine) == {"person": 6}
        assert record_tallies(engine, tallies_from_events([event("ccc", {})])[0]) == 0
    finally:
        engine.dispose()


def test_a_batch_event_is_tallied_per_image_from_its_outcomes():
    """One event for a big batch: its stored images come from the outcomes document (seen
    red with the batch branch removed: the event is skipped, no tallies)."""
    outcomes = [
        {"status": "stored", "uri": "s3://tilescope/in/a.jpg", "image_id": "aaa",
         "result_status": "complete", "counts": {"person": 2},
         "keys": {"result": "s3://tilescope/results/aaa/p1/result.json"}},
        {"status": "bad", "uri": "s3://tilescope/in/b.jpg", "image_id": None,
         "counts": {}, "keys": {}, "error": "not an image"},
        {"status": "stored", "uri": "s3://tilescope/in/c.jpg", "image_id": "ccc",
         "result_status": "partial", "counts": {"kite": 1},
         "keys": {"result": "s3://tilescope/results/ccc/p1/result.json"}}]
    batch = SimpleNamespace(extra={"batch": {"outcomes": "s3://tilescope/results/batches/r/"
                                             "outcomes.json", "images": 3, "stored": 2},
                                   "status": "batch", "detections": 3},
                            source_run_id="run-9", timestamp=WHEN)
    asked: list[str] = []
    tallies, skipped = tallies_from_events([batch], load_outcomes=lambda uri: (
        asked.append(uri) or outcomes))
    assert asked == ["s3://tilescope/results/batches/r/outcomes.json"]
    assert [(t.image_id, t.status, t.counts) for t in tallies] == [
        ("aaa", "complete", {"person": 2}), ("ccc", "partial", {"kite": 1})]
    assert all(t.source_run_id == "run-9" for t in tallies) and skipped == []
    assert tallies_from_events([batch])[1] == [
        "batch event s3://tilescope/results/batches/r/outcomes.json: no outcomes loader"]
