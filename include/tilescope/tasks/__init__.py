"""The DAGs' task bodies as plain functions: image runs, batch runs, video runs.

They wire the core (readers, slicing, models, pipeline, results) to S3 and the
outputs, take and return small JSON-able hand-offs, and import no Airflow: the
DAG files and :mod:`tilescope.airflow` call them.
"""
