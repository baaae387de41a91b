"""Amazon Rekognition ``DetectLabels`` as a detector: label instances with bounding boxes.

Rekognition returns labels for the whole picture; only labels with ``Instances`` carry boxes
(people, cars, animals...), and those boxes are ratios of the image size — converted here to
slice pixels. Scene labels without instances ("Outdoors", "Nature") are not detections and
are skipped.

Options (besides :class:`~tilescope.models.remote.RemoteModel`'s): ``conn_id`` (Airflow AWS
connection, default ``aws_default``), ``region_name``, ``min_confidence`` (percent, 50),
``max_labels`` (100), ``inclusion_filters`` (label names Rekognition should limit itself
to). Slices travel as bytes (at most 5 MB: PNG of up to ~1500² px, JPEG beyond).
"""

from __future__ import annotations

from typing import Any

from tilescope.airflow.connections import aws_client
from tilescope.errors import ConfigError, ModelOutputError
from tilescope.models.aws import classify_aws_error
from tilescope.models.remote import RawDetection, RemoteModel

MAX_IMAGE_BYTES = 5 * 1024 * 1024


def instance_box(box: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """A Rekognition ``BoundingBox`` (ratios ``Left, Top, Width, Height``) in pixels, xyxy."""
    try:
        left, top = float(box["Left"]), float(box["Top"])
        w, h = float(box["Width"]), float(box["Height"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"BoundingBox is not Left/Top/Width/Height numbers: {box!r}") from None
    return left * width, top * height, (left + w) * width, (top + h) * height


def label_instances(labels: Any, width: int, height: int) -> list[RawDetection]:
    """Every instance box of a ``DetectLabels`` answer's ``Labels`` list."""
    if not isinstance(labels, list):
        raise ValueError(f"Labels is not a list: {str(labels)[:120]!r}")
    found = []
    for label in labels:
        name = label.get("Name") if isinstance(label, dict) else None
        if not name:
            raise ValueError(f"a label without a Name: {str(label)[:120]!r}")
        for instance in label.get("Instances") or []:
            box = instance.get("BoundingBox")
            if box is None:
                continue
            confidence = instance.get("Confidence", label.get("Confidence"))
            if not isinstance(confidence, int | float):
                raise ValueError(f"instance of {name!r} has no numeric Confidence")
            found.append(RawDetection(str(name), float(confidence) / 100.0,
                                      instance_box(box, width, height)))
    return found


class RekognitionModel(RemoteModel):
    """``DetectLabels`` per slice; instance boxes become detections."""

    name = "rekognition"
    preferred_slice_size = 1024

    def __init__(self, *, conn_id: str | None = "aws_default", region_name: str | None = None,
                 min_confidence: float = 50.0, max_labels: int = 100,
                 inclusion_filters: list[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        if not 0.0 <= float(min_confidence) <= 100.0:
            raise ConfigError(f"min_confidence is a percentage, got {min_confidence}")
        self.min_confidence = float(min_confidence)
        self.max_labels = int(max_labels)
        self.inclusion_filters = list(inclusion_filters or [])
        self._client = aws_client("rekognition", conn_id, timeout=self.timeout,
                                  region_name=region_name)

    def detect(self, image: bytes, width: int, height: int) -> list[RawDetection]:
        if len(image) > MAX_IMAGE_BYTES:
            raise ConfigError(f"{self.name}: a {width}x{height} slice is {len(image):,} bytes "
                              f"as {self.image_format}, over Rekognition's 5 MB; use "
                              "image_format=jpeg or a smaller slice_size")
        request: dict[str, Any] = {"Image": {"Bytes": image}, "MaxLabels": self.max_labels,
                                   "MinConfidence": self.min_confidence}
        if self.inclusion_filters:
            request["Features"] = ["GENERAL_LABELS"]
            request["Settings"] = {"GeneralLabels": {
                "LabelInclusionFilters": self.inclusion_filters}}
        try:
            response = self._client.detect_labels(**request)
        except Exception as exc:
            raise classify_aws_error(exc, self.name) from exc
        try:
            return label_instances(response.get("Labels"), width, height)
        except ValueError as exc:
            raise ModelOutputError(f"{self.name}: malformed DetectLabels answer: {exc}") from exc
