"""``tilescope`` command line: sliced inference on images in one process.

``tilescope predict IMAGE`` runs the same stage functions the Airflow DAG runs as tasks.
``tilescope predict INPUT...`` (several paths, folders, globs, ``s3://bucket/prefix/``, or
``--out-dir DIR``) runs every image they reach in one process, packed into the work units the
DAG uses, with one progress bar; ``--out-dir`` gets ``<name>.json`` per image, ``coco.json``
(all images) and ``summary.json``. ``tilescope evaluate PRED GT`` scores predictions
against COCO ground truth (:mod:`tilescope.evaluation`); ``tilescope tune IMAGES GT`` searches
slicing and merging settings on labelled images (:mod:`tilescope.tune`).
``predict --catalog URL`` records each result's row in the DAG's SQL catalog and ``--reuse``
writes an image's outputs from a stored result of the same bytes, model and parameters
instead of analysing it again (:class:`CatalogRun`).

Exit statuses: :data:`EXIT_STATUSES` (``tilescope --help`` lists them, so does the README).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import Field, dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from tilescope import __version__
from tilescope.archival import DEFAULT_SSIM, ArchivePolicy, archive_to, format_of
from tilescope.errors import BadImageError, ConfigError, ModelError, TilescopeError
from tilescope.limits import DEFAULT_MAX_FRAMES, RunLimits
from tilescope.models import available_models, load_model
from tilescope.outputs.writers import OutputTargets, write_outputs, write_video_outputs
from tilescope.params import (
    InferenceParams,
    ParamSpec,
    field_default,
    form_fields,
    param_fields,
    parse_slice_size,
)
from tilescope.pipeline import run_image
from tilescope.previews import format_of_path
from tilescope.readers import open_image
from tilescope.readers.base import DEFAULT_MAX_PIXELS
from tilescope.results import Result, merged_coco
from tilescope.sources import is_plain_file
from tilescope.storage import is_s3_uri, write_bytes
from tilescope.tasks.video import video_container

if TYPE_CHECKING:  # SQLAlchemy loads only when --catalog is given
    from tilescope.outputs.reuse import StoredResult

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_MODEL = 0, 1, 2, 3
#: what each exit status means: scripts and schedulers branch on these, so they are part of
#: the interface (``--help`` prints them; tests/test_cli.py pins each one)
EXIT_STATUSES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success (with many inputs: every one of them)"),
    (EXIT_ERROR, "any other tilescope error, e.g. S3 unreachable after its retries"),
    (EXIT_BAD_INPUT, "bad parameters or a bad input (missing, not an image, truncated, "
                     "over --max-pixels; for evaluate: not JSON, not COCO, no image shared "
                     "with the ground truth); with many inputs: any of them bad, the others "
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
        finished = done >= total and (image_total is None or (images or 0) >= image_total)
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


def _options(flag: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings → options, values parsed as JSON when they are JSON."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _flag(item: Field, spec: ParamSpec) -> str:
    return spec.flag or "--" + item.name.replace("_", "-")


def _bounds(schema: Mapping[str, Any]) -> str:
    """``[0, 0.9)``-style interval of a number's schema (``""`` when unbounded)."""
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if lo is None or hi is None:
        return ""
    return (f"{'(' if 'exclusiveMinimum' in schema else '['}{lo:g}, "
            f"{hi:g}{')' if 'exclusiveMaximum' in schema else ']'}")


def param_option_help(item: Field, spec: ParamSpec) -> str:
    """An option's help: the field's doc (or title), its bounds, its default."""
    text = spec.doc or (spec.title or "").lower()
    schema = spec.schema
    default = form_fields()[item.name][0]
    extras = [_bounds(schema)]
    if schema.get("type") == "object":
        extras.append("KEY=VALUE, repeatable")
    elif schema.get("type") != "boolean" and default not in ("", None):
        extras.append(f"default: {default:g}" if isinstance(default, float)
                      else f"default: {default}")
    return "; ".join(part for part in (text, *extras) if part)


