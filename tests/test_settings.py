"""One source of settings: every ``TILESCOPE_*`` variable the code reads is declared in
:mod:`tilescope.settings`, read through it (no stray ``os.environ`` reads), typed and checked
at call time, and documented by the table generated from it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tilescope import settings
from tilescope.errors import ConfigError
from tilescope.intake.flow import IntakePolicy
from tilescope.settings import SETTINGS, Setting

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*sorted((ROOT / "include" / "tilescope").rglob("*.py")),
           *sorted((ROOT / "dags").glob("*.py")), *sorted((ROOT / "plugins").rglob("*.py"))]
#: variables docker compose reads (``${TILESCOPE_…}`` in docker-compose.yaml), not tilescope;
#: the stack writes the S3 keys into compose.env for it
COMPOSE_ONLY = {"TILESCOPE_WORKERS", "TILESCOPE_WORKER_CONCURRENCY", "TILESCOPE_S3_ACCESS_KEY",
                "TILESCOPE_S3_SECRET_KEY"}
_NAME = re.compile(r"\bTILESCOPE_[A-Z0-9_]*[A-Z0-9]\b")
_RAW_READ = re.compile(r"os\.(environ|getenv)\b[^\n]*TILESCOPE_|os\.environ\.get\([A-Z_]*ENV")


def test_names_are_unique_and_prefixed():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert all(n.startswith("TILESCOPE_") for n in names)
    assert all(s.doc and s.used_by for s in SETTINGS)


def test_every_variable_the_code_names_is_declared():
    """A new ``TILESCOPE_*`` name in the code must get its declaration (and so its docs row)."""
    declared = {s.name for s in SETTINGS}
    named = {}
    for path in SOURCES:
        for name in _NAME.findall(path.read_text(encoding="utf-8")):
            named.setdefault(name, path.relative_to(ROOT))
    unknown = {n: str(p) for n, p in named.items() if n not in declared | COMPOSE_ONLY}
    assert not unknown, f"declare these in include/tilescope/settings.py: {unknown}"


def test_no_module_reads_our_variables_around_the_settings_module():
    stray = [f"{path.relative_to(ROOT)}:{i}" for path in SOURCES
             if path.name != "settings.py" or path.parent.name != "tilescope"
             for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if _RAW_READ.search(line)]
    assert not stray, f"read these through tilescope.settings: {stray}"


def test_values_are_typed_read_at_call_time_and_blank_is_unset(monkeypatch):
    assert settings.MAX_ACTIVE_TASKS.get({}) == 64
    monkeypatch.setenv("TILESCOPE_MAX_ACTIVE_TASKS", "1_000")
    assert settings.MAX_ACTIVE_TASKS.get() == 1000
    monkeypatch.setenv("TILESCOPE_MAX_ACTIVE_TASKS", "  ")
    assert settings.MAX_ACTIVE_TASKS.get() == 64
    assert settings.ARRIVAL_SUFFIXES.get({"TILESCOPE_IMAGE_SUFFIXES": ".jpg,.png"}) == \
        (".jpg", ".png")
    assert settings.UNIT_SECONDS.get({"TILESCOPE_UNIT_SECONDS": "0.5"}) == 0.5
    assert settings.SQS_QUEUE_URL.get({}) is None


@pytest.mark.parametrize(("setting", "text", "message"), [
    (settings.MAX_SLICES, "lots", "TILESCOPE_MAX_SLICES must be a whole number"),
    (settings.MAX_PIXELS, "0", "TILESCOPE_MAX_PIXELS must be at least 1"),
    (settings.UNIT_SECONDS, "0", "TILESCOPE_UNIT_SECONDS must be above 0"),
    (settings.UNIT_SECONDS, "nan", "TILESCOPE_UNIT_SECONDS must be a number"),
    (settings.REGION_RETRIES, "-1", "TILESCOPE_REGION_RETRIES must be at least 0"),
])
def test_a_bad_value_names_the_variable(setting: Setting, text: str, message: str):
    with pytest.raises(ConfigError, match=message):
        setting.get({setting.name: text})


def test_both_arrival_dags_take_one_policy_from_the_same_settings():
    env = {"TILESCOPE_INCOMING_PREFIX": "in/", "TILESCOPE_IMAGE_SUFFIXES": ".jpg",
           "TILESCOPE_ARRIVALS_PER_TICK": "7", "TILESCOPE_EVENTS_PER_RUN": "9",
           "TILESCOPE_ARRIVALS_MAX_ATTEMPTS": "2", "TILESCOPE_ARRIVALS_RETRY_AFTER_SECONDS": "1",
           "TILESCOPE_ARRIVALS_IMAGES_PER_RUN": "5", "TILESCOPE_ARRIVALS_SLICES_PER_RUN": "50"}
    polled = IntakePolicy.from_settings(settings.ARRIVALS_PER_TICK, env)
    notified = IntakePolicy.from_settings(settings.EVENTS_PER_RUN, env)
    assert polled == IntakePolicy(prefix="in/", suffixes=(".jpg",), per_tick_limit=7,
                                  max_attempts=2, retry_after_seconds=1.0, images_per_run=5,
                                  slices_per_run=50)
    assert notified == IntakePolicy(**{**polled.__dict__, "per_tick_limit": 9})
    assert IntakePolicy.from_settings(environ={}) == IntakePolicy()


def test_the_docs_table_is_the_generated_one():
    page = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert settings.table_in(page) == settings.markdown_table(), (
        "docs/settings.md is stale: paste `python -m tilescope.settings --markdown` into it")


def test_the_docs_table_lists_every_setting_with_its_default():
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2].strip()
            for line in settings.markdown_table().splitlines() if line.startswith("| `")}
    assert list(rows) == [s.name for s in SETTINGS]
    assert rows["TILESCOPE_MAX_SLICES"] == "`100,000`"
    assert rows["TILESCOPE_ARRIVALS_SCHEDULE"] == "`* * * * *`"


def test_the_command_prints_the_table(capsys):
    assert settings.main(["--markdown"]) == 0
    assert capsys.readouterr().out.strip() == settings.markdown_table()


def test_the_module_imports_nothing_heavy():
    """The stack's CLI and every DAG file import it: no numpy, Pillow or boto3 on the way
    (seen red with `import numpy` added to it)."""
    code = ("import sys, tilescope.settings; "
            "print(sorted({'numpy', 'PIL', 'boto3', 'airflow'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "include")}, check=True)
    assert out.stdout.strip() == "[]"
