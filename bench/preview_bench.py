"""Preview formats measured (the figures in docs/archive.md#previews-overlays-and-thumbnails).

Usage::

    python bench/preview_bench.py [--repeat 5] [--model centernet-coco]

For every sample photo (:mod:`tilescope.samples`: scikit-image's and Debian darknet's),
the run's real previews: the 2048-px thumbnail and the overlay drawn on it with the model's
own detections, each encoded as PNG (``compress_level`` 1, what was stored before), WebP and
JPEG (:mod:`tilescope.previews`' settings). Printed: bytes of overlay + thumbnail per format
and as a ratio to PNG, per photo and in all.

Then the encode time (best of ``--repeat``) of a 2048² overlay — the kite photo upscaled to
2048², a few hundred boxes drawn — per format, since ``store`` encodes the overlay on every
run; and what staging the scratch thumbnail in the preview format saves against staging it
as PNG and re-encoding it in store.

The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np


def _encode_seconds(picture: Any, fmt: Any, repeat: int) -> tuple[float, int]:
    from tilescope.previews import encode_preview

    best, size = float("inf"), 0
    for _ in range(repeat):
        started = time.perf_counter()
        size = len(encode_preview(picture, fmt))
        best = min(best, time.perf_counter() - started)
    return best, size


def sample_sizes(model_name: str) -> list[dict[str, Any]]:
    """Per sample: source bytes and overlay + thumbnail bytes per format."""
    from tilescope import models, pipeline, readers, samples
    from tilescope.outputs.overlay import draw_overlay
    from tilescope.params import InferenceParams
    from tilescope.previews import PREVIEW_FORMATS, encode_preview, preview_format

    params = InferenceParams(model=model_name)
    rows = []
    with models.load_model(params.model, **params.model_arguments()) as model:
        for name in (*samples.SKIMAGE_SAMPLES, *samples.DARKNET_SAMPLES):
            path = samples.sample_path(name)
            reader, image = readers.open_image(str(path))
            with reader:
                result = pipeline.run_image(reader, image, params, model)
                thumbnail = reader.thumbnail(2048)
            overlay = draw_overlay(thumbnail, result.image.width, result.image.height,
                                   result.detections, result.category_names)
            row: dict[str, Any] = {"sample": name, "source": path.stat().st_size,
                                   "side": max(thumbnail.shape[:2]),
                                   "detections": len(result.detections)}
            for fmt_name in PREVIEW_FORMATS:
                fmt = preview_format(fmt_name)
                row[fmt_name] = (len(encode_preview(overlay, fmt))
                                 + len(encode_preview(thumbnail, fmt)))
            rows.append(row)
    return rows


def encode_times(repeat: int) -> dict[str, dict[str, float]]:
    """A 2048² overlay's encode time and bytes per format, and the scratch thumbnail's
    cost staged as PNG (then re-encoded by store) or in the preview format (kept)."""
    from PIL import Image

    from tilescope import samples
    from tilescope.detections import Detections
    from tilescope.outputs.overlay import draw_overlay
    from tilescope.previews import PREVIEW_FORMATS, preview_format

    with Image.open(samples.sample_path("kite")) as photo:
        picture = np.asarray(photo.convert("RGB").resize((2048, 2048),
                                                         Image.Resampling.LANCZOS))
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 1900, (300, 2))
    boxes = np.hstack([corners, corners + rng.uniform(20, 140, (300, 2))]).astype(np.float32)
    detections = Detections(boxes, rng.uniform(0.3, 1, 300), rng.integers(0, 80, 300))
    overlay = draw_overlay(picture, 2048, 2048, detections, [str(i) for i in range(80)])
    out: dict[str, dict[str, float]] = {}
    for name in PREVIEW_FORMATS:
        seconds, size = _encode_seconds(overlay, preview_format(name), repeat)
        thumb_seconds, thumb_size = _encode_seconds(picture, preview_format(name), repeat)
        out[name] = {"overlay_s": seconds, "overlay_bytes": size,
                     "thumbnail_s": thumb_seconds, "thumbnail_bytes": thumb_size}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default="centernet-coco")
    args = parser.parse_args()

    rows = sample_sizes(args.model)
    print(f"{'sample':16} {'source':>9} {'side':>5} {'png':>9} {'webp':>8} {'jpeg':>8} "
          f"{'png/webp':>8} {'png/jpeg':>8}")
    for row in rows:
        print(f"{row['sample']:16} {row['source']:9,d} {row['side']:5d} {row['png']:9,d} "
              f"{row['webp']:8,d} {row['jpeg']:8,d} {row['png'] / row['webp']:8.1f} "
              f"{row['png'] / row['jpeg']:8.1f}")
    total = {k: sum(r[k] for r in rows) for k in ("source", "png", "webp", "jpeg")}
    print(f"{'all':16} {total['source']:9,d} {'':5} {total['png']:9,d} {total['webp']:8,d} "
          f"{total['jpeg']:8,d} {total['png'] / total['webp']:8.1f} "
          f"{total['png'] / total['jpeg']:8.1f}")

    times = encode_times(args.repeat)
    print("\n2048² encode (best of", args.repeat, "runs)")
    for name, figures in times.items():
        print(f"  {name:5} overlay {figures['overlay_s'] * 1000:6.0f} ms "
              f"{figures['overlay_bytes']:10,d} B   thumbnail "
              f"{figures['thumbnail_s'] * 1000:6.0f} ms {figures['thumbnail_bytes']:10,d} B")
    png, webp = times["png"], times["webp"]
    staged_png = png["thumbnail_s"] + webp["thumbnail_s"]  # staged as PNG, re-encoded in store
    print(f"\nscratch thumbnail at 2048²: staged as PNG then re-encoded "
          f"{staged_png * 1000:.0f} ms and {png['thumbnail_bytes'] * 2:,d} B through S3 "
          f"(written, read back); staged as WebP and kept {webp['thumbnail_s'] * 1000:.0f} ms "
          f"and {webp['thumbnail_bytes'] * 2:,d} B")
    print("RESULT " + json.dumps({"samples": rows, "total": total, "encode_2048": times}))


if __name__ == "__main__":
    main()
