"""Bring a catalog made before result reuse up to date, in place, keeping every row.

Catalogs made before reuse have a table-level unique constraint on ``(image_sha256,
params_hash)`` and no ``model_digest`` / ``reused_from`` columns. Reuse needs a row per
re-upload, so that key becomes a *partial* unique index over computed rows
(``reused_from IS NULL``) — see :mod:`tilescope.outputs.catalog`.

* PostgreSQL: the columns are added, the constraint dropped and the indexes created in one
  transaction, each step ``IF [NOT] EXISTS``: two workers migrating at once serialise on the
  table lock and the second finds nothing left to do.
* SQLite cannot drop a table constraint: the table is rebuilt (renamed aside, created anew,
  rows copied, old table dropped) inside one ``BEGIN IMMEDIATE`` transaction, so a crash or a
  concurrent writer never sees half a migration.
"""

from __future__ import annotations

import sqlalchemy as sa

#: the columns reuse added; a catalog that has them is up to date
_NEW_COLUMNS = {"model_digest": "VARCHAR(64)", "reused_from": "INTEGER"}


def migrate_results(engine: sa.Engine, results: sa.Table) -> bool:
    """Migrate the results table (:data:`tilescope.outputs.catalog.RESULTS`, its current
    declaration) if it predates reuse; ``True`` when something was done."""
    columns = {c["name"] for c in sa.inspect(engine).get_columns(results.name)}
    if set(_NEW_COLUMNS) <= columns:
        return False
    if engine.dialect.name == "postgresql":
        _migrate_postgresql(engine, results)
    elif engine.dialect.name == "sqlite":
        _migrate_sqlite(engine, results)
    else:  # pragma: no cover - other dialects: add the columns, keep the old constraint
        with engine.begin() as conn:
            for name, kind in _NEW_COLUMNS.items():
                if name not in columns:
                    conn.execute(sa.text(f"ALTER TABLE {results.name} ADD COLUMN {name} {kind}"))
    return True


def _migrate_postgresql(engine: sa.Engine, results: sa.Table) -> None:
    table = results.name
    with engine.begin() as conn:
        for name, kind in _NEW_COLUMNS.items():
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {kind}"))
        conn.execute(sa.text(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS "
                             "uq_tilescope_image_params"))
        for index in results.indexes:
            if index.unique:
                index.create(conn, checkfirst=True)


def _migrate_sqlite(engine: sa.Engine, results: sa.Table) -> None:
    table, old = results.name, f"{results.name}_before_reuse"
    raw = engine.raw_connection()
    try:
        db = raw.driver_connection
        db.isolation_level = None  # type: ignore[union-attr]  # we issue BEGIN/COMMIT
        cursor = db.cursor()  # type: ignore[union-attr]
        cursor.execute("BEGIN IMMEDIATE")
        try:
            present = [row[1] for row in cursor.execute(f"PRAGMA table_info({table})")]
            if set(_NEW_COLUMNS) <= set(present):  # another process migrated meanwhile
                cursor.execute("COMMIT")
                return
            cursor.execute(f"ALTER TABLE {table} RENAME TO {old}")
            for index in results.indexes:  # the old table's indexes keep their names
                cursor.execute(f"DROP INDEX IF EXISTS {index.name}")
            dialect = engine.dialect
            cursor.execute(str(sa.schema.CreateTable(results).compile(dialect=dialect)))
            for index in results.indexes:
                cursor.execute(str(sa.schema.CreateIndex(index).compile(dialect=dialect)))
            copied = ", ".join(name for name in present if name in results.c)
            cursor.execute(f"INSERT INTO {table} ({copied}) SELECT {copied} FROM {old}")
            cursor.execute(f"DROP TABLE {old}")
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        finally:
            db.isolation_level = ""  # type: ignore[union-attr]  # back to the pool as it came
    finally:
        raw.close()
