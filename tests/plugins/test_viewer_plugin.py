"""The results viewer plugin in a real api-server: authentication, URL validation, and a real
headless Chromium drawing the grid and boxes of a finished ``tiled_inference`` run.

One finished run for the whole module, made cheaply: ``airflow dags test`` against the
installation's metadata DB (real task execution, real S3 on moto), then only the api-server
is started on that DB — no scheduler needed to look at a finished run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
sys.path.insert(0, str(REPO / "tests" / "dags"))  # airflow_support: the shared Airflow helpers
BUCKET = "tilescope"
DAG_ID = "tiled_inference"
GRID = (2, 3)
CHROMIUM = os.environ.get("TILESCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TILESCOPE_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000")


def _s3(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(signature_version="s3v4",
                                      s3={"addressing_style": "path"}))


@pytest.fixture(scope="module")
def viewer_stack(tmp_path_factory, s3_server, sample):
    """A finished run (``airflow dags test``) and an api-server with the plugin loaded."""
    from airflow_support import connection_env

    from tilescope.stack.airflow_stack import AirflowStack
    from tilescope.stack.api import AirflowApi
    from tilescope.stack.procs import free_ports, wait_for

    tmp = tmp_path_factory.mktemp("viewer")
    client = _s3(s3_server)
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="incoming/viewer/kite.jpg",
                      Body=Path(sample("kite")).read_bytes())
    (port,) = free_ports(1)
    airflow = AirflowStack(home=tmp / "airflow", dags_folder=REPO / "dags", port=port,
                           plugins_folder=REPO / "plugins", components=("api-server",))
    conf = {"image_uri": f"s3://{BUCKET}/incoming/viewer/kite.jpg",
            "grid": f"{GRID[0]}x{GRID[1]}"}
    try:
        started = time.monotonic()
        airflow.migrate()
        # Connections in the metadata DB (as `make run` stores them), not the environment:
        # the api-server must find aws_default there to read the run's objects.
        for key, value in connection_env(s3_server, tmp / "catalog.sqlite").items():
            conn_id = key.removeprefix("AIRFLOW_CONN_").lower()
            airflow.run_cli(["connections", "add", conn_id, "--conn-json", value])
        airflow.run_cli(["dags", "test", DAG_ID, "-c", json.dumps(conf)], timeout=600)
        ran = time.monotonic()
        airflow.start()
        wait_for(lambda: AirflowApi(airflow.base_url, timeout=5).request(
            "GET", "/api/v2/monitor/health"), 180, "api-server", interval=0.5,
            alive=airflow.alive)
        api = airflow.api()
        runs = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]
        assert [r["state"] for r in runs] == ["success"], runs
        print(f"\nviewer stack: dags test {ran - started:.1f}s, "
              f"api-server {time.monotonic() - ran:.1f}s")
        yield {"airflow": airflow, "api": api, "run_id": runs[0]["dag_run_id"],
               "base": airflow.base_url, "client": client}
    finally:
        airflow.stop()


def _get(url: str, token: str | None = None, cookie: str | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    """One GET without following redirects: (status, headers, body)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"_token={cookie}"
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _run_urls(stack) -> dict[str, str]:
    run = urllib.parse.quote(stack["run_id"], safe="")
    api = f"{stack['base']}/tilescope/api/dags/{DAG_ID}/runs/{run}"
    return {"page": f"{stack['base']}/tilescope/viewer/dags/{DAG_ID}/runs/{run}",
            "plan": f"{api}/plan", "states": f"{api}/states?regions=6",
            "findings": f"{api}/findings", "result": f"{api}/result",
            "image": f"{api}/image?side=640", "object": f"{api}/object?key=x.json"}


def test_unauthenticated_requests_get_401_or_a_login_redirect_never_data(viewer_stack):
    urls = _run_urls(viewer_stack)
    status, headers, _ = _get(urls["page"])
    assert status in (302, 303, 307)
    location = headers["location"]
    assert "/auth/login" in location and "next=" in location
    for name in ("plan", "states", "findings", "result", "image", "object"):
        for token, cookie in ((None, None), ("not-a-jwt", None), (None, "forged.jwt.value")):
            status, headers, body = _get(urls[name], token=token, cookie=cookie)
            assert status in (401, 403), (name, status)
            assert headers.get("content-type", "").startswith("application/json")
            assert set(json.loads(body)) == {"detail"}, (name, body[:200])
    # A forged cookie on the page also ends at the login, not at the viewer.
    status, headers, body = _get(urls["page"], cookie="forged.jwt.value")
    assert status in (302, 303, 307) and b"viewer-config" not in body


def test_authenticated_json_describes_the_finished_run(viewer_stack):
    token = viewer_stack["airflow"].token()
    urls = _run_urls(viewer_stack)
    status, _, body = _get(urls["plan"], token=token)
    assert status == 200
    plan = json.loads(body)
    assert len(plan["regions"]) == GRID[0] * GRID[1]
    assert plan["image"]["width"] > 0 and "person" in plan["category_names"]
    states = json.loads(_get(urls["states"], token=token)[2])
    assert states["states"] == ["success"] * 6 and states["result_ready"]
    findings = json.loads(_get(urls["findings"], token=token)[2])
    assert sorted(f["index"] for f in findings["findings"]) == list(range(6))
    result = json.loads(_get(urls["result"], token=token)[2])
    assert result["counts"]["person"] >= 10 and len(result["boxes"]) == len(result["scores"])
    status, headers, body = _get(urls["image"], token=token)
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert max(int(v) for v in headers["x-image-size"].split("x")) == 640
    coco_key = result["artifacts"]["coco.json"]
    status, _, body = _get(urls["object"].replace("x.json", urllib.parse.quote(coco_key)),
                           token=token)
    assert status == 200 and json.loads(body)["annotations"]


