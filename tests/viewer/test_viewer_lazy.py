"""The plugin's app is built on the first request only (task processes never build it)."""

from __future__ import annotations

import asyncio

from tilescope.viewer.lazy import LazyASGIApp


def test_factory_runs_once_on_first_request():
    calls: list[str] = []
    sent: list[dict] = []

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})

    def factory():
        calls.append("built")
        return inner

    app = LazyASGIApp(factory)
    assert calls == []  # registering the plugin builds nothing

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request"}

    for _ in range(3):
        asyncio.run(app({"type": "http", "path": "/"}, receive, send))
    assert calls == ["built"] and [m["status"] for m in sent] == [204, 204, 204]
