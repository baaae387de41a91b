"""Detection models behind one interface, looked up by name (see :mod:`.registry`)."""

from tilescope.models.base import DetectionModel
from tilescope.models.registry import (
    available_models,
    load_model,
    model_factory,
    model_slice_size,
    register_model,
)

__all__ = [
    "DetectionModel",
    "available_models",
    "load_model",
    "model_factory",
    "model_slice_size",
    "register_model",
]
