"""The results viewer plugin in a real api-server: authentication, URL validation, and a real
headless Chromium drawing the grid and boxes of a finished ``tiled_inference`` run.

Two finished runs for the whole module, made cheaply: ``airflow dags test`` against the
installation's metadata DB (real task execution, real S3 on moto) — one image, evaluated
against a ``ground_truth`` (so its ``evaluate`` step writes ``evaluation.json``), and a batch
of three (two photos and a non-image, so that run fails in finalize naming it) — then only
the api-server is started on that DB — no scheduler needed to look at a finished run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
BUCKET = "tilescope"
DAG_ID = "tiled_inference"
GRID = (2, 3)
#: the batch run's images: object key → how to make it from the kite photo (None: not one)
BATCH = {"incoming/batch/mirrored.jpg": "mirror", "incoming/batch/notes.jpg": None,
         "incoming/batch/crop.jpg": "crop"}
#: the one-image run's ground truth: two people and a kite of kite.jpg (boxes where the
#: default model finds them, so the figures are not all zero) and a kite nobody finds
GROUND_TRUTH_KEY = "labels/kite.gt.json"
GROUND_TRUTH = {"images": [{"id": 1, "file_name": "kite.jpg", "width": 1352, "height": 900}],
                "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "kite"}],
                "annotations": [{"id": n, "image_id": 1, "category_id": cat, "bbox": box}
                                for n, (cat, box) in enumerate(
                                    [(1, [114, 611, 50, 151]), (1, [217, 699, 52, 156]),
                                     (2, [595, 80, 74, 74]), (2, [1300, 20, 30, 30])], 1)]}
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
    from support.airflow_support import connection_env

    from tilescope.stack.airflow_stack import AirflowStack
    from tilescope.stack.api import AirflowApi
    from tilescope.stack.errors import StackError
    from tilescope.stack.procs import free_ports, wait_for

    tmp = tmp_path_factory.mktemp("viewer")
    client = _s3(s3_server)
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="incoming/viewer/kite.jpg",
                      Body=Path(sample("kite")).read_bytes())
    for key, kind in BATCH.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=_batch_image(sample("kite"), kind))
    (port,) = free_ports(1)
    airflow = AirflowStack(home=tmp / "airflow", dags_folder=REPO / "dags", port=port,
                           plugins_folder=REPO / "plugins", components=("api-server",))
    client.put_object(Bucket=BUCKET, Key=GROUND_TRUTH_KEY, Body=json.dumps(GROUND_TRUTH))
    conf = {"image_uri": f"s3://{BUCKET}/incoming/viewer/kite.jpg",
            "grid": f"{GRID[0]}x{GRID[1]}",
            "ground_truth": f"s3://{BUCKET}/{GROUND_TRUTH_KEY}"}
    try:
        started = time.monotonic()
        airflow.migrate()
        # Connections in the metadata DB (as `make run` stores them), not the environment:
        # the api-server must find aws_default there to read the run's objects.
        for key, value in connection_env(s3_server, tmp / "catalog.sqlite").items():
            conn_id = key.removeprefix("AIRFLOW_CONN_").lower()
            airflow.run_cli(["connections", "add", conn_id, "--conn-json", value])
        airflow.run_cli(["dags", "test", DAG_ID, "-c", json.dumps(conf)], timeout=600)
        batch_conf = {"images": [f"s3://{BUCKET}/{key}" for key in BATCH], "grid": "2x2"}
        try:  # the non-image fails finalize, and with it the run (and maybe the command)
            airflow.run_cli(["dags", "test", DAG_ID, "-c", json.dumps(batch_conf)],
                            timeout=600)
        except StackError as exc:
            print(f"\nbatch run: {exc}")
        ran = time.monotonic()
        airflow.start()
        wait_for(lambda: AirflowApi(airflow.base_url, timeout=5).request(
            "GET", "/api/v2/monitor/health"), 180, "api-server", interval=0.5,
            alive=airflow.alive)
        api = airflow.api()
        runs = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]
        single = [r for r in runs if not (r.get("conf") or {}).get("images")]
        batch = [r for r in runs if (r.get("conf") or {}).get("images")]
        assert [r["state"] for r in single] == ["success"], runs
        assert [r["state"] for r in batch] == ["failed"], runs
        print(f"\nviewer stack: dags test ×2 {ran - started:.1f}s, "
              f"api-server {time.monotonic() - ran:.1f}s")
        yield {"airflow": airflow, "api": api, "run_id": single[0]["dag_run_id"],
               "batch_run_id": batch[0]["dag_run_id"],
               "base": airflow.base_url, "client": client}
    finally:
        airflow.stop()


def _batch_image(path: str, kind: str | None) -> bytes:
    """A photo of the batch (the kite mirrored or cropped: its own image id), or not one."""
    if kind is None:
        return b"this is not a picture"
    from PIL import Image, ImageOps

    with Image.open(path) as photo:
        picture = photo.convert("RGB")
    picture = ImageOps.mirror(picture) if kind == "mirror" else picture.crop(
        (0, 0, picture.width // 2, picture.height // 2))
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=92)
    return out.getvalue()


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
    # analyze maps this run's regions: each region is its own task
    assert plan["tasks"] == 6 and [r["task"] for r in plan["regions"]] == list(range(6))
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
    # the overlay in the default preview format, named by store's keys, served as what it is
    overlay_key = result["artifacts"]["overlay.webp"]
    status, headers, body = _get(urls["object"].replace("x.json",
                                                        urllib.parse.quote(overlay_key)),
                                 token=token)
    assert status == 200 and headers["content-type"] == "image/webp"
    assert body[:4] == b"RIFF" and body[8:12] == b"WEBP"


def test_an_evaluated_run_shows_its_figures_and_pr_plot_and_nothing_without(viewer_stack):
    """The result JSON carries what the run's ``evaluation.json`` holds (equal to the file),
    the PR plot is served as a PNG, the page has the panel; with the file gone the result
    is still served, with ``evaluation`` null; a batch image has none. Seen red with
    ``_evaluation`` in app.py returning ``None`` (and with the plot key left out of the
    artefacts the object route allows: 400)."""
    token, client = viewer_stack["airflow"].token(), viewer_stack["client"]
    urls = _run_urls(viewer_stack)
    result = _json(urls["result"], token)
    key = result["artifacts"]["evaluation.json"]
    stored = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    evaluation = result["evaluation"]
    assert stored["ground_truth"] == evaluation["ground_truth"] == (
        f"s3://{BUCKET}/{GROUND_TRUTH_KEY}")
    for name in ("AP", "AP50", "AP75", "recall50", "dup_rate"):
        assert evaluation["figures"][name] == stored[name], name
    counts = [c["counts"] for c in stored["per_class"].values()]
    detections = sum(c["detections"] for c in counts)
    assert detections > 0 and evaluation["figures"]["precision50"] == (
        sum(c["matched"] for c in counts) / detections)
    assert evaluation["counts"] == stored["counts"] and stored["counts"]["objects"] == 4
    assert 0 < stored["recall50"] < 1  # the people and a kite found, the other kite not
    assert set(evaluation["per_class"]) == {"person", "kite"}
    plot = evaluation["pr_plot"]
    assert plot == result["artifacts"]["evaluation-pr.png"] and plot.startswith(
        key.rsplit("/", 1)[0])
    status, headers, body = _get(urls["object"].replace("x.json", urllib.parse.quote(plot)),
                                 token=token)
    assert status == 200 and headers["content-type"] == "image/png"
    assert body.startswith(b"\x89PNG")
    status, _, page = _get(urls["page"], token=token)
    assert status == 200 and b'id="evaluation"' in page and b"renderEvaluation" in page

    body_of = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    client.delete_object(Bucket=BUCKET, Key=key)
    try:  # not evaluated (or the file gone): the result alone, no error
        bare = _json(urls["result"], token)
        assert bare["evaluation"] is None and "evaluation.json" not in bare["artifacts"]
        assert bare["boxes"] == result["boxes"]
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=body_of)
    batch_image = _json(f"{_batch_urls(viewer_stack)['api']}/result?image=0", token)
    assert batch_image.get("evaluation") is None


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


def _batch_urls(stack) -> dict[str, str]:
    run = urllib.parse.quote(stack["batch_run_id"], safe="")
    api = f"{stack['base']}/tilescope/api/dags/{DAG_ID}/runs/{run}"
    return {"page": f"{stack['base']}/tilescope/viewer/dags/{DAG_ID}/runs/{run}?image=0",
            "plan": f"{api}/plan", "states": f"{api}/states?regions=1",
            "images": f"{api}/images", "findings": f"{api}/findings",
            "result": f"{api}/result?image=0", "image": f"{api}/image?image=0&side=320",
            "object": f"{api}/object?key=x.json", "api": api}


def _json(url: str, token: str) -> dict:
    status, _, body = _get(url, token=token)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


def test_batch_endpoints_refuse_unauthenticated_requests(viewer_stack):
    urls = _batch_urls(viewer_stack)
    status, headers, _ = _get(urls["page"])
    assert status in (302, 303, 307) and "/auth/login" in headers["location"]
    for name in ("plan", "states", "images", "findings", "result", "image", "object"):
        for token, cookie in ((None, None), ("not-a-jwt", None), (None, "forged.jwt.value")):
            status, headers, body = _get(urls[name], token=token, cookie=cookie)
            assert status in (401, 403), (name, status)
            assert set(json.loads(body)) == {"detail"}, (name, body[:200])


def test_a_batch_run_lists_its_images_and_units_and_shows_each_stored_image(viewer_stack):
    token = viewer_stack["airflow"].token()
    urls = _batch_urls(viewer_stack)
    plan = _json(urls["plan"], token)
    assert plan["mode"] == "batch" and plan["regions"] == []
    assert plan["batch"] == {"images": 3, "bad": 1, "units": len(plan["units"])}
    assert plan["units"] and all(u["name"] and u["slices"] > 0 for u in plan["units"])
    units = len(plan["units"])
    states = _json(urls["states"].replace("regions=1", f"regions={units}"), token)
    assert states["states"] == ["success"] * units and states["run_state"] == "failed"
    assert states["stages"]["store"] == "success" and states["stages"]["finalize"] == "failed"
    assert _json(urls["findings"], token)["findings"] == []

    listing = _json(urls["images"], token)
    assert listing["final"] and listing["counts"] == {"stored": 2, "bad": 1}
    by_name = {i["name"]: i for i in listing["images"]}
    assert set(by_name) == set(BATCH)
    bad = by_name["incoming/batch/notes.jpg"]
    assert bad["status"] == "bad" and bad["error"] and not bad["viewable"]
    mirrored = by_name["incoming/batch/mirrored.jpg"]
    assert mirrored["viewable"] and mirrored["detections"] >= 5

    api = urls["api"]
    doc = _json(f"{api}/result?image={mirrored['index']}", token)
    assert doc["image"]["image_id"] == mirrored["image_id"]
    assert doc["grid"]["rows"] == 2 and len(doc["regions"]) == len(doc["region_states"]) == 4
    assert doc["region_states"] == ["success"] * 4
    assert len(doc["boxes"]) == mirrored["detections"] and doc["counts"]["person"] >= 5
    status, headers, body = _get(f"{api}/image?image={mirrored['index']}&side=320",
                                 token=token)
    assert status == 200 and body[:2] == b"\xff\xd8"
    assert max(int(v) for v in headers["x-image-size"].split("x")) == 320
    coco = doc["artifacts"]["coco.json"]
    assert mirrored["image_id"] in coco
    status, _, body = _get(f"{api}/object?key={urllib.parse.quote(coco, safe='')}", token=token)
    assert status == 200 and json.loads(body)["annotations"]

    # the bad image has nothing to show; numbers outside the batch are refused
    assert _get(f"{api}/result?image={bad['index']}", token=token)[0] == 404
    assert _get(f"{api}/image?image={bad['index']}", token=token)[0] == 404
    assert _get(f"{api}/result?image=99", token=token)[0] == 404
    for query in ("image=x", "image=-1x", "image=1.5", ""):
        assert _get(f"{api}/result?{query}", token=token)[0] == 400, query


def test_an_image_stored_with_png_previews_before_the_format_existed_still_shows(
        viewer_stack):
    """Results stored before previews had a format: ``overlay.png``, ``thumbnail.png`` and
    no thumbnail key in the outcome. The batch's stored image is turned into one (its
    outcomes.json and previews rewritten as an older version wrote them, then restored):
    its thumbnail, overlay link and overlay are still served. Seen red with the viewer
    looking for ``thumbnail.webp`` whatever the keys say."""
    from PIL import Image

    from tilescope.layout import safe_key_part

    token, client = viewer_stack["airflow"].token(), viewer_stack["client"]
    urls = _batch_urls(viewer_stack)
    outcomes_key = (f"results/batches/{safe_key_part(viewer_stack['batch_run_id'])}/"
                    "outcomes.json")
    original = client.get_object(Bucket=BUCKET, Key=outcomes_key)["Body"].read()
    doc = json.loads(original)
    outcome = next(o for o in doc["outcomes"] if o["status"] == "stored")
    prefix = outcome["keys"]["result"].rsplit("/", 1)[0].split(f"{BUCKET}/", 1)[1] + "/"
    made = []
    try:
        for role in ("overlay", "thumbnail"):
            webp = client.get_object(Bucket=BUCKET, Key=f"{prefix}{role}.webp")["Body"].read()
            out = io.BytesIO()
            Image.open(io.BytesIO(webp)).save(out, format="PNG")
            client.put_object(Bucket=BUCKET, Key=f"{prefix}{role}.png", Body=out.getvalue())
            client.delete_object(Bucket=BUCKET, Key=f"{prefix}{role}.webp")
            made.append((role, webp))
        outcome["keys"]["overlay"] = f"s3://{BUCKET}/{prefix}overlay.png"
        del outcome["keys"]["thumbnail"]
        client.put_object(Bucket=BUCKET, Key=outcomes_key, Body=json.dumps(doc).encode())

        api, index = urls["api"], outcome["index"]
        status, headers, body = _get(f"{api}/image?image={index}&side=320", token=token)
        assert status == 200 and body[:2] == b"\xff\xd8", body[:200]
        overlay = _json(f"{api}/result?image={index}", token)["artifacts"]["overlay.png"]
        status, headers, body = _get(f"{api}/object?key={urllib.parse.quote(overlay, safe='')}",
                                     token=token)
        assert status == 200 and headers["content-type"] == "image/png"
        assert body[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        client.put_object(Bucket=BUCKET, Key=outcomes_key, Body=original)
        for role, webp in made:
            client.put_object(Bucket=BUCKET, Key=f"{prefix}{role}.webp", Body=webp)
            client.delete_object(Bucket=BUCKET, Key=f"{prefix}{role}.png")


def test_batch_keys_are_confined_to_the_batch_and_its_outcomes(viewer_stack):
    token = viewer_stack["airflow"].token()
    urls = _batch_urls(viewer_stack)
    api = urls["api"]
    from tilescope.layout import safe_key_part

    outcomes = f"results/batches/{safe_key_part(viewer_stack['batch_run_id'])}/outcomes.json"
    status, _, body = _get(f"{api}/object?key={urllib.parse.quote(outcomes, safe='')}",
                           token=token)
    assert status == 200 and json.loads(body)["run_id"] == viewer_stack["batch_run_id"]
    # the single-image run's result: a real object of the bucket, not an image of this batch
    single = _json(_run_urls(viewer_stack)["result"], token)["artifacts"]["result.json"]
    for key in (single, f"s3://{BUCKET}/{single}", "incoming/batch/mirrored.jpg",
                f"scratch/batch/{safe_key_part(viewer_stack['batch_run_id'])}/plan.json",
                "results/batches/other_run/outcomes.json", f"{outcomes}/../x.json"):
        status, _, body = _get(f"{api}/object?key={urllib.parse.quote(key, safe='')}",
                               token=token)
        assert status == 400, (key, body[:200])
    # and the other way round: the single-image run serves no key of the batch
    status, _, _ = _get(_run_urls(viewer_stack)["object"].replace(
        "x.json", urllib.parse.quote(outcomes, safe="")), token=token)
    assert status == 400
    # batch parameters on a single-image run are refused, the image list does not exist
    single_api = _run_urls(viewer_stack)["result"].rsplit("/", 1)[0]
    assert _get(f"{single_api}/result?image=0", token=token)[0] == 400
    assert _get(f"{single_api}/images", token=token)[0] == 404


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


def _log_in(driver, stack, url: str):
    """Open ``url`` signed out: Airflow's login page, then back at ``url``; a waiter."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tilescope.stack.api import read_admin_password

    driver.get(url)
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=password]"))
    password = read_admin_password(stack["airflow"].home)
    driver.find_element(By.CSS_SELECTOR, "input[name=username], input#username") \
        .send_keys("admin")
    driver.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    page = urllib.parse.unquote(url).split("?")[0]
    wait.until(lambda d: urllib.parse.unquote(d.current_url).startswith(page))
    return wait