def add_param_options(parser: argparse.ArgumentParser,
                      defaults: Mapping[str, Any] | None = None) -> None:
    """One option per :class:`InferenceParams` field (its ``ParamSpec``: flag, type from the
    schema, choices from its ``enum``, default from the field — or from ``defaults``, a
    params file's values as :func:`file_defaults` gives them), dest = the field's name."""
    defaults = defaults or {}
    for item, spec in param_fields():
        if spec.flag is None:
            continue
        kind = spec.schema.get("type")
        common: dict[str, Any] = {"dest": item.name, "help": param_option_help(item, spec)}
        if kind == "boolean":
            parser.add_argument(_flag(item, spec), action="store_true",
                                default=bool(defaults.get(item.name, False)), **common)
        elif kind == "object":
            parser.add_argument(_flag(item, spec), action="append",
                                default=list(defaults.get(item.name, [])),
                                metavar="KEY=VALUE", **common)
        else:
            choices = [c for c in spec.schema.get("enum", ()) if c != ""] or None
            parse = spec.parse or (float if kind == "number" else str)
            parser.add_argument(_flag(item, spec), type=parse, choices=choices,
                                default=defaults.get(item.name, field_default(item)),
                                metavar=spec.metavar, **common)


def file_defaults(params: InferenceParams) -> dict[str, Any]:
    """A params file's parameters as option defaults: the text a flag would take (argparse
    parses a text default as if typed, e.g. ``--slice 640``), options as ``KEY=VALUE``."""
    conf = params.to_conf()
    defaults: dict[str, Any] = {}
    for item, spec in param_fields():
        value = conf[item.name]
        if spec.schema.get("type") == "object":
            value = [f"{key}={json.dumps(option)}" for key, option in value.items()]
        defaults[item.name] = value
    return defaults


def params_from_args(args: argparse.Namespace) -> InferenceParams:
    """The run parameters from :func:`add_param_options`' options (the others default)."""
    values: dict[str, Any] = {}
    for item, spec in param_fields():
        if spec.flag is not None:
            value = getattr(args, item.name)
            values[item.name] = _options(_flag(item, spec), value) \
                if spec.schema.get("type") == "object" else value
    return InferenceParams(**values)


