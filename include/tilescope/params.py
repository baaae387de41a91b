"""Run parameters shared by the CLI and the DAG: one typed object, validated in one place.

Each field also says how it is asked for (:class:`ParamSpec` in its metadata): the DAG's
trigger form (:func:`form_fields`, wrapped in Airflow ``Param``s by
:mod:`tilescope.airflow.params`) and the CLI's options (:mod:`tilescope.cli`) are generated
from it, so defaults, choices, bounds and descriptions are written once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any

from tilescope.describe import SYNTHESIS_MODELS
from tilescope.errors import ConfigError
from tilescope.limits import GRID_PATTERN, SLICE_SIZE_PATTERN
from tilescope.previews import DEFAULT_PREVIEW_FORMAT, PREVIEW_FORMATS, preview_format
from tilescope.slicing import parse_grid, validate_slicing

POSTPROCESS_TYPES = ("greedynmm", "nmm", "nms", "softnms", "softnms-linear", "wbf")
#: Soft-NMS's Gaussian sigma by default (the paper's value)
DEFAULT_SOFT_NMS_SIGMA = 0.5
#: frames sampled per second of video by default, and the most a run may ask for
DEFAULT_VIDEO_FPS = 1.0
MAX_VIDEO_FPS = 60.0
MATCH_METRICS = ("ios", "iou")
#: which pairs of boxes merging may join: any ("all"), or only boxes from different slices
#: meeting in those slices' overlap ("seams"; greedynmm, nmm and nms only)
MERGE_SCOPES = ("all", "seams")
SEAM_POSTPROCESS = ("greedynmm", "nmm", "nms")
#: how an anonymized copy hides its boxes (:mod:`tilescope.anonymize`)
ANONYMIZE_MODES = ("blur", "pixelate")
#: ``anonymize`` as typed: class names (or ``face``), comma-separated
ANONYMIZE_PATTERN = r"^$|^[^,]+(,[^,]+)*$"
#: added with anonymization: left out of results (and digests) while ``anonymize`` is empty
_ANONYMIZE_FIELDS = ("anonymize", "anonymize_mode", "anonymize_margin")
#: parameters added after the first release: left out of :meth:`InferenceParams.digest`
#: while unset, so existing results keep their keys
_OPTIONAL_IN_DIGEST = ("model_options", "synthesis_model", "synthesis_options", "bands",
                       "magnification")
#: how results are *stored*, not what they are: never in :meth:`InferenceParams.to_dict`
#: (the result's ``params``) nor its digest, so the same detections keep the same
#: ``results/`` keys (and are reused) whatever preview format a run asks for
_OUTPUT_ONLY = ("preview_format",)
#: the largest objective magnification a run may ask a whole-slide scan's pyramid for
MAX_MAGNIFICATION = 1000.0
#: ``bands`` as typed: one or three 1-based band numbers, e.g. ``4,3,2``
BANDS_PATTERN = r"^$|^[1-9][0-9]{0,3}(,[1-9][0-9]{0,3}){0,2}$"
#: a DAG run's ``conf`` keys that are not run parameters (what the run is about, the gate,
#: the claim, the ground truth): a params file may carry them, the CLI ignores them
RUN_CONF_KEYS = ("image_uri", "images", "manifest", "moderation", "moderation_options",
                 "claim", "ground_truth")
#: option names that smell like credentials: those belong in an Airflow connection
_SECRET_WORDS = ("password", "secret", "token", "api_key", "apikey", "access_key",
                 "credential")


#: :attr:`ParamSpec.form_default` when the form shows the field's own default
_FIELD_DEFAULT: Any = object()


def parse_slice_size(text: str) -> int | str | None:
    """A slice size as typed: pixels, ``auto``, or ``model`` (``None``: the model's size)."""
    if text in ("auto", "model"):
        return None if text == "model" else "auto"
    return int(text)


def _number_in(name: str, value: Any, low: float, high: float, *, low_included: bool = True,
               note: str = "") -> float:
    """``value`` as a float within ``[low, high]`` (``(low, high]`` unless
    ``low_included``); anything else — not a number, NaN, out of range — is a ConfigError
    naming the parameter and its range (``note`` explains the range)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    above_low = low <= number if low_included else low < number
    if not (above_low and number <= high):  # NaN fails both comparisons
        raise ConfigError(f"{name} must be in {'[' if low_included else '('}{low:g}, "
                          f"{high:g}]{note}, got {number:g}")
    return number


@dataclass(frozen=True)
class ParamSpec:
    """How one :class:`InferenceParams` field is asked for, in the DAG's form and on the CLI.

    ``schema`` is the JSON schema the form validates at trigger time (``type``, ``enum``,
    bounds, ``pattern``); the CLI derives its option from it (``boolean`` → a switch,
    ``object`` → a repeatable ``KEY=VALUE`` option, ``enum`` → choices, ``number`` → float).
    """

    #: the form's label (``None``: Airflow shows the field's name)
    title: str | None = None
    #: the form's description and the CLI's help
    doc: str | None = None
    schema: Mapping[str, Any] = field(default_factory=dict)
    #: the form's value standing for the field's default when that is not JSON-typed
    #: (``slice_size=None`` is ``"model"`` in the form)
    form_default: Any = _FIELD_DEFAULT
    #: the CLI option (``None``: not on the CLI, with the reason in ``cli_absent``)
    flag: str | None = ""
    metavar: str | None = None
    #: turns the option's text into the field's value (default: from ``schema``)
    parse: Callable[[str], Any] | None = None
    cli_absent: str = ""


def _spec(**kwargs: Any) -> dict[str, ParamSpec]:
    return {"spec": ParamSpec(**kwargs)}


def _bounded(lo: float, hi: float) -> dict[str, Any]:
    return {"type": "number", "minimum": lo, "maximum": hi}

def is_batch(conf: Any) -> bool:
    """Whether a run's params ask for a batch: ``images`` or a ``manifest`` set (see
    :mod:`tilescope.tasks.batch`); otherwise the run is one ``image_uri``."""
    return bool(conf.get("images") or conf.get("manifest"))


def _check_options(name: str, options: Any) -> dict[str, Any]:
    """A JSON object of backend options, refusing anything that looks like a credential."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ConfigError(f"{name} must be an object of options, got {type(options).__name__}")
    for key in options:
        if any(word in str(key).lower() for word in _SECRET_WORDS):
            raise ConfigError(f"{name}[{key!r}] looks like a credential: put secrets in an "
                              "Airflow connection and pass its conn_id")
    return dict(options)


