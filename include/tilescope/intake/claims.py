"""Exactly-once claims on arriving objects, in the SQL catalog.

An object *version* (bucket, key, ETag) is claimed by inserting a row under a unique key:
whichever transaction inserts first owns it, so overlapping arrival runs, task retries and
scheduler restarts can never start two pipelines for the same version. The pipeline run id
is derived from the claim (and its attempt), so re-triggering after a crash between claim
and trigger finds the existing run instead of making a second one.

Batches: many claims can share one pipeline run. Its run id is derived from the claims
(:func:`batch_run_id`) and *stored* in their rows (the ``run_id`` column, by
:func:`assign_batch`, before anything is triggered), so a claimer that dies between storing and
triggering leaves claims that are re-offered under the same run id, with the same members.
Claims of a whole listing are taken in one transaction (:func:`claim_versions`).

Lifecycle: ``claimed`` → ``triggered`` → ``processed`` | ``quarantined`` | ``failed``;
a ``failed`` claim (transient trouble) is claimable again until ``max_attempts``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from tilescope.outputs.catalog import METADATA

CLAIMS = sa.Table(
    "tilescope_claims",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("bucket", sa.String(255), nullable=False),
    sa.Column("key", sa.String(1024), nullable=False),
    sa.Column("etag", sa.String(128), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(250)),
    sa.Column("error", sa.Text),
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("bucket", "key", "etag", name="uq_tilescope_claim_version"),
    # unfinished claims, and the claims of a batch run (created with the table)
    sa.Index("ix_tilescope_claims_status", "status"),
    sa.Index("ix_tilescope_claims_run_id", "run_id"),
)

class ClaimState(StrEnum):
    """Where a claim is in its lifecycle (its row's ``status``; see the module docstring).
    A ``StrEnum``: each state equals the string stored in the catalog."""

    CLAIMED = "claimed"
    TRIGGERED = "triggered"
    PROCESSED = "processed"
    QUARANTINED = "quarantined"
    FAILED = "failed"


#: the states by name, as the rest of intake spells them
CLAIMED, TRIGGERED, PROCESSED, QUARANTINED, FAILED = ClaimState
#: run ids of batch runs start with this (a stored run id without it is a single claim's)
BATCH_PREFIX = "arrivals__"
#: rows per statement in bulk operations (SQLite allows 32,766 bound parameters)
CHUNK = 400


@dataclass(frozen=True)
class Claim:
    """One claimed object version and the pipeline run that owns it."""

    bucket: str
    key: str
    etag: str
    size: int
    attempts: int
    #: the batch run this claim belongs to (stored in its row), if it is in one
    batch_run_id: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def version(self) -> tuple[str, str, str]:
        return (self.bucket, self.key, self.etag)

    @property
    def run_id(self) -> str:
        """Deterministic: the same version and attempt always map to the same run id (the
        run of this claim alone; see :attr:`pipeline_run_id` for the run that owns it)."""
        digest = hashlib.sha256(f"{self.bucket}\0{self.key}\0{self.etag}".encode()).hexdigest()
        return f"arrival__{digest[:20]}__a{self.attempts}"

    @property
    def pipeline_run_id(self) -> str:
        """The run that processes this claim: its batch's, else its own."""
        return self.batch_run_id or self.run_id

    def to_dict(self) -> dict[str, Any]:
        data = {"bucket": self.bucket, "key": self.key, "etag": self.etag, "size": self.size,
                "attempts": self.attempts, "run_id": self.run_id}
        if self.batch_run_id:
            data["batch_run_id"] = self.batch_run_id
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        return cls(str(data["bucket"]), str(data["key"]), str(data["etag"]),
                   int(data["size"]), int(data["attempts"]),
                   str(data["batch_run_id"]) if data.get("batch_run_id") else None)


def batch_run_id(claims: Iterable[Claim]) -> str:
    """Deterministic run id of a batch: a hash of its claims' versions and attempts, in any
    order (``arrivals__<40 hex>``)."""
    lines = sorted(f"{c.bucket}\0{c.key}\0{c.etag}\0{c.attempts}" for c in claims)
    if not lines:
        raise ValueError("a batch needs at least one claim")
    return BATCH_PREFIX + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:40]


def _now() -> datetime:
    return datetime.now(UTC)


def claim_of(row: Mapping[str, Any]) -> Claim:
    """A claim from its row (a mapping); a stored batch run id only while the row is
    ``claimed`` (rows of older releases may hold a single claim's run id there: no batch)."""
    stored = row["run_id"] if row["status"] == CLAIMED else None
    batch = stored if stored and str(stored).startswith(BATCH_PREFIX) else None
    return Claim(row["bucket"], row["key"], row["etag"], int(row["size"]),
                 int(row["attempts"]), batch)


def _claim(row: Any) -> Claim:
    return claim_of(row._mapping)


