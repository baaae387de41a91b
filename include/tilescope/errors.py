"""One exception hierarchy, so callers (CLI, Airflow tasks) can map errors to an outcome.

``retryable`` tells a task whether another attempt may succeed (throttling, a server that
went away) or whether failing fast is right (bad input, bad configuration).
"""

from __future__ import annotations


class TilescopeError(Exception):
    """Base of every error tilescope raises on purpose."""

    retryable: bool = False


class ConfigError(TilescopeError):
    """A parameter or setting is invalid (slice size, thresholds, unknown model name...)."""


class HandoffError(TilescopeError):
    """An XCom hand-off is not of the shape its task expects (a missing or an unknown key):
    a bug or mismatched releases, which no retry mends."""


class BadImageError(TilescopeError):
    """The input is not a usable image: missing, empty, not an image, truncated, corrupt."""


class ImageTooLargeError(BadImageError):
    """The image declares more pixels than the configured limit (decompression-bomb guard)."""


class ImageBlockedError(BadImageError):
    """The moderation gate refused the image (or could not decide, failing closed)."""

    def __init__(self, message: str, verdict: dict | None = None,
                 image: dict | None = None) -> None:
        super().__init__(message)
        #: the moderation verdict (``tilescope.moderation.Verdict.to_dict()``)
        self.verdict = verdict or {}
        #: the image's ``ImageInfo.to_dict()``, so the refusal can be recorded as a result
        self.image = image or {}


class ModelError(TilescopeError):
    """A model failed to run; another attempt may succeed (a crashed or overloaded backend)."""

    retryable = True


class ModelUnavailableError(ModelError):
    """Model weights could not be obtained (cache empty and the package registry unreachable)."""

    retryable = False


class BadModelError(ModelError):
    """A model file is not a usable detector (corrupt, not ONNX, an unknown output layout,
    no class names): no retry can mend the file."""

    retryable = False


class ModelThrottledError(ModelError):
    """A remote model refused for load reasons (throttling, 5xx, timeout); worth retrying."""

    retryable = True


class ModelOutputError(ModelError):
    """A model answered, but its output could not be understood."""


class ModelRequestError(ModelError):
    """A remote model refused the request itself (invalid input, 4xx, access denied, unknown
    endpoint): the same request would be refused again, so it fails fast."""

    retryable = False


class StorageError(TilescopeError):
    """Reading or writing an object store failed for a reason other than the image itself."""

    retryable = True


class RegionsFailedError(TilescopeError):
    """Too many regions failed for the run's ``min_success_ratio``."""
