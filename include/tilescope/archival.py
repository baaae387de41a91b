"""Archival copies of an image: re-encoded to a compact format at the lowest quality that
still looks like the source.

Formats: WebP, AVIF and JPEG through Pillow, JPEG XL through imagecodecs (Pillow 13 has no
JPEG XL plugin), and a lossless zstd-compressed *tiled* TIFF for scenes. The format comes
from a file extension (:func:`format_of`) or is named (``webp``, ``avif``, ``jpeg``, ``jxl``,
``tiff``); :func:`available_formats` says which the installed libraries can write.

**Adaptive quality.** With no fixed quality, :func:`lowest_quality` binary-searches the
codec's quality scale for the lowest setting whose decoded copy has an SSIM (scikit-image's
``structural_similarity``) of at least the target against the source. Binary search assumes
SSIM does not fall as quality rises; for these codecs it holds on photos apart from ripples
far smaller than the gap between two settings, and tests/test_archival.py checks the search
against a brute-force sweep of every setting. If even the highest setting misses the target,
that setting is used and ``target_met`` says so.

**Memory.** The TIFF is written tile by tile from the reader (its tiles read one at a time),
so memory stays flat whatever the image size. WebP, AVIF, JPEG and JPEG XL encoders take the
whole picture at once: the (possibly downscaled, ``max_side``) image is held decoded, about
7 bytes a pixel with its encoded and decoded copies; SSIM itself is computed in row bands
(:func:`ssim`). WebP holds at most 16383 pixels a side.

The SSIM is measured against the source *at the archived size* (a downscaled copy is compared
with the source downscaled the same way): it measures what the codec lost, not the resize.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tilescope.errors import ConfigError
from tilescope.readers.base import ImageReader
from tilescope.slicing import Box

#: archive format → (file extension, media type)
FORMATS: dict[str, tuple[str, str]] = {
    "webp": (".webp", "image/webp"), "avif": (".avif", "image/avif"),
    "jpeg": (".jpg", "image/jpeg"), "jxl": (".jxl", "image/jxl"),
    "tiff": (".tif", "image/tiff")}
_EXTENSIONS = {".webp": "webp", ".avif": "avif", ".jpg": "jpeg", ".jpeg": "jpeg",
               ".jxl": "jxl", ".tif": "tiff", ".tiff": "tiff"}
#: each lossy codec's quality scale (Pillow advises against JPEG above 95)
QUALITY_RANGE: dict[str, tuple[int, int]] = {
    "webp": (1, 100), "avif": (1, 100), "jpeg": (1, 95), "jxl": (1, 100)}
KEEP_POLICIES = ("keep", "replace", "delete")
DEFAULT_SSIM = 0.95
WEBP_MAX_SIDE = 16383
#: rows of one SSIM band (with its 3-row halo on each side)
SSIM_BAND_ROWS = 512
_SSIM_WIN = 7  # scikit-image's default window
ARCHIVE_TILE = 512


def format_of(path: str) -> str:
    """The archive format named by a path's extension (``x.webp`` → ``webp``)."""
    suffix = Path(path.rsplit("/", 1)[-1]).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise ConfigError(f"archive {path!r}: the extension must be one of "
                          f"{', '.join(sorted(_EXTENSIONS))}")
    return _EXTENSIONS[suffix]


def available_formats() -> tuple[str, ...]:
    """The archive formats the installed Pillow (``PIL.features``) and imagecodecs write."""
    from PIL import features

    found = ["jpeg", "tiff"]
    found += [name for name in ("webp", "avif") if features.check(name)]
    try:
        import imagecodecs

        if imagecodecs.JPEGXL.available:
            found.append("jxl")
    except ImportError:  # pragma: no cover - imagecodecs is a dependency
        pass
    return tuple(name for name in FORMATS if name in found)


