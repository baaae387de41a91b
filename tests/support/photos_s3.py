"""Small inputs for batch and intake tests: random JPEGs, and an S3 client that counts GETs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def tiny_jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(
        out, format="JPEG", quality=80)
    return out.getvalue()


class CountingClient:
    """An S3 client that counts the GETs of each key (everything else passes through)."""

    def __init__(self, client) -> None:
        self._client, self.gets = client, {}

    def get_object(self, **kwargs):
        self.gets[kwargs["Key"]] = self.gets.get(kwargs["Key"], 0) + 1
        return self._client.get_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)
