"""Amazon Bedrock Converse as a detector: a vision LLM (Nova, Claude...) asked for JSON boxes.

Each slice goes to ``Converse`` as image bytes with a prompt that states the slice's size in
pixels and the exact JSON shape wanted; the answer is read by :mod:`.llm_json` (code fences,
truncated arrays, Nova-style entries), boxes are clipped to the slice, and labels outside
``classes`` are kept as names. :func:`converse_text` is shared with the moderation gate and
the scene description.

Options (besides :class:`~tilescope.models.remote.RemoteModel`'s): ``model_id`` (required),
``conn_id`` (Airflow AWS connection, default ``aws_default``), ``region_name``,
``max_tokens`` (2048), ``temperature`` (0), ``prompt`` (a template with ``{width}``,
``{height}``, ``{classes}``), ``coordinates`` (``pixels``; ``per-mille``/``normalized`` for
models trained on those grids), ``default_score`` (0.5, for entries without a confidence).
"""

from __future__ import annotations

import logging
from typing import Any

from tilescope.airflow.connections import aws_client
from tilescope.errors import ConfigError, ModelOutputError
from tilescope.models.aws import classify_aws_error
from tilescope.models.llm_json import COORDINATES, parse_detections
from tilescope.models.remote import RawDetection, RemoteModel
from tilescope.models.retry import RetryPolicy, call_with_retry

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are a precise object detector. You answer with JSON only, never prose."
DETECTION_PROMPT = (
    "Detect {what} in this image. The image is {width} pixels wide and {height} pixels "
    "high; (0, 0) is its top-left corner. Answer with JSON only, in exactly this shape:\n"
    '{{"detections": [{{"label": "<class name>", "box": [x1, y1, x2, y2], '
    '"score": <confidence between 0 and 1>}}]}}\n'
    "where (x1, y1) is the top-left and (x2, y2) the bottom-right corner of the box, "
    "{units}. Give one entry per object instance. "
    'If there is nothing to detect, answer {{"detections": []}}.'
)
_UNITS = {"pixels": "in pixels of this image",
          "normalized": "as fractions of the image width and height (0 to 1)",
          "per-mille": "on a 0-1000 grid over the image width and height"}


def converse_text(client: Any, model_id: str, prompt: str, *, image: bytes | None = None,
                  image_format: str = "png", system: str | None = None,
                  max_tokens: int = 1024, temperature: float = 0.0,
                  backend: str = "bedrock-converse") -> tuple[str, str]:
    """One ``Converse`` turn: ``(text of the answer, stopReason)``.

    AWS errors come back as tilescope errors (throttling retryable, validation fail-fast);
    an answer without text is a ``ModelOutputError``.
    """
    content: list[dict[str, Any]] = []
    if image is not None:
        content.append({"image": {"format": image_format, "source": {"bytes": image}}})
    content.append({"text": prompt})
    request: dict[str, Any] = {
        "modelId": model_id, "messages": [{"role": "user", "content": content}],
        "inferenceConfig": {"maxTokens": int(max_tokens), "temperature": float(temperature)}}
    if system:
        request["system"] = [{"text": system}]
    try:
        response = client.converse(**request)
    except Exception as exc:
        raise classify_aws_error(exc, f"{backend} ({model_id})") from exc
    blocks = ((response.get("output") or {}).get("message") or {}).get("content") or []
    text = "".join(b["text"] for b in blocks if isinstance(b, dict) and "text" in b)
    stop = str(response.get("stopReason", ""))
    if not text.strip():
        raise ModelOutputError(f"{backend} ({model_id}): the answer has no text "
                               f"(stopReason {stop!r})")
    return text, stop


def converse_with_retry(client: Any, model_id: str, prompt: str, policy: RetryPolicy,
                        **kwargs: Any) -> tuple[str, str]:
    """:func:`converse_text` with throttling retried by ``policy``."""
    return call_with_retry(lambda: converse_text(client, model_id, prompt, **kwargs), policy)


class BedrockConverseModel(RemoteModel):
    """A Bedrock vision model behind ``Converse``, asked for boxes in slice pixels."""

    name = "bedrock-converse"
    preferred_slice_size = 1024  # LLMs see small objects poorly in tiny slices

    def __init__(self, *, model_id: str = "", conn_id: str | None = "aws_default",
                 region_name: str | None = None, max_tokens: int = 2048,
                 temperature: float = 0.0, prompt: str | None = None,
                 coordinates: str = "pixels", default_score: float = 0.5,
                 **options: Any) -> None:
        super().__init__(**options)
        if not model_id:
            raise ConfigError("bedrock-converse needs model_id (e.g. amazon.nova-lite-v1:0)")
        if coordinates not in COORDINATES:
            raise ConfigError(f"coordinates must be one of {sorted(COORDINATES)}, "
                              f"got {coordinates!r}")
        self.model_id = model_id
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.prompt = prompt or DETECTION_PROMPT
        self.coordinates = coordinates
        self.default_score = float(default_score)
        self._client = aws_client("bedrock-runtime", conn_id, timeout=self.timeout,
                                  region_name=region_name)

    def describe(self) -> str:
        return f"{self.name} ({self.model_id})"

    def prompt_for(self, width: int, height: int) -> str:
        """The detection prompt for a ``width`` × ``height`` slice."""
        what = ("every object of these classes: " + ", ".join(self.classes)
                if self.classes else "every distinct object")
        return self.prompt.format(what=what, width=width, height=height,
                                  classes=", ".join(self.classes),
                                  units=_UNITS[self.coordinates])

    def detect(self, image: bytes, width: int, height: int) -> list[RawDetection]:
        text, stop = converse_text(
            self._client, self.model_id, self.prompt_for(width, height), image=image,
            image_format=self.image_format, system=SYSTEM_PROMPT, max_tokens=self.max_tokens,
            temperature=self.temperature, backend=self.name)
        try:
            parsed = parse_detections(text, width, height, coordinates=self.coordinates,
                                      default_score=self.default_score)
        except ValueError as exc:
            raise ModelOutputError(f"{self.describe()}: malformed output "
                                   f"(stopReason {stop!r}): {exc}") from exc
        if parsed.skipped and not parsed.detections:
            raise ModelOutputError(f"{self.describe()}: none of {parsed.skipped} entries in "
                                   f"the answer is a readable detection: {text[:200]!r}")
        if parsed.truncated or parsed.skipped:
            log.warning("%s: answer %s (stopReason %r); kept %d detections, skipped %d",
                        self.describe(), "cut off" if parsed.truncated else "partly unreadable",
                        stop, len(parsed.detections), parsed.skipped)
        return parsed.detections
