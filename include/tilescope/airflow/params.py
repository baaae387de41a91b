"""The ``tiled_inference`` DAG's trigger form: Airflow ``Param``s generated from
:class:`tilescope.params.InferenceParams` (:func:`tilescope.params.form_fields`)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from tilescope.archival import archive_form_fields
from tilescope.params import form_fields


def inference_params() -> dict[str, Param]:
    """One ``Param`` per run parameter: its default, description, type, choices and bounds
    as :class:`~tilescope.params.InferenceParams` declares them, in its order."""
    return {name: Param(default, description=description, **schema)
            for name, (default, description, schema) in form_fields().items()}


def dag_params(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Param]:
    """The whole form: ``before`` (what the run is about), the run parameters, ``after``."""
    return {**before, **inference_params(), **after}


def archive_params() -> dict[str, Param]:
    """The archival copy's and keep policy's ``Param``s (:mod:`tilescope.archival`)."""
    return {name: Param(default, description=description, **schema)
            for name, (default, description, schema) in archive_form_fields().items()}