def build_parser(param_defaults: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """The command line; ``param_defaults`` (from ``predict --params FILE``) replace the run
    parameters' defaults, so options given on the command line still win."""
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
    _add_predict_options(predict, param_defaults)

    evaluate = commands.add_parser(
        "evaluate", help="COCO AP, recall and duplicates of predictions against ground truth",
        epilog=exit_status_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("pred", metavar="PRED",
                          help="COCO results JSON, or a tilescope result.json / coco.json "
                               "(path or s3:// URI)")
    evaluate.add_argument("gt", metavar="GT", help="COCO annotations JSON (path or s3:// URI)")
    evaluate.add_argument("--json", metavar="OUT", help="write the figures as JSON here")
    evaluate.add_argument("--plot", metavar="PNG",
                          help="write the precision-recall curves at IoU 0.5 here")

    tune = commands.add_parser(
        "tune", help="search slicing and merging settings on labelled images within a time "
                     "budget; print the speed/accuracy front, write the chosen Params JSON",
        epilog=exit_status_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    tune.add_argument("inputs", nargs="+", metavar="IMAGES",
                      help="labelled images: paths, folders, globs, s3:// URIs or prefixes")
    tune.add_argument("gt", metavar="GT", help="their COCO ground truth (images matched by "
                                               "file name; path or s3:// URI)")
    _add_tune_options(tune)

    commands.add_parser("models", help="list registered models")
    sample = commands.add_parser("sample", help="print the path of a bundled sample photo")
    sample.add_argument("name")
    return parser


def _add_tune_options(tune: argparse.ArgumentParser) -> None:
    """``tune``'s options: the starting parameters (the search tries them first), the
    budget and what is scored, the search space, the outputs."""
    from tilescope.tune import COARSE_SLICE_SIZES, OVERLAPS, THRESHOLDS, TUNE_METRICS

    add_param_options(tune)
    tune.add_argument("--budget", type=float, default=300.0, metavar="SECONDS",
                      help="stop searching after about this long; default: 300")
    tune.add_argument("--metric", choices=TUNE_METRICS, default="AP50",
                      help="the figure maximised; default: AP50")
    tune.add_argument("--slice-sizes", type=_list_of(parse_slice_size), metavar="PX,...",
                      default=COARSE_SLICE_SIZES,
                      help="coarse slice sizes tried first ('model': its input size); "
                           "default: model,256,512,1024")
    tune.add_argument("--overlaps", type=_list_of(float), metavar="R,...", default=OVERLAPS,
                      help="overlaps tried around the best slice size; default: 0.1,0.2,0.3")
    tune.add_argument("--thresholds", type=_list_of(float), metavar="T,...",
                      default=THRESHOLDS,
                      help="match thresholds of the fine merge grid; default: 0.3,0.5,0.7")
    tune.add_argument("--no-full-image-pass", dest="try_full_image", action="store_false",
                      help="do not try the full-image pass")
    tune.add_argument("--params", metavar="OUT",
                      help="write the chosen settings here as Params JSON (for predict "
                           "--params, or a DAG run's conf)")
    tune.add_argument("--json", metavar="OUT", help="write every trial and the front as JSON")
    tune.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                      help="refuse images declaring more pixels (decompression bombs)")
    tune.add_argument("--quiet", action="store_true", help="no progress lines")


def _list_of(parse: Any) -> Any:
    """An option type for comma-separated values."""
    def parse_list(text: str) -> tuple[Any, ...]:
        return tuple(parse(part.strip()) for part in text.split(",") if part.strip())
    return parse_list


def _add_predict_options(predict: argparse.ArgumentParser,
                         param_defaults: Mapping[str, Any] | None = None) -> None:
    """``predict``'s options: the run parameters (and a params file), then limits and
    outputs."""
    predict.add_argument("--params", metavar="FILE",
                         help="Params JSON (e.g. from tilescope tune --params; a DAG run's "
                              "conf): its values replace the defaults, options given here "
                              "still win")
    add_param_options(predict, param_defaults)
    predict.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                         help="refuse images declaring more pixels (decompression bombs)")
    predict.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES,
                         help="refuse videos that would sample more frames")
    predict.add_argument("--out", help="results JSON path (or s3:// URI)")
    predict.add_argument("--coco", help="COCO JSON path (or s3:// URI)")
    predict.add_argument("--geojson", help="a georeferenced image's detections as RFC 7946 "
                                           "GeoJSON in WGS 84 lon/lat (path or s3:// URI)")
    predict.add_argument("--geojson-native", metavar="GEOJSON",
                         help="the same in the scene's own CRS (GeoJSON with a crs member)")
    predict.add_argument("--stac", help="a STAC Item (label extension) for the scene and its "
                                        "detections (path or s3:// URI)")
    predict.add_argument("--overlay", metavar="PATH",
                         help="overlay picture (path or s3:// URI), its format from the "
                              "extension: .webp (compact), .jpg/.jpeg, or .png (lossless); "
                              "for a video, a contact sheet of annotated frames")
    predict.add_argument("--archive", metavar="PATH",
                         help="an archival copy of the image (path or s3:// URI), its format "
                              "from the extension: .webp .avif .jpg .jxl, or .tif (lossless "
                              "zstd, tiled); docs/archive.md")
    predict.add_argument("--archive-quality", type=int, default=0, metavar="Q",
                         help="the archive codec's quality (1-100); 0: the lowest whose "
                              "copy reaches --archive-ssim")
    predict.add_argument("--archive-ssim", type=float, default=DEFAULT_SSIM, metavar="S",
                         help="adaptive quality's target: SSIM against the source")
    predict.add_argument("--archive-max-side", type=int, default=0, metavar="PX",
                         help="downscale the archive so its long side is at most PX "
                              "(0: full size)")
    predict.add_argument("--anonymized", metavar="PATH",
                         help="with --anonymize: the anonymized copy (format from the "
                              ".png/.tif/.jpg/.webp extension; path or s3:// URI); with "
                              "--out-dir it is DIR/<name>.anonymized.<ext>")
    predict.add_argument("--out-dir", metavar="DIR",
                         help="many images: DIR/<name>.json per image, DIR/coco.json, "
                              "DIR/summary.json (path or s3:// prefix)")
    predict.add_argument("--catalog", metavar="URL",
                         help="record each image's result row in this SQL catalog (an "
                              "SQLAlchemy URL: sqlite:///catalog.db, postgresql://user@host/db; "
                              "the DAG's table), pointing at the files written; needs --out "
                              "(one image) or --out-dir")
    predict.add_argument("--reuse", action="store_true",
                         help="with --catalog: an image whose bytes, model weights and "
                              "parameters match a stored complete result is not analysed "
                              "again; its outputs are written from that result and its row "
                              "is recorded as reused")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")


