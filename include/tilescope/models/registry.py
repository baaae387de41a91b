"""Name → model factory, with lazy imports so a backend's dependencies load only when used.

Four sources, first match wins: :func:`register_model` in this process, the built-in table,
the names in the ``TILESCOPE_MODELS`` file (a user's model as configuration: a name bound to
a built-in model and its options, e.g. ``{"my-yolo": {"model": "onnx", "options": {"path":
"s3://..."}}}``; every process that sees the variable sees the name), and installed packages
that declare an entry point in the ``tilescope.models`` group (how a user plugs a model's
*code* into Airflow workers, which are separate processes).

Planning and the COCO export ask a model's slice size and category names without loading it:
from class attributes, or — for a model whose names live in its file (``onnx``) — from
``categories_for(options)`` / ``slice_size_for(options)`` given the run's model options.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from tilescope.errors import ConfigError
from tilescope.models.base import DetectionModel
from tilescope.settings import MODELS_FILE

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
    "onnx": "tilescope.models.onnx_detector:OnnxDetector",
}
_REGISTERED: dict[str, Callable[..., DetectionModel]] = {}
ENTRY_POINT_GROUP = "tilescope.models"


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def configured_models() -> dict[str, tuple[str, dict[str, Any]]]:
    """name → (built-in model, options) from the ``TILESCOPE_MODELS`` file (none if unset)."""
    location = MODELS_FILE.get()
    if not location:
        return {}
    path = Path(location).expanduser()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        raise ConfigError(f"{MODELS_FILE.name}: no such file {location}") from None
    return _read_models_file(str(path), stamp)


@lru_cache(maxsize=4)
def _read_models_file(path: str, _stamp: int) -> dict[str, tuple[str, dict[str, Any]]]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        if path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"{path} is YAML: install PyYAML, or write it as "
                                  "JSON") from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json/yaml parse errors
        raise ConfigError(f"{MODELS_FILE.name} file {path} does not parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{MODELS_FILE.name} file {path} must map names to models")
    models = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise ConfigError(f"{MODELS_FILE.name}: {name!r} needs a 'model' (e.g. onnx)")
        rest = {k: v for k, v in entry.items() if k not in ("model", "options")}
        options = entry.get("options", rest)
        if not isinstance(options, dict):
            raise ConfigError(f"{MODELS_FILE.name}: {name!r} options must be an object")
        if entry["model"] == name or entry["model"] in data:
            raise ConfigError(f"{MODELS_FILE.name}: {name!r} must name a built-in model")
        models[str(name)] = (entry["model"], dict(options))
    return models


def _bound(name: str, base: Callable[..., DetectionModel],
           options: dict[str, Any]) -> Callable[..., DetectionModel]:
    """``base`` with ``options`` as defaults, registered as ``name``: a subclass for a class
    (its attributes and ``categories_for`` stay readable), else a closure."""
    if isinstance(base, type) and issubclass(base, DetectionModel):
        configured = {**getattr(base, "configured_options", {}), **options}

        def __init__(self: Any, **given: Any) -> None:
            base.__init__(self, **{**options, **given})

        bound = type(base.__name__, (base,), {
            "name": name, "configured_options": configured, "__init__": __init__,
            "__signature__": inspect.signature(base), "__module__": base.__module__})
        return bound

    def factory(**given: Any) -> DetectionModel:
        return cast("DetectionModel", base(**{**options, **given}))

    return factory


def register_model(name: str, factory: Callable[..., DetectionModel]) -> None:
    """Make ``factory(**options)`` available as ``load_model(name, **options)``."""
    _REGISTERED[name] = factory


def available_models() -> list[str]:
    """Every name :func:`load_model` accepts."""
    return sorted({*_BUILTIN, *_REGISTERED, *configured_models(), *_entry_points()})


def model_factory(name: str) -> Callable[..., DetectionModel]:
    """The class or factory registered under ``name`` (nothing is loaded or instantiated)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    target = _BUILTIN.get(name)
    if target is None and name in (configured := configured_models()):
        base, options = configured[name]
        return _bound(name, model_factory(base), options)
    if target is None:
        entry_point = _entry_points().get(name)
        if entry_point is None:
            raise ConfigError(f"unknown model {name!r}; available: "
                              f"{', '.join(available_models())}")
        return entry_point.load()
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def model_slice_size(name: str, options: Mapping[str, Any] | None = None) -> int:
    """The slice size a model prefers, without loading its weights (planning needs only this);
    ``options`` are the run's model options (a model file may say its own input size)."""
    factory = model_factory(name)
    sized = getattr(factory, "slice_size_for", None)
    if sized is not None:
        return int(sized(dict(options or {})))
    return int(getattr(factory, "preferred_slice_size", 640))


def model_slice_seconds(name: str) -> float | None:
    """A model's cost of one slice in seconds of one core (``slice_seconds``), without
    loading it; ``None`` when it does not say (work units then assume NanoDet's)."""
    value = getattr(model_factory(name), "slice_seconds", None)
    return float(value) if value else None


def model_categories(name: str, options: Mapping[str, Any] | None = None) -> list[str]:
    """A fixed-vocabulary model's category names, read from its class (``CATEGORY_NAMES``),
    or from its file given the run's model ``options`` (``categories_for``).

    Open-vocabulary models have none up front (``[]``): their findings carry their names.
    """
    factory = model_factory(name)
    from_file = getattr(factory, "categories_for", None)
    if from_file is not None:
        return list(from_file(dict(options or {})))
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
