"""``model=onnx`` as a whole: bad models refused by name, S3 models cached by sha256,
names given by configuration, batches equal to single slices, providers falling back.

The "batched" graphs answer ``base + gain × mean(image)`` (``support.onnx_graphs``), so each
slice of a batch has detections of its own: a slot mixed up in a batch would show.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.onnx_graphs import detector, names_metadata, write

from tilescope.cli import main
from tilescope.errors import BadModelError, ConfigError
from tilescope.models import available_models, load_model, model_slice_size
from tilescope.models.model_files import local_model_file
from tilescope.models.onnx_detector import OnnxDetector, auto_batch
from tilescope.models.registry import model_categories

NAMES = ["person", "kite", "dog"]


def yolov8(size: int = 320, *, batch: int | str = "N", gain: float = 0.0,
           names: list[str] | None = NAMES) -> bytes:
    """A YOLOv8-layout graph with a candidate on every 37th anchor; with ``gain`` its
    boxes and scores follow the image's mean."""
    anchors = sum((size // s) ** 2 for s in (8, 16, 32))
    base = np.zeros((4 + 3, anchors), np.float32)
    gains = np.zeros_like(base)
    picked = np.arange(0, anchors, 37)
    rng = np.random.default_rng(5)
    base[0, picked] = rng.uniform(20, size - 20, len(picked))
    base[1, picked] = rng.uniform(20, size - 20, len(picked))
    base[2:4, picked] = rng.uniform(8, 60, (2, len(picked)))
    classes = 4 + picked % 3
    base[classes, picked] = rng.uniform(0.0, 0.5, len(picked))
    gains[0, picked] = rng.uniform(-40, 40, len(picked))
    gains[classes, picked] = gain
    return detector({"output0": base}, gains={"output0": gains if gain else gains * 0},
                    input_shape=(batch, 3, size, size),
                    metadata=names_metadata(names) if names else None)


def crops(sample, count: int = 7) -> list[np.ndarray]:
    """Slices of a real photo, some smaller than the input (edge slices are)."""
    photo = np.asarray(Image.open(sample("kite")).convert("RGB"))
    sizes = [(320, 320), (200, 320), (320, 150), (90, 60), (320, 320), (250, 250), (320, 40)]
    return [photo[40 * i:40 * i + h, 50 * i:50 * i + w] for i, (h, w) in
            enumerate(sizes[:count])]


def keys(per_slice) -> list:
    return [sorted(zip(d.category_ids.tolist(), d.boxes.round(3).tolist(),
                       d.scores.round(5).tolist(), strict=True)) for d in per_slice]


# --- bad models: a clear error naming the problem ---------------------------------------

def test_not_a_detector(tmp_path: Path) -> None:
    path = write(tmp_path / "classifier.onnx", detector({"probs": np.zeros(1000, np.float32)},
                                                        metadata=names_metadata(NAMES)))
    with pytest.raises(BadModelError, match=r"not a detector: outputs \(1, 1000\)"):
        OnnxDetector(path)


def test_unknown_output_layout(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.onnx", detector({"out": np.zeros((7, 9), np.float32)},
                                                 metadata=names_metadata(NAMES)))
    with pytest.raises(BadModelError, match=r"unknown output layout \(1, 7, 9\).*family"):
        OnnxDetector(path)


def test_missing_labels_and_mismatched_labels(tmp_path: Path) -> None:
    path = write(tmp_path / "nameless.onnx", yolov8(names=None))
    with pytest.raises(BadModelError, match=r"missing labels: .*model_options.labels"):
        OnnxDetector(path)
    labels = tmp_path / "two.txt"
    labels.write_text("cat\ndog\n")
    with pytest.raises(BadModelError, match="scores 3 classes but has 2 names"):
        OnnxDetector(path, labels=str(labels))
    with pytest.raises(ConfigError, match=r"labels file .* does not exist"):
        OnnxDetector(path, labels=str(tmp_path / "none.txt"))


def test_wrong_input_rank(tmp_path: Path) -> None:
    path = write(tmp_path / "flat.onnx", detector(
        {"output0": np.zeros((7, 2100), np.float32)}, input_shape=("N", 640),
        metadata=names_metadata(NAMES)))
    with pytest.raises(BadModelError, match=r"wrong input rank: .*\(rank 2\)"):
        OnnxDetector(path)


@pytest.mark.parametrize("data", [b"", b"this is not a model\n", yolov8()[:300]])
def test_corrupt_file(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path / "broken.onnx", data)
    with pytest.raises(BadModelError, match="not a readable ONNX model"):
        OnnxDetector(path)


def test_cli_refuses_a_bad_model_and_stores_nothing(tmp_path: Path, sample, capsys) -> None:
    path = write(tmp_path / "broken.onnx", b"\x08\x07garbage")
    out = tmp_path / "result.json"
    assert main(["predict", str(sample("kite")), "--model", "onnx", "--model-option",
                 f"path={path}", "--out", str(out), "--quiet"]) == 3
    assert "not a readable ONNX model" in capsys.readouterr().err
    assert not out.exists()
    assert main(["predict", str(sample("kite")), "--model", "onnx", "--quiet"]) == 2
    assert "needs model_options.path" in capsys.readouterr().err


def test_result_reuse_fingerprints_the_model_file_not_its_name(tmp_path: Path, s3_client,
                                                                monkeypatch) -> None:
    """A new file under the same S3 key (or path) is a new model for result reuse.

    Seen red with fingerprint.weights_sha256 not asking the class for its weights file: an
    onnx model was then known by its name alone, and both uploads gave one fingerprint (the
    second model would have been served the first one's stored results)."""
    import hashlib

    from tilescope.models.fingerprint import model_fingerprint, weights_sha256

    monkeypatch.setenv("TILESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    s3_client.create_bucket(Bucket="reused-models")
    options = {"path": "s3://reused-models/det.onnx"}
    prints = []
    for names in (NAMES, ["cat", "car", "tree"]):
        data = yolov8(names=names)
        s3_client.put_object(Bucket="reused-models", Key="det.onnx", Body=data)
        assert weights_sha256("onnx", options) == hashlib.sha256(data).hexdigest()
        prints.append(model_fingerprint("onnx", options))
    local = write(tmp_path / "local.onnx", yolov8(size=256))
    prints.append(model_fingerprint("onnx", {"path": local}))
    assert len(set(prints)) == 3


# --- S3: downloaded once, cached by sha256, checked --------------------------------------

def test_s3_model_cached_by_sha256(tmp_path: Path, s3_client) -> None:
    import hashlib

    s3_client.create_bucket(Bucket="models")
    data = yolov8()
    s3_client.put_object(Bucket="models", Key="det.onnx", Body=data)
    uri, cache = "s3://models/det.onnx", tmp_path / "cache"
    digest = hashlib.sha256(data).hexdigest()
    first = local_model_file(uri, cache_dir=cache)
    assert first.name == f"{digest}.onnx" and first.read_bytes() == data
    first.write_bytes(b"tampered")  # a cached copy that no longer checks is fetched again
    assert local_model_file(uri, cache_dir=cache, sha256=digest).read_bytes() == data

    with pytest.raises(BadModelError, match=r"has sha256 .* expected 00"):
        local_model_file(uri, cache_dir=tmp_path / "other", sha256="00" * 32)
    s3_client.put_object(Bucket="models", Key="bad.onnx", Body=b"\x08\x07garbage")
    with pytest.raises(BadModelError, match="not a readable ONNX model"):
        local_model_file("s3://models/bad.onnx", cache_dir=tmp_path / "other")
    assert list((tmp_path / "other" / "models" / "onnx").glob("*.onnx")) == []
    with pytest.raises(ConfigError, match="does not exist"):
        local_model_file("s3://models/none.onnx", cache_dir=cache)


# --- configuration, not code -------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_named_by_configuration(tmp_path: Path, monkeypatch, suffix: str) -> None:
    path = write(tmp_path / "det.onnx", yolov8(size=256))
    entry = {"my-detector": {"model": "onnx", "options": {"path": path, "batch": 2}}}
    config = tmp_path / f"models{suffix}"
    config.write_text(json.dumps(entry))  # JSON is YAML too
    monkeypatch.setenv("TILESCOPE_MODELS", str(config))
    assert "my-detector" in available_models()
    assert model_categories("my-detector") == NAMES
    assert model_slice_size("my-detector") == 256
    assert model_slice_size("onnx", {"path": path, "input_size": 512}) == 512
    with load_model("my-detector", score_threshold=0.1) as model:
        assert (model.name, model.batch, model.score_threshold) == ("my-detector", 2, 0.1)
    config.write_text(json.dumps({"mine": {"options": {"path": path}}}))
    with pytest.raises(ConfigError, match="'mine' needs a 'model'"):
        load_model("mine")


# --- batches: identical detections ------------------------------------------------------

def test_batched_equals_unbatched(tmp_path: Path, sample) -> None:
    path = write(tmp_path / "det.onnx", yolov8(gain=0.9))
    slices = crops(sample)
    with OnnxDetector(path, batch=1, parallel_slices=1) as one, \
            OnnxDetector(path, batch=3, parallel_slices=2) as three, \
            OnnxDetector(path, batch=16, parallel_slices=1) as all_at_once:
        single = keys(one.predict(slices))
        assert single == keys(three.predict(slices)) == keys(all_at_once.predict(slices))
    assert sum(map(len, single)) > 20 and len({len(k) for k in single}) > 2


def test_fixed_batch_axis_is_padded(tmp_path: Path, sample) -> None:
    dynamic = write(tmp_path / "dyn.onnx", yolov8(gain=0.9))
    fixed = write(tmp_path / "four.onnx", yolov8(gain=0.9, batch=4))
    slices = crops(sample)
    with OnnxDetector(dynamic, batch=1) as one, OnnxDetector(fixed) as four:
        assert four.batch == 4
        assert keys(one.predict(slices)) == keys(four.predict(slices))


def test_missing_provider_falls_back_to_cpu(tmp_path: Path, sample, caplog) -> None:
    path = write(tmp_path / "det.onnx", yolov8(gain=0.9))
    slices = crops(sample, 3)
    with caplog.at_level(logging.WARNING, logger="tilescope.models.providers"), \
            OnnxDetector(path, providers="tensorrt,cuda") as model:
        fallen = [r.getMessage() for r in caplog.records]
        assert len(fallen) == 1 and "running on CPU" in fallen[0]
        with OnnxDetector(path) as cpu:
            assert keys(model.predict(slices)) == keys(cpu.predict(slices))
    with pytest.raises(ConfigError, match="unknown execution provider 'warp'"):
        OnnxDetector(path, providers=["warp"])


class CountingSession:
    """The real session, counting ``run`` calls (how many batches a call made)."""

    def __init__(self, session) -> None:
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)


@pytest.mark.parametrize(("options", "runs"), [
    ({"parallel_slices": 1}, 7),  # auto on the CPU: one slice a run
    ({"parallel_slices": 2}, 7),
    ({"parallel_slices": 1, "batch": 8}, 1),
    ({"parallel_slices": 2, "batch": 4}, 2),
    ({"parallel_slices": 1, "batch": 3}, 3),
])
def test_runs_per_call(tmp_path: Path, sample, options, runs) -> None:
    path = write(tmp_path / "det.onnx", yolov8(gain=0.9))
    slices = crops(sample)
    with OnnxDetector(path, batch=1, parallel_slices=1) as reference, \
            OnnxDetector(path, **options) as model:
        counting = model._session = CountingSession(model._session)
        assert keys(model.predict(slices)) == keys(reference.predict(slices))
    assert counting.runs == runs


def test_automatic_batch() -> None:
    assert auto_batch(7, 1, accelerated=False) == auto_batch(7, 2, accelerated=False) == 1
    assert (auto_batch(7, 2, True), auto_batch(7, 1, True), auto_batch(30, 2, True)) == (4, 7, 8)


def test_batch_setting(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path / "det.onnx", yolov8())
    monkeypatch.setenv("TILESCOPE_ONNX_BATCH", "3")
    with OnnxDetector(path) as configured, OnnxDetector(path, batch=5) as given:
        assert (configured.batch, given.batch) == (3, 5)