_OPTIONS_BEGIN = "<!-- predict options: generated by tilescope.cli.predict_options_table -->"
_OPTIONS_END = "<!-- end of predict options -->"


def predict_options_table() -> str:
    """docs/cli.md's table of ``tilescope predict``'s options, from the parser itself (the run
    parameters' rows from :class:`InferenceParams`), between two marker comments."""
    predict = argparse.ArgumentParser(add_help=False)
    _add_predict_options(predict)
    rows = [_OPTIONS_BEGIN, "| Option | Value | Meaning |", "|---|---|---|"]
    for action in predict._actions:
        if action.choices:
            value = ", ".join(f"`{c}`" for c in action.choices)
        elif action.nargs == 0:
            value = "switch"
        else:
            value = f"`{action.metavar or action.dest.upper()}`".replace("|", "\\|")
        text = action.help or ""
        if action.default not in (None, [], False) and "default:" not in text:
            text += f"; default: {action.default}"
        rows.append(f"| `{action.option_strings[0]}` | {value} | {text} |")
    return "\n".join([*rows, _OPTIONS_END])


def _archive_policy(args: argparse.Namespace) -> ArchivePolicy | None:
    """``--archive``'s policy (checked before any model runs), or ``None``."""
    if not args.archive:
        return None
    return ArchivePolicy(format=format_of(args.archive), quality=args.archive_quality,
                         ssim=args.archive_ssim, max_side=args.archive_max_side)


@dataclass(frozen=True)
class CatalogRun:
    """``--catalog`` (and ``--reuse``) for one ``predict``: where its rows go, whether stored
    results stand in for the analysis. Rows are built by the functions the DAG's store uses
    (:mod:`tilescope.outputs.reuse`); a local path is recorded absolute, so another working
    directory (or a later run) still finds the file."""

    url: str
    params: InferenceParams
    reuse: bool
    #: ``cli__<UTC time>``: tells the command line's rows from a DAG run's
    run_id: str

    def stored(self, sha256s: Iterable[str]) -> dict[str, tuple[StoredResult, Result]]:
        """sha256 → (stored row, its result read back) for the bytes that have a complete
        result of this model and these parameters whose ``result.json`` is still readable
        (nothing without ``--reuse``)."""
        if not self.reuse:
            return {}
        from tilescope.outputs.reuse import ResultIndex, load_stored

        found = ResultIndex(self.url, self.params, None, local=True).lookup(sha256s)
        loaded = {sha: (stored, load_stored(stored)) for sha, stored in found.items()}
        return {sha: (stored, result) for sha, (stored, result) in loaded.items()
                if result is not None}

    def record(self, computed: Sequence[tuple[Result, Mapping[str, str]]],
               reused: Sequence[tuple[str, StoredResult]] = ()) -> None:
        """The rows of computed results (with the keys of what was written) and of inputs
        that reused a stored result (pointing at it, marked ``reused_from``)."""
        from tilescope.outputs.reuse import record_computed, record_reused

        if computed:
            record_computed(self.url, [
                (replace(result, image=replace(result.image, uri=_located(result.image.uri))),
                 {role: _located(uri) for role, uri in keys.items()})
                for result, keys in computed], self.params, run_id=self.run_id)
        if reused:
            record_reused(self.url, [(_located(uri), stored) for uri, stored in reused],
                          run_id=self.run_id)


