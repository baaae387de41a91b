"""Reading detections out of a user's JSON answer: a small, configurable adapter.

Model servers (a SageMaker container, a REST endpoint) answer in their own shapes. Rather
than one backend per shape, one adapter says where the detections are and how they are
written; the common layouts are covered by options:

* records (default): ``{"detections": [{"box": [x1, y1, x2, y2], "score": .9, "label": "car"}]}``
* columns: ``{"boxes": [[...], ...], "scores": [...], "labels": [...]}`` (``layout="columns"``)
* boxes as ``xyxy``, ``xywh`` (top-left + size) or ``cxcywh`` (centre + size), in pixels or as
  fractions of the slice (``normalized``); labels as names, or as integer ids named by
  ``labels`` (ids outside it are kept as their number).

Anything that does not fit raises ``ValueError`` with the path that was wrong; backends turn
it into a ``ModelOutputError`` naming themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from tilescope.errors import ConfigError
from tilescope.models.remote import RawDetection, finite_box

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
LAYOUTS = ("records", "columns")


def to_xyxy(box: Sequence[float], box_format: str, scale_x: float = 1.0,
            scale_y: float = 1.0) -> tuple[float, float, float, float]:
    """A box in ``box_format`` → ``(x1, y1, x2, y2)``, scaled by (``scale_x``, ``scale_y``)."""
    a, b, c, d = box
    if box_format == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif box_format == "cxcywh":
        a, b, c, d = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    return a * scale_x, b * scale_y, c * scale_x, d * scale_y


def at_path(payload: Any, path: str) -> Any:
    """``payload`` followed along a dotted path (``"predictions.0.detections"``); ``""`` is
    the payload itself."""
    node = payload
    for part in filter(None, path.split(".")):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and \
                -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            raise ValueError(f"no {part!r} at {path!r} in the answer")
    return node


@dataclass(frozen=True)
class DetectionsAdapter:
    """Where the detections are in a JSON answer and how they are written."""

    path: str = "detections"
    layout: str = "records"
    box: str = "box"
    score: str = "score"
    label: str = "label"
    box_format: str = "xyxy"
    normalized: bool = False
    labels: tuple[str, ...] = ()
    #: score when an entry has none (some servers only return kept boxes)
    default_score: float = 1.0

    def __post_init__(self) -> None:
        if self.box_format not in BOX_FORMATS:
            raise ConfigError(f"box_format must be one of {BOX_FORMATS}, got {self.box_format!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        object.__setattr__(self, "labels", tuple(str(n) for n in self.labels))

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> DetectionsAdapter:
        """From a JSON-able dict (a DAG's ``model_options["response"]``); unknown keys refused."""
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown response adapter option(s) {unknown}; "
                              f"known: {sorted(known)}")
        return cls(**options)

    def parse(self, payload: Any, width: int, height: int) -> list[RawDetection]:
        """Every detection in ``payload`` (coordinates in the slice's pixels)."""
        found = at_path(payload, self.path)
        if self.layout == "columns":
            return self._columns(found, width, height)
        if not isinstance(found, list):
            raise ValueError(f"{self.path or 'the answer'} is not a list of detections")
        return [self._record(item, index, width, height) for index, item in enumerate(found)]

    def _name(self, value: Any) -> str:
        if isinstance(value, bool) or value is None:
            raise ValueError(f"label {value!r} is neither a name nor a class id")
        if isinstance(value, int | float) and float(value).is_integer():
            index = int(value)
            return self.labels[index] if 0 <= index < len(self.labels) else str(index)
        return str(value)

    def _detection(self, box: Any, score: Any, label: Any, where: str, width: int,
                   height: int) -> RawDetection:
        corners = finite_box(box, f"{where}.{self.box}")
        scale_x, scale_y = (width, height) if self.normalized else (1.0, 1.0)
        try:
            value = self.default_score if score is None else float(score)
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{self.score} is not a number: {score!r}") from None
        return RawDetection(self._name(label), value,
                            to_xyxy(corners, self.box_format, scale_x, scale_y))

    def _record(self, item: Any, index: int, width: int, height: int) -> RawDetection:
        where = f"{self.path or 'answer'}[{index}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} is not an object")
        if self.box not in item or self.label not in item:
            raise ValueError(f"{where} lacks {self.box!r} or {self.label!r}: "
                             f"keys {sorted(item)[:10]}")
        return self._detection(item[self.box], item.get(self.score), item[self.label], where,
                               width, height)

    def _columns(self, found: Any, width: int, height: int) -> list[RawDetection]:
        if not isinstance(found, Mapping):
            raise ValueError(f"{self.path or 'the answer'} is not an object of columns")
        boxes, labels = found.get(self.box), found.get(self.label)
        scores = found.get(self.score)
        if not isinstance(boxes, list) or not isinstance(labels, list):
            raise ValueError(f"columns {self.box!r} and {self.label!r} must be lists")
        if scores is None:
            scores = [None] * len(boxes)
        if not isinstance(scores, list) or not len(boxes) == len(labels) == len(scores):
            raise ValueError(f"column lengths differ: {len(boxes)} boxes, {len(labels)} "
                             f"labels, {len(scores) if isinstance(scores, list) else '?'} scores")
        return [self._detection(b, s, n, f"{self.path or 'answer'}[{i}]", width, height)
                for i, (b, s, n) in enumerate(zip(boxes, scores, labels, strict=True))]