def batch_members(engine: sa.Engine, run_ids: Iterable[str]) -> dict[str, list[Claim]]:
    """The ``claimed`` claims stored under each of these batch run ids, by version."""
    ids = sorted(set(run_ids))
    found: dict[str, list[Claim]] = {i: [] for i in ids}
    with engine.connect() as conn:
        for chunk in _chunks(ids):
            for row in conn.execute(sa.select(CLAIMS).where(
                    CLAIMS.c.run_id.in_(list(chunk)) & (CLAIMS.c.status == CLAIMED))
                    .order_by(CLAIMS.c.bucket, CLAIMS.c.key, CLAIMS.c.etag)):
                found[row.run_id].append(_claim(row))
    return found


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _version_in(versions: Sequence[tuple[str, str, str]]) -> Any:
    return sa.tuple_(CLAIMS.c.bucket, CLAIMS.c.key, CLAIMS.c.etag).in_(list(versions))


def rows_for(engine: sa.Engine, versions: Iterable[tuple[str, str, str]]
             ) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The claim rows of these versions (bucket, key, ETag), where there are any."""
    wanted = sorted({(b, k, e.strip('"')) for b, k, e in versions})
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    with engine.connect() as conn:
        for chunk in _chunks(wanted):
            for row in conn.execute(sa.select(CLAIMS).where(_version_in(chunk))):
                found[(row.bucket, row.key, row.etag)] = dict(row._mapping)
    return found


def claimable(row: dict[str, Any] | None, max_attempts: int, retry_after_seconds: float,
              now: datetime | None = None) -> bool:
    """Could :func:`claim_versions` take this version now (new, or failed and rested)?"""
    if row is None:
        return True
    rested = (now or _now()).timestamp() - retry_after_seconds
    return (row["status"] == FAILED and int(row["attempts"]) < max_attempts
            and _as_utc(row["updated_at"]).timestamp() <= rested)


def _insert_new(conn: sa.Connection, rows: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Insert what is not there yet; the versions this transaction inserted."""
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        from sqlalchemy.dialects import postgresql, sqlite

        insert: Callable[..., Any] = sqlite.insert if name == "sqlite" else postgresql.insert
        won: set[tuple[str, str, str]] = set()
        for chunk in _chunks(rows):
            statement = (insert(CLAIMS).values(list(chunk))
                         .on_conflict_do_nothing(index_elements=["bucket", "key", "etag"])
                         .returning(CLAIMS.c.bucket, CLAIMS.c.key, CLAIMS.c.etag))
            won.update((r.bucket, r.key, r.etag) for r in conn.execute(statement))
        return won
    won = set()  # pragma: no cover - other dialects: one savepoint per row
    for row in rows:  # pragma: no cover
        try:
            with conn.begin_nested():
                conn.execute(sa.insert(CLAIMS).values(**row))
            won.add((row["bucket"], row["key"], row["etag"]))
        except sa.exc.IntegrityError:
            pass
    return won


def claim_versions(engine: sa.Engine, versions: Iterable[tuple[str, str, str, int]],
                   max_attempts: int = 3, retry_after_seconds: float = 300.0) -> list[Claim]:
    """Claim many object versions ``(bucket, key, etag, size)`` in one transaction; the
    claims this call won, in the order given.

    New versions are inserted with ``ON CONFLICT DO NOTHING … RETURNING`` (whoever inserts
    first owns a version; rows go in sorted order so two bulk claimers on PostgreSQL wait
    for each other instead of deadlocking); ``failed`` ones that rested
    ``retry_after_seconds`` and have attempts left are re-claimed by a conditional update
    (attempt + 1, stored batch run id cleared), so two claimers cannot both win one.
    """
    order: dict[tuple[str, str, str], int] = {}
    for bucket, key, etag, size in versions:
        order.setdefault((bucket, key, etag.strip('"')), int(size))
    if not order:
        return []
    now = _now()
    rows = [{"bucket": b, "key": k, "etag": e, "size": size, "status": CLAIMED,
             "attempts": 1, "claimed_at": now, "updated_at": now}
            for (b, k, e), size in sorted(order.items())]
    rested = datetime.fromtimestamp(now.timestamp() - retry_after_seconds, UTC)
    won: dict[tuple[str, str, str], Claim] = {}
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                won = {v: Claim(*v, order[v], 1) for v in _insert_new(conn, rows)}
                rest = sorted(v for v in order if v not in won)
                for chunk in _chunks(rest):
                    update = (
                        sa.update(CLAIMS)
                        .where(_version_in(chunk) & (CLAIMS.c.status == FAILED)
                               & (CLAIMS.c.attempts < max_attempts)
                               & (CLAIMS.c.updated_at <= rested))
                        .values(status=CLAIMED, attempts=CLAIMS.c.attempts + 1, error=None,
                                run_id=None, updated_at=now)
                        .returning(CLAIMS.c.bucket, CLAIMS.c.key, CLAIMS.c.etag,
                                   CLAIMS.c.size, CLAIMS.c.attempts))
                    for r in conn.execute(update):
                        won[(r.bucket, r.key, r.etag)] = Claim(
                            r.bucket, r.key, r.etag, int(r.size), int(r.attempts))
            break
        except sa.exc.OperationalError as exc:  # PostgreSQL deadlock on re-claims: again
            if attempt == 4 or "deadlock" not in str(exc).lower():
                raise
    return [won[v] for v in order if v in won]