def _located(uri: str) -> str:
    """A path as the catalog keeps it (absolute); an ``s3://`` URI as it is."""
    return uri if is_s3_uri(uri) else os.path.abspath(uri)


def _catalog_run(args: argparse.Namespace, params: InferenceParams) -> CatalogRun | None:
    """``--catalog``/``--reuse`` checked (and the catalog opened) before any image is read."""
    if args.reuse and not args.catalog:
        raise ConfigError("--reuse looks stored results up in a catalog: give --catalog URL")
    if not args.catalog:
        return None
    from tilescope.outputs.reuse import check_catalog

    check_catalog(args.catalog)
    return CatalogRun(args.catalog, params, args.reuse,
                      f"cli__{datetime.now(UTC).isoformat(timespec='seconds')}")


def _as_input(result: Result, uri: str) -> Result:
    """A stored result as this input's result: the same bytes, read from ``uri``; the
    archival and anonymized copies made for the stored one are not this run's."""
    return replace(result, image=replace(result.image, uri=uri), archive=None,
                   anonymized=None)


def _written_keys(written: Mapping[str, str], result: Result) -> dict[str, str]:
    """A computed row's ``result_keys``: the files written, and the copies made (as the
    DAG's store lists them)."""
    keys = dict(written)
    if result.archive:
        keys["archive"] = result.archive["uri"]
    if result.anonymized:
        keys["anonymized"] = result.anonymized["uri"]
    return keys


