"""Time the results viewer on a 961-region run, mid-run (the figure in docs/operations.md).

Usage::

    python bench/viewer_bench.py [--grid 31] [--polls 10] [--no-browser]

The run is made the way the viewer tests make theirs (``tests/viewer/``: a ``plan_slices``
plan, ``RegionFinding`` XComs, ``analyze`` rows in every state), but written into a real
Airflow metadata DB (SQLite, migrated): a ``tiled_inference`` run of a 10240² image on a
31×31 grid, about half of its regions done (~130 boxes), a few running and queued, the rest
not started; preprocess's XComs and the run's thumbnail (on a moto S3 server) as a real run
leaves them. Only the api-server is started, with the viewer plugin. Between two polls a
few more regions finish (new task states and finding XComs), as they would mid-run.

Printed, each over ``--polls`` polls:

* ``shaping``: the server's own work for one poll in this process (``states_payload`` of
  961 rows + ``findings_payload`` of the new findings + JSON), no HTTP, no DB;
* ``poll (HTTP)``: the page's poll from Python with a bearer token — ``GET /states`` and
  ``GET /findings?since=<cursor>`` — through the api-server (auth, DB query, shaping);
* ``browser`` (headless Debian Chromium via Selenium, when installed; else says so): the
  page's own figures from ``window.tilescopeViewer`` — ``lastPollMs`` (a poll as the page
  does it, parsing included) and ``lastDrawMs`` (a full canvas redraw: 961 cells + the
  boxes and labels) — and the main thread's longest lag behind a 50 ms timer.

The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

BUCKET = "tilescope"
DAG_ID = "tiled_inference"
RUN_ID = "manual__2026-12-01T23:00:00+00:00"
SIDE = 10240
CHROMIUM = os.environ.get("TILESCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TILESCOPE_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000")


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "n": len(values)}


def show(label: str, values: list[float]) -> None:
    s = summary(values)
    print(f"  {label:<28} median {s['median']:7.1f} ms   min {s['min']:7.1f}   "
          f"max {s['max']:7.1f}   ({s['n']} polls)", flush=True)


class FakeRun:
    """The run's plan, findings and task states, as the viewer tests fabricate them."""

    def __init__(self, grid: int) -> None:
        import numpy as np

        from tilescope.layout import ScratchLayout
        from tilescope.results import ImageInfo
        from tilescope.slicing import plan_slices

        self.np = np
        self.plan = plan_slices(SIDE, SIDE, 416, 416, 83, 83, grid=(grid, grid))
        self.regions = [r.to_dict() for r in self.plan.regions]
        info = ImageInfo(f"s3://{BUCKET}/incoming/mosaic.tif", SIDE, SIDE, "ab" * 32, "TIFF",
                         SIDE * SIDE * 3)
        self.scratch = ScratchLayout(BUCKET, info.image_id, RUN_ID)
        self.prepared = {"image": info.to_dict(), "plan": self.plan.summary(),
                         "source_uri": info.uri, "thumbnail_uri": self.scratch.uri(
                             "thumbnail.png"), "full_image": None, "moderation": None,
                         "scratch_prefix": self.scratch.prefix_uri, "ready_at": time.time()}
        count = len(self.regions)
        # Mid-run: a shuffled order of completion; about half done when the page opens.
        self.order = list(np.random.default_rng(961).permutation(count))
        self.done = count // 2

    def finding(self, index: int) -> dict[str, Any]:
        """Region ``index``'s analyze XCom: a box in every fourth region (~130 at half)."""
        from tilescope.detections import Detections
        from tilescope.results import RegionFinding

        np = self.np
        region = self.plan.regions[index]
        x0, y0 = region.box.as_list()[:2]
        n = 1 if index % 4 == 0 else 0
        n += 1 if index % 29 == 0 else 0
        boxes = np.array([[x0 + 20 + 90 * i, y0 + 30, x0 + 120 + 90 * i, y0 + 160]
                          for i in range(n)], np.float64).reshape(-1, 4)
        dets = Detections(boxes, np.full(n, 0.71), np.arange(n) % 3)
        return json.loads(json.dumps(RegionFinding(
            index, region.name, region.row, region.col, region.box.as_list(),
            region.slice_count, dets, seconds={"total": 1.4, "model": 1.1}).to_dict()))

    def state(self, rank: int) -> str | None:
        """The state of the region finishing ``rank``-th: done, running, queued or not yet."""
        if rank < self.done:
            return "success"
        if rank < self.done + 4:
            return "running"
        if rank < self.done + 12:
            return "queued"
        return "scheduled" if rank < self.done + 40 else None


