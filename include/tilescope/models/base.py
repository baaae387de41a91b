"""The one interface every model backend implements (embedded ONNX, Bedrock, HTTP...).

Callers hand a batch of RGB slices and get one :class:`Detections` per slice, in that
slice's own pixel coordinates. Batching is the backend's business: the ONNX backend runs
slices on a thread pool over one shared session, a remote backend may send them in parallel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from tilescope.detections import Detections


class DetectionModel(ABC):
    """A detector: RGB uint8 arrays (H, W, 3) in, detections in slice pixels out."""

    #: registry name, e.g. ``"nanodet-coco"``
    name: str = ""
    #: fixed vocabulary (index = category id), readable without loading the model
    CATEGORY_NAMES: tuple[str, ...] = ()
    #: official COCO ids per category for COCO-trained models (used by the COCO export)
    COCO_CATEGORY_IDS: tuple[int, ...] | None = None
    #: the slice size the model was trained for; used when the caller asks for ``auto``
    preferred_slice_size: int = 640
    #: seconds of one core per slice (sizes work units; see ``tilescope.units``); remote
    #: models set what a call costs their caller; ``None``: the default estimate
    slice_seconds: float | None = None
    #: ``True`` for models that name categories at run time (cloud models answering with
    #: label strings): ``category_names`` then grows as names appear, and each region's
    #: finding carries the names its ids refer to (see ``tilescope.models.vocabulary``)
    open_vocabulary: bool = False

    @property
    def category_names(self) -> Sequence[str]:
        """Category name per category id (index = id)."""
        return self.CATEGORY_NAMES

    @abstractmethod
    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections for each image, boxes in that image's pixel coordinates."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends have nothing to free
        """Free sessions, threads or connections."""

    def __enter__(self) -> DetectionModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
