"""The viewer's FastAPI app, mounted by the api-server under ``/tilescope`` (see the plugin).

Every route sits behind Airflow's own authentication — the same ``get_user`` dependency and
DAG permission check as ``/api/v2`` (the browser's ``_token`` cookie or a bearer token) —
so an unauthenticated request gets 401 (JSON routes) or a redirect to the login page (the
HTML page), never data. S3 is read here, with the api-server's ``aws_default``
connection; the browser only ever sees this app's URLs.

Routes (``{run}`` = ``dags/{dag_id}/runs/{run_id}``):

* ``GET /viewer/{run}[?region=N][&image=I]`` — the page (canvas, grid, boxes, filters);
* ``GET /api/{run}/plan`` — image size and regions (once), each with the map index of the
  ``analyze`` instance that runs it (``task``), and how many instances (``tasks``); a
  batch: its work units;
* ``GET /api/{run}/states?regions=N`` — the live state and try of each of the N ``analyze``
  instances (by map index) in one DB query;
* ``GET /api/{run}/findings?since=ISO`` — region boxes written since a cursor;
* ``GET /api/{run}/result[?image=I]`` — the merged detections from ``result.json``; for a
  one-image run also its ``evaluation`` (``evaluation.json`` and the PR plot beside the
  result, when the DAG's ``evaluate`` step wrote them; else ``null``);
* ``GET /api/{run}/image?side=N[&image=I]`` — the thumbnail, downscaled, as JPEG;
* ``GET /api/{run}/object?key=K`` — one of the run's own result/scratch objects;
* ``GET /api/{run}/images`` — a batch run's images (name, status, detections, error).

A one-image run whose ``analyze`` maps **work units** (several consecutive regions a task,
:mod:`tilescope.units`) keeps its region grid: the regions are rebuilt from the plan
summary, a region takes its unit's state and try, and a unit's findings (inline, or read
back from the run's scratch when offloaded) arrive as its regions' findings. A video's
units stay cells of their own.

A **batch** run (many images in one run, ``tilescope.tasks.batch``) names an image by its
number in the batch (``image=I``, the outcome's ``index``): its grid and boxes come from its
own ``result.json``; every key served is checked against the run's ``outcomes.json``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tilescope.errors import BadImageError, StorageError
from tilescope.layout import ARTIFACTS, EVALUATION_ARTIFACTS, GEO_ARTIFACTS
from tilescope.previews import MEDIA_TYPES
from tilescope.storage import S3Client, S3Location, read_bytes
from tilescope.viewer import links, metadata
from tilescope.viewer.images import downscale, parse_side
from tilescope.viewer.keys import (
    BatchPrefixes,
    BatchRun,
    RunPrefixes,
    ViewerInputError,
    batch_prefixes,
    batch_run,
    resolve_key,
    run_prefixes,
    validate_dag_id,
    validate_image,
    validate_region,
    validate_run_id,
)
from tilescope.viewer.shaping import (
    MAPPED_TASK,
    batch_image_payload,
    batch_images_payload,
    batch_plan_payload,
    evaluation_payload,
    findings_payload,
    has_crs,
    level0_factors,
    plan_payload,
    result_payload,
    states_payload,
)

RUN_PATH = "/dags/{dag_id}/runs/{run_id}"
_MEDIA_TYPES = {".json": "application/json", **MEDIA_TYPES,
                ".geojson": "application/geo+json"}
# Each route checks the caller may read this DAG's runs / task instances / XComs, exactly
# as Airflow's REST API would (dag_id comes from the path).
CanReadRun = Depends(requires_access_dag("GET", DagAccessEntity.RUN))
CanReadTasks = Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))
CanReadXComs = Depends(requires_access_dag("GET", DagAccessEntity.XCOM))


@cache
def _s3_client() -> S3Client:
    """One boto3 client per api-server process (thread-safe), from ``aws_default``."""
    from tilescope.airflow.connections import s3_client

    return s3_client()


def _ui_base() -> str:
    from airflow.configuration import conf

    return links.base_path(conf.get("api", "base_url", fallback="/"))


def _checked(dag_id: str, run_id: str) -> tuple[str, str]:
    validate_dag_id(dag_id)
    validate_run_id(run_id)
    if dag_id not in links.viewer_dags():
        raise HTTPException(404, f"{dag_id} is not a tilescope pipeline DAG")
    return dag_id, run_id


def _run(session: Any, dag_id: str, run_id: str) -> metadata.RunInfo:
    dag_id, run_id = _checked(dag_id, run_id)
    run = metadata.find_run(session, dag_id, run_id)
    if run is None:
        raise HTTPException(404, f"no run {run_id!r} of {dag_id}")
    return run


def _prepared(session: Any, run: metadata.RunInfo) -> dict[str, Any] | None:
    return metadata.xcom_value(session, run.dag_id, run.run_id, "preprocess", key="prepared")


def _stored(session: Any, run: metadata.RunInfo) -> dict[str, Any] | None:
    return metadata.xcom_value(session, run.dag_id, run.run_id, "store")


def _prefixes(session: Any, run: metadata.RunInfo,
              prepared: dict[str, Any] | None = None) -> RunPrefixes | None:
    """The run's own S3 prefixes (``prepared`` when the caller already read it)."""
    return run_prefixes(run.run_id, prepared or _prepared(session, run), _stored(session, run))