class MetadataDb:
    """Rows of the run in the migrated metadata DB, through Airflow's own tables."""

    def __init__(self, run: FakeRun) -> None:
        import sqlalchemy as sa
        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import TaskInstance
        from airflow.models.xcom import XComModel
        from airflow.settings import engine

        self.sa, self.engine, self.run = sa, engine, run
        self.dag_run, self.ti, self.xcom = DagRun.__table__, TaskInstance.__table__, \
            XComModel.__table__
        self.run_pk = 0
        self.boxes = 0

    def _ti(self, task_id: str, map_index: int, state: str | None) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {"id": uuid.uuid4(), "task_id": task_id, "dag_id": DAG_ID, "run_id": RUN_ID,
                "map_index": map_index, "try_number": 1 if state else 0, "max_tries": 1,
                "pool": "tilescope" if task_id == "analyze" else "default_pool",
                "pool_slots": 1, "state": state, "queue": "default", "priority_weight": 1,
                "operator": "_PythonDecoratedOperator", "hostname": "bench",
                "start_date": now - timedelta(seconds=2) if state else None,
                "end_date": now if state in ("success",) else None}

    def _xcom(self, task_id: str, map_index: int, value: Any, key: str = "return_value",
              when: datetime | None = None) -> dict[str, Any]:
        return {"dag_run_id": self.run_pk, "task_id": task_id, "map_index": map_index,
                "key": key, "dag_id": DAG_ID, "run_id": RUN_ID, "value": value,
                "timestamp": when or datetime.now(UTC)}

    def create(self) -> None:
        sa, run = self.sa, self.run
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            self.run_pk = conn.execute(sa.insert(self.dag_run).values(
                dag_id=DAG_ID, run_id=RUN_ID, run_type="manual", state="running",
                conf={"image_uri": run.prepared["image"]["uri"], "grid": "31x31"},
                run_after=now, logical_date=None, start_date=now - timedelta(minutes=10),
                queued_at=now - timedelta(minutes=10), clear_number=0)).inserted_primary_key[0]
            rows = [self._ti("preprocess", -1, "success")]
            rows += [self._ti(t, -1, None) for t in ("synthesize", "store", "finalize")]
            rank = {index: r for r, index in enumerate(run.order)}
            rows += [self._ti("analyze", i, run.state(rank[i])) for i in range(len(run.regions))]
            conn.execute(sa.insert(self.ti), rows)
            start = now - timedelta(minutes=9)
            xcoms = [self._xcom("preprocess", -1, run.regions, when=start),
                     self._xcom("preprocess", -1, run.prepared, key="prepared", when=start)]
            xcoms += [self._xcom("analyze", int(i), run.finding(int(i)),
                                 when=start + timedelta(seconds=r))
                      for r, i in enumerate(run.order[:run.done])]
            conn.execute(sa.insert(self.xcom), xcoms)
        self.boxes = sum(len(x["value"]["detections"]["boxes"]) for x in xcoms[2:])

    def advance(self, regions: int = 6) -> None:
        """``regions`` more regions finish: their state, then their finding XCom."""
        sa, run = self.sa, self.run
        newly = [int(i) for i in run.order[run.done:run.done + regions]]
        run.done += len(newly)
        with self.engine.begin() as conn:
            for r, index in enumerate(run.order[run.done - len(newly):run.done + 40]):
                conn.execute(sa.update(self.ti).where(
                    self.ti.c.run_id == RUN_ID, self.ti.c.task_id == "analyze",
                    self.ti.c.map_index == int(index)).values(
                        state=run.state(run.done - len(newly) + r)))
            if newly:
                conn.execute(sa.insert(self.xcom), [self._xcom("analyze", i, run.finding(i))
                                                    for i in newly])


def thumbnail_png() -> bytes:
    """The run's 2048² thumbnail: a mosaic of the kite photo."""
    from PIL import Image

    from tilescope.samples import sample_path

    with Image.open(sample_path("kite")) as photo:
        tile = photo.convert("RGB").resize((512, 512))
    canvas = Image.new("RGB", (2048, 2048))
    for y in range(0, 2048, 512):
        for x in range(0, 2048, 512):
            canvas.paste(tile, (x, y))
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def get_json(url: str, token: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}",
                                                   "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        body = json.loads(resp.read())
    return (time.perf_counter() - started) * 1000, body


