"""``tilescope`` command line: sliced inference on one image in one process.

``tilescope predict IMAGE`` runs the same stage functions the Airflow DAG runs as tasks.
Exit status: 0 success, 2 bad input or bad parameters, 3 model unavailable/failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from tilescope import __version__
from tilescope.errors import BadImageError, ConfigError, ModelError, TilescopeError
from tilescope.limits import DEFAULT_MAX_FRAMES, RunLimits
from tilescope.models import available_models, load_model
from tilescope.params import DEFAULT_VIDEO_FPS, MATCH_METRICS, POSTPROCESS_TYPES, InferenceParams
from tilescope.pipeline import run_image
from tilescope.readers import open_image
from tilescope.readers.base import DEFAULT_MAX_PIXELS
from tilescope.video.steps import video_container
from tilescope.writers import OutputTargets, write_outputs, write_video_outputs


class ProgressBar:
    """A one-line progress bar on a terminal stream (plain lines when not a TTY)."""

    def __init__(self, stream: TextIO, label: str, width: int = 30) -> None:
        self._stream, self._label, self._width = stream, label, width
        self._started = time.perf_counter()
        self._tty = stream.isatty()
        self._last_percent = -1

    def __call__(self, done: int, total: int) -> None:
        percent = int(100 * done / total) if total else 100
        elapsed = time.perf_counter() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        if self._tty:
            filled = int(self._width * percent / 100)
            bar = "█" * filled + "·" * (self._width - filled)
            self._stream.write(f"\r{self._label} {bar} {done}/{total} slices "
                               f"{rate:5.1f}/s {elapsed:5.1f}s")
            if done >= total:
                self._stream.write("\n")
        elif percent // 10 != self._last_percent // 10 or done >= total:
            self._stream.write(f"{self._label}: {done}/{total} slices ({percent}%)\n")
        self._last_percent = percent
        self._stream.flush()


def _model_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings → options, values parsed as JSON when they are JSON."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-option takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _slice_size(text: str) -> int | str | None:
    if text in ("auto", "model"):
        return None if text == "model" else "auto"
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tilescope", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"tilescope {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="sliced inference on one image")
    predict.add_argument("image", help="image path or s3://bucket/key")
    predict.add_argument("--model", default="nanodet-coco", help="registered model name")
    predict.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                         help="backend option, e.g. intra_op_threads=2 (repeatable)")
    predict.add_argument("--slice", type=_slice_size, default=None, metavar="PX|auto|model",
                         help="slice size in pixels; 'model' (default) = the model's input "
                              "size; 'auto' = SAHI's auto_slice_resolution")
    predict.add_argument("--overlap", type=float, default=0.2, help="overlap ratio [0, 0.9)")
    predict.add_argument("--grid", default="auto", help="region grid ROWSxCOLS or auto")
    predict.add_argument("--postprocess", choices=POSTPROCESS_TYPES, default="greedynmm")
    predict.add_argument("--match-metric", choices=MATCH_METRICS, default="ios")
    predict.add_argument("--match-threshold", type=float, default=0.5)
    predict.add_argument("--class-agnostic", action="store_true",
                         help="merge boxes across categories")
    predict.add_argument("--score-threshold", type=float, default=0.3)
    predict.add_argument("--full-image-pass", action="store_true",
                         help="also run the model on the whole downscaled image")
    predict.add_argument("--synthesis-model", default=None, metavar="NAME",
                         help="model writing the scene description, e.g. bedrock-converse "
                              "(default: a deterministic summary)")
    predict.add_argument("--synthesis-option", action="append", default=[],
                         metavar="KEY=VALUE", help="synthesis model option (repeatable)")
    predict.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                         help="refuse images declaring more pixels (decompression bombs)")
    predict.add_argument("--video-fps", type=float, default=DEFAULT_VIDEO_FPS, metavar="N",
                         help="frames analyzed per second of a video (AVI/MP4/MKV input)")
    predict.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES,
                         help="refuse videos that would sample more frames")
    predict.add_argument("--out", help="results JSON path (or s3:// URI)")
    predict.add_argument("--coco", help="COCO JSON path (or s3:// URI)")
    predict.add_argument("--overlay", help="overlay PNG path (or s3:// URI); for a video, "
                                           "a contact sheet of annotated frames")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")

    commands.add_parser("models", help="list registered models")
    sample = commands.add_parser("sample", help="print the path of a bundled sample photo")
    sample.add_argument("name")
    return parser


def _predict(args: argparse.Namespace) -> int:
    params = InferenceParams(
        model=args.model, slice_size=args.slice, overlap=args.overlap, grid=args.grid,
        postprocess=args.postprocess, match_metric=args.match_metric,
        match_threshold=args.match_threshold, class_agnostic=args.class_agnostic,
        score_threshold=args.score_threshold, full_image_pass=args.full_image_pass,
        model_options=_model_options(args.model_option),
        synthesis_model=args.synthesis_model,
        synthesis_options=_model_options(args.synthesis_option), video_fps=args.video_fps)
    container = video_container(args.image)  # by signature, not by name
    if container:
        return _predict_video(args, params, container)
    options = params.model_arguments()
    # Open (and validate) the image before paying for the model; decode it once.
    reader, image = open_image(args.image, max_pixels=args.max_pixels)
    reader.validate()
    progress = None if args.quiet else ProgressBar(sys.stderr, "tilescope")
    with reader, load_model(args.model, **options) as model:
        result = run_image(reader, image, params, model, progress=progress)
        write_outputs(result, reader, OutputTargets(args.out, args.coco, args.overlay))
    summary = result.summary()
    print(f"{args.image}: {summary['detections']} detections ({summary['description']}) in "
          f"{result.plan['slices']} slices / {result.plan['regions']} regions, "
          f"{summary['total_seconds']:.2f}s (model {summary['model_seconds']:.2f}s)")
    return 0


def _predict_video(args: argparse.Namespace, params: InferenceParams, container: str) -> int:
    """``predict`` on a video: sampled frames through the same stages, in this process."""
    from tilescope.results import ImageInfo
    from tilescope.video.decoder import VideoSource
    from tilescope.video.pipeline import run_video
    from tilescope.video.steps import local_copy

    limits = RunLimits(max_pixels=args.max_pixels, max_frames=args.max_frames)
    progress = None if args.quiet else ProgressBar(sys.stderr, "tilescope")
    with local_copy(args.image, None) as (path, sha256), \
            VideoSource(path, container=container, name=args.image) as source:
        image = ImageInfo(uri=args.image, width=source.header.width,
                          height=source.header.height, sha256=sha256, format=container,
                          bytes=os.path.getsize(path))
        with load_model(args.model, **params.model_arguments()) as model:
            result, sheet = run_video(source, image, params, model, limits=limits,
                                      progress=progress)
    write_video_outputs(result, sheet.chosen(), OutputTargets(args.out, args.coco,
                                                              args.overlay))
    summary = result.summary()
    print(f"{args.image}: {summary['detections']} detections ({summary['description']}) in "
          f"{summary['frames']} frames × {result.plan['slices']} slices / "
          f"{result.plan['units']} units, {summary['total_seconds']:.2f}s "
          f"(model {summary['model_seconds']:.2f}s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            print("\n".join(available_models()))
            return 0
        if args.command == "sample":
            from tilescope.samples import sample_path

            print(sample_path(args.name))
            return 0
        return _predict(args)
    except (BadImageError, ConfigError) as exc:
        print(f"tilescope: error: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"tilescope: model error: {exc}", file=sys.stderr)
        return 3
    except TilescopeError as exc:
        print(f"tilescope: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
