"""The arrival side of a run: claim new objects, screen them, and settle each claim.

Glue between :mod:`tilescope.arrivals` (S3 objects) and :mod:`tilescope.claims` (SQL rows),
shared by the ``s3_arrivals`` DAG (claiming) and the ``tiled_inference`` DAG (settling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tilescope.arrivals import (
    DEFAULT_SUFFIXES,
    INCOMING,
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
        reason = screen(client, arrival, policy.suffixes)
        owned = claim(engine, bucket, arrival.key, arrival.etag, arrival.size,
                      policy.max_attempts, policy.retry_after_seconds)
        if owned is None:
            continue
        if reason is not None:
            quarantine(client, bucket, arrival.key, arrival.etag, reason=reason,
                       error_class="NotAnImage", run_id=run_id)
            mark(engine, owned, QUARANTINED, error=reason)
            rejected.append({"key": arrival.key, "reason": reason})
            continue
        batch.append(owned)
    return batch, rejected


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
