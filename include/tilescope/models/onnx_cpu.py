"""What every embedded ONNX model shares: a CPU session tuned for slices, and a slice pool.

Slices of one ``predict`` call run concurrently on a thread pool over *one* session:
``InferenceSession.run`` releases the GIL, so ``parallel`` slices' worth of throughput costs
one copy of the weights.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from tilescope.errors import ConfigError, ModelError

T = TypeVar("T")


def open_cpu_session(path: Path, intra_op_threads: int, label: str) -> ort.InferenceSession:
    """A CPU session for ``path`` whose idle threads do not spin; load errors → ModelError."""
    if intra_op_threads < 1:
        raise ConfigError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads must not spin: slices run on several threads at once and a
    # spinning pool steals the CPU the other slices need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own, undocumented exception types
        raise ModelError(f"cannot load {label} model {path}: {exc}") from exc


def slice_workers(requested: int | None) -> int:
    """How many slices run at once: ``requested``, or one per CPU core."""
    parallel = requested if requested is not None else (os.cpu_count() or 1)
    if parallel < 1:
        raise ConfigError(f"parallel_slices must be >= 1, got {requested}")
    return parallel


def shared_slice_workers(side_by_side: int, cores: int | None = None) -> int:
    """Slice threads for one of ``side_by_side`` tasks sharing this machine's cores: two
    region tasks with two threads each on two cores ran ~10 % slower than with one each
    (measured), so each task gets its share of the cores, at least one."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, min(side_by_side, cores)))


class SlicePool:
    """A lazily started thread pool that maps a per-slice function over a batch."""

    def __init__(self, workers: int, name: str) -> None:
        self.workers = workers
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def map(self, function: Callable[[np.ndarray], T], images: Sequence[np.ndarray]) -> list[T]:
        """``[function(image) for image in images]``, concurrently when it can help."""
        if len(images) <= 1 or self.workers == 1:
            return [function(image) for image in images]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                                thread_name_prefix=self._name)
            pool = self._pool
        return list(pool.map(function, images))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
