"""Exactly-once claims on arriving objects, in the SQL catalog.

An object *version* (bucket, key, ETag) is claimed by inserting a row under a unique key:
whichever transaction inserts first owns it, so overlapping arrival runs, task retries and
scheduler restarts can never start two pipelines for the same version. The pipeline run id
is derived from the claim (and its attempt), so re-triggering after a crash between claim
and trigger finds the existing run instead of making a second one.

Lifecycle: ``claimed`` → ``triggered`` → ``processed`` | ``quarantined`` | ``failed``;
a ``failed`` claim (transient trouble) is claimable again until ``max_attempts``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from tilescope.catalog import METADATA

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
)

CLAIMED, TRIGGERED, PROCESSED, QUARANTINED, FAILED = (
    "claimed", "triggered", "processed", "quarantined", "failed")


@dataclass(frozen=True)
class Claim:
    """One claimed object version and the pipeline run that owns it."""

    bucket: str
    key: str
    etag: str
    size: int
    attempts: int

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def run_id(self) -> str:
        """Deterministic: the same version and attempt always map to the same run id."""
        digest = hashlib.sha256(f"{self.bucket}\0{self.key}\0{self.etag}".encode()).hexdigest()
        return f"arrival__{digest[:20]}__a{self.attempts}"

    def to_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "etag": self.etag, "size": self.size,
                "attempts": self.attempts, "run_id": self.run_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        return cls(str(data["bucket"]), str(data["key"]), str(data["etag"]),
                   int(data["size"]), int(data["attempts"]))


def _now() -> datetime:
    return datetime.now(UTC)


def _claim(row: Any) -> Claim:
    return Claim(row.bucket, row.key, row.etag, int(row.size), int(row.attempts))


def claim(engine: sa.Engine, bucket: str, key: str, etag: str, size: int,
          max_attempts: int = 3, retry_after_seconds: float = 300.0) -> Claim | None:
    """Claim this object version; ``None`` if another claim owns it (or attempts ran out).

    A new version is inserted; a ``failed`` one is re-claimed (attempt + 1) once it has rested
    ``retry_after_seconds`` (time for someone to clear and re-run the failed run by hand), by
    a conditional update, so two claimers racing on it cannot both win.
    """
    etag = etag.strip('"')
    now = _now()
    values = {"bucket": bucket, "key": key, "etag": etag, "size": size, "status": CLAIMED,
              "attempts": 1, "claimed_at": now, "updated_at": now}
    with engine.begin() as conn:
        try:
            with conn.begin_nested():
                conn.execute(sa.insert(CLAIMS).values(**values))
            return Claim(bucket, key, etag, size, 1)
        except sa.exc.IntegrityError:
            pass
        version = ((CLAIMS.c.bucket == bucket) & (CLAIMS.c.key == key)
                   & (CLAIMS.c.etag == etag))
        retried = conn.execute(
            sa.update(CLAIMS).where(
                version & (CLAIMS.c.status == FAILED) & (CLAIMS.c.attempts < max_attempts)
                & (CLAIMS.c.updated_at <= datetime.fromtimestamp(
                    now.timestamp() - retry_after_seconds, UTC)))
            .values(status=CLAIMED, attempts=CLAIMS.c.attempts + 1, error=None,
                    updated_at=now))
        if retried.rowcount != 1:
            return None
        row = conn.execute(sa.select(CLAIMS).where(version)).one()
        return _claim(row)


def unfinished(engine: sa.Engine, older_than_seconds: float = 0.0) -> list[Claim]:
    """Claims made but never marked triggered (the claimer died between claim and trigger)."""
    cutoff = _now().timestamp() - older_than_seconds
    with engine.connect() as conn:
        rows = conn.execute(sa.select(CLAIMS).where(CLAIMS.c.status == CLAIMED)).all()
    return [_claim(r) for r in rows if _as_utc(r.updated_at).timestamp() <= cutoff]


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def mark(engine: sa.Engine, claim_: Claim, status: str, *, error: str | None = None,
         only_if: tuple[str, ...] | None = None) -> bool:
    """Move a claim to ``status`` (optionally only from the ``only_if`` states)."""
    where = ((CLAIMS.c.bucket == claim_.bucket) & (CLAIMS.c.key == claim_.key)
             & (CLAIMS.c.etag == claim_.etag))
    if only_if:
        where &= CLAIMS.c.status.in_(only_if)
    with engine.begin() as conn:
        done = conn.execute(sa.update(CLAIMS).where(where).values(
            status=status, error=error, run_id=claim_.run_id, updated_at=_now()))
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
