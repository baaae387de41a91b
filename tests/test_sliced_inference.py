"""Why slicing: on real photos with small objects, sliced inference finds what one
whole-image pass misses; the optional full-image pass adds large objects back."""

from __future__ import annotations

import pytest
from support.blob_model import WholeBlobModel, big_object_image

from tilescope.models.nanodet import NanoDetModel
from tilescope.params import InferenceParams
from tilescope.pipeline import run_image
from tilescope.readers import open_image
from tilescope.readers.array import ArrayReader
from tilescope.results import ImageInfo, Result, detections_to_compact


@pytest.fixture(scope="module")
def model():
    with NanoDetModel(score_threshold=0.3) as nanodet:
        yield nanodet


def persons(result) -> int:
    return result.counts().get("person", 0)


def test_sliced_kite_finds_clearly_more_people_than_whole_image(model, sample):
    reader, info = open_image(str(sample("kite")))
    sliced = run_image(reader, info, InferenceParams(model="nanodet-coco", slice_size=416,
                                                     overlap=0.2), model)
    whole = run_image(reader, info, InferenceParams(model="nanodet-coco",
                                                    slice_size=max(info.width, info.height),
                                                    overlap=0.0), model)
    assert whole.plan["slices"] == 1 and sliced.plan["slices"] == 12
    assert persons(sliced) >= 10
    assert persons(sliced) >= 2 * max(1, persons(whole))


def test_full_image_pass_adds_the_whole_image_prediction(model, sample):
    reader, info = open_image(str(sample("kite")))
    plain = run_image(reader, info, InferenceParams(model="nanodet-coco"), model)
    with_full = run_image(reader, info, InferenceParams(model="nanodet-coco", full_image_pass=True),
                          model)
    (whole,) = model.predict([reader.read_all()])
    assert len(whole) > 0
    # the whole-image boxes merge into the slices' ones: the result must change with them
    assert detections_to_compact(with_full.detections) != \
        detections_to_compact(plain.detections)
    assert with_full.params["full_image_pass"] is True


def labelled_boxes(result: Result) -> list[tuple[str, list[float]]]:
    """``(category, box)`` of every detection, sorted: what a run found, order aside."""
    dets = result.detections
    return sorted((result.category_names[int(c)], [float(v) for v in box])
                  for box, c in zip(dets.boxes.tolist(), dets.category_ids, strict=True))


def test_full_image_pass_finds_the_object_every_slice_sees_cut():
    pixels, small, big = big_object_image()
    reader = ArrayReader(pixels, format="PNG")
    info = ImageInfo("mem://big.png", 640, 640, "0" * 64, "PNG", pixels.nbytes)
    params = InferenceParams(model="whole-blobs", slice_size=256, overlap=0.2)
    plain = run_image(reader, info, params, WholeBlobModel())
    with_full = run_image(reader, info, InferenceParams.from_dict(
        {**params.to_dict(), "full_image_pass": True}), WholeBlobModel())
    assert plain.plan["slices"] == 9
    assert labelled_boxes(plain) == sorted(("white", [float(v) for v in b]) for b in small)
    # exactly the big square added: each small one, found by a slice and by the whole-image
    # pass, is merged back into one
    assert labelled_boxes(with_full) == sorted(
        [*labelled_boxes(plain), ("yellow", [float(v) for v in big])])