def _is_batch(run: metadata.RunInfo) -> bool:
    """What the run was triggered as (its conf; no query): ``images`` or ``manifest`` set."""
    from tilescope.params import is_batch

    return is_batch(run.conf)


def _batch(session: Any, run: metadata.RunInfo) -> BatchRun | None:
    return batch_run(run.run_id, _prepared(session, run))


def _json_or_none(location: S3Location) -> dict[str, Any] | None:
    """A JSON document of the run's, or ``None`` when it does not exist (yet, any more)."""
    try:
        return json.loads(_read(location))
    except HTTPException as exc:
        if exc.status_code == 404:
            return None
        raise


def _outcomes(batch: BatchRun) -> dict[str, Any] | None:
    return _json_or_none(batch.outcomes)


def _batch_prefixes(session: Any, run: metadata.RunInfo
                    ) -> tuple[BatchPrefixes, dict[str, Any] | None]:
    """The batch run's prefixes (from its own outcomes.json) and that document."""
    batch = _batch(session, run)
    if batch is None:
        raise HTTPException(404, "the batch has not been planned yet")
    doc = _outcomes(batch)
    return batch_prefixes(batch, doc), doc


def _evaluation(prefixes: RunPrefixes) -> dict[str, Any] | None:
    """The stored evaluation beside a one-image run's result, or ``None``: not evaluated
    (no ground truth, the step not run yet) or not readable as one — a missing evaluation
    never fails the result it sits next to."""
    location = prefixes.object(EVALUATION_ARTIFACTS["evaluation"], where="results")
    if location is None:
        return None
    try:
        doc = _json_or_none(location)
    except (HTTPException, ValueError):
        return None
    return evaluation_payload(doc, f"{prefixes.results}{EVALUATION_ARTIFACTS['pr_plot']}")


def _stored_image(session: Any, run: metadata.RunInfo, image: str | None
                  ) -> tuple[BatchPrefixes, int]:
    """A batch image named in the URL, if the run's outcomes say it was stored."""
    index = validate_image(image)
    if index is None:
        raise ViewerInputError("a batch run shows one image at a time: pass image=<number>")
    prefixes, doc = _batch_prefixes(session, run)
    if doc is None:
        raise HTTPException(404, "no image of this batch is stored yet")
    if prefixes.object(index, ARTIFACTS["result"]) is None:
        raise HTTPException(404, f"image {index} of this batch has no stored result")
    return prefixes, index


def _staged_thumbnail(prepared: dict[str, Any] | None,
                      prefixes: RunPrefixes) -> S3Location | None:
    """The thumbnail preprocess staged (its ``thumbnail_uri``), if it is one of the run's
    own objects (a reused result's lives beside that result: shown once store named it)."""
    try:
        return resolve_key(str((prepared or {}).get("thumbnail_uri") or ""), prefixes)
    except ViewerInputError:
        return None


def _category_names(conf: dict[str, Any]) -> list[str]:
    from tilescope.models.registry import model_categories
    from tilescope.params import InferenceParams

    try:
        return model_categories(str(conf.get("model") or InferenceParams().model),
                                conf.get("model_options") or {})
    except Exception:  # an unknown or open-vocabulary model: the page shows class ids
        return []


def _read(location: S3Location) -> bytes:
    try:
        return read_bytes(location.uri, _s3_client())
    except BadImageError as exc:
        raise HTTPException(404, f"{location.key} does not exist (any more)") from exc
    except StorageError as exc:
        raise HTTPException(502, f"S3 read failed: {exc}") from exc


