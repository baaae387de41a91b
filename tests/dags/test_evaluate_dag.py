"""The ``evaluate`` step of ``tiled_inference`` (``dag.test()`` against moto): with ground
truth beside the image it writes ``evaluation.json`` (equal to
:func:`tilescope.evaluation.evaluate` on the same files) and the PR plot beside the result;
without, it is skipped and the run succeeds. And a Params JSON from ``tilescope tune`` is a
valid run ``conf``."""

from __future__ import annotations

import copy
import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from support.pasted_objects import ground_truth, paste

from tilescope.evaluation import evaluate
from tilescope.params import InferenceParams
from tilescope.tune import params_json

pytestmark = pytest.mark.slow
BUCKET = "tilescope"


def scene_png() -> tuple[bytes, dict]:
    """640×416: four real objects 120 px long at known places, and their ground truth."""
    canvas = np.full((416, 640, 3), 120, np.uint8)
    objects = [(name, paste(canvas, name, 30 + 150 * k, 60 + 90 * (k % 2), 120))
               for k, name in enumerate(("person", "giraffe", "bird", "dog"))]
    out = io.BytesIO()
    Image.fromarray(canvas).save(out, format="PNG")
    return out.getvalue(), ground_truth("scene.png", (640, 416), objects)


def task_row(dag_id: str, run_id: str, task_id: str) -> dict:
    """The one task instance of ``task_id`` in the run: state, tries, start, process."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id,
                                                TaskInstance.run_id == run_id,
                                                TaskInstance.task_id == task_id).one()
        return {"state": str(ti.state), "try_number": ti.try_number,
                "start_date": ti.start_date, "pid": ti.pid}


def state_of(dag_id: str, run_id: str, task_id: str) -> str:
    return task_row(dag_id, run_id, task_id)["state"]


def read_json(client, key: str) -> dict:
    return json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_ground_truth_beside_the_image_is_scored_and_written_beside_the_result(
        dag, airflow_env):
    """Seen red with the ground truth beside the image never looked for (evaluate skipped,
    no evaluation.json)."""
    client = airflow_env["client"]
    data, gt = scene_png()
    client.put_object(Bucket=BUCKET, Key="scenes/scene.png", Body=data)
    client.put_object(Bucket=BUCKET, Key="scenes/scene.png.gt.json", Body=json.dumps(gt))
    run = dag.test(run_conf={"image_uri": f"s3://{BUCKET}/scenes/scene.png"})
    assert str(run.state) == "success"
    assert state_of(dag.dag_id, run.run_id, "evaluate") == "success"

    prefix = f"results/{hashlib.sha256(data).hexdigest()[:16]}/{InferenceParams().digest()}/"
    written = read_json(client, prefix + "evaluation.json")
    expected = evaluate(read_json(client, prefix + "result.json"), gt).to_dict()
    assert written == {"ground_truth": f"s3://{BUCKET}/scenes/scene.png.gt.json",
                       **json.loads(json.dumps(expected))}
    assert written["AP50"] is not None and written["AP50"] > 0.5
    assert written["counts"]["objects"] == 4
    plot = client.get_object(Bucket=BUCKET, Key=prefix + "evaluation-pr.png")["Body"].read()
    assert plot.startswith(b"\x89PNG")


def test_without_ground_truth_evaluate_is_skipped_and_the_run_succeeds(dag, airflow_env):
    """Seen red with the skip turned into an empty success (state success, not skipped).
    And evaluate never starts (no try, no start, no process: skipped as Airflow expands it
    over an empty list) — seen red on the evaluate that looked for ground truth itself and
    raised a skip (try 1, started)."""
    client = airflow_env["client"]
    data, _ = scene_png()
    client.put_object(Bucket=BUCKET, Key="scenes/unlabelled.png", Body=data)
    run = dag.test(run_conf={"image_uri": f"s3://{BUCKET}/scenes/unlabelled.png"})
    assert str(run.state) == "success"
    assert task_row(dag.dag_id, run.run_id, "evaluate") == {
        "state": "skipped", "try_number": 0, "start_date": None, "pid": None}
    assert state_of(dag.dag_id, run.run_id, "finalize") == "success"
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="results/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    assert any(k.endswith("/result.json") for k in keys)
    assert not any("evaluation" in k for k in keys)


def test_a_tuned_params_file_is_a_valid_run_conf(dag):
    """What ``tilescope tune --params`` writes passes the trigger form's validation. Seen
    red with ``to_conf`` leaving ``slice_size`` a number (the form takes text)."""
    chosen = InferenceParams(slice_size=320, overlap=0.3, postprocess="wbf",
                             match_metric="iou", match_threshold=0.7, full_image_pass=True)
    conf = {"image_uri": f"s3://{BUCKET}/scenes/scene.png",
            **json.loads(params_json(chosen))}
    params = copy.deepcopy(dag.params)
    for key, value in conf.items():
        params[key] = value
    params.validate()
    assert InferenceParams.from_dict(dict(params.dump())) == chosen
    default = copy.deepcopy(dag.params)
    for key, value in json.loads(params_json(InferenceParams())).items():
        default[key] = value
    default.validate()
