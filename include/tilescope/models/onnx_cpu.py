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
from typing import Any, ClassVar, TypeVar

import cv2
import numpy as np
import onnxruntime as ort

from tilescope.detections import Detections
from tilescope.errors import ConfigError, ModelError
from tilescope.models.base import DetectionModel
from tilescope.postprocess.combine import nms
from tilescope.settings import CORE_SLOTS_DIR

T = TypeVar("T")


def open_cpu_session(path: Path, intra_op_threads: int, label: str) -> ort.InferenceSession:
    """A CPU session for ``path`` whose idle threads do not spin; load errors → ModelError."""
    return open_session(path, intra_op_threads, label, ["CPUExecutionProvider"])


def open_session(path: Path, intra_op_threads: int, label: str,
                 providers: Sequence[str]) -> ort.InferenceSession:
    """A session on ``providers`` (in order of preference) with the CPU tuning below."""
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
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
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


class CoreSlots:
    """The machine's cores as slots that task processes hold with ``flock``: one lock file
    per core in a shared directory. A lock goes with the process that holds it, however it
    ends (``kill -9`` included), so a slot can never leak.

    A process still without a core of its own says so with a shared lock on ``want.lock``
    (:meth:`wanting`); others borrow free cores only while nobody wants one
    (:meth:`someone_wants`), so a task that starts while another borrows gets its core at the
    end of the borrower's current call instead of racing it for ever (measured: two units
    started together, one ran 48 s with a borrowed core, the other 63 s on one)."""

    def __init__(self, directory: str | Path | None = None, cores: int | None = None) -> None:
        folder = Path(directory or CORE_SLOTS_DIR.get() or
                      Path(tempfile.gettempdir()) / f"tilescope-cores-{os.getuid()}")
        folder.mkdir(parents=True, exist_ok=True)
        self._paths = [folder / f"core-{i}.lock" for i in range(cores or os.cpu_count() or 1)]
        self._want = folder / "want.lock"
        self._held: dict[int, int] = {}  # slot → open file descriptor
        self._wanting: int | None = None  # descriptor of our shared lock on want.lock
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

    def wanting(self, wants: bool) -> None:
        """Say (``True``) or stop saying that this process waits for a core of its own."""
        with self._lock:
            if wants and self._wanting is None:
                fd = os.open(self._want, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_SH)  # waits only out another's instant probe
                self._wanting = fd
            elif not wants and self._wanting is not None:
                os.close(self._wanting)
                self._wanting = None

    def someone_wants(self) -> bool:
        """Whether a process waits for a core of its own (then nobody should borrow)."""
        fd = os.open(self._want, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a shared lock is held: someone waits
            return True
        finally:
            os.close(fd)
        return False

    def close(self) -> None:
        self.give_back(list(self._held))
        self.wanting(False)


class SlicePool:
    """A lazily started thread pool that maps a per-slice function over a batch.

    With ``slots`` (:class:`CoreSlots`) the pool runs on as many threads as it holds cores:
    one core of its own, taken when the pool is made (or at a later call, when one frees up)
    and kept until :meth:`close`, plus whatever others are free at the start of each call
    while no other process waits for a core, given back at its end. Without a core of its
    own (more tasks than cores) it runs one thread and says it wants one."""

    def __init__(self, workers: int, name: str, slots: CoreSlots | None = None) -> None:
        self.workers = workers
        self._name = name
        self._slots = slots
        self._own: list[int] = []
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        if slots is not None:
            self._claim_own()

    def _claim_own(self) -> None:
        self._own = self._slots.take(1)  # type: ignore[union-attr]  # only with slots
        self._slots.wanting(not self._own)  # type: ignore[union-attr]  # only with slots

    def map(self, function: Callable[[np.ndarray], T], images: Sequence[np.ndarray]) -> list[T]:
        """``[function(image) for image in images]``, concurrently when it can help."""
        if len(images) <= 1 or self.workers == 1:
            return [function(image) for image in images]
        borrowed: list[int] = []
        threads = self.workers
        if self._slots is not None:
            if not self._own:
                self._claim_own()
            if self._own and not self._slots.someone_wants():
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
            # ``threads`` lanes (all the pool's workers without slots), each taking the next
            # image as it finishes one
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
            return results  # type: ignore[return-value]  # every position filled
        finally:
            if borrowed:
                self._slots.give_back(borrowed)  # type: ignore[union-attr]  # borrowed: slots

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
            self._slots.wanting(False)
            self._own = []


def shrink_to_fit(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """An RGB uint8 slice shrunk (area interpolation, aspect kept) to fit a ``side``² input,
    never enlarged, and the factor applied: the input rule every embedded detector shares
    (enlarging small slices was measured to hurt NanoDet)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"expected an RGB uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    factor = min(1.0, side / max(height, width))
    if factor < 1.0:
        size = (
            max(1, min(side, round(width * factor))),
            max(1, min(side, round(height * factor))),
        )
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image, factor


class EmbeddedSliceModel(DetectionModel):
    """What the embedded ONNX detectors share: thresholds checked, one CPU session, a slice
    pool, one reusable input canvas per thread; subclasses say how one slice is run
    (:meth:`predict_one`) and where their weights are (:meth:`default_model_path`)."""

    #: the network's input tensor shape (one canvas of it per slice thread)
    INPUT_SHAPE: tuple[int, ...] = ()
    #: a name for error messages and the pool's threads
    LABEL = "model"
    #: options this model has unless given (a model's authors' own thresholds; a name bound
    #: by configuration adds its options here too — ``registry._bound``), over the shared
    #: defaults: ``score_threshold`` 0.4, ``nms_threshold`` 0.5
    configured_options: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        score_threshold: float | None = None,
        nms_threshold: float | None = None,
        intra_op_threads: int = 1,
        parallel_slices: int | None = None,
        model_path: str | Path | None = None,
        share_cores: bool = False,
    ) -> None:
        if score_threshold is None:
            score_threshold = float(self.configured_options.get("score_threshold", 0.4))
        if nms_threshold is None:
            nms_threshold = float(self.configured_options.get("nms_threshold", 0.5))
        if not 0.0 <= score_threshold <= 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if not 0.0 < nms_threshold <= 1.0:
            raise ConfigError(f"nms_threshold must be in (0, 1], got {nms_threshold}")
        parallel = slice_workers(parallel_slices)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.parallel_slices = parallel
        self.model_path = Path(model_path) if model_path is not None else \
            self.default_model_path()
        self._session: ort.InferenceSession | None = open_cpu_session(
            self.model_path, intra_op_threads, self.LABEL)
        self._pool = SlicePool(parallel, self.LABEL.lower(),
                               CoreSlots() if share_cores else None)
        self._buffers = threading.local()

    @classmethod
    def default_model_path(cls) -> Path:
        """The cached, checksum-verified weights (converted on first use)."""
        raise NotImplementedError

    def _input_buffer(self) -> np.ndarray:
        """A per-thread input canvas, so concurrent slices never share one."""
        buffer = getattr(self._buffers, "canvas", None)
        if buffer is None:
            buffer = np.zeros(self.INPUT_SHAPE, np.float32)
            self._buffers.canvas = buffer
        return buffer

    def _run(self, outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``session.run`` with a closed model and inference failures as ModelError."""
        session = self._session
        if session is None:
            raise ModelError(f"{type(self).__name__} is closed")
        try:
            return list(session.run(list(outputs), feeds))
        except Exception as exc:  # onnxruntime raises its own, undocumented exception types
            raise ModelError(f"{self.LABEL} inference failed: {exc}") from exc

    def predict_one(self, image: np.ndarray) -> Detections:
        """Detections of one RGB uint8 slice, in its pixel coordinates."""
        raise NotImplementedError

    def to_slice(self, dets: Detections, factor: float, width: int, height: int, *,
                 class_agnostic: bool = False) -> Detections:
        """Canvas detections back in slice pixels, clipped to the slice, then NMS."""
        if not len(dets):
            return dets
        dets = dets.scaled(1.0 / factor).clipped(width, height)
        return nms(dets, self.nms_threshold, "iou", class_agnostic=class_agnostic)

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        return self._pool.map(self.predict_one, images)

    def close(self) -> None:
        self._pool.close()
        self._session = None
