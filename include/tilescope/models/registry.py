"""Name → model factory, with lazy imports so a backend's dependencies load only when used."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from tilescope.errors import ConfigError
from tilescope.models.base import DetectionModel

# name -> "module:factory"; the factory is called with keyword options.
_BUILTIN: dict[str, str] = {
    "nanodet-coco": "tilescope.models.nanodet:NanoDetModel",
}
_REGISTERED: dict[str, Callable[..., DetectionModel]] = {}


def register_model(name: str, factory: Callable[..., DetectionModel]) -> None:
    """Make ``factory(**options)`` available as ``load_model(name, **options)``."""
    _REGISTERED[name] = factory


def available_models() -> list[str]:
    """Every name :func:`load_model` accepts."""
    return sorted({*_BUILTIN, *_REGISTERED})


def load_model(name: str, **options: Any) -> DetectionModel:
    """Build the model registered under ``name``; unknown names raise :class:`ConfigError`."""
    if name in _REGISTERED:
        return _REGISTERED[name](**options)
    target = _BUILTIN.get(name)
    if target is None:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    module_name, _, attr = target.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(**options)
