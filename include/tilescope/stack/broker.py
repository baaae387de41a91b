"""A throwaway Redis database on the machine's server, for a test's Celery broker.

Two stacks sharing a broker database would take each other's tasks (and fail them: the
other stack's api-server rejects the token), so each run claims a database of its own —
an empty one, marked with a key set only-if-absent — and flushes it afterwards. Database 0,
the default other programs use, is never taken.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tilescope.settings import TEST_REDIS

#: the server (no database number); trust on loopback on the project machines
SERVER_URL: str = TEST_REDIS.get().rstrip("/")
CLAIM_KEY = "tilescope:claimed-by"
# Long enough for any test; a crashed run's database stays non-empty (kombu's keys), so it
# is skipped, not reused, until the server restarts (it keeps nothing on disk).
CLAIM_SECONDS = 6 * 3600


def _database_count(client: Any) -> int:
    """How many databases the server has (``redis.Redis`` client)."""
    try:
        return int(client.config_get("databases")["databases"])
    except Exception:  # CONFIG may be disabled; 16 is Redis's default
        return 16


@contextmanager
def throwaway_redis_db(owner: str = "tilescope-test") -> Iterator[str | None]:
    """Yield ``redis://…/N`` for an empty database claimed for this run (flushed afterwards),
    or ``None`` when no Redis answers at :data:`SERVER_URL`. RuntimeError if all are busy."""
    import redis

    try:
        admin = redis.Redis.from_url(SERVER_URL, socket_timeout=2)
        admin.ping()
    except Exception:
        yield None
        return
    token = f"{owner}:{uuid.uuid4().hex}"
    claimed = None
    for number in range(_database_count(admin) - 1, 0, -1):
        client = redis.Redis.from_url(f"{SERVER_URL}/{number}", socket_timeout=5)
        if client.set(CLAIM_KEY, token, nx=True, ex=CLAIM_SECONDS):
            if client.dbsize() == 1:
                claimed = (number, client)
                break
            client.delete(CLAIM_KEY)  # someone's data without our marker: leave it alone
        client.close()
    admin.close()
    if claimed is None:
        raise RuntimeError(f"no empty Redis database to claim on {SERVER_URL}")
    number, client = claimed
    try:
        yield f"{SERVER_URL}/{number}"
    finally:
        client.flushdb()
        client.close()
