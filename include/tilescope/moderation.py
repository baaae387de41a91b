"""The moderation gate: decide, before any region runs, whether an image may be processed.

Preprocess sends a downscaled copy of the image (never the full pixels: ≤ ``max_side`` px,
JPEG) to Amazon Rekognition ``DetectModerationLabels`` or to a Bedrock model asked for a
JSON verdict. A blocked image is not analysed; the pipeline quarantines a claimed original
and records the verdict as the image's result.

**Fail-closed by default**: when the gate cannot decide — the call failed after its
retries, or the answer could not be read — the image is blocked, with the error as the
reason. ``fail_open=True`` lets such images through instead (the verdict still records the
error). A gate that is misconfigured (unknown backend, Bedrock without ``model_id``) is a
``ConfigError`` before any call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from tilescope.errors import ConfigError, ModelOutputError

BACKENDS = ("none", "rekognition", "bedrock-converse")
#: what the Bedrock prompt asks about unless ``categories`` says otherwise
DEFAULT_CATEGORIES = ("explicit nudity", "sexual content", "graphic violence or gore",
                      "hate symbols", "self-harm", "drugs", "weapons used to threaten")
BEDROCK_PROMPT = (
    "You are a content moderation classifier. Decide whether this image shows any of these "
    "categories: {categories}. Answer with JSON only, in exactly this shape: "
    '{{"safe": true or false, "categories": ["<matched category>", ...], '
    '"reason": "<one short sentence>"}}'
)


@dataclass(frozen=True)
class ModerationPolicy:
    """How the gate decides. ``backend="none"`` disables it."""

    backend: str = "none"
    conn_id: str | None = "aws_default"
    region_name: str | None = None
    #: Rekognition: labels under this confidence (percent) are ignored
    min_confidence: float = 50.0
    #: Rekognition: block only on these label names (or their parent categories);
    #: empty = any moderation label at ``min_confidence`` blocks
    blocked_labels: tuple[str, ...] = ()
    #: Bedrock: the model and the categories it is asked about
    model_id: str = ""
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    fail_open: bool = False
    max_side: int = 2048
    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"moderation must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "bedrock-converse" and not self.model_id:
            raise ConfigError("moderation with bedrock-converse needs model_id")
        if not 0.0 <= float(self.min_confidence) <= 100.0:
            raise ConfigError(f"min_confidence is a percentage, got {self.min_confidence}")
        if self.max_side < 80:  # Rekognition refuses images under 80 px
            raise ConfigError(f"max_side must be at least 80, got {self.max_side}")
        object.__setattr__(self, "blocked_labels", tuple(self.blocked_labels))
        object.__setattr__(self, "categories", tuple(self.categories))

    @property
    def enabled(self) -> bool:
        return self.backend != "none"

    @classmethod
    def from_options(cls, backend: str | None,
                     options: Mapping[str, Any] | None = None) -> ModerationPolicy:
        """From DAG params: ``moderation`` (the backend) and ``moderation_options``."""
        known = {f.name for f in fields(cls)} - {"backend"}
        options = dict(options or {})
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown moderation option(s) {unknown}; known: {sorted(known)}")
        return cls(backend=backend or "none", **options)


@dataclass(frozen=True)
class Verdict:
    """The gate's decision and why; ``error`` is set when it could not decide."""

    blocked: bool
    reason: str
    backend: str
    labels: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    fail_open: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _image_bytes(pixels: np.ndarray, max_side: int) -> bytes:
    from tilescope.models.remote import encode_image
    from tilescope.readers.base import downscale

    return encode_image(downscale(pixels, max_side), "jpeg", quality=90)


def rekognition_labels(client: Any, image: bytes, policy: ModerationPolicy) -> list[dict]:
    """``DetectModerationLabels`` → ``[{"name", "parent", "confidence"}]`` (all returned)."""
    from tilescope.models.aws import classify_aws_error

    try:
        response = client.detect_moderation_labels(Image={"Bytes": image},
                                                   MinConfidence=policy.min_confidence)
    except Exception as exc:
        raise classify_aws_error(exc, "moderation rekognition") from exc
    labels = response.get("ModerationLabels")
    if not isinstance(labels, list):
        raise ModelOutputError("moderation rekognition: no ModerationLabels list in the answer")
    out = []
    for label in labels:
        if not isinstance(label, dict) or not label.get("Name") or \
                not isinstance(label.get("Confidence"), int | float):
            raise ModelOutputError(f"moderation rekognition: unreadable label {label!r}")
        out.append({"name": str(label["Name"]), "parent": str(label.get("ParentName") or ""),
                    "confidence": round(float(label["Confidence"]), 2)})
    return out


