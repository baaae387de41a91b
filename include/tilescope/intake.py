"""The arrival side of a run: claim new objects, screen them, and settle each claim.

Glue between :mod:`tilescope.arrivals` (S3 objects) and :mod:`tilescope.claims` (SQL rows),
shared by the ``s3_arrivals`` DAG (claiming a listing), the ``s3_events`` DAG (claiming
notified versions) and the ``tiled_inference`` DAG (settling).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tilescope.arrivals import (
    DEFAULT_SUFFIXES,
    INCOMING,
    Arrival,
    list_arrivals,
    move_to_processed,
    quarantine,
    screen,
)
from tilescope.claims import (
    CLAIMED,
    FAILED,
    PROCESSED,
    QUARANTINED,
    TRIGGERED,
    Claim,
    claim,
    mark,
    status_of,
    unfinished,
)


@dataclass(frozen=True)
class IntakePolicy:
    """How arrivals are taken in (all configurable from the DAG's environment)."""

    prefix: str = INCOMING
    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES
    per_tick_limit: int = 50
    max_attempts: int = 3
    retry_after_seconds: float = 300.0


def claim_arrivals(client: Any, engine: sa.Engine, bucket: str, policy: IntakePolicy,
                   run_id: str | None = None) -> tuple[list[Claim], list[dict[str, str]]]:
    """Claim up to ``per_tick_limit`` new image versions; quarantine non-images at once.

    Claims left unfinished by a crashed claimer come first (their deterministic run ids make
    re-triggering safe). Returns (claims to start, quarantined [{key, reason}]).
    """
    batch = unfinished(engine)[: policy.per_tick_limit]
    seen = {(c.key, c.etag) for c in batch}
    rejected: list[dict[str, str]] = []
    for arrival in list_arrivals(client, bucket, policy.prefix):
        if len(batch) >= policy.per_tick_limit:
            break  # back-pressure: the rest waits for the next tick, unclaimed
        if (arrival.key, arrival.etag) in seen:
            continue
        # Claim first: versions already owned (in flight) cost one SQL insert, not a GET.
        owned = claim(engine, bucket, arrival.key, arrival.etag, arrival.size,
                      policy.max_attempts, policy.retry_after_seconds)
        if owned is None:
            continue
        try:
            reason = screen(client, arrival, policy.suffixes)
        except Exception as exc:
            if _missing(exc):  # deleted since the listing: nothing to start, nothing lost
                mark(engine, owned, FAILED, error="object vanished before screening")
                continue
            raise
        if reason is not None:
            quarantine(client, bucket, arrival.key, arrival.etag, reason=reason,
                       error_class="NotAnImage", run_id=run_id)
            mark(engine, owned, QUARANTINED, error=reason)
            rejected.append({"key": arrival.key, "reason": reason})
            continue
        batch.append(owned)
    return batch, rejected


def _missing(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")


def trigger_requests(claims: list[Claim]) -> list[dict[str, Any]]:
    """Keyword arguments for one mapped ``TriggerDagRunOperator`` per claim."""
    return [{"trigger_run_id": c.run_id,
             "conf": {"image_uri": c.uri, "claim": c.to_dict()}} for c in claims]


def mark_triggered(engine: sa.Engine, claims: list[Claim]) -> int:
    """Record that the runs exist (only claims still in ``claimed`` move)."""
    return sum(mark(engine, c, TRIGGERED, only_if=(CLAIMED,)) for c in claims)


def quarantine_claimed(client: Any, engine: sa.Engine, owned: Claim, *, reason: str,
                       error_class: str, run_id: str | None) -> str | None:
    """A claimed object turned out to be bad input: set it aside with its reason."""
    target = quarantine(client, owned.bucket, owned.key, owned.etag, reason=reason,
                        error_class=error_class, run_id=run_id)
    mark(engine, owned, QUARANTINED, error=f"{error_class}: {reason}")
    return target


def settle(client: Any, engine: sa.Engine, owned: Claim, *, stored: bool) -> str:
    """End of a claimed run: ``processed`` (original moved), or why it did not get there.

    Returns ``processed``, ``quarantined`` or ``failed`` (claim released for another attempt
    after its rest, up to ``max_attempts``).
    """
    if stored:
        move_to_processed(client, owned.bucket, owned.key, owned.etag)
        mark(engine, owned, PROCESSED)
        return PROCESSED
    row = status_of(engine, owned.bucket, owned.key, owned.etag)
    if row and row["status"] == QUARANTINED:
        return QUARANTINED
    mark(engine, owned, FAILED, error="pipeline run failed", only_if=(CLAIMED, TRIGGERED))
    return FAILED


@dataclass
class NotifiedIntake:
    """Outcome of :func:`claim_notified`: claims to start now, what was quarantined, what was
    skipped and why, and how many claims were left for the next run (over the per-run cap)."""

    claims: list[Claim]
    rejected: list[dict[str, str]]
    skipped: list[dict[str, str]]
    backlog: int


def current_version(client: Any, arrival: Arrival) -> Arrival | None:
    """The object as it is now (HEAD), or ``None`` if it is gone.

    A notification says a version *was* created; by the time it is read the object may
    have been moved (processed through another path) or replaced by a newer version.
    """
    try:
        head = client.head_object(Bucket=arrival.bucket, Key=arrival.key)
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return Arrival(arrival.bucket, arrival.key, str(head["ETag"]).strip('"'),
                   int(head["ContentLength"]))


def claim_notified(client: Any, engine: sa.Engine, arrivals: Iterable[Arrival],
                   policy: IntakePolicy, run_id: str | None = None,
                   reoffer_after_seconds: float = 0.0) -> NotifiedIntake:
    """Claim the notified versions (screened, non-images quarantined at once), like
    :func:`claim_arrivals` does for a listing — but for exactly the versions named.

    Unfinished claims (claimed, never marked triggered) come first once they are
    ``reoffer_after_seconds`` old: with runs overlapping, a younger one is most likely being
    triggered by its own run right now, and re-offering it would only add a no-op trigger.
    A notified version that is itself still unfinished is re-offered at once (this task's
    earlier try claimed it, then died). A version already triggered or settled, gone, or
    superseded by a newer upload (which has a notification of its own) is skipped.
    Every notified version is claimed — the queue message is gone, so nothing may be left
    unclaimed — but at most ``per_tick_limit`` are returned to start now; the rest stay
    ``claimed`` (``backlog``) for a run that re-offers them.
    """
    batch = unfinished(engine, older_than_seconds=reoffer_after_seconds)
    seen = {(c.bucket, c.key, c.etag) for c in batch}
    rejected: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []

    def skip(arrival: Arrival, why: str) -> None:
        skipped.append({"key": arrival.key, "etag": arrival.etag, "reason": why})

    for notified in arrivals:
        if (notified.bucket, notified.key, notified.etag) in seen:
            continue
        seen.add((notified.bucket, notified.key, notified.etag))
        if notified.etag:
            known = status_of(engine, notified.bucket, notified.key, notified.etag)
            if known and known["status"] == CLAIMED:  # claimed, never triggered: again
                batch.append(Claim(known["bucket"], known["key"], known["etag"],
                                   int(known["size"]), int(known["attempts"])))
                continue
            if known and known["status"] != FAILED:  # a duplicate delivery
                skip(notified, f"already {known['status']}")
                continue
        arrival = current_version(client, notified)
        if arrival is None:
            skip(notified, "gone since notified (moved or deleted)")
            continue
        if notified.etag and arrival.etag != notified.etag:
            skip(notified, f"superseded by version {arrival.etag} (notified on its own)")
            continue
        reason = screen(client, arrival, policy.suffixes)
        owned = claim(engine, arrival.bucket, arrival.key, arrival.etag, arrival.size,
                      policy.max_attempts, policy.retry_after_seconds)
        if owned is None:
            skip(arrival, "claimed elsewhere, or resting/out of attempts after a failure")
            continue
        if reason is not None:
            quarantine(client, arrival.bucket, arrival.key, arrival.etag, reason=reason,
                       error_class="NotAnImage", run_id=run_id)
            mark(engine, owned, QUARANTINED, error=reason)
            rejected.append({"key": arrival.key, "reason": reason})
            continue
        batch.append(owned)
    limit = max(policy.per_tick_limit, 1)
    return NotifiedIntake(batch[:limit], rejected, skipped, max(len(batch) - limit, 0))
