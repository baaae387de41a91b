"""Waiting for SageMaker asynchronous inference in Airflow's triggerer, not in a worker.

An asynchronous endpoint may take minutes per request. :class:`AsyncInferenceTrigger`
watches the ``OutputLocation`` / ``FailureLocation`` objects of submitted invocations with the
amazon provider's async S3 client (aiobotocore) and fires once every invocation has one,
so a deferrable operator can submit, ``defer`` on this trigger, and resume only to read the
outputs. How an operator uses it (:class:`tilescope.airflow.operators.AnalyzeRegionOperator` does)::

    calls = [model.submit(pixels) for pixels in slices]           # SageMakerAsyncModel
    self.defer(trigger=AsyncInferenceTrigger([c.to_dict() for c in calls], aws_conn_id,
                                             carry={...}),
               method_name="resume")
    # resume(context, event): outcomes = outcomes_from_event(event)
    #                         detections = model.finish(calls, outcomes)

The event is ``{"status": "done", "outcomes": [{"uri", "failed"}...]}`` in the order of the
invocations, or ``{"status": "timeout", "pending": [output uris]}`` after ``max_wait``; both
also hold ``invocations`` and ``carry`` (any JSON-able state the resumed task needs). The
event carries that state because ``dag.test()`` resumes a task with the event alone (it
replaces ``next_kwargs``), while the real triggerer adds the event to ``next_kwargs``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from tilescope.errors import ModelThrottledError
from tilescope.models.sagemaker import AsyncInvocation, AsyncOutcome
from tilescope.storage import parse_s3_uri


class AsyncInferenceTrigger(BaseTrigger):
    """Fires when every invocation's output or failure object exists in S3."""

    def __init__(self, invocations: Sequence[Mapping[str, Any]],
                 aws_conn_id: str | None = "aws_default", poll_interval: float = 5.0,
                 max_wait: float = 3600.0, carry: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.invocations = [dict(i) for i in invocations]
        self.carry = dict(carry or {})
        self.aws_conn_id = aws_conn_id
        self.poll_interval = float(poll_interval)
        self.max_wait = float(max_wait)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"invocations": self.invocations, "aws_conn_id": self.aws_conn_id,
                 "poll_interval": self.poll_interval, "max_wait": self.max_wait,
                 "carry": self.carry})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        calls = [AsyncInvocation.from_dict(i) for i in self.invocations]
        hook = S3Hook(aws_conn_id=self.aws_conn_id)
        deadline = time.monotonic() + self.max_wait
        found: dict[int, AsyncOutcome] = {}
        async with await hook.get_async_conn() as client:
            while True:
                for index, call in enumerate(calls):
                    if index in found:
                        continue
                    for uri, failed in ((call.output_uri, False), (call.failure_uri, True)):
                        if uri and await _exists(hook, client, uri):
                            found[index] = AsyncOutcome(uri, failed)
                            break
                if len(found) == len(calls):
                    yield TriggerEvent({"status": "done", "outcomes": [
                        {"uri": found[i].uri, "failed": found[i].failed}
                        for i in range(len(calls))], **self._echo()})
                    return
                if time.monotonic() >= deadline:
                    yield TriggerEvent({"status": "timeout", "pending": [
                        c.output_uri for i, c in enumerate(calls) if i not in found],
                        **self._echo()})
                    return
                await asyncio.sleep(self.poll_interval)

    def _echo(self) -> dict[str, Any]:
        return {"invocations": self.invocations, "carry": self.carry}


async def _exists(hook: Any, client: Any, uri: str) -> bool:
    loc = parse_s3_uri(uri)
    return await hook.get_head_object_async(client, loc.key, loc.bucket) is not None


def outcomes_from_event(event: Mapping[str, Any]) -> list[AsyncOutcome]:
    """The outcomes of a ``done`` event; a ``timeout`` event raises a retryable error."""
    if event.get("status") != "done":
        pending = list(event.get("pending") or [])
        raise ModelThrottledError(f"sagemaker-async: {len(pending)} outputs did not appear "
                                  f"in time, e.g. {pending[:1]}")
    return [AsyncOutcome(str(o["uri"]), bool(o["failed"])) for o in event["outcomes"]]