def rekognition_verdict(labels: list[dict], policy: ModerationPolicy) -> Verdict:
    """Block when a label at ``min_confidence`` matches ``blocked_labels`` (or any, if empty)."""
    wanted = {n.lower() for n in policy.blocked_labels}
    hits = [lab for lab in labels if lab["confidence"] >= policy.min_confidence and
            (not wanted or lab["name"].lower() in wanted or lab["parent"].lower() in wanted)]
    if not hits:
        return Verdict(False, "no moderation label above the threshold", "rekognition", labels)
    named = ", ".join(f"{h['name']} ({h['confidence']:.1f}%)" for h in hits[:5])
    return Verdict(True, f"moderation labels: {named}", "rekognition", labels)


def bedrock_verdict(client: Any, image: bytes, policy: ModerationPolicy) -> Verdict:
    """Ask a Bedrock model for ``{"safe", "categories", "reason"}`` about the image."""
    from tilescope.models.bedrock import converse_with_retry
    from tilescope.models.llm_json import extract_json
    from tilescope.models.retry import RetryPolicy

    prompt = BEDROCK_PROMPT.format(categories="; ".join(policy.categories))
    text, _ = converse_with_retry(
        client, policy.model_id, prompt,
        RetryPolicy(policy.max_attempts, policy.base_delay, policy.max_delay), image=image,
        image_format="jpeg", max_tokens=300, temperature=0.0,
        backend="moderation bedrock-converse")
    try:
        answer, _ = extract_json(text)
    except ValueError as exc:
        raise ModelOutputError(f"moderation bedrock-converse: {exc}") from exc
    if not isinstance(answer, dict) or not isinstance(answer.get("safe"), bool):
        raise ModelOutputError(f"moderation bedrock-converse: no boolean 'safe' in "
                               f"{text[:200]!r}")
    matched = [str(c) for c in answer.get("categories") or [] if str(c).strip()]
    reason = str(answer.get("reason") or "").strip()[:300]
    labels = [{"name": c, "parent": "", "confidence": None} for c in matched]
    if answer["safe"]:
        return Verdict(False, reason or "judged safe", "bedrock-converse", labels)
    return Verdict(True, f"judged unsafe: {', '.join(matched) or 'unspecified'}"
                         f"{' — ' + reason if reason else ''}", "bedrock-converse", labels)


def moderate(pixels: np.ndarray, policy: ModerationPolicy, client: Any = None) -> Verdict:
    """The gate's verdict on an RGB image (downscaled here); never raises for a failed call.

    ``client`` overrides the boto3 client built from ``policy.conn_id`` (tests, reuse).
    """
    if not policy.enabled:
        return Verdict(False, "moderation disabled", "none")
    from tilescope.airflow.connections import aws_client
    from tilescope.models.retry import RetryPolicy, call_with_retry

    try:
        image = _image_bytes(pixels, policy.max_side)
        if client is None:
            service = "rekognition" if policy.backend == "rekognition" else "bedrock-runtime"
            client = aws_client(service, policy.conn_id, timeout=policy.timeout,
                                region_name=policy.region_name)
        if policy.backend == "rekognition":
            retry = RetryPolicy(policy.max_attempts, policy.base_delay, policy.max_delay)
            labels = call_with_retry(lambda: rekognition_labels(client, image, policy), retry)
            return rekognition_verdict(labels, policy)
        return bedrock_verdict(client, image, policy)
    except Exception as exc:  # fail-closed means *any* failure to decide blocks
        error = f"{type(exc).__name__}: {exc}"
        if policy.fail_open:
            return Verdict(False, f"moderation failed, let through (fail-open): {error}",
                           policy.backend, error=error, fail_open=True)
        return Verdict(True, f"moderation failed, blocked (fail-closed): {error}",
                       policy.backend, error=error)


def gate(reader: Any, image: Any, policy: ModerationPolicy | None) -> dict[str, Any] | None:
    """The verdict on a downscaled copy of ``reader``'s picture (an image, or a video's
    sampled frames side by side); raises :class:`~tilescope.errors.ImageBlockedError` if it
    must not be processed. ``None`` when no gate is configured. ``image`` is its
    :class:`~tilescope.results.ImageInfo`."""
    if policy is None or not policy.enabled:
        return None
    from tilescope.errors import ImageBlockedError

    verdict = moderate(reader.thumbnail(policy.max_side), policy)
    if verdict.blocked:
        raise ImageBlockedError(f"{image.uri} blocked by moderation: {verdict.reason}",
                                verdict.to_dict(), image.to_dict())
    return verdict.to_dict()