@pytest.mark.parametrize("key", ["incoming/viewer/kite.jpg", "results/../incoming/x.json",
                                 "s3://other-bucket/results/a/b/result.json", "/etc/passwd"])
def test_keys_outside_the_runs_prefixes_are_refused(viewer_stack, key):
    token = viewer_stack["airflow"].token()
    url = _run_urls(viewer_stack)["object"].replace("x.json", urllib.parse.quote(key, safe=""))
    status, _, body = _get(url, token=token)
    assert status == 400, body[:200]
    assert b"kite" not in body or b"outside" in body


@pytest.mark.parametrize("run_id, expected", [("..", {400, 404}), ("a%2Fb", {404}),
                                              ("x%00y", {400}), ("no_such_run", {404})])
def test_bad_run_ids_are_refused(viewer_stack, run_id, expected):
    token = viewer_stack["airflow"].token()
    url = f"{viewer_stack['base']}/tilescope/api/dags/{DAG_ID}/runs/{run_id}/plan"
    assert _get(url, token=token)[0] in expected


def test_the_extra_link_of_store_and_analyze_opens_the_viewer(viewer_stack):
    api, run = viewer_stack["api"], urllib.parse.quote(viewer_stack["run_id"], safe="")
    base = f"/api/v2/dags/{DAG_ID}/dagRuns/{run}/taskInstances"
    store = api.request("GET", f"{base}/store/links")["extra_links"]
    assert store["Results viewer"].endswith(f"/runs/{run}/plugin/tilescope-viewer")
    region = api.request("GET", f"{base}/analyze/links?map_index=2")["extra_links"]
    assert region["Results viewer"].endswith("/tasks/analyze/mapped/2/plugin/tilescope-region")
    other = api.request("GET", f"{base}/preprocess/links")["extra_links"]
    assert other.get("Results viewer") is None
    plugins = api.request("GET", "/api/v2/plugins")["plugins"]
    views = {v["url_route"]: v for p in plugins for v in p["external_views"]}
    assert views["tilescope-viewer"]["destination"] == "dag_run"
    assert views["tilescope-region"]["destination"] == "task_instance"
    assert api.request("GET", "/api/v2/plugins/importErrors")["import_errors"] == []


def _chromium():
    """A Selenium driver on Debian's Chromium, or skip saying what is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian packages chromium and "
                    "chromium-driver; `make test` installs them where apt-get runs as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never runs, nothing is downloaded.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def test_a_real_browser_logs_in_and_sees_the_grid_and_boxes(viewer_stack):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tilescope.stack.api import read_admin_password

    driver = _chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        urls = _run_urls(viewer_stack)
        driver.get(urls["page"])  # not signed in: Airflow's login page, then back here
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=password]"))
        password = read_admin_password(viewer_stack["airflow"].home)
        driver.find_element(By.CSS_SELECTOR, "input[name=username], input#username") \
            .send_keys("admin")
        driver.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        page = urllib.parse.unquote(urls["page"])
        wait.until(lambda d: urllib.parse.unquote(d.current_url).startswith(page))
        state = wait.until(lambda d: d.execute_script(
            "const s = window.tilescopeViewer;"
            "return s && document.body.dataset.state === 'done' && s.imageLoaded"
            " && s.boxesDrawn > 0 ? s : null;"))
        assert state["regions"] == 6 and state["cellsDrawn"] == 6
        assert state["mode"] == "final" and state["runState"] == "success"
        assert state["stateCounts"] == {"success": 6}
        assert state["classCounts"]["person"] >= 10
        assert state["boxesDrawn"] == state["boxesTotal"] >= 10
        canvas = driver.find_element(By.ID, "view")
        assert canvas.get_attribute("data-cells-drawn") == "6"
        driver.save_screenshot(str(ARTIFACTS / "viewer-kite.png"))

        # The canvas holds the picture, not a blank: many distinct colours.
        colours = driver.execute_script(
            "const c = document.getElementById('view');"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "const seen = new Set(); for (let i = 0; i < d.length; i += 4 * 97)"
            " seen.add(d[i] << 16 | d[i + 1] << 8 | d[i + 2]); return seen.size;")
        assert colours > 500

        # Clicking a region shows its details and the link to that task instance's log.
        driver.execute_script(
            "const c = document.getElementById('view'), r = c.getBoundingClientRect();"
            "c.dispatchEvent(new MouseEvent('click', {clientX: r.right - 5,"
            " clientY: r.bottom - 5, bubbles: true}));")
        link = wait.until(lambda d: d.find_element(By.ID, "region-log")
                          if d.find_element(By.ID, "region-log").get_attribute("data-region")
                          else None)
        assert link.get_attribute("data-region") == "5"
        assert "/tasks/analyze/mapped/5" in link.get_attribute("href")

        # The score filter hides boxes below it; the class filter hides a whole class.
        driver.execute_script(
            "const s = document.getElementById('min-score'); s.value = '0.99';"
            "s.dispatchEvent(new Event('input'));")
        wait.until(lambda d: d.execute_script(
            "return window.tilescopeViewer.boxesDrawn") < state["boxesTotal"])
        driver.execute_script(
            "const s = document.getElementById('min-score'); s.value = '0';"
            "s.dispatchEvent(new Event('input'));")
        driver.find_element(By.CSS_SELECTOR, "tr[data-class=person] input").click()
        drawn = wait.until(lambda d: d.execute_script(
            "const s = window.tilescopeViewer;"
            "return s.boxesDrawn < s.boxesTotal ? s.boxesDrawn : null;"))
        assert drawn == state["boxesTotal"] - state["classCounts"]["person"]
        assert not driver.execute_script("return window.tilescopeViewer.errors")
    finally:
        driver.quit()
