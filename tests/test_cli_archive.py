"""``tilescope predict --archive``: an archival copy beside the results, its facts in the
result JSON; a bad archive path is refused before the model runs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tilescope.cli import main


def test_predict_writes_an_archive_that_opencv_decodes(sample, tmp_path):
    archive, out = tmp_path / "kite.avif", tmp_path / "kite.json"
    assert main(["predict", str(sample("kite")), "--archive", str(archive),
                 "--archive-max-side", "640", "--out", str(out), "--quiet"]) == 0
    pixels = cv2.imdecode(np.fromfile(archive, np.uint8), cv2.IMREAD_COLOR)
    assert pixels is not None and pixels.shape == (426, 640, 3)
    doc = json.loads(out.read_text())
    facts = doc["archive"]
    assert facts["format"] == "avif" and facts["uri"] == str(archive)
    assert facts["bytes"] == archive.stat().st_size
    assert facts["bytes_saved"] == Path(sample("kite")).stat().st_size - facts["bytes"]
    assert facts["target_met"] and facts["ssim"] >= 0.95 and 1 <= facts["quality"] <= 100


@pytest.mark.parametrize("argv, message", [
    (["--archive", "copy.bmp"], "extension"),
    (["--archive", "copy.webp", "--archive-ssim", "1.5"], "archive_ssim"),
])
def test_a_bad_archive_is_refused_before_the_model_runs(sample, tmp_path, capsys, argv,
                                                        message):
    assert main(["predict", str(sample("kite")), "--model", "no-such-model", *argv]) == 2
    assert message in capsys.readouterr().err


def test_an_archive_of_an_anonymized_run_is_refused(sample, tmp_path, capsys):
    """The archival copy is encoded from the original pixels: with --anonymize it would keep
    what the run was asked to hide, so the pair is refused (the DAG's preprocess likewise).
    Seen red with the CLI's check removed: the run went on and wrote both copies."""
    argv = ["predict", str(sample("kite")), "--anonymize", "person",
            "--anonymized", str(tmp_path / "hidden.png"), "--archive",
            str(tmp_path / "copy.webp")]
    assert main(argv) == 2
    assert "would keep the original pixels" in capsys.readouterr().err
    assert not (tmp_path / "copy.webp").exists()


def test_the_dag_refuses_anonymize_with_an_archive_and_batches():
    """What tiled_inference's preprocess checks first. Seen red with check_transform's
    archive check removed."""
    from tilescope.errors import ConfigError
    from tilescope.params import InferenceParams
    from tilescope.tasks.transform import check_transform

    params = InferenceParams(anonymize="person")
    check_transform(params, batch=False)
    with pytest.raises(ConfigError, match="would keep the original pixels"):
        check_transform(params, batch=False, archive=True)
    with pytest.raises(ConfigError, match="not on a batch"):
        check_transform(params, batch=True)
    check_transform(InferenceParams(), batch=True, archive=True)
