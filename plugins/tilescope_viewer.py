"""Airflow UI plugin: the tilescope results viewer.

Registers (Airflow 3.1+ plugin interface):

* a FastAPI app mounted by the api-server at ``/tilescope`` (``tilescope.viewer.app``):
  the viewer page and its JSON/image endpoints, behind Airflow's own authentication;
* two external views — a "Results viewer" tab on every DAG run and a "Region" tab on
  every task instance (the page explains when a run is not a tilescope run);
* a "Results viewer" extra link on the ``analyze`` and ``store`` tasks of
  ``TILESCOPE_VIEWER_DAGS`` (default ``tiled_inference``).

A batch run (many images in one ``tiled_inference`` run) opens on its image list and its
work units' live states; picking a stored image shows its grid and boxes.

The logic lives in ``include/tilescope/viewer/``; the page's HTML/CSS/JS beside this file in
``tilescope_viewer_ui/``. Nothing heavy is imported here: Airflow loads plugins in every
task process too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink

from tilescope.viewer import links
from tilescope.viewer.lazy import LazyASGIApp

UI_DIR = Path(__file__).resolve().parent / "tilescope_viewer_ui"


def _viewer_app():
    from tilescope.viewer.app import create_app

    return create_app(UI_DIR)


class ResultsViewerLink(BaseOperatorLink):
    """"Results viewer" button: the run's viewer tab (a region's own tab for ``analyze``)."""

    name = "Results viewer"

    def get_link(self, operator, *, ti_key) -> str:
        from airflow.configuration import conf

        return links.extra_link(links.base_path(conf.get("api", "base_url", fallback="/")),
                                ti_key.dag_id, ti_key.run_id, ti_key.task_id,
                                ti_key.map_index, links.viewer_dags())


class TilescopeViewerPlugin(AirflowPlugin):
    name = "tilescope_viewer"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": LazyASGIApp(_viewer_app), "url_prefix": links.MOUNT,
         "name": "tilescope results viewer"}]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {"name": "Results viewer", "destination": "dag_run", "url_route": links.RUN_VIEW_ROUTE,
         "href": links.MOUNT.lstrip("/") + "/viewer/dags/{DAG_ID}/runs/{RUN_ID}",
         "category": "tilescope"},
        {"name": "Region", "destination": "task_instance", "url_route": links.REGION_VIEW_ROUTE,
         "href": links.MOUNT.lstrip("/")
         + "/viewer/dags/{DAG_ID}/runs/{RUN_ID}?region={MAP_INDEX}",
         "category": "tilescope"},
    ]
    global_operator_extra_links: ClassVar[list[Any]] = [ResultsViewerLink()]
