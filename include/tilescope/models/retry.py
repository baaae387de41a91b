"""Retries for remote model calls: exponential backoff with full jitter, transient errors only.

A remote model fails in three ways that want different handling: load (throttling, 5xx,
timeouts — wait and try again), a bad request (4xx, validation — the same request fails
again, so fail at once) and an answer that cannot be read (reported with the backend and the
region). Backends translate their client's exceptions into :class:`ModelThrottledError`,
:class:`ModelRequestError` or :class:`ModelOutputError`; this module retries only the first.

Full jitter (``sleep = uniform(0, min(cap, base · 2^n))``) spreads the retries of many region
tasks throttled at the same moment instead of having them return in lockstep.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tilescope.errors import ConfigError, ModelThrottledError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a throttled call (``max_attempts`` counts the first)."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigError("retry delays must not be negative")

    def delay(self, retry: int, rng: random.Random | None = None,
              at_least: float = 0.0) -> float:
        """Seconds to wait before retry number ``retry`` (1-based), full jitter, capped.

        ``at_least`` honours a server's ``Retry-After`` (still capped by ``max_delay``).
        """
        ceiling = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        jittered = (rng or random).uniform(0.0, ceiling)
        return min(self.max_delay, max(jittered, at_least))


def call_with_retry(call: Callable[[], T], policy: RetryPolicy, *,
                    sleep: Callable[[float], None] = time.sleep,
                    rng: random.Random | None = None) -> T:
    """``call()``, retried on :class:`ModelThrottledError` up to ``policy.max_attempts``.

    Any other exception propagates at once. After the last attempt the throttled error is
    re-raised with the attempt count in its message (it stays retryable, so an Airflow task
    may still retry later, after its own, longer delay).
    """
    attempt = 1
    while True:
        try:
            return call()
        except ModelThrottledError as exc:
            if attempt >= policy.max_attempts:
                raise ModelThrottledError(f"{exc} (gave up after {attempt} attempts)") from exc
            sleep(policy.delay(attempt, rng, at_least=getattr(exc, "retry_after", 0.0) or 0.0))
            attempt += 1
