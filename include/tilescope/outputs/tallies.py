"""Per-class tallies of stored results, kept by the example consumer DAG ``results_consumer``.

The ``store`` task emits one event on the results asset per stored result, with
``{"image_id", "image_uri", "status", "detections", "counts", "result"}`` in its extra. A
consumer needs nothing else: this module turns such events into rows of
``tilescope_class_tallies`` (one per result and class, in the SQL catalog), so "how many
persons across every image?" is a ``GROUP BY`` rather than a scan of result documents.

A batch run with more stored images than ``TILESCOPE_IMAGE_EVENTS_PER_RUN`` announces them
in one event instead, ``{"batch": {"outcomes": "s3://…/outcomes.json", ...}}``: the tallies
of its images are read from that document (``load_outcomes``).

Re-recording a result (the same image and parameters processed again, or the consumer
retried) replaces that result's rows, so tallies never double-count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from tilescope.outputs.catalog import METADATA

TALLIES = sa.Table(
    "tilescope_class_tallies",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("result_key", sa.String(1024), nullable=False),
    sa.Column("category", sa.String(128), nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("image_id", sa.String(32), nullable=False, index=True),
    sa.Column("image_uri", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("source_run_id", sa.String(250)),
    sa.Column("event_at", sa.DateTime(timezone=True)),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("result_key", "category", name="uq_tilescope_tally_result_category"),
)


@dataclass(frozen=True)
class ResultTally:
    """The class counts of one stored result, as announced by its asset event."""

    result_key: str
    image_id: str
    image_uri: str
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    source_run_id: str | None = None
    event_at: datetime | None = None

    @property
    def detections(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        """One log line, e.g. ``3f2a… complete: 35 person, 6 kite``."""
        classes = ", ".join(f"{n} {name}" for name, n in self.counts.items()) or "nothing"
        return f"{self.image_id} {self.status}: {classes} ({self.result_key})"


def tallies_from_events(events: Iterable[Any],
                        load_outcomes: Callable[[str], list[Mapping[str, Any]]] | None = None
                        ) -> tuple[list[ResultTally], list[str]]:
    """The tallies announced by asset events (objects with ``.extra``, or extra mappings),
    and a reason for each event that is not a stored result (e.g. a manual event). A batch
    event's images come from its outcomes document, read with ``load_outcomes(uri)``."""
    tallies: list[ResultTally] = []
    skipped: list[str] = []
    for event in events:
        extra = getattr(event, "extra", event)
        if not isinstance(extra, Mapping):
            skipped.append("event without extra")
            continue
        batch = extra.get("batch")
        if isinstance(batch, Mapping) and batch.get("outcomes"):
            if load_outcomes is None:
                skipped.append(f"batch event {batch['outcomes']}: no outcomes loader")
                continue
            stored = [{"result": (o.get("keys") or {}).get("result"),
                       "image_id": o.get("image_id"), "image_uri": o.get("uri"),
                       "status": o.get("result_status"), "counts": o.get("counts")}
                      for o in load_outcomes(str(batch["outcomes"]))
                      if o.get("status") == "stored"]
            more, why = tallies_from_events(
                [_Event(e, getattr(event, "source_run_id", None),
                        getattr(event, "timestamp", None)) for e in stored])
            tallies.extend(more)
            skipped.extend(why)
            continue
        key, image_id, counts = extra.get("result"), extra.get("image_id"), extra.get("counts")
        if not key or not image_id or not isinstance(counts, Mapping):
            skipped.append(f"event without result/image_id/counts: {sorted(extra)}")
            continue
        try:
            parsed = {str(name): int(n) for name, n in counts.items()}
        except (TypeError, ValueError):
            skipped.append(f"{key}: counts are not numbers")
            continue
        tallies.append(ResultTally(
            result_key=str(key), image_id=str(image_id),
            image_uri=str(extra.get("image_uri") or ""), status=str(extra.get("status") or ""),
            counts=parsed, source_run_id=getattr(event, "source_run_id", None),
            event_at=getattr(event, "timestamp", None)))
    return tallies, skipped


@dataclass(frozen=True)
class _Event:
    """One image of a batch event, shaped like the event of a single stored result."""

    extra: Mapping[str, Any]
    source_run_id: str | None
    timestamp: datetime | None


def record_tallies(engine: sa.Engine, tallies: Iterable[ResultTally]) -> int:
    """Replace the rows of each result with its current counts; returns rows written."""
    now = datetime.now(UTC)
    written = 0
    with engine.begin() as conn:
        for tally in tallies:
            conn.execute(sa.delete(TALLIES).where(TALLIES.c.result_key == tally.result_key))
            rows = [{"result_key": tally.result_key, "category": name, "count": n,
                     "image_id": tally.image_id, "image_uri": tally.image_uri,
                     "status": tally.status, "source_run_id": tally.source_run_id,
                     "event_at": tally.event_at, "recorded_at": now}
                    for name, n in tally.counts.items()]
            if rows:
                conn.execute(sa.insert(TALLIES), rows)
                written += len(rows)
    return written


def class_totals(engine: sa.Engine) -> dict[str, int]:
    """Detections per class over every recorded result, most frequent first."""
    query = (sa.select(TALLIES.c.category, sa.func.sum(TALLIES.c.count).label("total"))
             .group_by(TALLIES.c.category)
             .order_by(sa.func.sum(TALLIES.c.count).desc(), TALLIES.c.category))
    with engine.connect() as conn:
        return {str(row.category): int(row.total) for row in conn.execute(query)}
