"""What every embedded ONNX model shares: a CPU session tuned for slices, and a slice pool.

Slices of one ``predict`` call run concurrently on a thread pool over *one* session:
``InferenceSession.run`` releases the GIL, so ``parallel`` slices' worth of throughput costs
one copy of the weights.

Task processes running side by side on one machine (a run's mapped units or regions) share
its cores through :class:`CoreSlots`: each holds one core while it runs and borrows the free
ones call by call, so the last task of a run gets every core back as the others finish
(with a fixed share it ran its tail on one thread while the other core idled: 17 s of a
16384² run).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
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


#: where the machine's core slots live (one lock file per core); every task process of one
#: machine must see the same directory
CORE_SLOTS_DIR_ENV = "TILESCOPE_CORE_SLOTS_DIR"


class CoreSlots:
    """The machine's cores as slots that task processes hold with ``flock``: one lock file
    per core in a shared directory. A lock goes with the process that holds it, however it
    ends (``kill -9`` included), so a slot can never leak."""

    def __init__(self, directory: str | Path | None = None, cores: int | None = None) -> None:
        folder = Path(directory or os.environ.get(CORE_SLOTS_DIR_ENV) or
                      Path(tempfile.gettempdir()) / f"tilescope-cores-{os.getuid()}")
        folder.mkdir(parents=True, exist_ok=True)
        self._paths = [folder / f"core-{i}.lock" for i in range(cores or os.cpu_count() or 1)]
        self._held: dict[int, int] = {}  # slot → open file descriptor
        self._lock = threading.Lock()

    @property
    def cores(self) -> int:
        return len(self._paths)

    def take(self, wanted: int) -> list[int]:
        """Up to ``wanted`` free slots, without waiting (none may be free)."""
        taken: list[int] = []
        with self._lock:
            for slot, path in enumerate(self._paths):
                if len(taken) >= wanted:
                    break
                if slot in self._held:
                    continue
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # held by another process
                    os.close(fd)
                    continue
                self._held[slot] = fd
                taken.append(slot)
        return taken

    def give_back(self, slots: Sequence[int]) -> None:
        with self._lock:
            for slot in slots:
                fd = self._held.pop(slot, None)
                if fd is not None:
                    os.close(fd)  # closing the descriptor releases its flock

    def close(self) -> None:
        self.give_back(list(self._held))


class SlicePool:
    """A lazily started thread pool that maps a per-slice function over a batch.

    With ``slots`` (:class:`CoreSlots`) the pool runs on as many threads as it holds cores:
    one core kept from the first call to :meth:`close` (when one is free), plus whatever
    others are free at the start of each call, given back at its end. Without a core of its
    own (more tasks than cores) it runs one thread."""

    def __init__(self, workers: int, name: str, slots: CoreSlots | None = None) -> None:
        self.workers = workers
        self._name = name
        self._slots = slots
        self._own: list[int] = []
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def map(self, function: Callable[[np.ndarray], T], images: Sequence[np.ndarray]) -> list[T]:
        """``[function(image) for image in images]``, concurrently when it can help."""
        if len(images) <= 1 or self.workers == 1:
            return [function(image) for image in images]
        borrowed: list[int] = []
        threads = self.workers
        if self._slots is not None:
            if not self._own:
                self._own = self._slots.take(1)
            if self._own:
                borrowed = self._slots.take(min(self.workers, len(images)) - 1)
            threads = len(self._own) + len(borrowed) or 1
        try:
            if threads == 1:
                return [function(image) for image in images]
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                                    thread_name_prefix=self._name)
                pool = self._pool
            if threads >= self.workers:
                return list(pool.map(function, images))
            # ``threads`` lanes, each taking the next image as it finishes one
            results: list[T | None] = [None] * len(images)
            positions = iter(range(len(images)))
            take_next = threading.Lock()

            def lane() -> None:
                while True:
                    with take_next:
                        position = next(positions, None)
                    if position is None:
                        return
                    results[position] = function(images[position])

            for future in [pool.submit(lane) for _ in range(threads)]:
                future.result()
            return results  # type: ignore[return-value]
        finally:
            if borrowed:
                self._slots.give_back(borrowed)  # type: ignore[union-attr]

    @property
    def holds_core(self) -> bool:
        return bool(self._own)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        if self._slots is not None:
            self._slots.give_back(self._own)
            self._own = []
