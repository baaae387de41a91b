"""Preview pictures — overlays, thumbnails, contact sheets — and the one format they are
stored in: WebP by default, JPEG, or PNG when asked for.

A preview is looked at, never measured: the detections live in ``result.json`` and
``coco.json``, so a lossy picture loses nothing the run computed. PNG made a stored overlay
bigger than the photo it shows (2 MB for the 1.4 MB kite JPEG); WebP at quality 80 makes
overlay + thumbnail 11× smaller over the sample photos (17× on the kite) and, at ``method``
2, encodes a 2048² picture faster than PNG at ``compress_level`` 1 (0.25 s against 0.7 s;
docs/archive.md#previews-overlays-and-thumbnails has the measurements). The format is
chosen per run (the ``preview_format`` parameter; on the CLI the ``--overlay`` path's
extension) and is not part of the parameter digest: it changes no detection.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tilescope.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image as PILImage

#: the preview formats, the default first
PREVIEW_FORMATS = ("webp", "jpeg", "png")
DEFAULT_PREVIEW_FORMAT = "webp"


@dataclass(frozen=True)
class PreviewFormat:
    """How one preview format is written: its file extension, media type and Pillow
    encoder options."""

    name: str
    extension: str
    media_type: str
    pillow: str
    options: dict[str, Any] = field(default_factory=dict)

    def file_name(self, stem: str) -> str:
        """``stem`` with this format's extension (``overlay`` → ``overlay.webp``)."""
        return f"{stem}{self.extension}"


_FORMATS = {
    # method 2: within ~5% of method 4's bytes at ~⅓ of its time (method 4 ≈ PNG level 1's)
    "webp": PreviewFormat("webp", ".webp", "image/webp", "WEBP", {"quality": 80, "method": 2}),
    # 4:4:4 (subsampling 0): a box's thin coloured outline keeps its colour (4:2:0, as
    # WebP always is, pales a 1–3 px line); optimize: Huffman tables fitted, ~1% smaller
    "jpeg": PreviewFormat("jpeg", ".jpg", "image/jpeg", "JPEG",
                          {"quality": 85, "subsampling": 0, "optimize": True}),
    # level 1: a 2048² picture in ~0.3 s instead of ~1.8 s at the default level 6
    "png": PreviewFormat("png", ".png", "image/png", "PNG", {"compress_level": 1}),
}
#: file extension → format name (what ``--overlay PATH`` may end with)
EXTENSIONS = {".webp": "webp", ".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}
#: file extension → media type, for whoever serves stored previews
MEDIA_TYPES = {ext: _FORMATS[name].media_type for ext, name in EXTENSIONS.items()}


def preview_format(name: str | None) -> PreviewFormat:
    """The format called ``name`` (``None`` or empty: the default), or :class:`ConfigError`."""
    key = str(name or DEFAULT_PREVIEW_FORMAT).strip().lower()
    if key not in _FORMATS:
        raise ConfigError(f"preview_format must be one of {', '.join(PREVIEW_FORMATS)}, "
                          f"got {name!r}")
    return _FORMATS[key]


def format_of_path(path: str) -> PreviewFormat:
    """The format a path (or ``s3://`` URI) asks for by its extension, or
    :class:`ConfigError` (``kite.webp`` → WebP, ``kite.jpg`` → JPEG, ``kite.png`` → PNG)."""
    suffix = posixpath.splitext(path.rsplit("/", 1)[-1])[1].lower()
    if suffix not in EXTENSIONS:
        raise ConfigError(f"{path}: a preview is written as "
                          f"{', '.join(EXTENSIONS)} (chosen by the extension)")
    return _FORMATS[EXTENSIONS[suffix]]


def encode_preview(picture: PILImage | np.ndarray, fmt: PreviewFormat) -> bytes:
    """``picture`` (a Pillow image or RGB pixels) encoded as ``fmt``."""
    from PIL import Image

    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    if image.mode != "RGB":
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format=fmt.pillow, **fmt.options)
    return out.getvalue()
