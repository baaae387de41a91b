"""Preview downscaling (never upscaled, bounded) and the URLs between viewer and Airflow UI."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tilescope.viewer import links
from tilescope.viewer.images import MAX_SIDE, downscale, parse_side
from tilescope.viewer.keys import ViewerInputError


def _png(width: int, height: int) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_downscale_keeps_the_aspect_ratio_and_colours():
    preview = downscale(_png(2048, 1024), 512)
    assert (preview.width, preview.height) == (512, 256)
    assert preview.media_type == "image/jpeg"
    with Image.open(io.BytesIO(preview.data)) as image:
        assert image.size == (512, 256)
        red = image.convert("RGB").getpixel((64, 128))
    assert red[0] > 200 and red[1] < 60


def test_small_images_are_not_upscaled():
    preview = downscale(_png(300, 200), 1600)
    assert (preview.width, preview.height) == (300, 200)


def test_side_parameter_is_bounded():
    assert parse_side(None) > 0 and parse_side("640") == 640
    for bad in ("0", "63", str(MAX_SIDE + 1), "abc", "-5", "1e3"):
        with pytest.raises(ViewerInputError):
            parse_side(bad)


def test_links_encode_run_ids_and_respect_the_base_path():
    run_id = "manual__2026-11-21T10:00:00+00:00"
    assert links.base_path("http://127.0.0.1:8080") == ""
    assert links.base_path("https://example.org/airflow/") == "/airflow"
    assert links.task_log("/airflow", "tiled_inference", run_id, "analyze", 7, 2) == (
        "/airflow/dags/tiled_inference/runs/manual__2026-11-21T10%3A00%3A00%2B00%3A00"
        "/tasks/analyze/mapped/7?try_number=2")
    assert links.viewer_page("", "tiled_inference", run_id, 3).startswith(
        "/tilescope/viewer/dags/tiled_inference/runs/manual__")
    assert links.viewer_page("", "d", "r", 3).endswith("?region=3")


def test_extra_link_only_on_the_viewer_tasks():
    dags = ("tiled_inference",)
    assert links.extra_link("", "tiled_inference", "r1", "store", -1, dags) == (
        "/dags/tiled_inference/runs/r1/plugin/tilescope-viewer")
    assert links.extra_link("", "tiled_inference", "r1", "analyze", 4, dags) == (
        "/dags/tiled_inference/runs/r1/tasks/analyze/mapped/4/plugin/tilescope-region")
    assert links.extra_link("", "tiled_inference", "r1", "preprocess", -1, dags) == ""
    assert links.extra_link("", "s3_arrivals", "r1", "store", -1, dags) == ""