@dataclass(frozen=True)
class InferenceParams:
    """Everything that changes a result. ``slice_size`` ``None`` = the model's own input size;
    ``"auto"`` = SAHI's ``auto_slice_resolution`` rule."""

    model: str = field(default="centernet-coco", metadata=_spec(
        title="Model", doc="registered model name", schema={"type": "string"}))
    slice_size: int | str | None = field(default=None, metadata=_spec(
        title="Slice size", doc="pixels (32–8192), 'model' (its input size) or 'auto' (SAHI)",
        schema={"type": "string", "pattern": SLICE_SIZE_PATTERN}, form_default="model",
        flag="--slice", metavar="PX|auto|model", parse=parse_slice_size))
    overlap: float = field(default=0.2, metadata=_spec(
        title="Overlap ratio", schema={"type": "number", "minimum": 0, "exclusiveMaximum": 0.9}))
    grid: str = field(default="auto", metadata=_spec(
        title="Region grid", doc="auto or ROWSxCOLS, e.g. 3x4 (each 1–1024; at most [core] "
                                 "max_map_length regions in all)",
        schema={"type": "string", "pattern": GRID_PATTERN}))
    postprocess: str = field(default="greedynmm", metadata=_spec(
        doc="greedynmm/nmm/nms: SAHI's; softnms (Gaussian, --soft-nms-sigma), softnms-linear "
            "(decays above --match-threshold); wbf: weighted boxes fusion (for ensembles, "
            "weaker for one model)",
        schema={"enum": list(POSTPROCESS_TYPES)}))
    match_metric: str = field(default="ios", metadata=_spec(
        schema={"enum": list(MATCH_METRICS)}))
    match_threshold: float = field(default=0.5, metadata=_spec(schema=_bounded(0, 1)))
    merge_scope: str = field(default="all", metadata=_spec(
        title="Merge scope",
        doc="all: merge any matching boxes (SAHI); seams: only boxes from different slices "
            "that meet in those slices' overlap, so overlapping objects inside one slice stay "
            "apart (greedynmm, nmm, nms)",
        schema={"enum": list(MERGE_SCOPES)}))
    soft_nms_sigma: float = field(default=DEFAULT_SOFT_NMS_SIGMA, metadata=_spec(
        title="Soft-NMS sigma", doc="the Gaussian decay's sigma (postprocess softnms only)",
        schema={"type": "number", "exclusiveMinimum": 0, "maximum": 10}))
    class_agnostic: bool = field(default=False, metadata=_spec(
        doc="merge boxes across categories", schema={"type": "boolean"}))
    score_threshold: float = field(default=0.3, metadata=_spec(schema=_bounded(0, 1)))
    full_image_pass: bool = field(default=False, metadata=_spec(
        doc="also run the model on the whole downscaled image", schema={"type": "boolean"}))
    min_success_ratio: float = field(default=1.0, metadata=_spec(
        doc="below it the run fails; above, 'partial'", schema=_bounded(0, 1), flag=None,
        cli_absent="one process has no failed regions to tolerate"))
    #: frames per second sampled from a video (ignored for images)
    video_fps: float = field(default=DEFAULT_VIDEO_FPS, metadata=_spec(
        title="Video frames per second",
        doc="for a video (AVI/MP4/MKV): frames analyzed per second; at most "
            "TILESCOPE_MAX_FRAMES (CLI: --max-frames) in all",
        schema={"type": "number", "exclusiveMinimum": 0, "maximum": MAX_VIDEO_FPS},
        metavar="N"))
    #: keyword options for the tile model (e.g. ``{"conn_id": ..., "model_id": ...}``)
    model_options: dict[str, Any] = field(default_factory=dict, metadata=_spec(
        title="Model options", doc='backend options, e.g. {"conn_id": "aws_default", '
                                   '"model_id": "..."} (README: Model backends); never secrets',
        schema={"type": "object"}, flag="--model-option"))
    #: the model that writes the scene description at synthesis (``None``: deterministic)
    synthesis_model: str | None = field(default=None, metadata=_spec(
        title="Synthesis model", doc="writes the scene description; unset or empty = the "
                                     "deterministic summary",
        schema={"enum": ["", *SYNTHESIS_MODELS]}, form_default=""))
    synthesis_options: dict[str, Any] = field(default_factory=dict, metadata=_spec(
        title="Synthesis model options", schema={"type": "object"},
        flag="--synthesis-option"))

    #: a multi-band scene's bands shown to the model as R, G, B ("": the first three)
    bands: str = field(default="", metadata=_spec(
        title="Bands", doc="a multi-band TIFF/GeoTIFF's 1-based bands shown as R,G,B "
                           "(e.g. 4,3,2; one band: grey); empty = the first three",
        schema={"type": "string", "pattern": BANDS_PATTERN}, metavar="B,G,R"))
    #: a whole-slide scan's pyramid level to analyse, by its magnification (0: level 0)
    magnification: float = field(default=0.0, metadata=_spec(
        title="Magnification", doc="a whole-slide scan (SVS, OME-TIFF): analyse its pyramid "
                                   "level at this objective magnification, e.g. 10 of a 40× "
                                   "scan; boxes stay in full-resolution pixels; 0 = the "
                                   "full resolution",
        schema={"type": "number", "minimum": 0, "maximum": MAX_MAGNIFICATION}, metavar="X"))

    #: classes whose boxes are hidden in an anonymized copy (:mod:`tilescope.anonymize`)
    anonymize: str = field(default="", metadata=_spec(
        title="Anonymize", doc="write an anonymized copy hiding these classes' boxes, "
                               "comma-separated (e.g. person,car); 'face' runs the face "
                               "detector; empty = no copy",
        schema={"type": "string", "pattern": ANONYMIZE_PATTERN}, metavar="CLASS[,CLASS|face]"))
    anonymize_mode: str = field(default="blur", metadata=_spec(
        title="Anonymize mode", doc="how the copy hides each box",
        schema={"enum": list(ANONYMIZE_MODES)}))
    anonymize_margin: float = field(default=0.1, metadata=_spec(
        title="Anonymize margin", doc="added around each box: below 1 a fraction of its "
                                      "side, from 1 pixels",
        schema={"type": "number", "minimum": 0, "maximum": 4096}, metavar="FRACTION|PX"))

    #: the stored overlay's and thumbnail's format (:mod:`tilescope.previews`)
    preview_format: str = field(default=DEFAULT_PREVIEW_FORMAT, metadata=_spec(
        title="Preview format", doc="the stored overlay and thumbnail: webp (compact), jpeg, "
                                    "or png (lossless, ~20x larger); not part of the "
                                    "parameter digest: it changes no detection",
        schema={"enum": list(PREVIEW_FORMATS)}, flag=None,
        cli_absent="the --overlay path's extension chooses (.webp, .jpg/.jpeg, .png)"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_options",
                           _check_options("model_options", self.model_options))
        object.__setattr__(self, "synthesis_options",
                           _check_options("synthesis_options", self.synthesis_options))
        object.__setattr__(self, "synthesis_model", self.synthesis_model or None)
        if self.postprocess not in POSTPROCESS_TYPES:
            raise ConfigError(f"postprocess must be one of {POSTPROCESS_TYPES}, "
                              f"got {self.postprocess!r}")
        if self.merge_scope not in MERGE_SCOPES:
            raise ConfigError(f"merge_scope must be one of {MERGE_SCOPES}, "
                              f"got {self.merge_scope!r}")
        if self.merge_scope == "seams" and self.postprocess not in SEAM_POSTPROCESS:
            raise ConfigError(f"merge_scope 'seams' works with postprocess "
                              f"{'/'.join(SEAM_POSTPROCESS)}, not {self.postprocess!r}")
        if self.merge_scope == "seams" and float(self.match_threshold) <= 0:
            raise ConfigError("merge_scope 'seams' needs match_threshold > 0 (at 0 every "
                              "pair matches, overlapping or not)")
        if self.match_metric not in MATCH_METRICS:
            raise ConfigError(f"match_metric must be one of {MATCH_METRICS}, "
                              f"got {self.match_metric!r}")
        object.__setattr__(self, "soft_nms_sigma", _number_in(
            "soft_nms_sigma", self.soft_nms_sigma, 0.0, 10.0, low_included=False))
        for name in ("match_threshold", "score_threshold", "min_success_ratio"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        object.__setattr__(self, "video_fps", _number_in(
            "video_fps", self.video_fps, 0.0, MAX_VIDEO_FPS, low_included=False))
        object.__setattr__(self, "magnification", _number_in(
            "magnification", self.magnification or 0.0, 0.0, MAX_MAGNIFICATION,
            note=" (0: full resolution)"))
        if not 0.0 <= float(self.overlap) < 0.9:
            raise ConfigError(f"overlap must be in [0, 0.9), got {self.overlap}")
        if self.slice_size == "model":
            object.__setattr__(self, "slice_size", None)
        if self.slice_size not in (None, "auto"):
            try:
                size = int(self.slice_size)
            except (TypeError, ValueError):
                raise ConfigError(f"slice_size must be a number of pixels or 'auto', "
                                  f"got {self.slice_size!r}") from None
            validate_slicing(size, size, float(self.overlap))
            object.__setattr__(self, "slice_size", size)
        parse_grid(self.grid)
        if self.anonymize_mode not in ANONYMIZE_MODES:
            raise ConfigError(f"anonymize_mode must be one of {ANONYMIZE_MODES}, "
                              f"got {self.anonymize_mode!r}")
        object.__setattr__(self, "anonymize_margin", _number_in(
            "anonymize_margin", self.anonymize_margin, 0.0, 4096.0))
        object.__setattr__(self, "anonymize", str(self.anonymize or "").strip())
        object.__setattr__(self, "preview_format", preview_format(self.preview_format).name)
        bands = self.band_list()
        if bands is not None and len(bands) not in (1, 3):
            raise ConfigError(f"bands must be one or three band numbers, got {self.bands!r}")

    def slide_magnification(self) -> float | None:
        """``magnification`` for a reader (``None``: a slide's full resolution)."""
        return float(self.magnification) or None

    def band_list(self) -> list[int] | None:
        """``bands`` as 1-based numbers (``None``: the reader's default, the first three)."""
        text = str(self.bands or "").strip()
        if not text:
            return None
        try:
            numbers = [int(part) for part in text.split(",")]
        except ValueError:
            raise ConfigError(f"bands must be band numbers like 4,3,2, got {text!r}") from None
        if any(n < 1 for n in numbers):
            raise ConfigError(f"bands are numbered from 1, got {text!r}")
        return numbers

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceParams:
        """Build from a dict (DAG params, JSON), ignoring keys that are not parameters."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if values.get("slice_size") in ("", 0, "model"):
            values["slice_size"] = None  # the model's own input size
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The parameters that make the detections (the result's ``params``, the digest's
        input): fields added since the first release left out at their defaults."""
        data = asdict(self)
        for name in _OUTPUT_ONLY:
            del data[name]
        # Added for video: at its default it is left out, so image results and their
        # parameter digests stay exactly what they were.
        if data["video_fps"] == DEFAULT_VIDEO_FPS:
            del data["video_fps"]
        # Added with Soft-NMS: likewise left out at its default.
        if data["soft_nms_sigma"] == DEFAULT_SOFT_NMS_SIGMA:
            del data["soft_nms_sigma"]
        # Added with the seam-aware merge: likewise left out at its default.
        if data["merge_scope"] == "all":
            del data["merge_scope"]
        if not data["anonymize"]:  # likewise: no copy asked for, nothing recorded
            for name in _ANONYMIZE_FIELDS:
                del data[name]
        return data

    def to_conf(self) -> dict[str, Any]:
        """Every parameter as the DAG's trigger form and ``tilescope predict --params FILE``
        take it (JSON): ``slice_size`` as text (``"model"``: the model's own size), an unset
        synthesis model as ``""``. :meth:`from_dict` reads it back to equal parameters."""
        data = asdict(self)
        data["slice_size"] = "model" if self.slice_size is None else str(self.slice_size)
        data["synthesis_model"] = self.synthesis_model or ""
        return data

    def model_arguments(self) -> dict[str, Any]:
        """Keyword arguments for ``load_model(self.model, ...)``."""
        return {"score_threshold": self.score_threshold, **self.model_options}

    def digest(self) -> str:
        """A short stable hash of the parameters (catalog key, result idempotency)."""
        data = {k: v for k, v in self.to_dict().items()
                if k not in _OPTIONAL_IN_DIGEST or v}
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_params_file(uri: str) -> InferenceParams:
    """A Params JSON file (path or ``s3://``; what ``tilescope tune --params`` writes, a
    DAG run's ``conf``): an object of parameters, validated. Keys that are not parameters
    are refused (a typo would otherwise silently keep a default), except the DAG's own
    (``image_uri``, ``images``, ``manifest``, ``moderation``...), so a run's ``conf`` works."""
    from tilescope.storage import read_bytes

    try:
        data = json.loads(read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"params file {uri} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"params file {uri} is not a JSON object of parameters")
    names = {f.name for f in fields(InferenceParams)}
    unknown = sorted(set(data) - names - set(RUN_CONF_KEYS))
    if unknown:
        raise ConfigError(f"params file {uri}: not parameters: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(names))})")
    try:
        return InferenceParams.from_dict(data)
    except TypeError as exc:  # e.g. a value of the wrong kind for a field
        raise ConfigError(f"params file {uri}: {exc}") from None


def param_fields() -> Iterator[tuple[Field, ParamSpec]]:
    """Every :class:`InferenceParams` field with its :class:`ParamSpec`, in order."""
    for item in fields(InferenceParams):
        yield item, item.metadata["spec"]


def field_default(item: Field) -> Any:
    """The field's default value (a fresh one for ``default_factory`` fields)."""
    if item.default is MISSING and callable(item.default_factory):
        return item.default_factory()
    return item.default


def form_fields() -> dict[str, tuple[Any, str | None, dict[str, Any]]]:
    """The DAG's trigger form, without Airflow: name → (default, description, JSON schema
    with ``title``) for every field."""
    form = {}
    for item, spec in param_fields():
        default = field_default(item) if spec.form_default is _FIELD_DEFAULT \
            else spec.form_default
        schema = {**spec.schema, **({"title": spec.title} if spec.title else {})}
        form[item.name] = (default, spec.doc, schema)
    return form
