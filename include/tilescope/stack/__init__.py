"""The embedded development stack: SeaweedFS (S3) + Airflow 3, started and stopped by PID.

``python -m tilescope.stack up|down|status|env|ls`` drives it for ``make run``/``make stop``;
the pieces are importable so tests can start the real services on free ports in a temp dir.
"""

from tilescope.stack.airflow_stack import COMPONENTS, AirflowStack
from tilescope.stack.api import AirflowApi, ApiError
from tilescope.stack.errors import StackError
from tilescope.stack.provision import check_pool, ensure_connection, ensure_pool
from tilescope.stack.seaweed import SeaweedPorts, SeaweedServer, find_weed, start_seaweed

__all__ = [
    "COMPONENTS",
    "AirflowApi",
    "AirflowStack",
    "ApiError",
    "SeaweedPorts",
    "SeaweedServer",
    "StackError",
    "check_pool",
    "ensure_connection",
    "ensure_pool",
    "find_weed",
    "start_seaweed",
]
