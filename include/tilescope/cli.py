"""``tilescope`` command line: sliced inference on images in one process.

``tilescope predict IMAGE`` runs the same stage functions the Airflow DAG runs as tasks.
``tilescope predict INPUT...`` (several paths, folders, globs, ``s3://bucket/prefix/``, or
``--out-dir DIR``) runs every image they reach in one process, packed into the work units the
DAG uses, with one progress bar; ``--out-dir`` gets ``<name>.json`` per image, ``coco.json``
(all images) and ``summary.json``.

Exit statuses: :data:`EXIT_STATUSES` (``tilescope --help`` lists them, so does the README).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any, TextIO

from tilescope import __version__
from tilescope.errors import BadImageError, ConfigError, ModelError, TilescopeError
from tilescope.limits import DEFAULT_MAX_FRAMES, RunLimits
from tilescope.models import available_models, load_model
from tilescope.outputs.writers import OutputTargets, write_outputs, write_video_outputs
from tilescope.params import DEFAULT_VIDEO_FPS, MATCH_METRICS, POSTPROCESS_TYPES, InferenceParams
from tilescope.pipeline import run_image
from tilescope.readers import open_image
from tilescope.readers.base import DEFAULT_MAX_PIXELS
from tilescope.results import Result
from tilescope.sources import is_plain_file
from tilescope.storage import is_s3_uri, write_bytes
from tilescope.tasks.video import video_container

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_MODEL = 0, 1, 2, 3
#: what each exit status means: scripts and schedulers branch on these, so they are part of
#: the interface (``--help`` prints them; tests/test_cli.py pins each one)
EXIT_STATUSES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success (with many inputs: every one of them)"),
    (EXIT_ERROR, "any other tilescope error, e.g. S3 unreachable after its retries"),
    (EXIT_BAD_INPUT, "bad parameters or a bad input (missing, not an image, truncated, "
                     "over --max-pixels); with many inputs: any of them bad, the others "
                     "still analyzed and written"),
    (EXIT_MODEL, "model unavailable (weights not obtainable) or failed while running"),
)


def exit_status_help() -> str:
    """The ``--help`` epilog: one wrapped entry per exit status."""
    lines = ["exit status:"]
    for code, meaning in EXIT_STATUSES:
        lines.append(textwrap.fill(meaning, width=78, initial_indent=f"  {code}  ",
                                   subsequent_indent="     "))
    return "\n".join(lines)


class ProgressBar:
    """A one-line progress bar on a terminal stream (plain lines when not a TTY)."""

    def __init__(self, stream: TextIO, label: str, width: int = 30) -> None:
        self._stream, self._label, self._width = stream, label, width
        self._started = time.perf_counter()
        self._tty = stream.isatty()
        self._last_percent = -1
        self._ended = False

    def __call__(self, done: int, total: int, images: int | None = None,
                 image_total: int | None = None) -> None:
        """``done``/``total`` slices; with many inputs also ``images``/``image_total``
        images finished (the bar ends when both are done)."""
        percent = int(100 * done / total) if total else 100
        elapsed = time.perf_counter() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        many = image_total is not None
        finished = done >= total and (not many or (images or 0) >= image_total)
        counted = f", {images}/{image_total} images" if many else ""
        if self._tty:
            filled = int(self._width * percent / 100)
            bar = "█" * filled + "·" * (self._width - filled)
            self._stream.write(f"\r{self._label} {bar} {done}/{total} slices{counted} "
                               f"{rate:5.1f}/s {elapsed:5.1f}s")
            if finished:
                self._stream.write("\n")
        elif (percent // 10 != self._last_percent // 10 or finished) and \
                not (finished and self._ended):
            self._stream.write(f"{self._label}: {done}/{total} slices{counted} ({percent}%)\n")
        self._ended = finished
        self._last_percent = percent
        self._stream.flush()

    def clear(self) -> None:
        """Erase the bar's line (a terminal only), so a line printed now stands alone."""
        if self._tty:
            self._stream.write("\r\x1b[K")
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
    parser = argparse.ArgumentParser(prog="tilescope", description=__doc__.split("\n")[0],
                                     epilog=exit_status_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tilescope {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="sliced inference on images",
                                  epilog=exit_status_help(),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image path or s3://bucket/key; also folders (recursive), "
                              "glob patterns and s3://bucket/prefix/ (many images)")
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
    predict.add_argument("--out-dir", metavar="DIR",
                         help="many images: DIR/<name>.json per image, DIR/coco.json, "
                              "DIR/summary.json (path or s3:// prefix)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")

    commands.add_parser("models", help="list registered models")
    sample = commands.add_parser("sample", help="print the path of a bundled sample photo")
    sample.add_argument("name")
    return parser


def _params(args: argparse.Namespace) -> InferenceParams:
    return InferenceParams(
        model=args.model, slice_size=args.slice, overlap=args.overlap, grid=args.grid,
        postprocess=args.postprocess, match_metric=args.match_metric,
        match_threshold=args.match_threshold, class_agnostic=args.class_agnostic,
        score_threshold=args.score_threshold, full_image_pass=args.full_image_pass,
        model_options=_model_options(args.model_option),
        synthesis_model=args.synthesis_model,
        synthesis_options=_model_options(args.synthesis_option), video_fps=args.video_fps)


def _predict(args: argparse.Namespace) -> int:
    if len(args.inputs) > 1 or args.out_dir or not is_plain_file(args.inputs[0]):
        return _predict_many(args, _params(args))
    args.image = args.inputs[0]
    params = _params(args)
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
    print(_image_line(args.image, result))
    return EXIT_OK


def _video_result(uri: str, args: argparse.Namespace, params: InferenceParams,
                  container: str, progress: Any) -> tuple[Result, list]:
    """A video's sampled frames through the same stages, in this process → (result, the
    contact sheet's chosen cells)."""
    from tilescope.results import ImageInfo
    from tilescope.tasks.video import local_copy
    from tilescope.video.decoder import VideoSource
    from tilescope.video.pipeline import run_video

    limits = RunLimits(max_pixels=args.max_pixels, max_frames=args.max_frames)
    with local_copy(uri, None) as (path, sha256), \
            VideoSource(path, container=container, name=uri) as source:
        image = ImageInfo(uri=uri, width=source.header.width,
                          height=source.header.height, sha256=sha256, format=container,
                          bytes=os.path.getsize(path))
        with load_model(args.model, **params.model_arguments()) as model:
            result, sheet = run_video(source, image, params, model, limits=limits,
                                      progress=progress)
    return result, sheet.chosen()


def _predict_video(args: argparse.Namespace, params: InferenceParams, container: str) -> int:
    """``predict`` on a video: sampled frames through the same stages, in this process."""
    progress = None if args.quiet else ProgressBar(sys.stderr, "tilescope")
    result, cells = _video_result(args.image, args, params, container, progress)
    write_video_outputs(result, cells, OutputTargets(args.out, args.coco, args.overlay))
    print(_video_line(args.image, result))
    return EXIT_OK


def _video_line(uri: str, result: Result) -> str:
    summary = result.summary()
    return (f"{uri}: {summary['detections']} detections ({summary['description']}) in "
            f"{summary['frames']} frames × {result.plan['slices']} slices / "
            f"{result.plan['units']} units, {summary['total_seconds']:.2f}s "
            f"(model {summary['model_seconds']:.2f}s)")


def _image_line(uri: str, result: Result) -> str:
    summary = result.summary()
    return (f"{uri}: {summary['detections']} detections ({summary['description']}) in "
            f"{result.plan['slices']} slices / {result.plan['regions']} regions, "
            f"{summary['total_seconds']:.2f}s (model {summary['model_seconds']:.2f}s)")


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}" if is_s3_uri(directory) else \
        os.path.join(directory, *name.split("/"))


