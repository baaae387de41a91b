"""The arrival side of a run: claim new objects, screen them, batch them, settle each claim.

Glue between :mod:`tilescope.intake.arrivals` (S3 objects) and
:mod:`tilescope.intake.claims` (SQL rows),
shared by the ``s3_arrivals`` DAG (claiming a listing: :func:`take_arrivals`), the
``s3_events`` DAG (claiming notified versions: :func:`claim_notified`) and the
``tiled_inference`` DAG (settling each image: :func:`settle`, :func:`quarantine_claimed`).

A tick's claims are grouped into **batches**, one ``tiled_inference`` run each, bounded by
images and by estimated slices per run (:func:`plan_batches`). A batch's run id is derived
from its claims and stored in their rows before its manifest is written and its run is
triggered, so a claimer that dies anywhere in between leaves claims that the next tick
re-offers as the same batch: same run id, same manifest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa

from tilescope.intake.arrivals import (
    DEFAULT_SUFFIXES,
    INCOMING,
    Arrival,
    Screened,
    inspect,
    list_arrivals,
    move_to_processed,
    quarantine,
)
from tilescope.intake.claims import (
    CLAIMED,
    FAILED,
    PROCESSED,
    QUARANTINED,
    TRIGGERED,
    Claim,
    ClaimState,
    assign_batch,
    batch_members,
    batch_run_id,
    claim_of,
    claim_versions,
    claimable,
    mark,
    mark_runs,
    rows_for,
    status_of,
    unfinished,
)
from tilescope.settings import (
    ARRIVAL_SUFFIXES,
    ARRIVALS_IMAGES_PER_RUN,
    ARRIVALS_MAX_ATTEMPTS,
    ARRIVALS_PER_TICK,
    ARRIVALS_RETRY_AFTER_SECONDS,
    ARRIVALS_SLICES_PER_RUN,
    INCOMING_PREFIX,
    Setting,
)
from tilescope.storage import S3Client

#: the model input side used to estimate slices before the run knows its model
ESTIMATE_SLICE_PX = 416
#: pixels assumed per byte when the header gave no size: JPEG photos run at 2–8 bits per
#: pixel, so 8 pixels a byte (1 bit per pixel) over-estimates them — conservative
PIXELS_PER_BYTE = 8

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class IntakePolicy:
    """How arrivals are taken in (all configurable from the DAG's environment:
    :meth:`from_settings`)."""

    prefix: str = INCOMING
    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES
    per_tick_limit: int = ARRIVALS_PER_TICK.default
    max_attempts: int = ARRIVALS_MAX_ATTEMPTS.default
    retry_after_seconds: float = ARRIVALS_RETRY_AFTER_SECONDS.default
    images_per_run: int = ARRIVALS_IMAGES_PER_RUN.default
    slices_per_run: int = ARRIVALS_SLICES_PER_RUN.default
    screen_threads: int = 8
    manifest_prefix: str = "manifests/"
    #: runs started per tick, below Airflow's ``max_map_length`` (1024) for the mapped
    #: trigger; claims of batches past it stay claimed for the next tick
    max_runs_per_tick: int = 1000

    @classmethod
    def from_settings(cls, per_tick_limit: Setting = ARRIVALS_PER_TICK,
                      environ: Mapping[str, str] | None = None) -> IntakePolicy:
        """The policy both arrival DAGs run with, from ``TILESCOPE_INCOMING_PREFIX``,
        ``TILESCOPE_IMAGE_SUFFIXES`` and ``TILESCOPE_ARRIVALS_*``; ``per_tick_limit`` is the
        setting that caps one tick (``s3_events``: ``TILESCOPE_EVENTS_PER_RUN``)."""
        return cls(prefix=INCOMING_PREFIX.get(environ),
                   suffixes=ARRIVAL_SUFFIXES.get(environ) or DEFAULT_SUFFIXES,
                   per_tick_limit=per_tick_limit.get(environ),
                   max_attempts=ARRIVALS_MAX_ATTEMPTS.get(environ),
                   retry_after_seconds=ARRIVALS_RETRY_AFTER_SECONDS.get(environ),
                   images_per_run=ARRIVALS_IMAGES_PER_RUN.get(environ),
                   slices_per_run=ARRIVALS_SLICES_PER_RUN.get(environ))


@dataclass(frozen=True)
class Batch:
    """Claims started together as one ``tiled_inference`` run."""

    run_id: str
    claims: tuple[Claim, ...]
    manifest_uri: str
    #: estimated slices (0 for a re-offered batch: its bounds were checked when it was made)
    slices: int = 0
    #: what the screen learned of whole small images, by claim version (``Screened.facts``):
    #: written into the manifest so the run plans them without reading them again
    facts: Mapping[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        """The manifest's content: deterministic (claims sorted by version)."""
        return {"images": [{"uri": c.uri, "claim": c.to_dict(),
                            **({"screened": self.facts[c.version]}
                               if c.version in self.facts else {})}
                           for c in sorted(self.claims, key=lambda c: c.version)]}

    def manifest_bytes(self) -> bytes:
        return json.dumps(self.manifest(), sort_keys=True, ensure_ascii=False,
                          separators=(",", ":")).encode()

    def request(self) -> dict[str, Any]:
        """Keyword arguments of this batch's mapped ``TriggerDagRunOperator``: small."""
        return {"trigger_run_id": self.run_id, "conf": {"manifest": self.manifest_uri}}


