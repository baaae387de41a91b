"""A corpus of bad and odd inputs, built at test time (no checked-in binaries).

Every case is an object to drop under ``incoming/`` plus the outcome it must have:

* ``processed`` — the image is valid (however odd); it is read in its *displayed* form and
  the bright rectangles drawn into it are found where a viewer sees them (``boxes``, in
  displayed pixels), so "processed" can never mean a silently empty result;
* ``refused`` — a clear error: at the arrivals screen (``screen``: a fragment of the reason)
  and/or in preprocess (``error``: error class name and a fragment of its message). The
  original is kept, in ``quarantine/`` with its reason.

Valid images are dark with bright rectangles so the test detector (``blob_model``) finds
exactly the drawn objects; JPEG blurs their edges by a pixel or two (``tolerance``).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

BRIGHT = 255


@dataclass(frozen=True)
class BadInput:
    """One corpus entry: what to upload, and what must come of it."""

    kind: str
    key: str
    data: bytes
    outcome: str  # "processed" or "refused"
    size: tuple[int, int] | None = None  # displayed (width, height) when processed
    boxes: list[list[int]] = field(default_factory=list)  # expected, displayed xyxy
    screen: str | None = None  # the arrivals screen refuses it with this reason fragment
    error: tuple[str, str] | None = None  # (error class, message fragment) from preprocess
    tolerance: int = 0  # pixels of slack on box edges (lossy formats)
    note: str = ""  # the documented outcome, for the README table


def blobs(width: int, height: int, boxes: list[list[int]]) -> np.ndarray:
    """A dark RGB image with a bright rectangle at each ``[x1, y1, x2, y2]``."""
    pixels = np.full((height, width, 3), 20, np.uint8)
    for x1, y1, x2, y2 in boxes:
        pixels[y1:y2, x1:x2] = BRIGHT
    return pixels


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def declared_bomb(width: int, height: int) -> bytes:
    """A well-formed PNG header declaring ``width × height`` pixels, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def bad_crc_png() -> bytes:
    """A PNG whose image data no longer matches its CRC (one byte flipped in IDAT)."""
    data = bytearray(encode(Image.fromarray(blobs(64, 48, [[8, 8, 24, 24]])), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    return bytes(data)


def exif_rotated_jpeg() -> tuple[bytes, list[int], tuple[int, int]]:
    """A JPEG stored 320×200 with EXIF orientation 6 (displayed rotated 90° clockwise, as a
    phone saves a portrait photo); returns data, the blob's displayed box, displayed size."""
    stored = blobs(320, 200, [[40, 30, 120, 70]])
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif)
    displayed = np.rot90(stored[:, :, 0] > 128, -1)  # orientation 6 = rotate 90° clockwise
    ys, xs = np.nonzero(displayed)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    return data, box, (displayed.shape[1], displayed.shape[0])


def animated_gif() -> bytes:
    """Two frames with the bright rectangle in different places: only frame 1 is analysed."""
    frames = [Image.fromarray(blobs(120, 80, [box]))
              for box in ([10, 10, 40, 30], [70, 40, 110, 70])]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100,
                  loop=0)


def palette_with_transparency() -> bytes:
    """Palette PNG: index 0 dark, 1 bright, 2 fully transparent (composited over white)."""
    image = Image.new("P", (100, 60), 0)
    image.putpalette([20, 20, 20, 255, 255, 255, 0, 0, 0] + [0] * 759)
    image.paste(1, (10, 10, 30, 30))
    image.paste(2, (60, 20, 90, 50))
    return encode(image, "PNG", transparency=2)


def rgba_png() -> bytes:
    """RGBA: an opaque bright rectangle and a *transparent dark* one (white once composited)."""
    pixels = np.dstack([blobs(100, 60, [[10, 10, 30, 30]]), np.full((60, 100), 255, np.uint8)])
    pixels[20:50, 60:90] = (0, 0, 0, 0)
    return encode(Image.fromarray(pixels, "RGBA"), "PNG")


def png(width: int, height: int, boxes: list[list[int]]) -> bytes:
    return encode(Image.fromarray(blobs(width, height, boxes)), "PNG")