@dataclass(frozen=True)
class ArchivePolicy:
    """What to keep of an image: an archival copy (``format``, ``""``: none) at a fixed
    ``quality`` or, with ``quality`` 0, the lowest meeting ``ssim``; its long side at most
    ``max_side`` (0: full size); and what becomes of the original (``keep_original``)."""

    format: str = ""
    quality: int = 0
    ssim: float = DEFAULT_SSIM
    max_side: int = 0
    keep_original: str = "keep"

    def __post_init__(self) -> None:
        fmt = (self.format or "").lower().lstrip(".")
        fmt = {"jpg": "jpeg", "tif": "tiff"}.get(fmt, fmt)
        object.__setattr__(self, "format", fmt)
        if fmt and fmt not in FORMATS:
            raise ConfigError(f"archive_format must be one of {', '.join(FORMATS)}, "
                              f"got {self.format!r}")
        if fmt and fmt not in available_formats():
            raise ConfigError(f"archive_format {fmt!r} is not supported by the installed "
                              f"libraries (available: {', '.join(available_formats())})")
        if self.keep_original not in KEEP_POLICIES:
            raise ConfigError(f"keep_original must be one of {KEEP_POLICIES}, "
                              f"got {self.keep_original!r}")
        if self.keep_original != "keep" and not fmt:
            raise ConfigError(f"keep_original={self.keep_original!r} needs an archival copy "
                              "(archive_format) to stand in for the original (with "
                              "anonymize, it is made from the anonymized pixels)")
        if not 0 <= int(self.quality) <= 100:
            raise ConfigError(f"archive_quality must be in [0, 100], got {self.quality}")
        if not 0.0 < float(self.ssim) <= 1.0:
            raise ConfigError(f"archive_ssim must be in (0, 1], got {self.ssim}")
        if int(self.max_side) < 0:
            raise ConfigError(f"archive_max_side must be 0 or more, got {self.max_side}")

    @property
    def active(self) -> bool:
        return bool(self.format)

    @property
    def extension(self) -> str:
        return FORMATS[self.format][0]

    @property
    def media_type(self) -> str:
        return FORMATS[self.format][1]

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ArchivePolicy:
        """From a run's params (``archive_format``, ``archive_quality``, ``archive_ssim``,
        ``archive_max_side``, ``keep_original``; missing ones at their defaults)."""
        return cls(format=str(options.get("archive_format") or ""),
                   quality=int(options.get("archive_quality") or 0),
                   ssim=float(options.get("archive_ssim") or DEFAULT_SSIM),
                   max_side=int(options.get("archive_max_side") or 0),
                   keep_original=str(options.get("keep_original") or "keep"))


def archive_form_fields() -> dict[str, tuple[Any, str, dict[str, Any]]]:
    """The DAG form's archive fields, without Airflow: name → (default, description, JSON
    schema with ``title``). Output options, not run parameters: they change what is kept,
    never the detections, so they stay out of the parameter digest (and the results keys)."""
    return {
        "archive_format": ("", "an archival copy of the image: " + ", ".join(FORMATS)
                           + " (lossless); empty = none",
                           {"title": "Archive format", "enum": ["", *FORMATS]}),
        "archive_quality": (0, "the codec's quality 1–100; 0 = the lowest reaching "
                               "archive_ssim", {"title": "Archive quality", "type": "integer",
                                                "minimum": 0, "maximum": 100}),
        "archive_ssim": (DEFAULT_SSIM, "adaptive quality's target: SSIM against the source",
                         {"title": "Archive SSIM target", "type": "number",
                          "exclusiveMinimum": 0, "maximum": 1}),
        "archive_max_side": (0, "downscale the copy so its long side is at most this "
                                "(0 = full size)", {"title": "Archive max side",
                                                    "type": "integer", "minimum": 0}),
        "keep_original": ("keep", "keep: in processed/ (as always); replace: by the archival "
                                  "copy; delete: once the copy is stored and read back",
                          {"title": "Keep original", "enum": list(KEEP_POLICIES)}),
    }


@dataclass(frozen=True)
class ArchiveOutcome:
    """What an archival copy came to: the result JSON's ``archive`` and the catalog's
    archive columns."""

    format: str
    width: int
    height: int
    bytes: int
    original_bytes: int
    #: the codec setting used (``None``: lossless TIFF)
    quality: int | None
    #: SSIM of the decoded copy against the source at the archived size
    ssim: float
    target_ssim: float | None
    target_met: bool
    uri: str = ""
    keep_original: str = "keep"

    @property
    def bytes_saved(self) -> int:
        return self.original_bytes - self.bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_saved": self.bytes_saved, "ssim": round(self.ssim, 5)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchiveOutcome:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def encode(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    """RGB pixels in ``fmt`` at ``quality`` (lossy formats)."""
    if fmt == "jxl":
        import imagecodecs

        return bytes(imagecodecs.jpegxl_encode(pixels, level=quality, effort=3))
    from PIL import Image

    out = io.BytesIO()
    options: dict[str, Any] = {"quality": quality}
    if fmt == "avif":
        options["speed"] = 8  # the default (6) took ~3× longer for ~2 % fewer bytes
    elif fmt == "webp":
        options["method"] = 4
    Image.fromarray(pixels).save(out, format=fmt.upper(), **options)
    return out.getvalue()


def decode(data: bytes, fmt: str) -> np.ndarray:
    """An archival copy's RGB pixels (raises on a damaged copy)."""
    if fmt == "jxl":
        import imagecodecs

        return np.asarray(imagecodecs.jpegxl_decode(data))
    if fmt == "tiff":
        import tifffile

        return np.asarray(tifffile.imread(io.BytesIO(data)))
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return np.asarray(image.convert("RGB"))


