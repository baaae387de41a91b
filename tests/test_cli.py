"""`tilescope predict` as a user runs it: real model, real photos, clear one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from support.blob_model import BrightBlobModel, blob_image

from tilescope.cli import EXIT_STATUSES, main
from tilescope.errors import ModelOutputError, ModelUnavailableError
from tilescope.models import register_model

ROOT = Path(__file__).resolve().parents[1]


class CrashingModel(BrightBlobModel):
    """A model whose backend fails while running (its output cannot be understood)."""

    name = "crashing-blobs"

    def predict(self, images):
        raise ModelOutputError("the backend answered garbage")


def unavailable_model(**options: object) -> BrightBlobModel:
    """A model factory whose weights cannot be obtained (cache empty, registry unreachable)."""
    raise ModelUnavailableError("weights not cached and the registry is unreachable")


register_model("bright-blobs", BrightBlobModel)
register_model("crashing-blobs", CrashingModel)
register_model("unavailable-blobs", unavailable_model)


@pytest.fixture
def blobs_png(tmp_path: Path) -> Path:
    """A small image of bright blobs the test models read in a blink."""
    pixels, _ = blob_image(300, 200, 5, seed=7)
    path = tmp_path / "blobs.png"
    Image.fromarray(pixels).save(path)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tilescope.cli", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize(("name", "data", "message"), [
    ("empty.jpg", b"", "empty (0 bytes)"),
    ("notes.jpg", b"just some text, not a picture\n", "not an image"),
    ("error.png", b"<html><body>404 Not Found</body></html>", "not an image"),
])
def test_bad_input_exits_2_with_one_line_reason(tmp_path: Path, capsys, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    assert main(["predict", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tilescope: error:") and message in err and "\n" not in err


def test_missing_file_and_bad_params(tmp_path: Path, capsys):
    assert main(["predict", str(tmp_path / "nope.jpg")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope.jpg"), "--overlap", "0.95"]) == 2
    assert "overlap" in capsys.readouterr().err


def test_unparseable_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exited:  # argparse's own refusal: same status
        main(["predict", "x.jpg", "--overlap", "a lot"])
    assert exited.value.code == 2
    assert "--overlap" in capsys.readouterr().err


def test_success_exits_0(blobs_png: Path, tmp_path: Path, capsys):
    out = tmp_path / "r.json"
    assert main(["predict", str(blobs_png), "--model", "bright-blobs", "--slice", "256",
                 "--out", str(out), "--quiet"]) == 0
    assert len(json.loads(out.read_text())["detections"]) == 5
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("model", "message"), [
    ("unavailable-blobs", "weights not cached"),
    ("crashing-blobs", "the backend answered garbage"),
])
def test_model_unavailable_or_failing_exits_3(blobs_png: Path, capsys, model, message):
    assert main(["predict", str(blobs_png), "--model", model, "--quiet"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("tilescope: model error:") and message in err


def test_other_tilescope_error_exits_1(blobs_png: Path, s3_client, capsys):
    """The run succeeded but its results could not be written (no such bucket): a storage
    error, neither the input's fault nor the model's."""
    assert main(["predict", str(blobs_png), "--model", "bright-blobs", "--quiet",
                 "--out", "s3://no-such-bucket/r.json"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tilescope: error: writing s3://no-such-bucket/r.json failed")


def test_help_and_docs_list_every_exit_status(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert [code for code, _ in EXIT_STATUSES] == [0, 1, 2, 3]
    for code, meaning in EXIT_STATUSES:
        assert f"  {code}  {meaning.split()[0]}" in help_text
    cells = [line.strip().split("|")[1].strip(" `")
             for line in (ROOT / "docs" / "cli.md").read_text().splitlines()
             if line.strip().startswith("| `")]
    assert [int(cell) for cell in cells if cell.isdigit()] == [0, 1, 2, 3]
    section = (ROOT / "README.md").read_text().split("## `tilescope predict`", 1)[1]
    summary = " ".join(section.split("\n## ", 1)[0].split("Exit codes", 1)[1].split())
    # the README's one-line summary names each status by its meaning's first word
    assert all(f"{code} {meaning.split()[0]}" in summary for code, meaning in EXIT_STATUSES)


def test_truncated_jpeg_and_bomb(tmp_path: Path, sample, capsys):
    data = sample("dog").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    assert main(["predict", str(tmp_path / "cut.jpg"), "--quiet"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert main(["predict", str(sample("dog")), "--max-pixels", "1000", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pixel limit" in err or "over the limit" in err


def test_models_and_sample_commands(capsys):
    assert main(["models"]) == 0
    assert "nanodet-coco" in capsys.readouterr().out.split()
    assert main(["sample", "chelsea"]) == 0
    assert Path(capsys.readouterr().out.strip()).is_file()


def test_predict_kite_writes_all_outputs(tmp_path: Path, sample):
    proc = run_cli("predict", str(sample("kite")), "--out", str(tmp_path / "r.json"),
                   "--coco", str(tmp_path / "c.json"), "--overlay", str(tmp_path / "o.png"))
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.strip()
    assert "\n" not in summary and "detections" in summary and "person" in summary
    assert "slices" in proc.stderr  # the progress bar
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["summary"]["counts"].get("person", 0) >= 10
    coco = json.loads((tmp_path / "c.json").read_text())
    person_id = next(c["id"] for c in coco["categories"] if c["name"] == "person")
    assert person_id == 1  # official COCO ids, not contiguous ones
    assert len(coco["annotations"]) == len(doc["detections"])
    assert (tmp_path / "o.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _predict_defaults():
    from tilescope.cli import build_parser

    return build_parser().parse_args(["predict", "x.jpg"])


def test_every_run_parameter_is_an_option_defaulting_to_the_field():
    """The run parameters' options are generated from InferenceParams: each field is one
    (or says why not), and no option given means the default parameters. Seen red with
    ``--overlap``'s default changed in the generator and with an option skipped."""
    from tilescope.cli import params_from_args
    from tilescope.params import InferenceParams, param_fields

    args = _predict_defaults()
    for item, spec in param_fields():
        assert hasattr(args, item.name) == (spec.flag is not None), item.name
        assert spec.flag is not None or spec.cli_absent, f"{item.name}: say why not on the CLI"
    assert params_from_args(args) == InferenceParams()


def test_options_offer_the_choices_of_the_dags_form(capsys):
    """Enums come from one place: the CLI's choices are the form's enum (without the form's
    empty 'none'). Seen red with POSTPROCESS_TYPES shortened in the CLI only."""
    from tilescope.cli import build_parser
    from tilescope.params import form_fields, param_fields

    predict = next(a for a in build_parser()._actions if a.dest == "command").choices["predict"]
    choices = {a.dest: list(a.choices) for a in predict._actions if a.choices}
    on_cli = {item.name for item, spec in param_fields() if spec.flag is not None}
    enums = {name: [c for c in schema["enum"] if c != ""]
             for name, (_, _, schema) in form_fields().items()
             if "enum" in schema and name in on_cli}
    assert choices == enums
    with pytest.raises(SystemExit) as exited:
        main(["predict", "x.jpg", "--postprocess", "diou"])
    assert exited.value.code == 2  # a bad parameter: as ConfigError's exit status
    assert "invalid choice: 'diou'" in capsys.readouterr().err


def test_docs_options_table_is_the_generated_one():
    from tilescope.cli import predict_options_table

    table = predict_options_table()
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert table in page, ("docs/cli.md's options table is stale: paste "
                           "`tilescope.cli.predict_options_table()` into it")