def _predict(args: argparse.Namespace) -> int:
    params = params_from_args(args)
    catalog = _catalog_run(args, params)
    archive = _archive_policy(args)
    if args.overlay:  # a bad extension refused before any model runs
        format_of_path(args.overlay)
    if len(args.inputs) > 1 or args.out_dir or not is_plain_file(args.inputs[0]):
        if archive:
            raise ConfigError("--archive copies one image: give exactly one image file")
        return _predict_many(args, params, catalog)
    if catalog and not args.out:
        raise ConfigError("--catalog records where the result is: give --out PATH (with "
                          "several inputs, --out-dir DIR)")
    args.image = args.inputs[0]
    container = video_container(args.image)  # by signature, not by name
    if container and (args.geojson or args.geojson_native or args.stac):
        raise ConfigError(f"{args.image} is a video: it has no CRS, so no "
                          "--geojson/--geojson-native/--stac")
    if container and params.anonymize:
        raise ConfigError(f"{args.image} is a video: --anonymize works on images")
    if container:
        if archive:
            raise ConfigError(f"{args.image} is a video: --archive copies images")
        return _predict_video(args, params, container, catalog)
    if bool(params.anonymize) != bool(args.anonymized):
        raise ConfigError("--anonymize and --anonymized PATH go together (the classes to "
                          "hide, and where the copy goes)")
    if params.anonymize:  # refused before the model runs
        from tilescope.anonymize import check_anonymize
        from tilescope.outputs.anonymized import extension_of

        check_anonymize(params)
        extension_of(args.anonymized)
    options = params.model_arguments()
    targets = OutputTargets(args.out, args.coco, args.overlay, args.geojson,
                            args.geojson_native, args.stac)
    # Open (and validate) the image before paying for the model; decode it once.
    reader, image = open_image(args.image, max_pixels=args.max_pixels,
                               bands=params.band_list(),
                               magnification=params.slide_magnification())
    if targets.georeferenced and (image.georeference is None
                                  or image.georeference.crs_wkt is None):
        reader.close()
        raise ConfigError(f"{args.image} has no CRS (a plain image: pixel boxes only); "
                          "--geojson/--geojson-native/--stac need a georeferenced image "
                          "such as a GeoTIFF/COG")
    hit = catalog.stored([image.sha256]).get(image.sha256) if catalog else None
    if hit is None:
        reader.validate()
    progress = None if args.quiet or hit else ProgressBar(sys.stderr, "tilescope")
    with reader, (nullcontext() if hit else load_model(args.model, **options)) as model:
        if hit is not None:  # the stored result stands in for the analysis
            result = _as_input(hit[1], args.image)
        else:
            assert model is not None  # loaded whenever nothing is reused
            result = run_image(reader, image, params, model, progress=progress)
        if params.anonymize:
            from tilescope.outputs.anonymized import anonymize_copy

            result.anonymized = anonymize_copy(reader, result, params, args.anonymized,
                                               extension_of(args.anonymized))
        if archive:  # of the anonymized pixels when anonymizing (docs/archive.md)
            from tilescope.anonymize import replayed_reader

            kept = replayed_reader(reader, result.anonymized) if result.anonymized else None
            result.archive = archive_to(kept or reader, args.archive, archive, image.bytes,
                                        kept.regions if kept else ()).to_dict()
        written = write_outputs(result, reader, targets)
    if catalog and hit:
        catalog.record([], [(args.image, hit[0])])
    elif catalog:
        catalog.record([(result, _written_keys(written, result))])
    print(_reused_line(args.image, result, hit[0]) if hit else _image_line(args.image, result))
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


def _predict_video(args: argparse.Namespace, params: InferenceParams, container: str,
                   catalog: CatalogRun | None = None) -> int:
    """``predict`` on a video: sampled frames through the same stages, in this process
    (analysed every time, as in the DAG: ``--reuse`` does not apply; ``--catalog`` records
    its row)."""
    progress = None if args.quiet else ProgressBar(sys.stderr, "tilescope")
    result, cells = _video_result(args.image, args, params, container, progress)
    written = write_video_outputs(result, cells, OutputTargets(args.out, args.coco,
                                                               args.overlay))
    if catalog:
        catalog.record([(result, _written_keys(written, result))])
    print(_video_line(args.image, result))
    return EXIT_OK


def _video_line(uri: str, result: Result) -> str:
    summary = result.summary()
    return (f"{uri}: {summary['detections']} detections ({summary['description']}) in "
            f"{summary['frames']} frames × {result.plan['slices']} slices / "
            f"{result.plan['units']} units, {summary['total_seconds']:.2f}s "
            f"(model {summary['model_seconds']:.2f}s)")


def _reused_line(uri: str, result: Result, stored: StoredResult) -> str:
    summary = result.summary()
    return (f"{uri}: {summary['detections']} detections ({summary['description']}), reused: "
            f"the same bytes, model and parameters as {stored.row['image_uri']} (catalog row "
            f"{stored.row_id}, {stored.keys['result']}); not analysed again")


def _image_line(uri: str, result: Result) -> str:
    summary = result.summary()
    return (f"{uri}: {summary['detections']} detections ({summary['description']}) in "
            f"{result.plan['slices']} slices / {result.plan['regions']} regions, "
            + (f"{summary['skipped_slices']} slices skipped (all nodata), "
               if summary.get("skipped_slices") else "")
            + f"{summary['total_seconds']:.2f}s (model {summary['model_seconds']:.2f}s)")


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}" if is_s3_uri(directory) else \
        os.path.join(directory, *name.split("/"))