def ssim(source: np.ndarray, copy: np.ndarray, band_rows: int = SSIM_BAND_ROWS,
         unscored: Sequence[Box] = ()) -> float:
    """Mean SSIM of two RGB images (scikit-image, 7×7 window, per channel), computed in
    bands of ``band_rows`` rows with a 3-row halo so memory stays bounded: equal to one
    ``structural_similarity`` call over the whole image (whose mean also leaves out the
    3-pixel border). Pixels inside ``unscored`` boxes (anonymized regions: no detail left to
    keep) are left out of the mean — 1.0 when nothing is left."""
    from skimage.metrics import structural_similarity

    if source.shape != copy.shape:
        raise ValueError(f"SSIM of different shapes {source.shape} and {copy.shape}")
    height, width = source.shape[:2]
    pad = (_SSIM_WIN - 1) // 2
    if height <= 2 * pad or width <= 2 * pad:
        return 1.0 if np.array_equal(source, copy) else 0.0
    total, count = 0.0, 0
    for y0 in range(0, height, band_rows):
        y1 = min(height, y0 + band_rows)
        s0, s1 = max(0, y0 - pad), min(height, y1 + pad)
        _, full = structural_similarity(source[s0:s1], copy[s0:s1], channel_axis=2,
                                        data_range=255, full=True)
        keep0, keep1 = max(y0, pad), min(y1, height - pad)
        if keep1 <= keep0:
            continue
        rows = full[keep0 - s0:keep1 - s0, pad:width - pad]
        scored = _scored_mask(unscored, keep0, keep1, pad, width - pad)
        total += float(rows[scored].sum(dtype=np.float64))
        count += int(scored.sum()) * rows.shape[2]  # SSIM per channel
    return total / count if count else 1.0


def _scored_mask(unscored: Sequence[Box], y1: int, y2: int, x1: int, x2: int) -> np.ndarray:
    """True for the pixels of rows ``y1:y2``, columns ``x1:x2`` outside every box."""
    mask = np.ones((y2 - y1, x2 - x1), bool)
    for box in unscored:
        mask[max(0, box.y1 - y1):max(0, box.y2 - y1), max(0, box.x1 - x1):max(0, box.x2 - x1)] \
            = False
    return mask


def lowest_quality(pixels: np.ndarray, fmt: str, target: float,
                   measure: Callable[[np.ndarray, np.ndarray], float] = ssim
                   ) -> tuple[int, bytes, float, bool]:
    """Binary search for the lowest quality whose copy reaches SSIM ``target`` →
    ``(quality, encoded, ssim, target_met)``; assumes SSIM does not fall as quality rises
    (module docstring). About log2(100) ≈ 7 encodes."""
    lo, hi = QUALITY_RANGE[fmt]
    tried: dict[int, tuple[bytes, float]] = {}

    def attempt(quality: int) -> tuple[bytes, float]:
        if quality not in tried:
            data = encode(pixels, fmt, quality)
            tried[quality] = (data, measure(pixels, decode(data, fmt)))
        return tried[quality]

    if attempt(hi)[1] < target:
        data, reached = attempt(hi)
        return hi, data, reached, False
    while lo < hi:  # invariant: hi meets the target
        mid = (lo + hi) // 2
        if attempt(mid)[1] >= target:
            hi = mid
        else:
            lo = mid + 1
    data, reached = attempt(hi)
    return hi, data, reached, True


def archived_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) of the archival copy: the long side at most ``max_side`` (0: as is)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def archive_pixels(pixels: np.ndarray, policy: ArchivePolicy, original_bytes: int,
                   unscored: Sequence[Box] = ()) -> tuple[bytes, ArchiveOutcome]:
    """Encode in-memory RGB pixels as ``policy`` asks → (encoded bytes, outcome); SSIM is
    measured outside ``unscored`` (anonymized regions: their blur compresses almost
    losslessly and would lift a whole-image SSIM over what the rest of the image keeps)."""
    height, width = pixels.shape[:2]
    if policy.format == "webp" and max(width, height) > WEBP_MAX_SIDE:
        raise ConfigError(f"WebP holds at most {WEBP_MAX_SIDE} pixels a side, the image is "
                          f"{width}×{height}: set archive_max_side or archive as tiff")
    if policy.format == "tiff":
        data = tiff_bytes(pixels)
        quality, reached, met = None, 1.0, True
        target: float | None = None
    elif policy.quality:
        quality = max(QUALITY_RANGE[policy.format][0],
                      min(int(policy.quality), QUALITY_RANGE[policy.format][1]))
        data = encode(pixels, policy.format, quality)
        reached = ssim(pixels, decode(data, policy.format), unscored=unscored)
        met, target = True, None
    else:
        target = float(policy.ssim)
        quality, data, reached, met = lowest_quality(
            pixels, policy.format, target,
            lambda source, copy: ssim(source, copy, unscored=unscored))
    return data, ArchiveOutcome(format=policy.format, width=width, height=height,
                                bytes=len(data), original_bytes=original_bytes,
                                quality=quality, ssim=reached, target_ssim=target,
                                target_met=met, keep_original=policy.keep_original)


