"""DAG integrity: every DAG file imports cleanly and offline, and carries our conventions."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    real_connect = socket.socket.connect

    def no_network(self, address):  # a DAG file must not touch the network at import time
        raise AssertionError(f"network access at import time: {address}")

    socket.socket.connect = no_network
    try:
        return DagBag(dag_folder=str(DAGS))
    finally:
        socket.socket.connect = real_connect


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "tiled_inference" in dagbag.dags


def test_every_dag_has_tags_docs_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.doc_md, dag_id
        for t in dag.tasks:
            assert t.retries >= 1, f"{dag_id}.{t.task_id} has no retries"


def test_tiled_inference_shape(dagbag):
    dag = dagbag.dags["tiled_inference"]
    assert dag.schedule is None or str(dag.timetable.summary) in ("None", "Never")
    assert {t.task_id for t in dag.tasks} == {"preprocess", "analyze", "synthesize", "store",
                                              "finalize", "evaluate"}
    # mapped over finalize's list (empty without ground truth), scoring store's result
    assert dag.get_task("evaluate").upstream_task_ids == {"store", "finalize"}
    analyze = dag.get_task("analyze")
    assert analyze.pool == "tilescope"
    assert analyze.retry_exponential_backoff
    assert analyze.map_index_template == "{{ region_label }}"
    assert dag.max_active_tasks > 16 and analyze.max_active_tis_per_dagrun > 16
    assert dag.get_task("synthesize").trigger_rule == "all_done"
    outlets = dag.get_task("store").outlets
    assert [o.uri for o in outlets if hasattr(o, "uri")] == ["s3://tilescope/results"]
    # a batch's store emits one event per image: the rest through this alias
    assert [o.name for o in outlets if not hasattr(o, "uri")] == ["tilescope-results"]


def test_params_refuse_bad_values_at_trigger_time(dagbag):
    import copy

    from airflow.sdk.definitions.param import ParamValidationError

    dag = dagbag.dags["tiled_inference"]
    good = {"image_uri": "s3://bucket/incoming/x.jpg", "grid": "3x4", "slice_size": "640",
            "postprocess": "softnms", "soft_nms_sigma": 0.3}
    params = copy.deepcopy(dag.params)
    for key, value in good.items():
        params[key] = value
    params.validate()
    for bad in ({"image_uri": "/local/path.jpg"}, {"overlap": 0.95}, {"grid": "3"},
                {"score_threshold": 2}, {"postprocess": "diou"}, {"slice_size": "huge"},
                {"soft_nms_sigma": 0},
                {"min_success_ratio": -0.1}, {"images": ["/local/a.jpg"]},
                {"manifest": "http://example.invalid/m.json"}):
        params = copy.deepcopy(dag.params)
        with pytest.raises(ParamValidationError):
            for key, value in bad.items():
                params[key] = value
            params.validate()


def test_params_form_is_generated_from_inference_params(dagbag):
    """The run parameters' Params are InferenceParams' fields — same order, default,
    description, type, choices and bounds — between what the run is about and the
    moderation gate; the form's defaults are the default parameters. Seen red with
    overlap's title changed in tilescope.airflow.params' wrapping and with slice_size's form
    default set to "auto"."""
    from tilescope.archival import archive_form_fields
    from tilescope.params import InferenceParams, form_fields

    params = dagbag.dags["tiled_inference"].params
    form = form_fields()
    assert list(params.keys()) == ["image_uri", "images", "manifest", *form, "moderation",
                                   "moderation_options", "reuse", *archive_form_fields(), "claim",
                                   "ground_truth"]
    for name, (default, description, schema) in form.items():
        param = params.get_param(name)
        assert (param.value, param.description, param.schema) == (default, description,
                                                                  schema), name
    assert InferenceParams.from_dict({k: params[k] for k in form}) == InferenceParams()


def test_dag_docs_name_every_param():
    """docs/dags.md's Params paragraph names every run parameter of the form."""
    from tilescope.params import form_fields

    page = (DAGS.parent / "docs" / "dags.md").read_text(encoding="utf-8")
    paragraph = page.split("**Params form**", 1)[1].split("\n\n", 1)[0]
    missing = [name for name in form_fields() if f"`{name}`" not in paragraph]
    assert not missing, f"docs/dags.md's Params form paragraph lacks {missing}"
