"""Name → model factory, with lazy imports so a backend's dependencies load only when used.

Three sources, first match wins: :func:`register_model` in this process, the built-in table,
and installed packages that declare an entry point in the ``tilescope.models`` group (how a
user plugs a model into Airflow workers, which are separate processes).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from tilescope.errors import ConfigError
from tilescope.models.base import DetectionModel

# name -> "module:factory"; the factory is called with keyword options.
_BUILTIN: dict[str, str] = {
    "nanodet-coco": "tilescope.models.nanodet:NanoDetModel",
    "centernet-coco": "tilescope.models.centernet:CenterNetModel",
    "blazeface": "tilescope.models.blazeface:BlazeFaceModel",
    "bedrock-converse": "tilescope.models.bedrock:BedrockConverseModel",
    "rekognition": "tilescope.models.rekognition:RekognitionModel",
    "sagemaker": "tilescope.models.sagemaker:SageMakerModel",
    "sagemaker-async": "tilescope.models.sagemaker:SageMakerAsyncModel",
    "http": "tilescope.models.http:HttpModel",
    "kserve-v2": "tilescope.models.http:KServeV2Model",
    "text-regions": "tilescope.models.text_regions:TextRegionsModel",
}
_REGISTERED: dict[str, Callable[..., DetectionModel]] = {}
ENTRY_POINT_GROUP = "tilescope.models"


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def register_model(name: str, factory: Callable[..., DetectionModel]) -> None:
    """Make ``factory(**options)`` available as ``load_model(name, **options)``."""
    _REGISTERED[name] = factory


def available_models() -> list[str]:
    """Every name :func:`load_model` accepts."""
    return sorted({*_BUILTIN, *_REGISTERED, *_entry_points()})


def model_factory(name: str) -> Callable[..., DetectionModel]:
    """The class or factory registered under ``name`` (nothing is loaded or instantiated)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    target = _BUILTIN.get(name)
    if target is None:
        entry_point = _entry_points().get(name)
        if entry_point is None:
            raise ConfigError(f"unknown model {name!r}; available: "
                              f"{', '.join(available_models())}")
        return entry_point.load()
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def model_slice_size(name: str) -> int:
    """The slice size a model prefers, without loading its weights (planning needs only this)."""
    return int(getattr(model_factory(name), "preferred_slice_size", 640))


def model_slice_seconds(name: str) -> float | None:
    """A model's cost of one slice in seconds of one core (``slice_seconds``), without
    loading it; ``None`` when it does not say (work units then assume NanoDet's)."""
    value = getattr(model_factory(name), "slice_seconds", None)
    return float(value) if value else None


def model_categories(name: str) -> list[str]:
    """A fixed-vocabulary model's category names, read from its class (``CATEGORY_NAMES``).

    Open-vocabulary models have none up front (``[]``): their findings carry their names.
    """
    factory = model_factory(name)
    names = getattr(factory, "CATEGORY_NAMES", None)
    if not names and getattr(factory, "open_vocabulary", False):
        return []
    if not names:
        raise ConfigError(f"model {name!r} does not declare CATEGORY_NAMES")
    return list(names)


def model_coco_ids(name: str) -> list[int] | None:
    """Official COCO category ids per category, for models trained on COCO (else ``None``)."""
    ids = getattr(model_factory(name), "COCO_CATEGORY_IDS", None)
    return list(ids) if ids else None


def load_model(name: str, **options: Any) -> DetectionModel:
    """Build the model registered under ``name``; unknown names raise :class:`ConfigError`."""
    return model_factory(name)(**options)
