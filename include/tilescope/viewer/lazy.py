"""An ASGI app that builds the real one on its first request.

Airflow loads every plugin in *every* component, including each task process (for macros),
but only the api-server serves HTTP. Deferring the FastAPI app keeps task start-up free of
the viewer's imports (FastAPI routes, Airflow's security module, Pillow).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class LazyASGIApp:
    """``LazyASGIApp(factory)``: an ASGI callable that calls ``factory()`` once, when needed."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    @property
    def app(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._factory()
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)
