"""A throwaway PostgreSQL database on the machine's server, for tests and benchmarks that
need a real one (Airflow metadata under a burst, the catalog and claims on PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tilescope.settings import TEST_PG

#: where the administrative connection goes (trust auth on loopback on the project machines)
ADMIN_URL: str = TEST_PG.get()


@contextmanager
def throwaway_database(prefix: str = "tilescope_tmp") -> Iterator[str | None]:
    """Yield the URL of a new, empty database (dropped afterwards), or ``None`` when no
    PostgreSQL answers at :data:`ADMIN_URL`."""
    import sqlalchemy as sa

    try:
        admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception:
        yield None
        return
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
