"""The evaluate step's decisions without Airflow (moto on loopback): what is skipped and
why, and a named ground truth that is not there is an error, not a skip. The scoring itself
runs end to end in tests/dags/test_evaluate_dag.py."""

from __future__ import annotations

import pytest
from test_handoffs import BATCH_STORED_XCOM, BATCH_XCOM, IMAGE_XCOM, STORED_XCOM, VIDEO_XCOM

from tilescope.errors import BadImageError
from tilescope.tasks.evaluate import evaluate_run, find_ground_truth, ground_truth_beside


@pytest.fixture
def bucket(s3_client):
    s3_client.create_bucket(Bucket="tilescope")
    return s3_client


def test_batch_runs_and_videos_are_skipped_saying_why(bucket):
    """Seen red with the batch check removed (an AttributeError instead of a skip)."""
    batch = evaluate_run(BATCH_STORED_XCOM, BATCH_XCOM, None, client=bucket)
    assert batch.skipped and "batch" in batch.skipped
    video = evaluate_run(STORED_XCOM, VIDEO_XCOM, None, client=bucket)
    assert video.skipped and "video" in video.skipped


def test_an_unlabelled_image_is_skipped_and_a_labelled_one_found(bucket):
    image = STORED_XCOM["image_uri"]
    outcome = evaluate_run(STORED_XCOM, IMAGE_XCOM, None, client=bucket)
    assert outcome.skipped and ground_truth_beside(image) in outcome.skipped
    bucket.put_object(Bucket="tilescope", Key="incoming/kite.jpg.gt.json", Body=b"{}")
    assert find_ground_truth(image, None, bucket) == "s3://tilescope/incoming/kite.jpg.gt.json"
    assert find_ground_truth(image, "s3://tilescope/labels/all.json", bucket) == \
        "s3://tilescope/labels/all.json"


def test_a_named_ground_truth_that_is_missing_is_an_error(bucket):
    """Seen red with a missing named file treated like an absent one (skipped)."""
    with pytest.raises(BadImageError, match=r"labels/none\.json"):
        evaluate_run(STORED_XCOM, IMAGE_XCOM, "s3://tilescope/labels/none.json", client=bucket)