def tiff_bytes(pixels: np.ndarray) -> bytes:
    """In-memory pixels as a lossless zstd tiled TIFF (a downscaled copy)."""
    out = io.BytesIO()
    _write_tiff(out, pixels, pixels.shape[1], pixels.shape[0])
    return out.getvalue()


def _write_tiff(target: Any, data: Any, width: int, height: int) -> None:
    import tifffile

    from tilescope.layout import scratch_tile_shape

    # Horizontal differencing before zstd: ~15 % smaller photos than zstd alone (measured).
    tifffile.imwrite(target, data, shape=(height, width, 3), dtype=np.uint8,
                     tile=scratch_tile_shape(width, height), photometric="rgb",
                     predictor=True, compression="zstd", compressionargs={"level": 9},
                     maxworkers=1)


def archive_reader(reader: ImageReader, policy: ArchivePolicy, path: str,
                   original_bytes: int, unscored: Sequence[Box] = ()) -> ArchiveOutcome:
    """Write ``reader``'s image to the local file ``path`` as ``policy`` asks (SSIM measured
    outside the ``unscored`` boxes, in the reader's coordinates).

    A full-size TIFF is streamed from the reader tile by tile (memory flat); any other copy
    is made from the image held whole (downscaled first when ``max_side`` asks, from the
    reader's tile-wise thumbnail)."""
    width, height = archived_size(reader.width, reader.height, policy.max_side)
    if policy.format == "tiff" and (width, height) == (reader.width, reader.height):
        from tilescope.layout import scratch_tile_shape, tiles

        _write_tiff(path, tiles(reader, *scratch_tile_shape(width, height)), width, height)
        return ArchiveOutcome(format="tiff", width=width, height=height,
                              bytes=os.path.getsize(path), original_bytes=original_bytes,
                              quality=None, ssim=1.0, target_ssim=None, target_met=True,
                              keep_original=policy.keep_original)
    if (width, height) == (reader.width, reader.height):
        pixels = reader.read(Box(0, 0, reader.width, reader.height))
    else:
        pixels = reader.thumbnail(max(width, height))
    data, outcome = archive_pixels(np.ascontiguousarray(pixels), policy, original_bytes,
                                   scaled_boxes(unscored, width / reader.width,
                                                height / reader.height))
    Path(path).write_bytes(data)
    return outcome



def scaled_boxes(boxes: Sequence[Box], sx: float, sy: float) -> list[Box]:
    """``boxes`` at a downscaled size, grown outward to whole pixels."""
    import math

    return [Box(math.floor(b.x1 * sx), math.floor(b.y1 * sy), math.ceil(b.x2 * sx),
                math.ceil(b.y2 * sy)) for b in boxes]


def archive_to(reader: ImageReader, target: str, policy: ArchivePolicy,
               original_bytes: int, unscored: Sequence[Box] = ()) -> ArchiveOutcome:
    """:func:`archive_reader` to a local path or an ``s3://`` URI (staged in a temporary
    file, uploaded with a managed transfer) → the outcome with ``uri`` set."""
    import tempfile

    from tilescope.settings import TMP
    from tilescope.storage import default_s3_client, is_s3_uri, parse_s3_uri

    if not is_s3_uri(target):
        outcome = archive_reader(reader, policy, target, original_bytes, unscored)
        return ArchiveOutcome.from_dict({**outcome.to_dict(), "uri": target})
    with tempfile.TemporaryDirectory(dir=TMP.get()) as folder:
        path = os.path.join(folder, f"archive{policy.extension}")
        outcome = archive_reader(reader, policy, path, original_bytes, unscored)
        loc = parse_s3_uri(target)
        default_s3_client().upload_file(path, loc.bucket, loc.key,
                                        ExtraArgs={"ContentType": policy.media_type})
    return ArchiveOutcome.from_dict({**outcome.to_dict(), "uri": target})
