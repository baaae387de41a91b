"""`tilescope predict` as a user runs it: real model, real photos, clear one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tilescope.cli import main


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