def merged_coco(results: Sequence[Result]) -> dict[str, Any]:
    """One COCO document for many results: image ids 1..N in order (a video's sampled
    frames take one id each), annotation ids 1..M, categories of them all."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    categories: dict[int, dict[str, Any]] = {}
    for result in results:
        doc = result.to_coco(image_id=len(images) + 1)
        images.extend(doc["images"])
        for category in doc["categories"]:
            categories.setdefault(int(category["id"]), category)
        for annotation in doc["annotations"]:
            annotations.append({**annotation, "id": len(annotations) + 1})
    return {"info": {"description": f"tilescope {results[0].model if results else ''} on "
                                    f"{len(images)} images".replace("  ", " ")},
            "images": images, "categories": [categories[k] for k in sorted(categories)],
            "annotations": annotations}


def _predict_many(args: argparse.Namespace, params: InferenceParams) -> int:
    """``predict`` over many inputs (see the module docstring): one line per image, a
    summary line; exit 2 if any input was bad."""
    from tilescope.outputs.writers import result_json
    from tilescope.predict import predict_many
    from tilescope.sources import expand_named

    if args.out or args.coco or args.overlay:
        raise ConfigError("--out/--coco/--overlay take one image; with several inputs, a "
                          "folder, glob or prefix use --out-dir DIR")
    started = time.perf_counter()
    named = expand_named(args.inputs)
    names = {item.uri: item.name for item in named}
    order = {item.uri: i for i, item in enumerate(named)}
    videos = {item.uri: c for item in named if (c := video_container(item.uri))}
    images = [item.uri for item in named if item.uri not in videos]
    options = params.model_arguments()
    outcomes: dict[str, Result | TilescopeError] = {}
    bar = None if args.quiet else ProgressBar(sys.stderr, "tilescope")

    def record(uri: str, outcome: Result | TilescopeError) -> None:
        outcomes[uri] = outcome
        if isinstance(outcome, Result):
            if args.out_dir:
                write_bytes(_join(args.out_dir, names[uri] + ".json"), result_json(outcome),
                            "application/json")
            line = (_video_line if outcome.frames is not None else _image_line)(uri, outcome)
        else:
            line = f"{uri}: error: {outcome}"
        if bar:
            bar.clear()  # the line goes where the bar was; the bar redraws below it
        print(line, flush=True)

    if images:
        with load_model(args.model, **options) as model:
            for uri, outcome in predict_many(images, params, model,
                                             max_pixels=args.max_pixels, progress=bar):
                record(uri, outcome)
    for uri, container in videos.items():  # one by one, as a single video runs
        try:
            result, _ = _video_result(uri, args, params, container, None)
        except (BadImageError, ConfigError) as exc:
            record(uri, exc)
        else:
            record(uri, result)
    seconds = time.perf_counter() - started
    ordered = sorted(outcomes.items(), key=lambda pair: order[pair[0]])
    ok = [o for _, o in ordered if isinstance(o, Result)]
    failed = len(ordered) - len(ok)
    slices = sum(int(r.plan.get("slices", 0)) * (len(r.frames) if r.frames else 1)
                 for r in ok)
    totals = {"images": len(ordered), "failed": failed, "slices": slices,
              "seconds": round(seconds, 3),
              "images_per_minute": round(60 * len(ordered) / seconds, 1) if seconds else None}
    if args.out_dir:
        write_bytes(_join(args.out_dir, "coco.json"), json.dumps(merged_coco(ok)).encode(),
                    "application/json")
        per_image = []
        for uri, outcome in ordered:
            entry: dict[str, Any] = {"name": names[uri], "uri": uri}
            if isinstance(outcome, Result):
                entry.update(status="ok", detections=len(outcome.detections),
                             counts=outcome.counts(), error=None)
            else:
                entry.update(status="bad", detections=None, counts=None, error=str(outcome))
            per_image.append(entry)
        write_bytes(_join(args.out_dir, "summary.json"),
                    json.dumps({"images": per_image, "totals": totals}, indent=1).encode(),
                    "application/json")
    print(f"{totals['images']} images, {failed} failed, {slices} slices, "
          f"{seconds:.2f}s ({totals['images_per_minute']} images/min)")
    return EXIT_BAD_INPUT if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            print("\n".join(available_models()))
            return EXIT_OK
        if args.command == "sample":
            from tilescope.samples import sample_path

            print(sample_path(args.name))
            return EXIT_OK
        return _predict(args)
    except (BadImageError, ConfigError) as exc:
        print(f"tilescope: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ModelError as exc:
        print(f"tilescope: model error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except TilescopeError as exc:
        print(f"tilescope: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