def _parse_since(since: str | None) -> datetime | None:
    if not since:
        return None
    try:
        moment = datetime.fromisoformat(since)
    except ValueError as exc:
        raise ViewerInputError(f"since must be an ISO timestamp, got {since!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _page(static_dir: Path, config: dict[str, Any]) -> str:
    """The page with its CSS, script and configuration inlined (one authenticated request)."""
    html = (static_dir / "viewer.html").read_text()
    blob = json.dumps(config).replace("<", "\\u003c")
    return (html.replace("/*VIEWER_CSS*/", (static_dir / "viewer.css").read_text())
                .replace("/*VIEWER_CONFIG*/", blob)
                .replace("/*VIEWER_JS*/", (static_dir / "viewer.js").read_text()))


def create_app(static_dir: Path) -> FastAPI:
    """The viewer app; ``static_dir`` holds ``viewer.html``, ``viewer.css``, ``viewer.js``."""
    app = FastAPI(title="tilescope results viewer", docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(ViewerInputError)
    async def refused(request: Request, exc: ViewerInputError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # A person opening the page without a (valid) session goes to Airflow's login and
        # comes back; API callers get the status code and no data.
        needs_login = exc.status_code == 401 or (
            exc.status_code == 403 and exc.detail == "Invalid JWT token")
        if needs_login and request.url.path.startswith(f"{request.scope.get('root_path', '')}"
                                                       "/viewer/"):
            from airflow.api_fastapi.app import get_auth_manager

            login = get_auth_manager().get_url_login(next_url=str(request.url))
            return RedirectResponse(login, status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.get(f"/viewer{RUN_PATH}", response_class=HTMLResponse, dependencies=[CanReadRun])
    def viewer(request: Request, dag_id: str, run_id: str,
               region: Annotated[str | None, Query()] = None,
               image: Annotated[str | None, Query()] = None) -> HTMLResponse:
        dag_id, run_id = _checked(dag_id, run_id)
        root = request.scope.get("root_path", "")
        ui = _ui_base()
        config = {"dag_id": dag_id, "run_id": run_id, "region": validate_region(region),
                  "image": validate_image(image),
                  "api": links.viewer_api(root, dag_id, run_id), "ui_base": ui,
                  "run_url": links.run_page(ui, dag_id, run_id),
                  "log_prefix": links.task_log(ui, dag_id, run_id, MAPPED_TASK) + "/mapped/"}
        return HTMLResponse(_page(static_dir, config),
                            headers={"Cache-Control": "no-store",
                                     "X-Content-Type-Options": "nosniff"})

    @app.get(f"/api{RUN_PATH}/plan", dependencies=[CanReadRun, CanReadXComs])
    def plan(dag_id: str, run_id: str, session: SessionDep) -> dict[str, Any]:
        run = _run(session, dag_id, run_id)
        prepared = _prepared(session, run)
        regions = metadata.xcom_value(session, dag_id, run_id, "preprocess")
        listed = regions if isinstance(regions, list) else None
        if _is_batch(run):  # the mapped items are work units; images come from /images
            batch_run(run_id, prepared)  # refuses a tampered batch description
            return {"dag_id": dag_id, "run_id": run_id, "run_state": run.state,
                    "image_uri": None, "category_names": _category_names(run.conf),
                    **batch_plan_payload(listed if prepared else None, prepared)}
        return {"dag_id": dag_id, "run_id": run_id, "run_state": run.state,
                "image_uri": run.conf.get("image_uri"), "mode": "image",
                "category_names": _category_names(run.conf),
                **plan_payload(listed, prepared)}

    @app.get(f"/api{RUN_PATH}/states", dependencies=[CanReadRun, CanReadTasks])
    def states(dag_id: str, run_id: str, session: SessionDep,
               regions: Annotated[int, Query(ge=0, le=100_000)] = 0) -> dict[str, Any]:
        run = _run(session, dag_id, run_id)
        payload = states_payload(metadata.task_rows(session, dag_id, run_id), regions,
                                 run.state)
        payload["polled_at"] = datetime.now(UTC).isoformat()
        return payload

    @app.get(f"/api{RUN_PATH}/findings", dependencies=[CanReadRun, CanReadXComs])
    def findings(dag_id: str, run_id: str, session: SessionDep,
                 since: Annotated[str | None, Query(max_length=64)] = None) -> dict[str, Any]:
        run = _run(session, dag_id, run_id)
        moment = _parse_since(since)
        if _is_batch(run):  # unit findings hold many images' regions: see /result?image=
            return {"cursor": since, "findings": []}
        rows = metadata.xcom_values_since(session, dag_id, run_id, MAPPED_TASK, moment)
        prepared = _prepared(session, run) if rows else None
        prefixes = _prefixes(session, run, prepared) if rows else None

        def scratch_json(uri: str) -> Any | None:
            """One of the run's own objects named by its XCom, or ``None`` once gone."""
            if prefixes is None:
                return None
            try:
                return json.loads(_read(resolve_key(uri, prefixes)))
            except (HTTPException, ViewerInputError):
                return None  # scratch already cleaned up: the result has them

        out = findings_payload((value for _, _, value in rows), scratch_json,
                               video=bool((prepared or {}).get("video")),
                               factors=level0_factors((prepared or {}).get("image") or {}))
        cursor = rows[-1][1].isoformat() if rows else since
        return {"cursor": cursor, "findings": out}

    @app.get(f"/api{RUN_PATH}/result", dependencies=[CanReadRun, CanReadXComs])
    def result(dag_id: str, run_id: str, session: SessionDep,
               image: Annotated[str | None, Query(max_length=8)] = None) -> dict[str, Any]:
        run = _run(session, dag_id, run_id)
        if _is_batch(run):
            batch, index = _stored_image(session, run, image)
            payload = batch_image_payload(json.loads(_read(
                batch.object(index, ARTIFACTS["result"]))))  # type: ignore[arg-type]  # a stored image's key exists
            payload["artifacts"] = batch.artifacts(index, geo=has_crs(payload))
            payload["image_index"] = index
            return payload
        if image is not None:
            raise ViewerInputError("image= names an image of a batch run; this run has one")
        prefixes = _prefixes(session, run)
        location = prefixes.object(ARTIFACTS["result"], where="results") if prefixes else None
        if prefixes is None or location is None:
            raise HTTPException(404, "no result stored for this run yet")
        payload = result_payload(json.loads(_read(location)))
        payload["evaluation"] = _evaluation(prefixes)
        names = [*ARTIFACTS.values(), prefixes.previews["overlay"],
                 *(GEO_ARTIFACTS.values() if has_crs(payload) else ()),
                 *(EVALUATION_ARTIFACTS.values() if payload["evaluation"] else ())]
        payload["artifacts"] = {name: f"{prefixes.results}{name}" for name in names}
        return payload

    @app.get(f"/api{RUN_PATH}/image", dependencies=[CanReadRun, CanReadXComs])
    def image(dag_id: str, run_id: str, session: SessionDep,
              side: Annotated[str | None, Query(max_length=5)] = None,
              image: Annotated[str | None, Query(max_length=8)] = None) -> Response:
        run = _run(session, dag_id, run_id)
        max_side = parse_side(side)
        if _is_batch(run):  # a stored image's thumbnail, beside its result
            batch, index = _stored_image(session, run, image)
            candidates = [batch.preview(index, "thumbnail")]
        else:
            if image is not None:
                raise ViewerInputError("image= names an image of a batch run; this run has one")
            prepared = _prepared(session, run)
            prefixes = _prefixes(session, run, prepared)
            if prefixes is None:
                raise HTTPException(404, "the run has no image yet")
            # After store the thumbnail lives beside the result (named by store's keys);
            # before, in the run's scratch (named by preprocess's hand-off).
            candidates = [prefixes.object(prefixes.previews["thumbnail"], where="results"),
                          _staged_thumbnail(prepared, prefixes)]
        for location in candidates:
            if location is None:
                continue
            try:
                data = _read(location)
            except HTTPException:
                continue
            preview = downscale(data, max_side)
            return Response(preview.data, media_type=preview.media_type,
                            headers={"Cache-Control": "private, max-age=60",
                                     "X-Image-Size": f"{preview.width}x{preview.height}"})
        raise HTTPException(404, "no thumbnail stored for this run")

    @app.get(f"/api{RUN_PATH}/object", dependencies=[CanReadRun, CanReadXComs])
    def stored_object(dag_id: str, run_id: str, session: SessionDep,
                      key: Annotated[str, Query(max_length=2048)]) -> Response:
        run = _run(session, dag_id, run_id)
        prefixes: RunPrefixes | BatchPrefixes | None
        prefixes = (_batch_prefixes(session, run)[0] if _is_batch(run)
                    else _prefixes(session, run))
        if prefixes is None:
            raise HTTPException(404, "the run has no objects yet")
        location = resolve_key(key, prefixes)
        suffix = "." + location.key.rsplit(".", 1)[-1].lower()
        name = location.key.rsplit("/", 1)[-1]
        return Response(_read(location), media_type=_MEDIA_TYPES[suffix],
                        headers={"Content-Disposition": f'inline; filename="{name}"',
                                 "X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "private, max-age=60"})

    @app.get(f"/api{RUN_PATH}/images", dependencies=[CanReadRun, CanReadXComs])
    def images(dag_id: str, run_id: str, session: SessionDep) -> dict[str, Any]:
        """A batch run's images: from its outcomes once stored, else from its plan."""
        run = _run(session, dag_id, run_id)
        if not _is_batch(run):
            raise HTTPException(404, "not a batch run: it has one image (see /plan)")
        batch = _batch(session, run)
        if batch is None:
            return batch_images_payload()
        doc = _outcomes(batch)
        if doc is not None:
            batch_prefixes(batch, doc)  # the same checks as for the keys it leads to
            return batch_images_payload(doc)
        return batch_images_payload(plan_doc=_json_or_none(batch.plan))

    return app
