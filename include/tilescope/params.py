"""Run parameters shared by the CLI and the DAG: one typed object, validated in one place."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tilescope.errors import ConfigError
from tilescope.slicing import parse_grid, validate_slicing

POSTPROCESS_TYPES = ("greedynmm", "nmm", "nms")
#: frames sampled per second of video by default, and the most a run may ask for
DEFAULT_VIDEO_FPS = 1.0
MAX_VIDEO_FPS = 60.0
MATCH_METRICS = ("ios", "iou")
#: parameters added after the first release: left out of :meth:`InferenceParams.digest`
#: while unset, so existing results keep their keys
_OPTIONAL_IN_DIGEST = ("model_options", "synthesis_model", "synthesis_options")
#: option names that smell like credentials: those belong in an Airflow connection
_SECRET_WORDS = ("password", "secret", "token", "api_key", "apikey", "access_key",
                 "credential")


def is_batch(conf: Any) -> bool:
    """Whether a run's params ask for a batch: ``images`` or a ``manifest`` set (see
    :mod:`tilescope.tasks.batch`); otherwise the run is one ``image_uri``."""
    return bool(conf.get("images") or conf.get("manifest"))


def _check_options(name: str, options: Any) -> dict[str, Any]:
    """A JSON object of backend options, refusing anything that looks like a credential."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ConfigError(f"{name} must be an object of options, got {type(options).__name__}")
    for key in options:
        if any(word in str(key).lower() for word in _SECRET_WORDS):
            raise ConfigError(f"{name}[{key!r}] looks like a credential: put secrets in an "
                              "Airflow connection and pass its conn_id")
    return dict(options)


@dataclass(frozen=True)
class InferenceParams:
    """Everything that changes a result. ``slice_size`` ``None`` = the model's own input size;
    ``"auto"`` = SAHI's ``auto_slice_resolution`` rule."""

    model: str = "nanodet-coco"
    slice_size: int | str | None = None
    overlap: float = 0.2
    grid: str = "auto"
    postprocess: str = "greedynmm"
    match_metric: str = "ios"
    match_threshold: float = 0.5
    class_agnostic: bool = False
    score_threshold: float = 0.3
    full_image_pass: bool = False
    min_success_ratio: float = 1.0
    #: keyword options for the tile model (e.g. ``{"conn_id": ..., "model_id": ...}``)
    model_options: dict[str, Any] = field(default_factory=dict)
    #: the model that writes the scene description at synthesis (``None``: deterministic)
    synthesis_model: str | None = None
    synthesis_options: dict[str, Any] = field(default_factory=dict)
    #: frames per second sampled from a video (ignored for images)
    video_fps: float = DEFAULT_VIDEO_FPS

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_options",
                           _check_options("model_options", self.model_options))
        object.__setattr__(self, "synthesis_options",
                           _check_options("synthesis_options", self.synthesis_options))
        object.__setattr__(self, "synthesis_model", self.synthesis_model or None)
        if self.postprocess not in POSTPROCESS_TYPES:
            raise ConfigError(f"postprocess must be one of {POSTPROCESS_TYPES}, "
                              f"got {self.postprocess!r}")
        if self.match_metric not in MATCH_METRICS:
            raise ConfigError(f"match_metric must be one of {MATCH_METRICS}, "
                              f"got {self.match_metric!r}")
        for name in ("match_threshold", "score_threshold", "min_success_ratio"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        try:
            fps = float(self.video_fps)
        except (TypeError, ValueError):
            raise ConfigError(f"video_fps must be a number, got {self.video_fps!r}") from None
        if not 0.0 < fps <= MAX_VIDEO_FPS:  # also refuses NaN
            raise ConfigError(f"video_fps must be in (0, {MAX_VIDEO_FPS:g}], got {fps:g}")
        object.__setattr__(self, "video_fps", fps)
        if not 0.0 <= float(self.overlap) < 0.9:
            raise ConfigError(f"overlap must be in [0, 0.9), got {self.overlap}")
        if self.slice_size == "model":
            object.__setattr__(self, "slice_size", None)
        if self.slice_size not in (None, "auto"):
            try:
                size = int(self.slice_size)
            except (TypeError, ValueError):
                raise ConfigError(f"slice_size must be a number of pixels or 'auto', "
                                  f"got {self.slice_size!r}") from None
            validate_slicing(size, size, float(self.overlap))
            object.__setattr__(self, "slice_size", size)
        parse_grid(self.grid)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceParams:
        """Build from a dict (DAG params, JSON), ignoring keys that are not parameters."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if values.get("slice_size") in ("", 0, "model"):
            values["slice_size"] = None  # the model's own input size
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # Added for video: at its default it is left out, so image results and their
        # parameter digests stay exactly what they were.
        if data["video_fps"] == DEFAULT_VIDEO_FPS:
            del data["video_fps"]
        return data

    def model_arguments(self) -> dict[str, Any]:
        """Keyword arguments for ``load_model(self.model, ...)``."""
        return {"score_threshold": self.score_threshold, **self.model_options}

    def digest(self) -> str:
        """A short stable hash of the parameters (catalog key, result idempotency)."""
        data = {k: v for k, v in self.to_dict().items()
                if k not in _OPTIONAL_IN_DIGEST or v}
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
