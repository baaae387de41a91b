"""URLs between the viewer and Airflow's own UI (task logs, the viewer's tabs).

All paths are built from Airflow's ``[api] base_url`` path, so they stay right when the UI
is served under a sub-path, and are percent-encoded (run ids contain ``:`` and ``+``).
"""

from __future__ import annotations

from urllib.parse import quote, urlparse

from tilescope.settings import VIEWER_DAGS

#: where the plugin's FastAPI app is mounted under the api-server
MOUNT = "/tilescope"
#: ``url_route`` of the plugin's external views (the tab names in Airflow's UI)
RUN_VIEW_ROUTE = "tilescope-viewer"
REGION_VIEW_ROUTE = "tilescope-region"
#: (DAG, task) pairs that get the "Results viewer" extra link by default
LINKED_TASKS = ("analyze", "store")


def viewer_dags() -> tuple[str, ...]:
    """DAGs the viewer serves and links (``TILESCOPE_VIEWER_DAGS``, comma-separated)."""
    return tuple(d.strip() for d in VIEWER_DAGS.get() if d.strip())


def base_path(base_url: str | None) -> str:
    """The path part of ``[api] base_url`` without a trailing slash (``""`` at the root)."""
    return urlparse(base_url or "").path.rstrip("/")


def _q(value: str) -> str:
    return quote(str(value), safe="")


def viewer_page(base: str, dag_id: str, run_id: str, region: int | None = None) -> str:
    """The plugin's own viewer page for a run (optionally focused on a region)."""
    url = f"{base}{MOUNT}/viewer/dags/{_q(dag_id)}/runs/{_q(run_id)}"
    return url if region is None or region < 0 else f"{url}?region={int(region)}"


def viewer_api(mount_root: str, dag_id: str, run_id: str) -> str:
    """The JSON endpoints of one run, under the app's mount point (``request.root_path``)."""
    return f"{mount_root}/api/dags/{_q(dag_id)}/runs/{_q(run_id)}"


def run_page(base: str, dag_id: str, run_id: str) -> str:
    """The DAG run's page in Airflow's UI."""
    return f"{base}/dags/{_q(dag_id)}/runs/{_q(run_id)}"


def run_tab(base: str, dag_id: str, run_id: str) -> str:
    """The viewer as a tab of the DAG run in Airflow's UI."""
    return f"{base}/dags/{_q(dag_id)}/runs/{_q(run_id)}/plugin/{RUN_VIEW_ROUTE}"


def region_tab(base: str, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The viewer focused on one region, as a tab of that task instance in Airflow's UI."""
    return (f"{base}/dags/{_q(dag_id)}/runs/{_q(run_id)}/tasks/{_q(task_id)}/mapped/"
            f"{int(map_index)}/plugin/{REGION_VIEW_ROUTE}")


def task_log(base: str, dag_id: str, run_id: str, task_id: str, map_index: int = -1,
             try_number: int | None = None) -> str:
    """A task instance's log page in Airflow's UI (mapped instances by map index)."""
    url = f"{base}/dags/{_q(dag_id)}/runs/{_q(run_id)}/tasks/{_q(task_id)}"
    if map_index >= 0:
        url += f"/mapped/{int(map_index)}"
    return url if not try_number else f"{url}?try_number={int(try_number)}"


def extra_link(base: str, dag_id: str, run_id: str, task_id: str, map_index: int,
               linked_dags: tuple[str, ...]) -> str:
    """What the "Results viewer" button of a task opens, or ``""`` (no button) for tasks
    outside ``linked_dags`` × :data:`LINKED_TASKS`. A mapped region opens its own tab."""
    if dag_id not in linked_dags or task_id not in LINKED_TASKS:
        return ""
    if map_index is not None and map_index >= 0:
        return region_tab(base, dag_id, run_id, task_id, map_index)
    return run_tab(base, dag_id, run_id)