def time_shaping(run: FakeRun, polls: int) -> list[float]:
    """The server's work for one poll, in process: 961 state rows and the new findings."""
    from tilescope.viewer.shaping import TaskRow, findings_payload, states_payload

    rank = {index: r for r, index in enumerate(run.order)}
    out = []
    for _ in range(polls):
        rows = [TaskRow("analyze", i, run.state(rank[i]), 1, None, None)
                for i in range(len(run.regions))]
        fresh = [run.finding(int(i)) for i in run.order[run.done - 6:run.done]]
        started = time.perf_counter()
        payload = states_payload(rows, len(run.regions), "running")
        json.dumps(payload)
        json.dumps(findings_payload(iter(fresh), lambda uri: None, video=False))
        out.append((time.perf_counter() - started) * 1000)
    return out


def time_http(base: str, token: str, db: MetadataDb, polls: int) -> list[float]:
    api = f"{base}/tilescope/api/dags/{DAG_ID}/runs/{urllib.parse.quote(RUN_ID, safe='')}"
    count = len(db.run.regions)
    _, plan = get_json(f"{api}/plan", token)
    assert len(plan["regions"]) == count, plan.get("grid")
    _, first = get_json(f"{api}/findings", token)
    cursor = first["cursor"]
    out = []
    for _ in range(polls):
        db.advance()
        ms_states, states = get_json(f"{api}/states?regions={count}", token)
        ms_findings, fresh = get_json(
            f"{api}/findings?since={urllib.parse.quote(cursor)}", token)
        assert len(states["states"]) == count and fresh["findings"], fresh
        cursor = fresh["cursor"]
        out.append(ms_states + ms_findings)
    return out


