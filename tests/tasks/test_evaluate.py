"""The evaluate step's decisions without Airflow (moto on loopback): preprocess's choice of
ground truth (a video never, the named file, the file beside the image, or none), what
evaluate is mapped over (nothing for a batch or an unlabelled image), and a named ground
truth that is not there is an error when scored, not a skip. The scoring itself runs end to
end in tests/dags/test_evaluate_dag.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_handoffs import BATCH_XCOM, IMAGE_XCOM, LABELLED_XCOM, STORED_XCOM, VIDEO_XCOM

from tilescope.errors import BadImageError
from tilescope.handoffs import Prepared
from tilescope.tasks.evaluate import (
    evaluate_stored,
    evaluations,
    find_ground_truth,
    ground_truth_beside,
    ground_truth_for,
)


@pytest.fixture
def bucket(s3_client):
    s3_client.create_bucket(Bucket="tilescope")
    return s3_client


def test_batch_runs_and_unlabelled_images_map_evaluate_over_nothing():
    """Seen red with the batch check removed (an AttributeError instead of no evaluation)."""
    assert evaluations(BATCH_XCOM) == []
    assert evaluations(IMAGE_XCOM) == []
    assert evaluations(LABELLED_XCOM) == [LABELLED_XCOM["ground_truth"]]


def test_a_video_is_never_evaluated_even_with_ground_truth_named(bucket):
    """Seen red with the video check removed (the named file chosen)."""
    video = Prepared.from_dict(VIDEO_XCOM)
    assert ground_truth_for(video, "s3://tilescope/labels/all.json", bucket) is None


def test_an_unlabelled_image_has_none_and_a_labelled_one_is_found(bucket):
    image = Prepared.from_dict(IMAGE_XCOM)
    assert ground_truth_for(image, None, bucket) is None
    bucket.put_object(Bucket="tilescope", Key="incoming/kite.jpg.gt.json", Body=b"{}")
    beside = ground_truth_beside(image.image.uri)
    assert beside == "s3://tilescope/incoming/kite.jpg.gt.json"
    assert ground_truth_for(image, None, bucket) == beside
    assert find_ground_truth(image.image.uri, None, bucket) == beside
    assert ground_truth_for(image, "s3://tilescope/labels/all.json", bucket) == \
        "s3://tilescope/labels/all.json"
    # what preprocess hands on, and so what evaluate is mapped over
    labelled = replace(image, ground_truth=ground_truth_for(image, None, bucket))
    assert evaluations(labelled.to_dict()) == [beside]


def test_a_named_ground_truth_that_is_missing_is_an_error(bucket):
    """Seen red with a missing named file treated like an absent one (skipped)."""
    with pytest.raises(BadImageError, match=r"labels/none\.json"):
        evaluate_stored(STORED_XCOM, "s3://tilescope/labels/none.json", client=bucket)
