"""What a model's answers depend on, as one hash: its name and its weights' sha256.

Result reuse (:mod:`tilescope.outputs.reuse`) compares it with the stored result's: the same
parameters with other weights (a new NanoDet conversion, another ``model_path``) must be
analysed again. The embedded models' weights are pinned by checksum already, so their hash is
known without reading the file; a ``model_path`` option, and the file a model class names with
``weights_file(options)`` (``onnx``: its local or cached ``s3://`` file), are hashed (once per
file version); a plugin may declare ``weights_sha256`` on its class. A remote model (Bedrock,
SageMaker, HTTP…) has no weights here: its name stands for it, and its options (endpoint,
model id) are part of the parameters' digest already.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _embedded_weights() -> dict[str, str]:
    from tilescope.models.text_regions import MODEL_SHA256
    from tilescope.models.weights import NANODET_ONNX_SHA256, TARBALL_MODELS

    return {"nanodet-coco": NANODET_ONNX_SHA256, "text-regions": MODEL_SHA256,
            **{name: model.onnx_sha256 for name, model in TARBALL_MODELS.items()}}


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A weights file's sha256; cached per (path, size, mtime): a replaced file is re-hashed."""
    from tilescope.models.weights import sha256_file

    return sha256_file(Path(path))


def weights_sha256(name: str, options: Mapping[str, Any] | None = None) -> str | None:
    """The sha256 of the weights ``load_model(name, **options)`` would run, or ``None`` for a
    model without local weights."""
    path = (options or {}).get("model_path")
    if path:
        stat = Path(path).stat()
        return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    embedded = _embedded_weights().get(name)
    if embedded:
        return embedded
    from tilescope.models.registry import model_factory

    factory = model_factory(name)
    weights_file = getattr(factory, "weights_file", None)
    if weights_file is not None:  # a model file named by its options (``onnx``)
        path = Path(weights_file(options or {})).resolve()
        stat = path.stat()
        return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)
    declared = getattr(factory, "weights_sha256", None)
    return str(declared) if declared else None


def model_fingerprint(name: str, options: Mapping[str, Any] | None = None) -> str:
    """A 64-hex hash of the model's name and weights (the catalog's ``model_digest``)."""
    text = json.dumps({"model": name, "weights": weights_sha256(name, options)},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
