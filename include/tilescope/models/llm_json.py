"""Detections out of a language model's text: lenient where LLMs are sloppy, strict elsewhere.

An LLM asked for JSON may wrap it in a Markdown code fence, add a sentence before it, stop
mid-array when it runs out of tokens, use ``bbox`` instead of ``box``, answer Nova-style
``[{"car": [x1, y1, x2, y2]}]``, or give confidences in percent. This module reads all of
that. What it refuses: text with no JSON at all (``ValueError``; the backend reports it as
malformed output naming itself and the region).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tilescope.models.remote import RawDetection, finite_box

_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)(?:```|$)", re.DOTALL)
_LIST_KEYS = ("detections", "objects", "boxes", "results", "predictions")
_LABEL_KEYS = ("label", "name", "class", "category", "object")
_BOX_KEYS = ("box", "bbox", "bounding_box", "box_2d", "coordinates")
_SCORE_KEYS = ("score", "confidence", "probability")
#: coordinate systems a prompt may ask for → size of the full axis in that system
COORDINATES = {"pixels": None, "normalized": 1.0, "per-mille": 1000.0}


@dataclass(frozen=True)
class ParsedDetections:
    """What was read: detections, entries skipped as unreadable, and whether the JSON was
    cut short (salvaged element by element)."""

    detections: list[RawDetection]
    skipped: int
    truncated: bool


def strip_fences(text: str) -> str:
    """The inside of the first Markdown code fence, or ``text`` itself without one."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


def _salvage_array(text: str, start: int) -> list[Any]:
    """Complete elements of a JSON array beginning at ``text[start] == "["``, stopping at the
    first element that is cut off."""
    decoder = json.JSONDecoder()
    items: list[Any] = []
    position = start + 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return items
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return items
        items.append(value)


def extract_json(text: str) -> tuple[Any, bool]:
    """The first JSON value in ``text`` and whether it had to be salvaged from a truncation.

    A complete value is decoded as is. A cut-off one yields the complete elements of its
    detections array (``{"detections": [ {...}, {...}, {..`` → the first two).
    """
    body = strip_fences(text)
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    if not starts:
        raise ValueError(f"no JSON in the answer: {text[:120]!r}")
    start = min(starts)
    try:
        value, _ = json.JSONDecoder().raw_decode(body, start)
        return value, False
    except json.JSONDecodeError:
        pass
    if body[start] == "[":
        return _salvage_array(body, start), True
    keys = "|".join(_LIST_KEYS)
    match = re.compile(rf'"(?:{keys})"\s*:\s*\[').search(body, start)
    if match is None:
        raise ValueError(f"the answer's JSON is cut off before any detection: "
                         f"{body[start:start + 120]!r}")
    return _salvage_array(body, match.end() - 1), True


def _first(item: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in item:
            return item[key]
    return None


def _box_values(value: Any) -> Any:
    """A box as a list: ``[x1, y1, x2, y2]`` as is; ``{x1, y1, x2, y2}`` or
    ``{x|left, y|top, width, height}`` converted."""
    if isinstance(value, Mapping):
        if all(k in value for k in ("x1", "y1", "x2", "y2")):
            return [value["x1"], value["y1"], value["x2"], value["y2"]]
        x, y = value.get("x", value.get("left")), value.get("y", value.get("top"))
        w, h = value.get("width", value.get("w")), value.get("height", value.get("h"))
        if None not in (x, y, w, h):
            try:
                return [x, y, float(x) + float(w), float(y) + float(h)]
            except (TypeError, ValueError):
                return value
    return value


def _entry(item: Any, default_score: float) -> tuple[str, Any, Any] | None:
    """``(label, box, score)`` of one entry, or ``None`` if it has no recognisable shape."""
    if not isinstance(item, Mapping):
        return None
    label, box = _first(item, _LABEL_KEYS), _first(item, _BOX_KEYS)
    if label is not None and box is not None:
        score = _first(item, _SCORE_KEYS)
        return str(label), _box_values(box), default_score if score is None else score
    if len(item) == 1:  # Nova-style {"car": [x1, y1, x2, y2]}
        ((name, value),) = item.items()
        return str(name), _box_values(value), default_score
    return None


def _score(value: Any) -> float:
    score = float(value)
    if 1.0 < score <= 100.0:  # a percentage
        score /= 100.0
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score {value!r} outside [0, 1]")
    return score


def parse_detections(text: str, width: int, height: int, *, coordinates: str = "pixels",
                     default_score: float = 0.5) -> ParsedDetections:
    """Detections in slice pixels from an LLM's answer about a ``width`` × ``height`` slice.

    ``coordinates``: what the prompt asked for — ``pixels``, ``normalized`` (0..1) or
    ``per-mille`` (0..1000, the grid some vision LLMs such as Amazon Nova are trained on).
    Entries that cannot be read are skipped and counted; boxes are not clipped here.
    """
    if coordinates not in COORDINATES:
        raise ValueError(f"coordinates must be one of {sorted(COORDINATES)}")
    value, truncated = extract_json(text)
    if isinstance(value, Mapping):
        listed = _first(value, _LIST_KEYS)
        if listed is None:
            entry = _entry(value, default_score)  # a single detection as the whole answer
            items = [value] if entry is not None else []
            if entry is None and value:
                raise ValueError(f"the answer's JSON has no detections list "
                                 f"(keys {sorted(value)[:10]})")
        else:
            items = listed
    else:
        items = value
    if not isinstance(items, list):
        raise ValueError(f"detections are not a list: {str(items)[:120]!r}")
    axis = COORDINATES[coordinates]
    scale_x, scale_y = (1.0, 1.0) if axis is None else (width / axis, height / axis)
    found: list[RawDetection] = []
    skipped = 0
    for item in items:
        entry = _entry(item, default_score)
        if entry is None:
            skipped += 1
            continue
        label, box, score = entry
        try:
            x1, y1, x2, y2 = finite_box(box, "box")
            found.append(RawDetection(label, _score(score),
                                      (x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y)))
        except (TypeError, ValueError):
            skipped += 1
    return ParsedDetections(found, skipped, truncated)
