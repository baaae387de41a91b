"""The synthesis model: a scene description written from the merged detections.

By default a result's description is the deterministic summary (``"12 persons, 3 kites"``).
With a synthesis model configured (``synthesis_model="bedrock-converse"`` and
``synthesis_options={"model_id": ..., "conn_id": ...}``), an LLM writes a short paragraph
from the per-class counts and the most confident detections (label, score, box, coarse
position) — text only, never the image, so the cost is a few hundred tokens per image.

A description is a convenience, not the result: when the LLM call fails (after its
retries) the deterministic summary is kept and ``summary.description_source`` records the
error, instead of failing a run whose detections are all there. A misconfiguration
(unknown synthesis model, missing ``model_id``) still fails, at once.
"""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any

from tilescope.errors import ConfigError, ModelError
from tilescope.results import Result, describe_counts

log = logging.getLogger(__name__)

SYNTHESIS_MODELS = ("bedrock-converse",)
MAX_LISTED = 40
SCENE_PROMPT = (
    "An object detector analysed an image of {width} x {height} pixels. Per-class counts: "
    "{counts}. The most confident detections (label, score, box [x, y, width, height] in "
    "pixels, position): {detections}. Write a short factual description of the scene (at "
    "most three sentences) for someone who cannot see the image. Mention only what is "
    "listed; do not speculate. Answer with the description only."
)


def position_name(cx: float, cy: float, width: int, height: int) -> str:
    """A coarse 3×3 position such as ``"top left"`` or ``"centre"``."""
    col = min(2, int(3 * cx / max(width, 1)))
    row = min(2, int(3 * cy / max(height, 1)))
    vertical, horizontal = ("top", "middle", "bottom")[row], ("left", "centre", "right")[col]
    if (vertical, horizontal) == ("middle", "centre"):
        return "centre"
    return f"{vertical} {horizontal}"


def scene_facts(result: Result, limit: int = MAX_LISTED) -> dict[str, Any]:
    """What the prompt states: image size, counts, and the top detections."""
    records = result.detection_records()[:limit]  # already sorted by score
    listed = []
    for record in records:
        x, y, w, h = record["bbox"]
        listed.append([record["category_name"], record["score"], [round(v) for v in
                       (x, y, w, h)], position_name(x + w / 2, y + h / 2, result.image.width,
                                                    result.image.height)])
    return {"width": result.image.width, "height": result.image.height,
            "counts": result.counts(), "detections": listed}


def scene_prompt(result: Result) -> str:
    facts = scene_facts(result)
    return SCENE_PROMPT.format(width=facts["width"], height=facts["height"],
                               counts=json.dumps(facts["counts"]),
                               detections=json.dumps(facts["detections"]))


def bedrock_description(result: Result, *, model_id: str = "",
                        conn_id: str | None = "aws_default", region_name: str | None = None,
                        max_tokens: int = 300, temperature: float = 0.2,
                        max_attempts: int = 4, base_delay: float = 0.5,
                        max_delay: float = 20.0, timeout: float = 60.0) -> str:
    """A scene description from Bedrock ``Converse`` (text in, text out)."""
    from tilescope.airflow.connections import aws_client
    from tilescope.models.bedrock import converse_with_retry
    from tilescope.models.retry import RetryPolicy

    if not model_id:
        raise ConfigError("synthesis_model bedrock-converse needs synthesis_options.model_id")
    client = aws_client("bedrock-runtime", conn_id, timeout=timeout, region_name=region_name)
    text, _ = converse_with_retry(client, model_id, scene_prompt(result),
                                  RetryPolicy(max_attempts, base_delay, max_delay),
                                  max_tokens=max_tokens, temperature=temperature,
                                  backend="synthesis bedrock-converse")
    return " ".join(text.split())[:1000]


def describe_result(result: Result, model: str, options: dict[str, Any] | None = None) -> None:
    """Set ``result.description`` with the synthesis ``model`` (fallback: deterministic)."""
    if model not in SYNTHESIS_MODELS:
        raise ConfigError(f"unknown synthesis_model {model!r}; available: {SYNTHESIS_MODELS}")
    options = dict(options or {})
    source: dict[str, Any] = {"model": model, "model_id": options.get("model_id")}
    known = set(inspect.signature(bedrock_description).parameters) - {"result"}
    if set(options) - known:
        raise ConfigError(f"unknown synthesis_options {sorted(set(options) - known)}; "
                          f"known: {sorted(known)}")
    if not len(result.detections):  # nothing to describe: no call, no tokens
        result.description = describe_counts({})
        result.description_source = {**source, "skipped": "nothing detected"}
        return
    try:
        result.description = bedrock_description(result, **options)
    except ModelError as exc:
        log.warning("scene description by %s failed, keeping the summary: %s", model, exc)
        result.description = describe_counts(result.counts())
        source["error"] = f"{type(exc).__name__}: {exc}"
    result.description_source = source
