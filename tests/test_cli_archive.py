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


@pytest.mark.parametrize("name", ["person", "horses"])
def test_an_archive_of_an_anonymized_run_has_only_the_anonymized_pixels(name, sample,
                                                                       tmp_path):
    """--anonymize with --archive: the archival copy is encoded from the anonymized pixels
    (same regions as the anonymized copy). Decoded by OpenCV, every region has lost its
    detail (Laplacian variance down > 90 %), and outside the regions the copy keeps the
    SSIM target against the original. Seen red with the plain reader archived (the detail
    stayed), and with the regions scored (outside SSIM 0.93: their blur lifted the mean)."""
    from skimage.metrics import structural_similarity

    archive, out = tmp_path / f"{name}.webp", tmp_path / f"{name}.json"
    assert main(["predict", str(sample(name)), "--model", "nanodet-coco", "--anonymize",
                 "person,horse", "--anonymized", str(tmp_path / "hidden.png"), "--archive",
                 str(archive), "--out", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    copy = cv2.imdecode(np.fromfile(archive, np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(str(sample(name)), cv2.IMREAD_COLOR)
    assert copy is not None and copy.shape == original.shape
    regions = doc["anonymized"]["regions"]
    assert regions and doc["archive"]["target_met"]
    inside = np.zeros(copy.shape[:2], bool)
    for x1, y1, x2, y2 in regions:
        inside[max(0, y1 - 3):y2 + 3, max(0, x1 - 3):x2 + 3] = True  # + the SSIM window
        before, after = (cv2.Laplacian(cv2.cvtColor(p[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY),
                                       cv2.CV_64F).var() for p in (original, copy))
        assert after < 0.1 * before, ((x1, y1, x2, y2), before, after)
    _, similarity = structural_similarity(original, copy, channel_axis=2, data_range=255,
                                          full=True)
    outside = ~inside[3:-3, 3:-3]  # scikit-image's mean leaves the border out too
    assert similarity[3:-3, 3:-3][outside].mean() >= doc["archive"]["target_ssim"] == 0.95


def test_the_dag_checks_anonymize_first_and_no_longer_refuses_archives_of_batches():
    """What tiled_inference's preprocess checks first: a class the model does not have.
    An archival copy — of one image or of a batch's every image, anonymized or not — is no
    longer refused there (tests/dags/test_batch_dag.py runs a batch with one)."""
    from tilescope.errors import ConfigError
    from tilescope.params import InferenceParams
    from tilescope.tasks.transform import check_transform

    check_transform(InferenceParams(anonymize="person"))
    check_transform(InferenceParams())
    with pytest.raises(ConfigError, match="'unicorn' is not a class"):
        check_transform(InferenceParams(anonymize="unicorn"))
