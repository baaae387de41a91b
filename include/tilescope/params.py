"""Run parameters shared by the CLI and the DAG: one typed object, validated in one place."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from tilescope.errors import ConfigError
from tilescope.slicing import parse_grid, validate_slicing

POSTPROCESS_TYPES = ("greedynmm", "nmm", "nms")
MATCH_METRICS = ("ios", "iou")


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

    def __post_init__(self) -> None:
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
        return asdict(self)

    def digest(self) -> str:
        """A short stable hash of the parameters (catalog key, result idempotency)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
