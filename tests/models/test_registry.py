"""The model registry: built-ins, in-process registrations, and entry-point plug-ins."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tilescope.errors import ConfigError
from tilescope.models import available_models, model_factory, model_slice_size
from tilescope.models.registry import model_categories, model_coco_ids


def test_builtin_metadata_without_loading_weights():
    assert "nanodet-coco" in available_models()
    assert model_slice_size("nanodet-coco") == 416
    names = model_categories("nanodet-coco")
    assert len(names) == 80 and names[0] == "person"
    assert model_coco_ids("nanodet-coco")[:3] == [1, 2, 3]


def test_unknown_model_names_the_available_ones():
    with pytest.raises(ConfigError, match="nanodet-coco"):
        model_factory("no-such-model")


def test_entry_point_plugins_are_found_in_another_process(tmp_path):
    """A package declaring a ``tilescope.models`` entry point is usable by name — the way a
    model reaches Airflow workers, which are separate processes."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent('''
        from tilescope.models.base import DetectionModel
        class Echo(DetectionModel):
            name = "echo"
            preferred_slice_size = 320
            CATEGORY_NAMES = ("thing",)
            def predict(self, images):
                return []
    '''))
    info = tmp_path / "my_models-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-models\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tilescope.models]\necho = my_models:Echo\n")
    code = ("from tilescope.models import available_models, model_slice_size;"
            "from tilescope.models.registry import model_categories;"
            "print('echo' in available_models(), model_slice_size('echo'),"
            " model_categories('echo'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         check=True).stdout
    assert out.split() == ["True", "320", "['thing']"]