@dataclass
class ArrivalIntake:
    """Outcome of :func:`take_arrivals`: batches to start now, and what was quarantined."""

    batches: list[Batch]
    rejected: list[dict[str, str]]

    @property
    def claims(self) -> list[Claim]:
        return [c for b in self.batches for c in b.claims]


@dataclass
class NotifiedIntake:
    """Outcome of :func:`claim_notified`: batches to start now, what was quarantined, what
    was skipped and why, and how many claims were left for the next run (over the cap)."""

    batches: list[Batch]
    rejected: list[dict[str, str]]
    skipped: list[dict[str, str]]
    backlog: int

    @property
    def claims(self) -> list[Claim]:
        return [c for b in self.batches for c in b.claims]


@dataclass
class _Taken:
    """Claims taken this tick before batching: re-offered stored batches, loose claims with
    their slice estimates, and what the screen refused."""

    groups: list[list[Claim]] = field(default_factory=list)
    loose: list[tuple[Claim, int]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    facts: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)


# --- estimates and batches -----------------------------------------------------------------

def estimate_slices(width: int | None, height: int | None, size_bytes: int) -> int:
    """Slices of one image at default parameters with a 416-px model; from the byte size
    (:data:`PIXELS_PER_BYTE`, a square) when the header gave no pixel size."""
    from tilescope.params import InferenceParams
    from tilescope.pipeline import plan_image

    if not (width and height):
        side = max(1, math.isqrt(max(int(size_bytes), 1) * PIXELS_PER_BYTE))
        width = height = side
    return int(plan_image(int(width), int(height), InferenceParams(),
                          ESTIMATE_SLICE_PX).slice_count)


def plan_batches(items: Sequence[tuple[Claim, int]], images_per_run: int,
                 slices_per_run: int) -> list[list[tuple[Claim, int]]]:
    """Cut ``(claim, estimated slices)`` into consecutive batches (per bucket, in order) of at
    most ``images_per_run`` images and ``slices_per_run`` slices; an image over the slice
    bound alone makes a batch of its own."""
    images_per_run, slices_per_run = max(images_per_run, 1), max(slices_per_run, 1)
    buckets: dict[str, list[tuple[Claim, int]]] = {}
    for item in items:
        buckets.setdefault(item[0].bucket, []).append(item)
    batches: list[list[tuple[Claim, int]]] = []
    for bucket_items in buckets.values():
        current: list[tuple[Claim, int]] = []
        slices = 0
        for claim_, estimate in bucket_items:
            if current and (len(current) >= images_per_run
                            or slices + estimate > slices_per_run):
                batches.append(current)
                current, slices = [], 0
            current.append((claim_, estimate))
            slices += estimate
        if current:
            batches.append(current)
    return batches


def manifest_uri(bucket: str, run_id: str, prefix: str = "manifests/") -> str:
    return f"s3://{bucket}/{prefix}{run_id}.json"