def corpus() -> list[BadInput]:
    """Every case (20 kinds), built fresh."""
    jpeg = encode(Image.fromarray(blobs(640, 480, [[100, 100, 200, 180]])), "JPEG", quality=90)
    rotated, rotated_box, rotated_size = exif_rotated_jpeg()
    cmyk = Image.fromarray(blobs(300, 200, [[50, 40, 150, 120]])).convert("CMYK")
    grey16 = (blobs(200, 100, [[20, 20, 80, 60]])[:, :, 0].astype(np.uint16) * 257)
    long_name = "scan-" + "x" * 990 + ".png"  # a 1,004-byte key: near S3's 1,024-byte limit
    not_image = ("text-as-jpg", "incoming/notes.jpg", b"just some notes, not a picture\n")
    html = ("html-as-png", "incoming/downloads/image.png",
            b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
            b"<body><h1>Not Found</h1></body></html>\n")
    return [
        BadInput("zero-bytes", "incoming/empty.jpg", b"", "refused",
                 screen="empty object (0 bytes)", error=("BadImageError", "empty (0 bytes)"),
                 note="refused: empty"),
        BadInput("truncated-jpeg", "incoming/cut.jpg", jpeg[: len(jpeg) // 2], "refused",
                 error=("BadImageError", "truncated or corrupt"),
                 note="refused in preprocess: truncated or corrupt"),
        BadInput("png-bad-crc", "incoming/crc.png", bad_crc_png(), "refused",
                 error=("BadImageError", "truncated or corrupt"),
                 note="refused in preprocess: truncated or corrupt"),
        BadInput("decompression-bomb", "incoming/bomb.png", declared_bomb(100_000, 100_000),
                 "refused", error=("ImageTooLargeError", "over the limit of 500,000,000"),
                 note="refused from the header, before decoding: over the pixel limit"),
        BadInput("one-pixel", "incoming/dot.png", png(1, 1, [[0, 0, 1, 1]]), "processed",
                 size=(1, 1), boxes=[[0, 0, 1, 1]], note="processed (one 1×1 slice)"),
        BadInput("extreme-aspect", "incoming/strip.png",
                 png(100_000, 8, [[70_000, 2, 70_040, 6]]), "processed", size=(100_000, 8),
                 boxes=[[70_000, 2, 70_040, 6]],
                 note="processed (slices clamped to the 8-px height)"),
        BadInput("cmyk-jpeg", "incoming/print.jpg", encode(cmyk, "JPEG", quality=95),
                 "processed", size=(300, 200), boxes=[[50, 40, 150, 120]], tolerance=2,
                 note="processed (CMYK → RGB)"),
        BadInput("png-16-bit", "incoming/deep.png", encode(Image.fromarray(grey16), "PNG"),
                 "processed", size=(200, 100), boxes=[[20, 20, 80, 60]],
                 note="processed (16 → 8 bits, scaled)"),
        BadInput("grayscale", "incoming/grey.png",
                 encode(Image.fromarray(blobs(150, 90, [[30, 20, 70, 50]])).convert("L"),
                        "PNG"),
                 "processed", size=(150, 90), boxes=[[30, 20, 70, 50]],
                 note="processed (grey → RGB)"),
        BadInput("palette-transparency", "incoming/palette.png", palette_with_transparency(),
                 "processed", size=(100, 60), boxes=[[10, 10, 30, 30], [60, 20, 90, 50]],
                 note="processed (transparent pixels composited over white)"),
        BadInput("rgba", "incoming/alpha.png", rgba_png(), "processed", size=(100, 60),
                 boxes=[[10, 10, 30, 30], [60, 20, 90, 50]],
                 note="processed (alpha composited over white)"),
        BadInput("exif-rotated", "incoming/portrait.jpg", rotated, "processed",
                 size=rotated_size, boxes=[rotated_box], tolerance=2,
                 note="processed in the displayed orientation (EXIF applied)"),
        BadInput("animated-gif", "incoming/anim.gif", animated_gif(), "processed",
                 size=(120, 80), boxes=[[10, 10, 40, 30]], note="processed: first frame only"),
        BadInput(*not_image, "refused", screen="not an image",
                 error=("BadImageError", "not an image"),
                 note="refused by signature at the screen (quarantined at once)"),
        BadInput(*html, "refused", screen="not an image",
                 error=("BadImageError", "not an image"),
                 note="refused by signature at the screen (quarantined at once)"),
        BadInput("png-named-jpg", "incoming/really-a-png.jpg", png(90, 60, [[5, 5, 25, 25]]),
                 "processed", size=(90, 60), boxes=[[5, 5, 25, 25]],
                 note="processed (format from the bytes, not the name)"),
        BadInput("key-spaces", "incoming/scans/my scan 01 (final).png",
                 png(80, 60, [[10, 10, 30, 30]]), "processed", size=(80, 60),
                 boxes=[[10, 10, 30, 30]], note="processed; key kept verbatim"),
        BadInput("key-unicode", "incoming/Überweisung – 日本語 ✓.png",
                 png(80, 60, [[40, 20, 70, 50]]), "processed", size=(80, 60),
                 boxes=[[40, 20, 70, 50]], note="processed; key kept verbatim"),
        BadInput("key-dot-dot", "incoming/a/../../escape.png", png(80, 60, [[5, 30, 25, 55]]),
                 "processed", size=(80, 60), boxes=[[5, 30, 25, 55]],
                 note="processed; `..` is a literal key segment, outputs stay under "
                      "their prefixes"),
        BadInput("key-very-long", "incoming/" + long_name, png(80, 60, [[50, 5, 75, 25]]),
                 "processed", size=(80, 60), boxes=[[50, 5, 75, 25]],
                 note="processed; moved keys stay within 1,024 bytes"),
        BadInput("key-very-long-bad", "incoming/bad-" + long_name[:-4] + ".jpg",
                 b"plain text\n", "refused", screen="not an image",
                 error=("BadImageError", "not an image"),
                 note="quarantined; its error record key stays within 1,024 bytes"),
    ]
