"""tilescope: sliced (tiled) object detection for images too large for one model call.

The library is pure and typed; Airflow DAGs (``dags/``) and the CLI (``tilescope predict``)
both drive the same stage functions in :mod:`tilescope.pipeline`.
"""

__version__ = "0.1.0"