def _parallel(fn: Callable[[T], R], items: Sequence[T], threads: int) -> list[R | Exception]:
    """``fn`` over ``items`` on a small thread pool (boto3 clients are thread-safe), in order;
    an exception is returned in its item's place."""
    def guarded(item: T) -> R | Exception:
        try:
            return fn(item)
        except Exception as exc:
            return exc

    if len(items) <= 1 or threads <= 1:
        return [guarded(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(guarded, items))


def _screen_claims(client: S3Client, engine: sa.Engine, claims: Sequence[Claim],
                   policy: IntakePolicy, run_id: str | None, taken: _Taken) -> None:
    """Screen claimed versions (ranged GETs on the pool): non-images quarantined at once,
    vanished ones released, the rest kept loose with their slice estimates."""
    def look(owned: Claim) -> tuple[Screened, int]:
        arrival = Arrival(owned.bucket, owned.key, owned.etag, owned.size)
        seen = inspect(client, arrival, policy.suffixes)
        if seen.reason is not None:
            quarantine(client, owned.bucket, owned.key, owned.etag, reason=seen.reason,
                       error_class="NotAnImage", run_id=run_id)
            return seen, 0
        return seen, estimate_slices(seen.width, seen.height, owned.size)

    failure: Exception | None = None
    for owned, outcome in zip(claims, _parallel(look, claims, policy.screen_threads),
                              strict=True):
        if isinstance(outcome, Exception):
            if _missing(outcome):  # deleted since the listing: nothing to start, nothing lost
                mark(engine, owned, FAILED, error="object vanished before screening")
            else:  # left claimed: the next tick re-offers (and re-screens) it
                failure = failure or outcome
            continue
        seen, estimate = outcome
        if seen.reason is not None:
            mark(engine, owned, QUARANTINED, error=seen.reason)
            taken.rejected.append({"key": owned.key, "reason": seen.reason})
        else:
            taken.loose.append((owned, estimate))
            if seen.facts:
                taken.facts[owned.version] = seen.facts
    if failure is not None:
        raise failure


def _split_pending(pending: Sequence[Claim], limit: int) -> tuple[list[list[Claim]],
                                                                 list[Claim], list[Claim]]:
    """Unfinished claims → (stored batches, loose claims) that fit ``limit`` images, oldest
    first and stored batches whole, and the loose claims left over."""
    groups: dict[str, list[Claim]] = {}
    for c in pending:
        if c.batch_run_id:
            groups.setdefault(c.batch_run_id, []).append(c)
    taken_groups: list[list[Claim]] = []
    loose: list[Claim] = []
    left: list[Claim] = []
    count = 0
    done: set[str] = set()
    for c in pending:
        if c.batch_run_id:
            if c.batch_run_id in done:
                continue
            done.add(c.batch_run_id)
            group = groups[c.batch_run_id]
            if count < limit:
                taken_groups.append(group)
                count += len(group)
            else:
                left.extend(group)
        elif count < limit:
            loose.append(c)
            count += 1
        else:
            left.append(c)
    return taken_groups, loose, left


def _form_batches(client: S3Client, engine: sa.Engine, taken: _Taken,
                  policy: IntakePolicy) -> tuple[list[Batch], int]:
    """Stored batches as they are; loose claims cut into new batches whose run ids are stored
    in their rows; then every batch's manifest written. Also returns how many loose claims
    were left unbatched (over ``max_runs_per_tick``)."""
    # Stored batches with all their members (a notified version may bring one alone).
    stored_ids = [g[0].batch_run_id or "" for g in taken.groups]
    batches = [Batch(run_id, tuple(members), manifest_uri(members[0].bucket, run_id,
                                                          policy.manifest_prefix))
               for run_id, members in batch_members(engine, stored_ids).items() if members]
    left = 0
    for planned in plan_batches(taken.loose, policy.images_per_run, policy.slices_per_run):
        if len(batches) >= max(policy.max_runs_per_tick, 1):
            left += len(planned)  # left claimed, no batch yet: the next tick batches them
            continue
        claims = [c for c, _ in planned]
        run_id = batch_run_id(claims)
        stored = assign_batch(engine, claims, run_id)
        if stored:  # else another claimer batched all of them first: its run to start
            estimates = {c.version: s for c, s in planned}
            batches.append(Batch(run_id, tuple(stored),
                                 manifest_uri(claims[0].bucket, run_id, policy.manifest_prefix),
                                 sum(estimates[c.version] for c in stored),
                                 {c.version: taken.facts[c.version] for c in stored
                                  if c.version in taken.facts}))
    for outcome in _parallel(lambda b: write_manifest(client, b), batches,
                             policy.screen_threads):
        if isinstance(outcome, Exception):
            raise outcome
    return batches, left


def write_manifest(client: S3Client, batch: Batch) -> bool:
    """Write the batch's manifest unless it exists (True if written). Its content is
    deterministic; an existing one is kept because its run may be reading it already (and
    members it has settled are no longer re-offered with the rest)."""
    bucket, _, key = batch.manifest_uri.removeprefix("s3://").partition("/")
    try:
        client.head_object(Bucket=bucket, Key=key)
        return False
    except Exception as exc:
        if not _missing(exc):
            raise
    client.put_object(Bucket=bucket, Key=key, Body=batch.manifest_bytes(),
                      ContentType="application/json")
    return True


# --- listing (s3_arrivals) -----------------------------------------------------------------

def _claim_listing(client: S3Client, engine: sa.Engine, bucket: str, policy: IntakePolicy,
                   run_id: str | None) -> _Taken:
    limit = max(policy.per_tick_limit, 1)
    pending = unfinished(engine)
    groups, loose, _ = _split_pending(pending, limit)
    taken = _Taken(groups=groups)
    room = limit - sum(len(g) for g in groups) - len(loose)
    fresh: list[Claim] = []
    if room > 0:
        offered = {c.version for c in pending}
        listing = [a for a in list_arrivals(client, bucket, policy.prefix)
                   if (a.bucket, a.key, a.etag) not in offered]
        # Versions already owned (in flight, settled) cost a row in one SELECT, not a GET.
        rows = rows_for(engine, ((a.bucket, a.key, a.etag) for a in listing))
        candidates = [a for a in listing if claimable(
            rows.get((a.bucket, a.key, a.etag)), policy.max_attempts,
            policy.retry_after_seconds)][:room]  # back-pressure: the rest waits, unclaimed
        fresh = claim_versions(engine, [(a.bucket, a.key, a.etag, a.size) for a in candidates],
                               policy.max_attempts, policy.retry_after_seconds)
    _screen_claims(client, engine, [*loose, *fresh], policy, run_id, taken)
    return taken


def take_arrivals(client: S3Client, engine: sa.Engine, bucket: str, policy: IntakePolicy,
                  run_id: str | None = None) -> ArrivalIntake:
    """One ``s3_arrivals`` tick: claim up to ``per_tick_limit`` new image versions under the
    prefix (one transaction), screen them (non-images quarantined at once) and cut them into
    batches with stored run ids and written manifests.

    Unfinished claims (claimed, never marked triggered) come first: those with a stored
    batch run id as that batch (same run id, same manifest), the rest batched anew.
    """
    taken = _claim_listing(client, engine, bucket, policy, run_id)
    return ArrivalIntake(_form_batches(client, engine, taken, policy)[0], taken.rejected)


def claim_arrivals(client: S3Client, engine: sa.Engine, bucket: str, policy: IntakePolicy,
                   run_id: str | None = None) -> tuple[list[Claim], list[dict[str, str]]]:
    """Claim and screen like :func:`take_arrivals`, without batching: (claims to start one
    run each, quarantined [{key, reason}])."""
    taken = _claim_listing(client, engine, bucket, policy, run_id)
    return [c for g in taken.groups for c in g] + [c for c, _ in taken.loose], taken.rejected


def _missing(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")


def trigger_requests(claims: list[Claim]) -> list[dict[str, Any]]:
    """Keyword arguments for one mapped ``TriggerDagRunOperator`` per claim (single-image
    runs; the DAGs start batches: :func:`batch_requests`)."""
    return [{"trigger_run_id": c.run_id,
             "conf": {"image_uri": c.uri, "claim": c.to_dict()}} for c in claims]


def batch_requests(batches: Iterable[Batch]) -> list[dict[str, Any]]:
    """Keyword arguments for one mapped ``TriggerDagRunOperator`` per batch: its run id and
    ``conf={"manifest": uri}`` — a few hundred bytes each, whatever the batch holds."""
    return [b.request() for b in batches]


def mark_triggered(engine: sa.Engine, claims: list[Claim]) -> int:
    """Record that the runs exist (only claims still in ``claimed`` move)."""
    return sum(mark(engine, c, TRIGGERED, only_if=(CLAIMED,)) for c in claims)


def mark_batches_triggered(engine: sa.Engine, run_ids: Iterable[str]) -> int:
    """Record that these batch runs exist: every claim stored under them still ``claimed``
    moves to ``triggered`` (one transaction)."""
    return mark_runs(engine, run_ids, TRIGGERED, only_if=(CLAIMED,))


def quarantine_claimed(client: S3Client, engine: sa.Engine, owned: Claim, *, reason: str,
                       error_class: str, run_id: str | None) -> str | None:
    """A claimed object turned out to be bad input: set it aside with its reason."""
    target = quarantine(client, owned.bucket, owned.key, owned.etag, reason=reason,
                        error_class=error_class, run_id=run_id)
    mark(engine, owned, QUARANTINED, error=f"{error_class}: {reason}")
    return target


def settle(client: S3Client, engine: sa.Engine, owned: Claim, *,
           stored: bool) -> ClaimState:
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


# --- notifications (s3_events) -------------------------------------------------------------

def current_version(client: S3Client, arrival: Arrival) -> Arrival | None:
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


def claim_notified(client: S3Client, engine: sa.Engine, arrivals: Iterable[Arrival],
                   policy: IntakePolicy, run_id: str | None = None,
                   reoffer_after_seconds: float = 0.0) -> NotifiedIntake:
    """Claim the notified versions (screened, non-images quarantined at once) and batch
    them, like :func:`take_arrivals` does for a listing — but for exactly the versions named.

    Unfinished claims (claimed, never marked triggered) come first once they are
    ``reoffer_after_seconds`` old: with runs overlapping, a younger one is most likely being
    triggered by its own run right now, and re-offering it would only add a no-op trigger.
    A notified version that is itself still unfinished is re-offered at once (this task's
    earlier try claimed it, then died). A version already triggered or settled, gone, or
    superseded by a newer upload (which has a notification of its own) is skipped.
    Every notified version is claimed (one transaction) and screened — the queue message is
    gone, so nothing may be left unclaimed — but at most ``per_tick_limit`` images are
    batched to start now; the rest stay ``claimed`` (``backlog``) for a run that re-offers
    them.
    """
    pending = unfinished(engine, older_than_seconds=reoffer_after_seconds)
    seen = {c.version for c in pending}
    skipped: list[dict[str, str]] = []

    def skip(arrival: Arrival, why: str) -> None:
        skipped.append({"key": arrival.key, "etag": arrival.etag, "reason": why})

    notified: list[Arrival] = []
    for item in arrivals:
        version = (item.bucket, item.key, item.etag.strip('"'))
        if version in seen:
            continue
        seen.add(version)
        notified.append(Arrival(*version, item.size))
    rows = rows_for(engine, ((a.bucket, a.key, a.etag) for a in notified if a.etag))
    to_read: list[Arrival] = []
    for item in notified:
        known = rows.get((item.bucket, item.key, item.etag)) if item.etag else None
        if known and known["status"] == CLAIMED:  # claimed, never triggered: again
            pending.append(claim_of(known))
            continue
        if known and known["status"] != FAILED:  # a duplicate delivery
            skip(item, f"already {known['status']}")
            continue
        to_read.append(item)
    candidates: list[Arrival] = []
    for item, current in zip(to_read, _parallel(lambda a: current_version(client, a), to_read,
                                                policy.screen_threads), strict=True):
        if isinstance(current, Exception):
            raise current
        if current is None:
            skip(item, "gone since notified (moved or deleted)")
        elif item.etag and current.etag != item.etag:
            skip(item, f"superseded by version {current.etag} (notified on its own)")
        else:
            candidates.append(current)
    owned = claim_versions(engine, [(a.bucket, a.key, a.etag, a.size) for a in candidates],
                           policy.max_attempts, policy.retry_after_seconds)
    won = {c.version for c in owned}
    for current in candidates:
        if (current.bucket, current.key, current.etag) not in won:
            skip(current, "claimed elsewhere, or resting/out of attempts after a failure")
    fresh = _Taken()
    _screen_claims(client, engine, owned, policy, run_id, fresh)

    limit = max(policy.per_tick_limit, 1)
    groups, loose, left = _split_pending(pending, limit)
    room = limit - sum(len(g) for g in groups) - len(loose)
    taken = _Taken(groups=groups, rejected=fresh.rejected)
    _screen_claims(client, engine, loose, policy, run_id, taken)
    taken.loose.extend(fresh.loose[:max(room, 0)])
    taken.facts.update(fresh.facts)
    backlog = len(left) + len(fresh.loose) - max(min(room, len(fresh.loose)), 0)
    batches, unbatched = _form_batches(client, engine, taken, policy)
    return NotifiedIntake(batches, taken.rejected, skipped, backlog + unbatched)

