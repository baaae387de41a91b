"""``model=onnx``: a user's own ONNX detector, from a local path or ``s3://``.

Options (``--model-option KEY=VALUE`` / ``model_options``): ``path`` (required), ``family``
(else recognised from the outputs, :mod:`tilescope.models.families`), ``labels`` (a file with
one name a line, or a list; else the model's ``names`` metadata), ``sha256`` (pin the file),
``conn_id`` (an Airflow AWS connection for ``s3://``; else the environment's credentials),
``input_size`` (when the graph leaves it open; default 640), ``resize``
(``letterbox``/``topleft``/``resize``), ``normalize`` (``0-1``/``0-255``/``imagenet`` or
``{"mean": [...], "std": [...]}`` in 0–1 units), ``channels`` (``rgb``/``bgr``),
``class_offset``, ``nms_threshold``, ``batch`` (slices per ``session.run``; ``auto``) and
``providers`` (``cuda``, ``tensorrt``, ``openvino``...; absent ones fall back to CPU).

What the registry asks before loading (planning, the COCO export) it gets from the class:
:meth:`OnnxDetector.categories_for` and :meth:`OnnxDetector.slice_size_for` read the names
and input size from the file, given the run's options.

Batches: with a dynamic batch axis, ``batch`` slices go through one ``session.run``; the
batches of one ``predict`` call run on the slice pool's threads like single slices do.
``auto`` (the default) is one slice a run on the CPU — bench/onnx_batch_bench.py found no
gain there that held from one sitting to the next (1.29× once on one thread, 0.77–1.14×
after), and the CPU path must not get slower — and, on an accelerator, a call's slices
split evenly over the pool's threads, at most :data:`AUTO_BATCH` a run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np

from tilescope.detections import Detections
from tilescope.errors import BadModelError, ConfigError, ModelError
from tilescope.models.base import DetectionModel
from tilescope.models.families import (
    FAMILIES,
    NORMALIZATIONS,
    Placement,
    Preprocessing,
    decode,
    detr_boxes_index,
    place,
    recognise,
    to_slice,
)
from tilescope.models.model_files import (
    class_names,
    graph_input_size,
    graph_metadata,
    local_model_file,
)
from tilescope.models.onnx_cpu import CoreSlots, SlicePool, slice_workers
from tilescope.models.providers import open_on_providers
from tilescope.postprocess.combine import nms
from tilescope.settings import ONNX_BATCH

__all__ = ["AUTO_BATCH", "OnnxDetector", "auto_batch"]

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE: Final = 640
#: the most slices ``batch: auto`` puts in one run on an accelerator
AUTO_BATCH: Final = 8
_DTYPES: Final = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                  "tensor(uint8)": np.uint8}


def _file_options(options: Mapping[str, Any]) -> tuple[Path, str]:
    uri = str(options.get("path") or "")
    return local_model_file(uri, sha256=options.get("sha256"),
                            conn_id=options.get("conn_id")), uri


def _preprocessing(family: str, resize: str | None, normalize: Any,
                   channels: str | None) -> Preprocessing:
    """The family's recipe with the user's overrides."""
    pre = FAMILIES[family].preprocessing
    if resize is not None:
        if resize not in ("letterbox", "topleft", "resize"):
            raise ConfigError(f"resize must be letterbox, topleft or resize, got {resize!r}")
        pre = replace(pre, mode=resize)
    if isinstance(normalize, str):
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"normalize must be one of {', '.join(NORMALIZATIONS)} or "
                              f"{{'mean': [...], 'std': [...]}}, got {normalize!r}")
        pre = replace(pre, **NORMALIZATIONS[normalize])  # type: ignore[arg-type]  # fields of Preprocessing
    elif isinstance(normalize, Mapping):
        mean, std = normalize.get("mean"), normalize.get("std")
        if not (isinstance(mean, Sequence) and isinstance(std, Sequence)
                and len(mean) == len(std) == 3):
            raise ConfigError("normalize needs a mean and a std of 3 values each")
        pre = replace(pre, scale=1.0 / 255.0, mean=tuple(float(v) for v in mean),  # type: ignore[arg-type]  # length checked
                      std=tuple(float(v) for v in std))  # type: ignore[arg-type]
    if channels is not None:
        if channels.lower() not in ("rgb", "bgr"):
            raise ConfigError(f"channels must be rgb or bgr, got {channels!r}")
        pre = replace(pre, bgr=channels.lower() == "bgr")
    return pre


class OnnxDetector(DetectionModel):
    """Any ONNX detector of a known family, on onnxruntime (CPU unless ``providers``)."""

    name = "onnx"
    preferred_slice_size = DEFAULT_INPUT_SIZE
    #: options bound to a name by configuration (``TILESCOPE_MODELS``); the run's win
    configured_options: ClassVar[dict[str, Any]] = {}

    @classmethod
    def categories_for(cls, options: Mapping[str, Any]) -> list[str]:
        """Category names for these options, read from the model file (no session)."""
        merged = {**cls.configured_options, **options}
        path, uri = _file_options(merged)
        return class_names(path, merged.get("labels"), uri, merged.get("conn_id"))

    @classmethod
    def weights_file(cls, options: Mapping[str, Any]) -> Path:
        """The local, checked model file these options run: result reuse fingerprints it
        (:mod:`tilescope.models.fingerprint`), so a new file under the same path or S3 key
        is a new model, never served the old file's stored results."""
        path, _ = _file_options({**cls.configured_options, **options})
        return path

    @classmethod
    def slice_size_for(cls, options: Mapping[str, Any]) -> int:
        """The input side the model was exported for (option, graph, else 640)."""
        merged = {**cls.configured_options, **options}
        if merged.get("input_size"):
            return max(_size(merged["input_size"]))
        path, _ = _file_options(merged)
        return graph_input_size(str(path)) or DEFAULT_INPUT_SIZE

    def __init__(self, path: str = "", *, family: str | None = None,
                 labels: str | Sequence[str] | None = None, sha256: str | None = None,
                 conn_id: str | None = None, score_threshold: float = 0.25,
                 nms_threshold: float | None = None, input_size: int | Sequence[int] | None = None,
                 resize: str | None = None, normalize: Any = None, channels: str | None = None,
                 class_offset: int | None = None, batch: int | str | None = "auto",
                 providers: str | Sequence[str] | None = None, max_detections: int = 300,
                 intra_op_threads: int = 1, parallel_slices: int | None = None,
                 share_cores: bool = False) -> None:
        merged = {"path": path, "labels": labels, "sha256": sha256, "conn_id": conn_id,
                  "family": family, "input_size": input_size, "resize": resize,
                  "normalize": normalize, "channels": channels, "class_offset": class_offset,
                  "nms_threshold": nms_threshold, "batch": batch, "providers": providers}
        merged = {**self.configured_options,
                  **{k: v for k, v in merged.items() if v is not None}}
        if not 0.0 <= score_threshold <= 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)
        self.model_path, uri = _file_options(merged)
        self.label = uri
        graph_metadata(str(self.model_path), uri)  # a corrupt file fails here, by name
        self._names = class_names(self.model_path, merged.get("labels"), uri,
                                  merged.get("conn_id"))
        self._session = open_on_providers(self.model_path, intra_op_threads, uri,
                                          merged.get("providers"))
        #: whether a provider other than the CPU runs the model (then ``auto`` batches)
        self.accelerated = self._session.get_providers()[0] != "CPUExecutionProvider"
        self._read_input(merged.get("input_size"))
        shapes, self._output_names = self._probe()
        self.family = str(merged.get("family") or recognise(
            shapes, self._output_names, self.height, self.width, len(self._names)))
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown family {self.family!r}; one of {', '.join(FAMILIES)}")
        self._check_classes(shapes)
        spec = FAMILIES[self.family]
        self._pre = _preprocessing(self.family, merged.get("resize"), merged.get("normalize"),
                                   merged.get("channels"))
        self._lut = self._pre.lut()
        offset = merged.get("class_offset")
        self.class_offset = int(spec.class_offset if offset is None else offset)
        iou = merged.get("nms_threshold", spec.nms_iou)
        self.nms_threshold = None if iou is None else float(iou)
        #: slices per run; ``None``: automatic, per call (:meth:`predict`)
        self.batch = self._batch_size(merged.get("batch", "auto"))
        self.preferred_slice_size = max(self.height, self.width)
        self._pool = SlicePool(slice_workers(parallel_slices), "onnx",
                               CoreSlots() if share_cores else None)
        self._buffers = threading.local()
        log.info("%s: %s detector, %d classes, input %d×%d, %s slice(s) per run", uri,
                 self.family, len(self._names), self.width, self.height, self.batch or "auto")

    @property
    def category_names(self) -> Sequence[str]:
        return self._names

    def _read_input(self, input_size: int | Sequence[int] | None) -> None:
        """Input name, layout (NCHW/NHWC), dtype, size and batch axis, checked."""
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BadModelError(f"{self.label} takes {len(inputs)} inputs "
                                f"({', '.join(i.name for i in inputs)}); a detector here "
                                "takes one image batch")
        item = inputs[0]
        shape = list(item.shape)
        if len(shape) != 4:
            raise BadModelError(f"wrong input rank: {self.label}'s input {item.name!r} has "
                                f"shape {shape} (rank {len(shape)}); a detector takes a 4-D "
                                "image batch, (N, 3, H, W) or (N, H, W, 3)")
        self._input_name = item.name
        self._nhwc = shape[1] != 3 and shape[3] == 3
        if not self._nhwc and shape[1] not in (3, None) and isinstance(shape[1], int):
            raise BadModelError(f"{self.label}'s input {item.name!r} {shape} has no axis of "
                                "3 colour channels")
        self._dtype = _DTYPES.get(item.type)
        if self._dtype is None:
            raise BadModelError(f"{self.label}'s input is {item.type}; float, float16 or "
                                "uint8 images are supported")
        spatial = shape[1:3] if self._nhwc else shape[2:4]
        fixed = [d if isinstance(d, int) and d > 0 else None for d in spatial]
        wanted = _size(input_size) if input_size else None
        if all(fixed):
            if wanted and tuple(wanted) != tuple(fixed):
                raise ConfigError(f"input_size {wanted} differs from the graph's {fixed}")
            self.height, self.width = int(fixed[0]), int(fixed[1])  # type: ignore[arg-type]  # all set
        else:
            self.height, self.width = wanted or (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
        axis = shape[0]
        self.fixed_batch = axis if isinstance(axis, int) and axis > 0 else None

    def _probe(self) -> tuple[list[tuple[int, ...]], list[str]]:
        """Output shapes seen on one blank batch (dynamic axes become numbers)."""
        names = [o.name for o in self._session.get_outputs()]
        try:
            outputs = self._session.run(None, {self._input_name: self._blank(
                self.fixed_batch or 1)})
        except Exception as exc:
            raise BadModelError(f"{self.label} failed on a blank "
                                f"{self.width}×{self.height} image: {str(exc)[:300]}") from exc
        return [tuple(np.shape(o)) for o in outputs], names

    def _check_classes(self, shapes: Sequence[tuple[int, ...]]) -> None:
        if self.family == "yolov8-seg" and sorted(len(s) for s in shapes) != [3, 4]:
            raise BadModelError(f"{self.label} is not a yolov8-seg model: its outputs "
                                f"{', '.join(str(s) for s in shapes)} lack the pair of "
                                "predictions (batch, 4 + C + M, anchors) and prototypes "
                                "(batch, M, H/4, W/4)")
        scored = {"yolov5": lambda s: s[0][2] - 5, "yolox": lambda s: s[0][2] - 5,
                  "yolov8": lambda s: s[0][1] - 4, "rtdetr": lambda s: s[0][2] - 4,
                  "yolov8-seg": lambda s: next(p for p in s if len(p) == 3)[1] - 4
                  - next(p for p in s if len(p) == 4)[1]}
        if self.family in scored:
            classes = scored[self.family](shapes)
        elif self.family == "detr":
            boxes = detr_boxes_index(self._output_names, [s[-1] for s in shapes])
            classes = shapes[1 - boxes][-1]
            if classes == len(self._names) + 1:
                return
        else:
            return
        if classes != len(self._names):
            raise BadModelError(f"{self.label} scores {classes} classes but has "
                                f"{len(self._names)} names; give matching model_options.labels")

    def _batch_size(self, batch: int | str | None) -> int | None:
        if self.fixed_batch is not None:
            if batch not in (None, "auto", self.fixed_batch):
                log.warning("%s: its batch axis is fixed at %d; batch=%s ignored", self.label,
                            self.fixed_batch, batch)
            return self.fixed_batch
        if batch in (None, "auto"):
            configured = ONNX_BATCH.get()
            return int(configured) if configured else None
        try:
            size = int(batch)
        except (TypeError, ValueError):
            raise ConfigError(f"batch must be a number or 'auto', got {batch!r}") from None
        if size < 1:
            raise ConfigError(f"batch must be >= 1, got {size}")
        return size

    def _blank(self, count: int) -> np.ndarray:
        if self._nhwc:
            return np.zeros((count, self.height, self.width, 3), self._dtype)
        return np.zeros((count, 3, self.height, self.width), self._dtype)

    def _tensor(self, count: int) -> np.ndarray:
        """A per-thread input batch, so concurrent batches never share one."""
        cache = getattr(self._buffers, "by_count", None)
        if cache is None:
            cache = self._buffers.by_count = {}
        if count not in cache:
            cache[count] = self._blank(count)
        return cache[count]

    def _fill(self, tensor: np.ndarray, index: int, canvas: np.ndarray) -> None:
        """Put one canvas into slot ``index`` of the batch, normalised."""
        sources = (2, 1, 0) if self._pre.bgr else (0, 1, 2)
        if self._dtype is np.uint8:  # the graph normalises uint8 inputs itself
            pixels = canvas[:, :, list(sources)]
            tensor[index] = pixels if self._nhwc else pixels.transpose(2, 0, 1)
            return
        for channel, source in enumerate(sources):
            values = self._lut[channel][canvas[:, :, source]]
            if self._nhwc:
                tensor[index, :, :, channel] = values
            else:
                tensor[index, channel] = values

    def _run(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """One ``session.run`` over up to ``batch`` slices."""
        session = self._session
        if session is None:
            raise ModelError("OnnxDetector is closed")
        live = [i for i, image in enumerate(images) if image.shape[0] and image.shape[1]]
        results = [Detections.empty() for _ in images]
        if not live:
            return results
        tensor = self._tensor(self.fixed_batch or len(live))
        placements: list[Placement] = []
        for slot, index in enumerate(live):
            canvas, placement = place(images[index], self.height, self.width, self._pre)
            self._fill(tensor, slot, canvas)
            placements.append(placement)
        try:
            outputs = session.run(None, {self._input_name: tensor})
        except Exception as exc:
            raise ModelError(f"{self.label} inference failed: {exc}") from exc
        outputs = [np.asarray(o).astype(np.float32, copy=False) for o in outputs]
        for slot, index in enumerate(live):
            dets = decode(self.family, [o[slot] for o in outputs], self.score_threshold,
                          height=self.height, width=self.width, classes=len(self._names),
                          output_names=self._output_names, class_offset=self.class_offset,
                          nms_threshold=self.nms_threshold)
            height, width = images[index].shape[:2]
            dets = to_slice(dets, placements[slot], width, height)
            if len(dets) and self.nms_threshold is not None:
                dets = nms(dets, self.nms_threshold, "iou", class_agnostic=False)
            ids = dets.category_ids
            if len(dets) and (ids.min() < 0 or ids.max() >= len(self._names)):
                raise BadModelError(f"{self.label} answered class id "
                                    f"{int(ids.max() if ids.max() >= 0 else ids.min())} "
                                    f"outside its {len(self._names)} names (class_offset "
                                    f"{self.class_offset}?)")
            if len(dets) > self.max_detections:
                dets = dets.sorted_by_score().select(np.arange(self.max_detections))
            results[index] = dets
        return results

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        step = self.batch or auto_batch(len(images), self._pool.workers, self.accelerated)
        chunks = [np.arange(start, min(start + step, len(images)))
                  for start in range(0, len(images), step)]
        done = self._pool.map(lambda chunk: self._run([images[i] for i in chunk]), chunks)
        return [dets for batch in done for dets in batch]

    def close(self) -> None:
        self._pool.close()
        self._session = None


def auto_batch(slices: int, threads: int, accelerated: bool) -> int:
    """Slices per run for ``batch: auto``: 1 on the CPU; on an accelerator the call's slices
    split evenly over the slice threads, at most :data:`AUTO_BATCH` a run."""
    if not accelerated:
        return 1
    return max(1, min(AUTO_BATCH, -(-slices // max(1, threads))))


def _size(value: int | str | Sequence[int]) -> tuple[int, int]:
    """``640``, ``"640"``, ``"480x640"`` or ``[480, 640]`` → (height, width)."""
    try:
        if isinstance(value, str):
            parts = [int(p) for p in value.lower().replace("×", "x").split("x")]
        elif isinstance(value, int):
            parts = [value]
        else:
            parts = [int(p) for p in value]
    except (TypeError, ValueError):
        raise ConfigError(f"input_size must be N or HxW, got {value!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 32 or max(parts) > 8192:
        raise ConfigError(f"input_size must be N or HxW within 32–8192, got {value!r}")
    return parts[0], parts[1]
