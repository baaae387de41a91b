"""Why slicing: on real photos with small objects, sliced inference finds what one
whole-image pass misses; the optional full-image pass adds large objects back."""

from __future__ import annotations

import pytest

from tilescope.models.nanodet import NanoDetModel
from tilescope.params import InferenceParams
from tilescope.pipeline import run_image
from tilescope.readers import open_image


@pytest.fixture(scope="module")
def model():
    with NanoDetModel(score_threshold=0.3) as nanodet:
        yield nanodet


def persons(result) -> int:
    return result.counts().get("person", 0)


def test_sliced_kite_finds_clearly_more_people_than_whole_image(model, sample):
    reader, info = open_image(str(sample("kite")))
    sliced = run_image(reader, info, InferenceParams(slice_size=416, overlap=0.2), model)
    whole = run_image(reader, info, InferenceParams(slice_size=max(info.width, info.height),
                                                    overlap=0.0), model)
    assert whole.plan["slices"] == 1 and sliced.plan["slices"] == 12
    assert persons(sliced) >= 10
    assert persons(sliced) >= 2 * max(1, persons(whole))


def test_full_image_pass_adds_the_whole_image_prediction(model, sample):
    reader, info = open_image(str(sample("kite")))
    plain = run_image(reader, info, InferenceParams(), model)
    with_full = run_image(reader, info, InferenceParams(full_image_pass=True), model)
    (whole,) = model.predict([reader.read_all()])
    assert len(whole) > 0
    assert len(with_full.detections) >= len(plain.detections)
    assert with_full.params["full_image_pass"] is True
