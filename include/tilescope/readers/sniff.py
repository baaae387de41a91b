"""Recognize image formats from their first bytes, not from names or Content-Type headers."""

from __future__ import annotations

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)

#: ISO base media brands of still pictures (HEIF/HEIC, AVIF), not videos
_STILL_IMAGE_BRANDS = frozenset((b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1",
                                 b"avif"))

#: bytes needed by :func:`sniff_format`
#: file names read as images (by arrivals and by ``tilescope predict`` on folders and prefixes)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif",
                  ".svs")  # Aperio whole-slide scans are TIFFs by another name
#: file names read as videos (sampled frames)
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")

SNIFF_BYTES = 16


def sniff_format(head: bytes) -> str | None:
    """The image format named by the leading bytes, or ``None`` if it is not one we read."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    return None


def sniff_video(head: bytes) -> str | None:
    """The video container named by the leading bytes (``AVI``, ``MP4`` for the ISO/QuickTime
    family, ``MKV`` for Matroska/WebM), or ``None``. FFmpeg decodes what is inside."""
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[4:8] == b"ftyp" and head[8:12] not in _STILL_IMAGE_BRANDS:
        return "MP4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "MKV"
    return None


def describe_head(head: bytes) -> str:
    """A short printable hint of what the bytes look like, for error messages."""
    text = head[:12]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in text):
        return repr(text.decode("ascii"))
    return text.hex(" ")
