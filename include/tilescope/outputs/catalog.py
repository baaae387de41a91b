"""The SQL catalog: one row per (image content, parameters), upserted by the store step.

SQLAlchemy Core over any URL: a SQLite file by default, PostgreSQL in production (the DAG
builds the URL from an Airflow connection). The unique key on ``(image_sha256, params_hash)``
makes a re-run update its row instead of adding a duplicate.

A *reused* row (:mod:`tilescope.outputs.reuse`: the same bytes, model and parameters
arrived again under another key) is a row of its own whose ``reused_from`` names the row that
computed the result; its ``result_keys`` point at that stored result. The (image, parameters)
key is unique among computed rows only (a partial unique index); reused rows are unique per
(image, parameters, image URI). :func:`connect` migrates a catalog made before these columns.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from tilescope.outputs.catalog_migration import migrate_results
from tilescope.results import Result

METADATA = sa.MetaData()

RESULTS = sa.Table(
    "tilescope_results",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("image_sha256", sa.String(64), nullable=False),
    sa.Column("params_hash", sa.String(32), nullable=False),
    sa.Column("image_id", sa.String(32), nullable=False, index=True),
    sa.Column("image_uri", sa.Text, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("detections", sa.Integer, nullable=False),
    sa.Column("regions", sa.Integer, nullable=False),
    sa.Column("failed_regions", sa.Text, nullable=False),
    sa.Column("counts", sa.Text, nullable=False),
    sa.Column("result_keys", sa.Text, nullable=False),
    sa.Column("seconds", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(250)),
    # the archival copy (tilescope.archival), added later: nullable, and added to existing
    # catalogs by connect() (see _add_missing_columns)
    sa.Column("archive_uri", sa.Text),
    sa.Column("archive_bytes", sa.BigInteger),
    sa.Column("bytes_saved", sa.BigInteger),
    sa.Column("archive_quality", sa.Integer),
    sa.Column("archive_ssim", sa.Float),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    #: what the model's weights were (:func:`tilescope.models.fingerprint.model_fingerprint`);
    #: ``NULL`` in rows stored before it was recorded (never reused)
    sa.Column("model_digest", sa.String(64)),
    #: the id of the computed row whose stored result this row reuses (``NULL``: computed)
    sa.Column("reused_from", sa.Integer),
    sa.Index("uq_tilescope_image_params", "image_sha256", "params_hash", unique=True,
             sqlite_where=sa.text("reused_from IS NULL"),
             postgresql_where=sa.text("reused_from IS NULL")),
    sa.Index("uq_tilescope_reused_image_params_uri", "image_sha256", "params_hash",
             "image_uri", unique=True, sqlite_where=sa.text("reused_from IS NOT NULL"),
             postgresql_where=sa.text("reused_from IS NOT NULL")),
)
#: the partial unique indexes' conditions (the upserts name them as their conflict target)
COMPUTED = sa.text("reused_from IS NULL")
REUSED = sa.text("reused_from IS NOT NULL")


def connect(url: str) -> sa.Engine:
    """An engine for ``url`` with the catalog's tables created if missing."""
    engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    METADATA.create_all(engine)
    migrate_results(engine, RESULTS)  # before the index pass: the new indexes need its columns
    # create_all adds indexes only with a new table: a catalog made before an index was
    # declared (e.g. the claims' status and run id) gets it here
    for table in METADATA.sorted_tables:
        _add_missing_columns(engine, table)
        for index in table.indexes:
            index.create(engine, checkfirst=True)
    return engine


def _add_missing_columns(engine: sa.Engine, table: sa.Table) -> None:
    """The migration path: columns declared after a catalog was made (all nullable) are added
    to it with ``ALTER TABLE … ADD COLUMN``, which SQLite and PostgreSQL both run in place;
    existing rows read them as NULL."""
    present = {c["name"] for c in sa.inspect(engine).get_columns(table.name)}
    missing = [c for c in table.columns if c.name not in present]
    if not missing:
        return
    preparer = engine.dialect.identifier_preparer
    with engine.begin() as conn:
        for column in missing:
            if not column.nullable:  # pragma: no cover - a new column must be nullable
                raise RuntimeError(f"catalog column {column.name} must be nullable to be added")
            kind = column.type.compile(dialect=engine.dialect)
            conn.execute(sa.text(f"ALTER TABLE {preparer.quote(table.name)} ADD COLUMN "
                                 f"{preparer.quote(column.name)} {kind}"))


#: the columns a re-run of the same image and parameters replaces
_REPLACED = [c.name for c in RESULTS.columns
             if c.name not in ("id", "image_sha256", "params_hash", "created_at")]


