"""µm under the results viewer's pointer for whole-slide scans (issue 15, item 5), and a
slide's reduced-level regions and region findings drawn in level-0 pixels, as its result."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tilescope.microscopy import SlideScale
from tilescope.slicing import plan_slices
from tilescope.viewer.shaping import findings_payload, plan_payload, result_payload

VIEWER_JS = (Path(__file__).resolve().parents[2] / "plugins" / "tilescope_viewer_ui"
             / "viewer.js")
#: a 20× OME slide whose level 1 halves it a little unevenly per axis
SCALE = SlideScale("ome", ((2047, 1535), (1024, 768)), (0.5, 0.25), 20.0, level=1)
SX, SY = 2047 / 1024, 1535 / 768


def slide_image() -> dict:
    return {"uri": "s3://b/slide.ome.tif", "width": 2047, "height": 1535,
            "image_id": "0123456789abcdef", "sha256": "x", "microscopy": SCALE.to_dict()}


def test_a_slides_result_payload_carries_its_microns_per_pixel():
    doc = {"status": "complete", "image": slide_image(), "category_names": ["cell"],
           "detections": [{"bbox": [10, 20, 30, 40], "score": 0.9, "category_id": 0}]}
    payload = result_payload(doc)
    assert payload["microscopy"] == {"mpp": [0.5, 0.25], "objective_power": 20.0,
                                     "level": 1, "level_magnification": 20.0 / SX}
    assert payload["boxes"] == [[10, 20, 40, 60]]  # level-0 pixels, as stored
    plain = result_payload({"image": {"width": 64, "height": 48}, "detections": []})
    assert plain["microscopy"] is None


def test_a_slides_regions_and_findings_are_drawn_in_level0_pixels():
    plan = plan_slices(1024, 768, 256, 256, 51, 51, grid=(2, 2))
    payload = plan_payload([r.to_dict() for r in plan.regions],
                           {"image": slide_image(), "plan": plan.summary()})
    for row, region in zip(payload["regions"], plan.regions, strict=True):
        x1, y1, x2, y2 = region.box.x1, region.box.y1, region.box.x2, region.box.y2
        assert row["box"] == [round(x1 * SX, 2), round(y1 * SY, 2), round(x2 * SX, 2),
                              round(y2 * SY, 2)]
    finding = {"index": 0, "name": "r0c0", "detections_count": 1,
               "detections": {"boxes": [[100, 200, 110, 220]], "scores": [0.9],
                              "category_ids": [0]}}
    plain = findings_payload([finding], lambda uri: None)
    assert plain[0]["boxes"] == [[100, 200, 110, 220]]
    scaled = findings_payload([finding], lambda uri: None, factors=(SX, SY))
    assert scaled[0]["boxes"] == [[round(100 * SX, 2), round(200 * SY, 2),
                                   round(110 * SX, 2), round(220 * SY, 2)]]


@pytest.mark.skipif(shutil.which("node") is None, reason="node (to run viewer.js) missing")
def test_the_pages_microns_are_pixels_times_the_slides_mpp():
    """``micronsAt`` and ``micronsLine`` cut out of viewer.js and run by node on the
    payload the page gets."""
    source = VIEWER_JS.read_text()
    functions = "".join(re.search(rf"\n  function {name}\(.*?\n  }}\n", source, re.S).group(0)
                        for name in ("micronsAt", "micronsLine"))
    scan = result_payload({"image": slide_image(), "detections": []})["microscopy"]
    points = [[0, 0], [1000, 600], [2047, 1535], [12.5, 7.25]]
    script = (functions + f"const scan = {json.dumps(scan)};\n"
              f"const pts = {json.dumps(points)};\n"
              "console.log(JSON.stringify({um: pts.map(([c, r]) => micronsAt(scan, c, r)), "
              "line: micronsLine(scan, 1000, 600)}));")
    out = json.loads(subprocess.run(["node", "-e", script], capture_output=True, text=True,
                                    check=True).stdout)
    assert out["um"] == [[c * 0.5, r * 0.25] for c, r in points]
    assert out["line"] == ("x 1000.0, y 600.0 px · 500.0 µm, 150.0 µm (0.5 µm/px, 20× "
                           "scan analysed at level 1 (10.0×))")
