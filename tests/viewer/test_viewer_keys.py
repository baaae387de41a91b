"""What the viewer accepts from URLs: ids, regions, and S3 keys confined to one run."""

from __future__ import annotations

import pytest

from tilescope.layout import ScratchLayout
from tilescope.viewer.keys import (
    RunPrefixes,
    ViewerInputError,
    resolve_key,
    run_prefixes,
    validate_dag_id,
    validate_region,
    validate_run_id,
)

IMAGE_ID = "0123456789abcdef"
RUN_ID = "manual__2026-11-21T10:00:00.123456+00:00"
SCRATCH = ScratchLayout("tilescope", IMAGE_ID, RUN_ID).prefix
PREPARED = {"image": {"image_id": IMAGE_ID}, "scratch_prefix": f"s3://tilescope/{SCRATCH}"}
STORED = {"keys": {"result": f"s3://tilescope/results/{IMAGE_ID}/a1b2c3d4e5f6/result.json"}}


@pytest.fixture
def run() -> RunPrefixes:
    return run_prefixes(RUN_ID, PREPARED, STORED)


def test_ids_airflow_accepts_pass_unchanged():
    assert validate_dag_id("tiled_inference") == "tiled_inference"
    for run_id in (RUN_ID, "arrival__3f2a__a1", "scheduled__2026-01-01T00:00:00+00:00"):
        assert validate_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", ["", ".", "..", "../x", "a/b", "a\\b", "a b", "x" * 251,
                                    "run\x00", "run%2F..", "<script>"])
def test_run_ids_that_could_traverse_or_inject_are_refused(run_id):
    with pytest.raises(ViewerInputError):
        validate_run_id(run_id)


@pytest.mark.parametrize("dag_id", ["", "..", "a/b", "dag id", "d:ag", "x" * 251])
def test_bad_dag_ids_are_refused(dag_id):
    with pytest.raises(ViewerInputError):
        validate_dag_id(dag_id)


def test_regions_from_query_strings():
    assert validate_region(None) is None and validate_region("") is None
    assert validate_region("-1") is None  # an unmapped task instance's map index
    assert validate_region("7", count=8) == 7
    for bad in ("8", "-2", "1.5", "x", "1e3", "9999999"):
        with pytest.raises(ViewerInputError):
            validate_region(bad, count=8)


def test_run_prefixes_come_from_the_runs_own_xcoms(run):
    assert run.bucket == "tilescope"
    assert run.scratch == SCRATCH
    assert run.results == f"results/{IMAGE_ID}/a1b2c3d4e5f6/"
    assert run_prefixes(RUN_ID, None, None) is None
    before_store = run_prefixes(RUN_ID, PREPARED, None)
    assert before_store.results is None and before_store.prefixes == (SCRATCH,)


@pytest.mark.parametrize("prepared, stored", [
    ({**PREPARED, "scratch_prefix": "s3://tilescope/scratch/"}, None),  # widened scratch
    ({**PREPARED, "scratch_prefix": f"s3://tilescope/{SCRATCH}../"}, None),
    ({**PREPARED, "image": {"image_id": "../../etc"}}, None),
    (PREPARED, {"keys": {"result": "s3://tilescope/results/result.json"}}),
    (PREPARED, {"keys": {"result": f"s3://other/results/{IMAGE_ID}/a1b2c3d4/result.json"}}),
    (PREPARED, {"keys": {"result": f"s3://tilescope/incoming/{IMAGE_ID}/a1b2c3d4/result.json"}}),
])
def test_a_tampered_xcom_cannot_widen_the_prefixes(prepared, stored):
    with pytest.raises(ViewerInputError):
        run_prefixes(RUN_ID, prepared, stored)


def test_another_runs_scratch_prefix_is_refused():
    other = {**PREPARED, "scratch_prefix": "s3://tilescope/" + ScratchLayout(
        "tilescope", IMAGE_ID, "manual__other").prefix}
    with pytest.raises(ViewerInputError):
        run_prefixes(RUN_ID, other, None)