def test_a_real_browser_logs_in_and_sees_the_grid_and_boxes(viewer_stack):
    from selenium.webdriver.common.by import By

    driver = _chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        urls = _run_urls(viewer_stack)
        wait = _log_in(driver, viewer_stack, urls["page"])
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
        assert link.get_attribute("data-region") == link.get_attribute("data-task") == "5"
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


def test_a_real_browser_shows_a_batch_run_image_by_image(viewer_stack):
    from selenium.webdriver.common.by import By

    token = viewer_stack["airflow"].token()
    urls = _batch_urls(viewer_stack)
    units = len(_json(urls["plan"], token)["units"])
    images = {i["name"]: i for i in _json(urls["images"], token)["images"]}
    mirrored, crop = images["incoming/batch/mirrored.jpg"], images["incoming/batch/crop.jpg"]
    driver = _chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page = urls["page"].replace("image=0", f"image={mirrored['index']}")
        wait = _log_in(driver, viewer_stack, page)
        state = wait.until(lambda d: d.execute_script(
            "const s = window.tilescopeViewer;"
            "return s && document.body.dataset.state === 'done' && s.imageLoaded"
            " && s.boxesDrawn > 0 ? s : null;"))
        assert state["batch"] and state["images"] == 3 and state["imagesFinal"]
        assert state["units"] == units and state["unitStateCounts"] == {"success": units}
        assert state["runState"] == "failed" and state["selectedImage"] == mirrored["index"]
        assert state["cellsDrawn"] == 4 and state["stateCounts"] == {"success": 4}
        assert state["boxesDrawn"] == state["boxesTotal"] == mirrored["detections"]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#units li[data-state=success]")) \
            == units
        bad = driver.find_element(By.CSS_SELECTOR, "#images tr[data-status=bad]")
        assert "notes.jpg" in bad.text and bad.find_element(By.CLASS_NAME, "error").text
        driver.save_screenshot(str(ARTIFACTS / "viewer-batch.png"))

        # picking another stored image draws that one; the bad one is not clickable
        bad.click()
        driver.find_element(By.CSS_SELECTOR,
                            f"#images tr[data-index='{crop['index']}']").click()
        state = wait.until(lambda d: d.execute_script(
            "const s = window.tilescopeViewer;"
            f"return s.selectedImage === {crop['index']} && s.imageLoaded"
            f" && s.boxesTotal === {crop['detections']} ? s : null;"))
        assert state["cellsDrawn"] == state["regions"] > 0
        assert not state["errors"]
    finally:
        driver.quit()