def claim(engine: sa.Engine, bucket: str, key: str, etag: str, size: int,
          max_attempts: int = 3, retry_after_seconds: float = 300.0) -> Claim | None:
    """Claim this object version; ``None`` if another claim owns it (or attempts ran out).

    A new version is inserted; a ``failed`` one is re-claimed (attempt + 1) once it has rested
    ``retry_after_seconds`` (time for someone to clear and re-run the failed run by hand), by
    a conditional update, so two claimers racing on it cannot both win.
    """
    won = claim_versions(engine, [(bucket, key, etag, size)], max_attempts,
                         retry_after_seconds)
    return won[0] if won else None


def unfinished(engine: sa.Engine, older_than_seconds: float = 0.0) -> list[Claim]:
    """Claims made but never marked triggered (the claimer died between claim and trigger),
    oldest first, each with the batch run id stored for it (if one was)."""
    cutoff = _now().timestamp() - older_than_seconds
    with engine.connect() as conn:
        rows = conn.execute(sa.select(CLAIMS).where(CLAIMS.c.status == CLAIMED)
                            .order_by(CLAIMS.c.id)).all()
    return [_claim(r) for r in rows if _as_utc(r.updated_at).timestamp() <= cutoff]


def assign_batch(engine: sa.Engine, claims: Sequence[Claim], run_id: str) -> list[Claim]:
    """Store ``run_id`` as the batch of these claims — only where still ``claimed`` at the
    same attempt with no batch yet — in one transaction; the claims whose rows now hold
    ``run_id`` (another claimer that re-offered the same loose claims at the same moment
    may have stored its own batch first: those are its to trigger)."""
    wanted = {c.version: c for c in claims}
    with engine.begin() as conn:
        for chunk in _chunks(sorted(wanted)):
            conn.execute(sa.update(CLAIMS).where(
                _version_in(chunk) & (CLAIMS.c.status == CLAIMED) & CLAIMS.c.run_id.is_(None))
                .values(run_id=run_id, updated_at=_now()))
        stored: set[tuple[str, str, str]] = set()
        for chunk in _chunks(sorted(wanted)):
            stored.update((r.bucket, r.key, r.etag) for r in conn.execute(
                sa.select(CLAIMS.c.bucket, CLAIMS.c.key, CLAIMS.c.etag, CLAIMS.c.attempts)
                .where(_version_in(chunk) & (CLAIMS.c.run_id == run_id)
                       & (CLAIMS.c.status == CLAIMED)))
                if r.attempts == wanted[(r.bucket, r.key, r.etag)].attempts)
    return [replace(c, batch_run_id=run_id) for c in claims if c.version in stored]


def mark_runs(engine: sa.Engine, run_ids: Iterable[str], status: ClaimState = TRIGGERED,
              only_if: tuple[ClaimState, ...] = (CLAIMED,)) -> int:
    """Move every claim stored under one of these batch run ids (and in ``only_if``) to
    ``status``; how many moved."""
    ids = sorted(set(run_ids))
    moved = 0
    with engine.begin() as conn:
        for chunk in _chunks(ids):
            done = conn.execute(sa.update(CLAIMS).where(
                CLAIMS.c.run_id.in_(list(chunk)) & CLAIMS.c.status.in_(only_if))
                .values(status=status, updated_at=_now()))
            moved += max(done.rowcount, 0)
    return moved


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def mark(engine: sa.Engine, claim_: Claim, status: ClaimState, *, error: str | None = None,
         only_if: tuple[ClaimState, ...] | None = None) -> bool:
    """Move a claim to ``status`` (optionally only from the ``only_if`` states)."""
    where = ((CLAIMS.c.bucket == claim_.bucket) & (CLAIMS.c.key == claim_.key)
             & (CLAIMS.c.etag == claim_.etag))
    if only_if:
        where &= CLAIMS.c.status.in_(only_if)
    with engine.begin() as conn:
        done = conn.execute(sa.update(CLAIMS).where(where).values(
            status=status, error=error, run_id=claim_.pipeline_run_id, updated_at=_now()))
    return done.rowcount == 1


def status_of(engine: sa.Engine, bucket: str, key: str, etag: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(CLAIMS).where(
            (CLAIMS.c.bucket == bucket) & (CLAIMS.c.key == key)
            & (CLAIMS.c.etag == etag.strip('"')))).one_or_none()
    return dict(row._mapping) if row else None


def all_claims(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(CLAIMS).order_by(CLAIMS.c.id))]