def test_keys_inside_the_run_resolve(run):
    results = f"results/{IMAGE_ID}/a1b2c3d4e5f6/"
    assert resolve_key(results + "coco.json", run).uri == f"s3://tilescope/{results}coco.json"
    assert resolve_key(f"s3://tilescope/{SCRATCH}findings/region-0003.json", run).key == \
        f"{SCRATCH}findings/region-0003.json"
    assert resolve_key(results + "overlay.png", run).bucket == "tilescope"


@pytest.mark.parametrize("key", [
    "", "incoming/kite.jpg", "processed/kite.jpg", "results/", f"results/{IMAGE_ID}/",
    f"results/{IMAGE_ID}/ffffffff/result.json",  # the same image, other parameters
    f"results/{IMAGE_ID}/a1b2c3d4e5f6/../../../incoming/secret.json",
    f"results/{IMAGE_ID}/a1b2c3d4e5f6/./result.json",
    f"results/{IMAGE_ID}/a1b2c3d4e5f6//result.json",
    f"/results/{IMAGE_ID}/a1b2c3d4e5f6/result.json",
    f"results\\{IMAGE_ID}\\a1b2c3d4e5f6\\result.json",
    f"results/{IMAGE_ID}/a1b2c3d4e5f6/result.json\x00.png",
    f"results/{IMAGE_ID}/a1b2c3d4e5f6/notes.txt",  # not a servable type
    f"s3://elsewhere/results/{IMAGE_ID}/a1b2c3d4e5f6/result.json",
    f"{SCRATCH}pixels.tif",
    f"results/{IMAGE_ID}/a1b2c3d4e5f6/" + "a" * 1100 + ".json",
])
def test_keys_outside_the_run_or_traversing_are_refused(run, key):
    with pytest.raises(ViewerInputError):
        resolve_key(key, run)


def test_the_stored_previews_are_found_by_the_keys_store_recorded():
    """A run's overlay and thumbnail are the ones its store summary names (WebP, JPEG or
    PNG); a run stored before the preview format existed recorded ``overlay.png`` and no
    thumbnail key: its PNGs are still found and served. Seen red with run_prefixes ignoring
    the recorded keys (the legacy PNG names for every run)."""
    results = f"s3://tilescope/results/{IMAGE_ID}/a1b2c3d4e5f6/"
    webp = run_prefixes(RUN_ID, PREPARED, {"keys": {
        "result": results + "result.json", "coco": results + "coco.json",
        "overlay": results + "overlay.webp", "thumbnail": results + "thumbnail.webp"}})
    assert dict(webp.previews) == {"overlay": "overlay.webp", "thumbnail": "thumbnail.webp"}
    assert webp.object(webp.previews["thumbnail"], where="results").uri == \
        results + "thumbnail.webp"
    assert resolve_key(results + "overlay.webp", webp).key.endswith("/overlay.webp")
    legacy = run_prefixes(RUN_ID, PREPARED, {"keys": {
        "result": results + "result.json", "coco": results + "coco.json",
        "overlay": results + "overlay.png"}})
    assert dict(legacy.previews) == {"overlay": "overlay.png", "thumbnail": "thumbnail.png"}
    assert resolve_key(results + "thumbnail.png", legacy).key.endswith("/thumbnail.png")


@pytest.mark.parametrize("role, uri", [
    ("overlay", f"s3://tilescope/results/{IMAGE_ID}/a1b2c3d4e5f6/result.json"),
    ("thumbnail", f"s3://tilescope/results/{IMAGE_ID}/ffffffff/thumbnail.webp"),
    ("thumbnail", f"s3://tilescope/results/{IMAGE_ID}/a1b2c3d4e5f6/overlay.webp"),
    ("overlay", "s3://tilescope/incoming/kite.webp"),
])
def test_a_tampered_preview_key_is_refused(role, uri):
    """Seen red with the preview-key check removed from run_prefixes."""
    with pytest.raises(ViewerInputError, match=f"unexpected {role} key"):
        run_prefixes(RUN_ID, PREPARED, {"keys": {**STORED["keys"], role: uri}})