def _upsert(engine: sa.Engine, reused: bool = False) -> Any:
    """One statement that inserts rows or, on the (image, parameters) key of a computed row
    (``reused``: the (image, parameters, URI) key of a reused row), replaces their
    :data:`_REPLACED` columns; executed with a list of rows (one round of executemany)."""
    from sqlalchemy.dialects import postgresql, sqlite

    insert: Callable[..., Any]
    if engine.dialect.name == "postgresql":
        insert = postgresql.insert
    elif engine.dialect.name == "sqlite":
        insert = sqlite.insert
    else:  # pragma: no cover - other dialects: plain insert, the unique key still protects
        return sa.insert(RESULTS)
    statement = insert(RESULTS)
    return statement.on_conflict_do_update(
        index_elements=["image_sha256", "params_hash", *(["image_uri"] if reused else [])],
        index_where=REUSED if reused else COMPUTED,
        set_={name: statement.excluded[name] for name in _REPLACED})


def record_result(engine: sa.Engine, result: Result, params_hash: str,
                  result_keys: dict[str, str], run_id: str | None = None,
                  model_digest: str | None = None) -> None:
    """Insert or update the row of this image and parameters."""
    record_results(engine, [(result, params_hash, result_keys)], run_id, model_digest)


def record_results(engine: sa.Engine, rows: list[tuple[Result, str, dict[str, str]]],
                   run_id: str | None = None, model_digest: str | None = None) -> None:
    """Insert or update the rows of many (result, params hash, result keys) in one
    transaction and one executemany: a batch run of 1,000 images commits once (one upsert
    statement a row cost ~2 ms of SQLAlchemy compiling: 1,000 rows on PostgreSQL took 2.2 s,
    now 0.5 s). Rows with the same image and parameters (the same bytes twice in a batch)
    are folded first, the last kept, as one upsert after another would keep it: a driver
    that turns the executemany into one multi-row INSERT would otherwise make PostgreSQL
    refuse to touch a row twice in one statement."""
    if not rows:
        return
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for result, params_hash, result_keys in rows:
        row = _row(result, params_hash, result_keys, run_id)
        row["model_digest"] = model_digest
        latest[(row["image_sha256"], row["params_hash"])] = row
    with engine.begin() as conn:
        conn.execute(_upsert(engine), list(latest.values()))


def _row(result: Result, params_hash: str, result_keys: dict[str, str],
         run_id: str | None) -> dict[str, Any]:
    """A catalog row for ``result``."""
    now = datetime.now(UTC)
    archive = result.archive or {}
    return {
        "image_sha256": result.image.sha256, "params_hash": params_hash,
        "image_id": result.image.image_id, "image_uri": result.image.uri,
        "width": result.image.width, "height": result.image.height, "model": result.model,
        "status": result.status, "detections": len(result.detections),
        "regions": len(result.regions), "failed_regions": json.dumps(result.failed_regions),
        "counts": json.dumps(result.counts()), "result_keys": json.dumps(result_keys),
        "seconds": json.dumps({k: round(v, 4) for k, v in result.seconds.items()}),
        "run_id": run_id, "created_at": now, "updated_at": now,
        "model_digest": None, "reused_from": None,
        "archive_uri": archive.get("uri"), "archive_bytes": archive.get("bytes"),
        "bytes_saved": archive.get("bytes_saved"), "archive_quality": archive.get("quality"),
        "archive_ssim": archive.get("ssim"),
    }


def upsert_rows(engine: sa.Engine, rows: list[dict[str, Any]], *, reused: bool) -> None:
    """Insert or update whole rows (:func:`_row`'s shape) in one executemany: computed rows
    on their (image, parameters) key, reused rows on their (image, parameters, URI) key."""
    if rows:
        with engine.begin() as conn:
            conn.execute(_upsert(engine, reused=reused), rows)


def find_results(engine: sa.Engine, image_sha256: str | None = None) -> list[dict[str, Any]]:
    """Catalog rows (optionally of one image), newest first, JSON columns decoded."""
    query = sa.select(RESULTS).order_by(RESULTS.c.updated_at.desc())
    if image_sha256:
        query = query.where(RESULTS.c.image_sha256 == image_sha256)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    for row in rows:
        for column in ("failed_regions", "counts", "result_keys", "seconds"):
            row[column] = json.loads(row[column])
    return rows


def url_from_connection(conn_type: str, *, host: str | None = None, login: str | None = None,
                        password: str | None = None, port: int | None = None,
                        schema: str | None = None) -> str:
    """An SQLAlchemy URL from an Airflow connection's fields (``sqlite`` or ``postgres``).

    For SQLite the connection's host is the database file path.
    """
    kind = (conn_type or "").lower()
    if kind == "sqlite":
        if not host:
            raise ValueError("a sqlite catalog connection needs the database file as its host")
        return f"sqlite:///{host}"
    if kind in ("postgres", "postgresql"):
        url = sa.URL.create("postgresql+psycopg2", username=login or None,
                            password=password or None, host=host or "127.0.0.1",
                            port=port or 5432, database=schema or "postgres")
        return url.render_as_string(hide_password=False)
    raise ValueError(f"unsupported catalog connection type {conn_type!r} (sqlite or postgres)")