def _anonymize_into(out_dir: str, name: str, result: Result, params: InferenceParams,
                    max_pixels: int) -> dict[str, Any]:
    """One image of many: its anonymized copy as ``DIR/<name>.anonymized.<ext>``."""
    from tilescope.outputs.anonymized import anonymize_copy, copy_extension

    reader, _ = open_image(result.image.uri, max_pixels=max_pixels, bands=params.band_list())
    with reader:
        ext = copy_extension(result.image.format, reader.width, reader.height)
        return anonymize_copy(reader, result, params,
                              _join(out_dir, f"{name}.anonymized.{ext}"), ext)


def _predict_many(args: argparse.Namespace, params: InferenceParams,
                  catalog: CatalogRun | None = None) -> int:
    """``predict`` over many inputs (see the module docstring): one line per image, a
    summary line; exit 2 if any input was bad. With ``--reuse``, images that have a stored
    result are written from it and only the others are analysed."""
    from tilescope.outputs.writers import result_json
    from tilescope.predict import predict_many
    from tilescope.sources import expand_named

    if args.out or args.coco or args.overlay or args.geojson or args.geojson_native \
            or args.stac or args.anonymized:
        raise ConfigError("--out/--coco/--overlay/--geojson/--geojson-native/--stac/"
                          "--anonymized take one image; with several inputs, a folder, glob "
                          "or prefix use --out-dir DIR")
    if params.anonymize:
        from tilescope.anonymize import check_anonymize

        if not args.out_dir:
            raise ConfigError("--anonymize with several inputs writes the copies into "
                              "--out-dir DIR")
        check_anonymize(params)
    if catalog and not args.out_dir:
        raise ConfigError("--catalog records where each result is: with several inputs, a "
                          "folder, glob or prefix give --out-dir DIR")
    started = time.perf_counter()
    named = expand_named(args.inputs)
    names = {item.uri: item.name for item in named}
    order = {item.uri: i for i, item in enumerate(named)}
    videos = {item.uri: c for item in named if (c := video_container(item.uri))}
    images = [item.uri for item in named if item.uri not in videos]
    options = params.model_arguments()
    outcomes: dict[str, Result | TilescopeError] = {}
    written: dict[str, dict[str, str]] = {}  # uri → the files written for it
    reused = _stored_for(images, catalog) if catalog else {}
    images = [uri for uri in images if uri not in reused]
    bar = None if args.quiet else ProgressBar(sys.stderr, "tilescope")

    def record(uri: str, outcome: Result | TilescopeError) -> None:
        outcomes[uri] = outcome
        if isinstance(outcome, Result):
            if params.anonymize and outcome.frames is None:
                outcome.anonymized = _anonymize_into(args.out_dir, names[uri], outcome, params,
                                                     args.max_pixels)
            if args.out_dir:
                out = _join(args.out_dir, names[uri] + ".json")
                write_bytes(out, result_json(outcome), "application/json")
                written[uri] = {"result": out}
            line = _reused_line(uri, outcome, reused[uri][0]) if uri in reused else \
                (_video_line if outcome.frames is not None else _image_line)(uri, outcome)
        else:
            line = f"{uri}: error: {outcome}"
        if bar:
            bar.clear()  # the line goes where the bar was; the bar redraws below it
        print(line, flush=True)

    try:
        for uri, (_, stored_result) in reused.items():
            record(uri, _as_input(stored_result, uri))
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
    finally:  # a model failing part-way: the images whose JSON was written get their rows
        if catalog:
            catalog.record([(o, _written_keys(written[uri], o)) for uri, o in outcomes.items()
                            if isinstance(o, Result) and uri not in reused],
                           [(uri, stored) for uri, (stored, _) in reused.items()
                            if uri in outcomes])
    seconds = time.perf_counter() - started
    ordered = sorted(outcomes.items(), key=lambda pair: order[pair[0]])
    ok = [o for _, o in ordered if isinstance(o, Result)]
    failed = len(ordered) - len(ok)
    slices = sum(int(r.plan.get("slices", 0)) * (len(r.frames) if r.frames else 1)
                 for uri, r in ordered if isinstance(r, Result) and uri not in reused)
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
                if uri in reused:  # the catalog row whose result it is
                    entry["reused_from"] = reused[uri][0].row_id
            else:
                entry.update(status="bad", detections=None, counts=None, error=str(outcome))
            per_image.append(entry)
        write_bytes(_join(args.out_dir, "summary.json"),
                    json.dumps({"images": per_image, "totals": totals}, indent=1).encode(),
                    "application/json")
    print(f"{totals['images']} images, {failed} failed, "
          + (f"{len(reused)} reused, " if reused else "")
          + f"{slices} slices, {seconds:.2f}s ({totals['images_per_minute']} images/min)")
    return EXIT_BAD_INPUT if failed else EXIT_OK


