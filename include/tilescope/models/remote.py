"""The shared half of every remote backend (Bedrock, Rekognition, SageMaker, HTTP servers).

A remote backend only has to turn one encoded slice into labelled boxes
(:meth:`RemoteModel.detect`); this base does the rest the same way for all of them: encode
the slice (PNG by default: lossless, the model sees the pixels an embedded model would),
send slices concurrently, retry throttling with backoff and jitter, clip boxes to the slice,
apply the score threshold, and map label strings to ids in the model's growing
:class:`~tilescope.models.vocabulary.Vocabulary` (cloud models have no fixed class list).
"""

from __future__ import annotations

import io
import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilescope.detections import Detections
from tilescope.errors import ConfigError, ModelRequestError, ModelThrottledError
from tilescope.models.base import DetectionModel
from tilescope.models.retry import RetryPolicy, call_with_retry
from tilescope.models.vocabulary import Vocabulary

IMAGE_FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
#: HTTP statuses that mean "not now" rather than "not this request"
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RawDetection:
    """One box as a backend reported it: a label string, a score in [0, 1], and
    ``[x1, y1, x2, y2]`` in the slice's pixels (not yet clipped)."""

    label: str
    score: float
    box: tuple[float, float, float, float]


def encode_image(pixels: np.ndarray, image_format: str = "png", quality: int = 95) -> bytes:
    """An RGB uint8 array as PNG or JPEG bytes."""
    from PIL import Image

    out = io.BytesIO()
    if image_format == "png":
        Image.fromarray(pixels).save(out, format="PNG", compress_level=1)  # fast, lossless
    elif image_format == "jpeg":
        Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    else:
        raise ConfigError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, "
                          f"got {image_format!r}")
    return out.getvalue()


def throttled(message: str, retry_after: float | None = None) -> ModelThrottledError:
    """A retryable load error, carrying the server's ``Retry-After`` seconds when it sent one."""
    error = ModelThrottledError(message)
    error.retry_after = retry_after or 0.0  # type: ignore[attr-defined]  # read by getattr
    return error


def http_status_error(backend: str, status: int, detail: str,
                      retry_after: float | None = None) -> Exception:
    """The tilescope error for a non-2xx HTTP answer: transient statuses retry, the rest
    (400, 401, 403, 404, 413, 422...) fail fast."""
    message = f"{backend}: HTTP {status}: {detail[:300]}"
    if status in TRANSIENT_STATUSES or status >= 500:
        return throttled(message, retry_after)
    return ModelRequestError(message)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in its delta-seconds form (dates are ignored)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


class RemoteModel(DetectionModel):
    """A detector behind a network call. Subclasses implement :meth:`detect` for one slice.

    Options shared by every remote backend (all keyword-only, all JSON-able so they can come
    from a DAG's ``model_options``):

    * ``score_threshold`` — boxes below it are dropped here (the pipeline filters too).
    * ``classes`` — names to seed the vocabulary with (ids 0..n-1 in this order; backends that
      prompt, like Bedrock, also ask for exactly these). Labels outside it are kept as names.
    * ``label_map`` — rename labels, e.g. ``{"Person": "person"}``; ``lowercase`` — lower-case
      every label (Rekognition answers "Person", COCO says "person").
    * ``image_format`` (``png``/``jpeg``), ``jpeg_quality`` — how slices travel.
    * ``concurrency`` — slices of one call in flight at once.
    * ``max_attempts``, ``base_delay``, ``max_delay`` — retry policy for throttling/5xx/timeouts.
    * ``timeout`` — seconds per request (connect and read).
    """

    open_vocabulary = True
    preferred_slice_size = 640

    def __init__(self, *, score_threshold: float = 0.0, classes: Sequence[str] = (),
                 label_map: Mapping[str, str] | None = None, lowercase: bool = False,
                 image_format: str = "png", jpeg_quality: int = 95, concurrency: int = 4,
                 max_attempts: int = 4, base_delay: float = 0.5, max_delay: float = 20.0,
                 timeout: float = 60.0) -> None:
        if image_format not in IMAGE_FORMATS:
            raise ConfigError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, "
                              f"got {image_format!r}")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {timeout}")
        self.score_threshold = float(score_threshold)
        self.classes = tuple(str(c) for c in classes)
        self.label_map = dict(label_map or {})
        self.lowercase = bool(lowercase)
        self.image_format = image_format
        self.jpeg_quality = int(jpeg_quality)
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.retry = RetryPolicy(int(max_attempts), float(base_delay), float(max_delay))
        self.vocabulary = Vocabulary(self.classes)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def category_names(self) -> Sequence[str]:
        """Every name this model has produced so far (index = category id)."""
        return self.vocabulary.names

    @property
    def content_type(self) -> str:
        return IMAGE_FORMATS[self.image_format]

    def describe(self) -> str:
        """Backend and target for error messages, e.g. ``bedrock-converse (amazon.nova-...)``."""
        return self.name

    @abstractmethod
    def detect(self, image: bytes, width: int, height: int) -> list[RawDetection]:
        """Boxes for one encoded slice of ``width`` × ``height`` pixels.

        Raise :class:`ModelThrottledError` for load (retried here), ``ModelRequestError`` for
        a refused request and ``ModelOutputError`` for an answer that cannot be read.
        """

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if len(images) <= 1 or self.concurrency == 1:
            return [self._predict_one(image) for image in images]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=self.name)
        return list(self._pool.map(self._predict_one, images))

    def encode(self, pixels: np.ndarray) -> bytes:
        """The bytes :meth:`detect` receives for a slice (an encoded image by default)."""
        return encode_image(pixels, self.image_format, self.jpeg_quality)

    def _predict_one(self, pixels: np.ndarray) -> Detections:
        height, width = pixels.shape[:2]
        data = self.encode(pixels)
        raw = call_with_retry(lambda: self.detect(data, width, height), self.retry)
        return self.to_detections(raw, width, height)

    def label(self, name: str) -> str:
        """The name a raw label is recorded under (``label_map``, ``lowercase``)."""
        name = self.label_map.get(name, name).strip()
        return name.lower() if self.lowercase else name

    def to_detections(self, raw: Sequence[RawDetection], width: int,
                      height: int) -> Detections:
        """Raw boxes → :class:`Detections`: corners ordered, clipped to the slice, empty
        boxes and scores under the threshold dropped, labels mapped to vocabulary ids."""
        boxes, scores, ids = [], [], []
        for det in raw:
            if det.score < self.score_threshold:
                continue
            x1, y1, x2, y2 = det.box
            x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
            y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
            if x2 <= x1 or y2 <= y1:
                continue
            boxes.append((x1, y1, x2, y2))
            scores.append(det.score)
            ids.append(self.vocabulary.id_of(self.label(det.label) or "object"))
        if not boxes:
            return Detections.empty()
        return Detections(np.array(boxes, np.float32), np.array(scores, np.float32),
                          np.array(ids, np.int32))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def finite_box(values: Any, what: str) -> tuple[float, float, float, float]:
    """Four finite numbers, or ``ValueError`` saying what was wrong."""
    if not isinstance(values, list | tuple) or len(values) != 4:
        raise ValueError(f"{what} is not a list of 4 numbers: {str(values)[:80]}")
    try:
        box = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what} has a non-numeric value: {str(values)[:80]}") from None
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"{what} has a non-finite value: {values}")
    return box  # type: ignore[return-value]  # four values, checked above