def time_browser(base: str, home: Path, db: MetadataDb, polls: int) -> dict[str, Any]:
    """The page in headless Chromium: its own poll and draw timings while regions finish."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        return {"skipped": f"{' and '.join(missing)} not installed (Debian chromium and "
                           f"chromium-driver; `make browser`)"}
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tilescope.stack.api import read_admin_password

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    page = f"{base}/tilescope/viewer/dags/{DAG_ID}/runs/{urllib.parse.quote(RUN_ID, safe='')}"
    stop = threading.Event()
    try:
        driver.get(page)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=password]"))
        driver.find_element(By.CSS_SELECTOR, "input[name=username], input#username") \
            .send_keys("admin")
        driver.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(
            read_admin_password(home))
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: d.execute_script(
            "const s = window.tilescopeViewer; return s && s.ready && s.imageLoaded"
            " && s.draws > 0;"))
        driver.execute_script(
            "window.__lag = 0; let last = performance.now();"
            "setInterval(() => { const now = performance.now();"
            " window.__lag = Math.max(window.__lag, now - last - 50); last = now; }, 50);")

        def finish_regions() -> None:  # mid-run: regions keep finishing
            while not stop.wait(2.0):
                db.advance()

        feeder = threading.Thread(target=finish_regions, daemon=True)
        feeder.start()
        polls_ms: list[float] = []
        draws_ms: list[float] = []
        seen_poll, seen_draw = driver.execute_script(
            "const s = window.tilescopeViewer; return [s.polls, s.draws];")
        deadline = time.monotonic() + polls * 2.0 * 3 + 30
        while len(polls_ms) < polls and time.monotonic() < deadline:
            time.sleep(0.1)
            s = driver.execute_script(
                "const s = window.tilescopeViewer; return [s.polls, s.lastPollMs, s.draws,"
                " s.lastDrawMs, document.body.dataset.state];")
            # lastPollMs is set at the end of poll number `polls`
            if s[0] > seen_poll and s[4] == "live" and s[1] is not None:
                seen_poll = s[0]
                polls_ms.append(float(s[1]))
            if s[2] > seen_draw and s[3] is not None:
                seen_draw = s[2]
                draws_ms.append(float(s[3]))
        state = driver.execute_script(
            "const s = window.tilescopeViewer; return {cells: s.cellsDrawn,"
            " boxes: s.boxesDrawn, labels: s.labelsDrawn, errors: s.errors, lag: window.__lag,"
            " counts: s.stateCounts};")
        # Full redraws on demand too (a filter change redraws everything), 10 in a row.
        forced = driver.execute_async_script(
            "const done = arguments[arguments.length - 1], S = window.tilescopeViewer;"
            "const out = []; let n = 0;"
            "const step = () => { const before = S.draws;"
            " window.dispatchEvent(new Event('resize'));"
            " requestAnimationFrame(() => requestAnimationFrame(() => {"
            "  if (S.draws > before) out.push(S.lastDrawMs);"
            "  if (++n < 10) step(); else done(out); })); };"
            "step();")
    finally:
        stop.set()
        driver.quit()
    return {"poll_ms": polls_ms, "draw_ms": draws_ms + [float(v) for v in forced],
            "lag_ms": round(float(state["lag"]), 1), "cells": state["cells"],
            "boxes": state["boxes"], "labels": state["labels"], "errors": state["errors"],
            "state_counts": state["counts"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", type=int, default=31, help="regions a side (31: 961)")
    parser.add_argument("--polls", type=int, default=10)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    from tilescope.stack.airflow_stack import AirflowStack
    from tilescope.stack.procs import free_ports, wait_for

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    endpoint = "http://{}:{}".format(*moto.get_host_and_port())
    (port,) = free_ports(1)
    airflow = AirflowStack(home=tmp / "airflow", dags_folder=REPO / "dags", port=port,
                           plugins_folder=REPO / "plugins", components=("api-server",),
                           extra_env={"TILESCOPE_VIEWER_DAGS": DAG_ID,
                                      # the plugin imports this checkout's tilescope
                                      "PYTHONPATH": os.pathsep.join(filter(None, [
                                          str(REPO / "include"),
                                          os.environ.get("PYTHONPATH")]))})
    result: dict[str, Any] = {"date": datetime.now(UTC).date().isoformat()}
    try:
        t0 = time.monotonic()
        airflow.migrate()
        # The api-server reads S3 with aws_default from the metadata DB, as `make run` sets it.
        airflow.run_cli(["connections", "add", "aws_default", "--conn-json", json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}})])
        os.environ.update(airflow.env())  # this process writes the run into the same DB
        run = FakeRun(args.grid)
        db = MetadataDb(run)
        db.create()
        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=Config(signature_version="s3v4",
                                        s3={"addressing_style": "path"}))
        s3.create_bucket(Bucket=BUCKET)
        key = run.prepared["thumbnail_uri"].removeprefix(f"s3://{BUCKET}/")
        s3.put_object(Bucket=BUCKET, Key=key, Body=thumbnail_png(), ContentType="image/png")
        print(f"{len(run.regions)} regions ({args.grid}×{args.grid}) of a {SIDE}² image; "
              f"{run.done} done with {db.boxes} boxes; set up in {time.monotonic() - t0:.1f}s",
              flush=True)

        airflow.start()
        wait_for(lambda: airflow.health().get("metadatabase") == "healthy", 180, "api-server",
                 interval=0.5, alive=airflow.alive)
        token = airflow.token()
        print(f"api-server up after {time.monotonic() - t0:.1f}s", flush=True)

        shaping = time_shaping(run, args.polls)
        show("shaping (in process)", shaping)
        http = time_http(airflow.base_url, token, db, args.polls)
        show("poll (HTTP: states+findings)", http)
        result.update(regions=len(run.regions), shaping_ms=summary(shaping),
                      http_poll_ms=summary(http))
        if args.no_browser:
            print("  browser: skipped (--no-browser)")
        else:
            browser = time_browser(airflow.base_url, airflow.home, db, args.polls)
            if "skipped" in browser:
                print(f"  browser: skipped: {browser['skipped']}")
                result["browser"] = browser
            else:
                show("browser poll (page)", browser["poll_ms"])
                show("browser full redraw", browser["draw_ms"])
                print(f"  main-thread lag (50 ms timer) max {browser['lag_ms']} ms; last draw: "
                      f"{browser['cells']} cells, {browser['boxes']} boxes, "
                      f"{browser['labels']} labels; states {browser['state_counts']}"
                      + (f"; page errors {browser['errors']}" if browser["errors"] else ""))
                result["browser"] = {"poll_ms": summary(browser["poll_ms"]),
                                     "draw_ms": summary(browser["draw_ms"]),
                                     "lag_ms": browser["lag_ms"], "cells": browser["cells"],
                                     "boxes": browser["boxes"], "labels": browser["labels"]}
    finally:
        airflow.stop()
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