def _stored_for(uris: Sequence[str],
                catalog: CatalogRun) -> dict[str, tuple[StoredResult, Result]]:
    """uri → the stored result its bytes reuse (``--reuse``), for those of ``uris`` that
    have one: each hashed (streamed), one catalog lookup for all. An input that cannot be
    read is left to the analysis, which reports it as a bad image."""
    if not catalog.reuse or not uris:
        return {}
    from tilescope.storage import default_s3_client, sha256_hex

    client = default_s3_client() if any(is_s3_uri(uri) for uri in uris) else None
    hashes: dict[str, str] = {}
    for uri in uris:
        try:
            hashes[uri] = sha256_hex(uri, client)
        except BadImageError:
            continue
    found = catalog.stored(hashes.values())
    return {uri: found[sha] for uri, sha in hashes.items() if sha in found}


def _tune(args: argparse.Namespace) -> int:
    """``tune``: progress on stderr, the front on stdout, the chosen Params JSON where
    asked."""
    from tilescope.evaluation import load_json
    from tilescope.sources import expand_inputs
    from tilescope.tune import SearchSpace, params_json, tune

    base = params_from_args(args)
    gt = load_json(args.gt, "ground truth")
    images = [open_image(uri, max_pixels=args.max_pixels, bands=base.band_list(),
                         magnification=base.slide_magnification())
              for uri in expand_inputs(args.inputs)]
    space = SearchSpace(slice_sizes=args.slice_sizes, overlaps=args.overlaps,
                        thresholds=args.thresholds, full_image_pass=args.try_full_image)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        for reader, _ in images:
            reader.validate()
        with load_model(base.model, **base.model_arguments()) as model:
            report = tune(images, gt, model, base, budget=args.budget, metric=args.metric,
                          space=space, log=log)
    finally:
        for reader, _ in images:
            reader.close()
    if args.params:
        write_bytes(args.params, params_json(report.best.params), "application/json")
    if args.json:
        write_bytes(args.json, json.dumps(report.to_dict(), indent=1).encode(),
                    "application/json")
    print(report.table())
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: the table on stdout, the JSON and the plot where asked."""
    from tilescope.evaluation import evaluate, load_json

    evaluation = evaluate(load_json(args.pred, "predictions"),
                          load_json(args.gt, "ground truth"))
    if args.json:
        write_bytes(args.json, json.dumps(evaluation.to_dict(), indent=1).encode(),
                    "application/json")
    if args.plot:
        from tilescope.outputs.pr_plot import pr_curve_png

        write_bytes(args.plot, pr_curve_png(evaluation), "image/png")
    print(evaluation.table())
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict" and args.params:
            from tilescope.params import read_params_file

            # again, with the file's values as the defaults: given options still win
            args = build_parser(file_defaults(read_params_file(args.params))).parse_args(argv)
        if args.command == "models":
            print("\n".join(available_models()))
            return EXIT_OK
        if args.command == "sample":
            from tilescope.samples import sample_path

            print(sample_path(args.name))
            return EXIT_OK
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "tune":
            return _tune(args)
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
