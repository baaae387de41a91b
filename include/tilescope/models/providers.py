"""onnxruntime execution providers by short name, falling back to the CPU when absent.

``model_options.providers`` names accelerators (``cuda``, ``tensorrt``, ``openvino``...)
in order of preference. Each needs its own onnxruntime build (``onnxruntime-gpu``,
``onnxruntime-openvino``); one that this install lacks, or that fails to start (no driver),
is dropped with one warning and the model runs on the CPU, with the CPU session's own tuning
(:func:`tilescope.models.onnx_cpu.open_cpu_session`), so asking costs the CPU path nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import onnxruntime as ort

from tilescope.errors import ConfigError
from tilescope.models.onnx_cpu import open_cpu_session, open_session

__all__ = ["open_on_providers", "provider_names"]

log = logging.getLogger(__name__)

CPU: Final = "CPUExecutionProvider"
_ALIASES: Final = {
    "cpu": CPU, "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider", "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider", "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider", "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider", "qnn": "QNNExecutionProvider",
}


def provider_names(requested: str | Sequence[str] | None) -> list[str]:
    """onnxruntime's names for ``requested`` (short names, full names, or a comma list)."""
    if not requested:
        return []
    items = requested.split(",") if isinstance(requested, str) else list(requested)
    names = []
    for item in (str(i).strip() for i in items if str(i).strip()):
        name = _ALIASES.get(item.lower().removesuffix("executionprovider"), item)
        if not name.endswith("ExecutionProvider"):
            raise ConfigError(f"unknown execution provider {item!r}; one of "
                              f"{', '.join(sorted(_ALIASES))} or an onnxruntime name")
        names.append(name)
    return names


def open_on_providers(path: Path, intra_op_threads: int, label: str,
                      requested: str | Sequence[str] | None) -> ort.InferenceSession:
    """A session on the first available of ``requested``, else the tuned CPU session."""
    wanted = [n for n in provider_names(requested) if n != CPU]
    if not wanted:
        return open_cpu_session(path, intra_op_threads, label)
    available = set(ort.get_available_providers())
    usable = [n for n in wanted if n in available]
    if not usable:
        log.warning("%s: execution providers %s are not in this onnxruntime (it has %s; "
                    "install onnxruntime-gpu or onnxruntime-openvino): running on CPU",
                    label, ", ".join(wanted), ", ".join(sorted(available)))
        return open_cpu_session(path, intra_op_threads, label)
    session = open_session(path, intra_op_threads, label, [*usable, CPU])
    if session.get_providers() == [CPU]:  # present in the build, but failed to start
        log.warning("%s: execution providers %s did not start (driver or library missing): "
                    "running on CPU", label, ", ".join(usable))
        return open_cpu_session(path, intra_op_threads, label)
    return session
