"""Real sample photos for demos, tests and benchmarks, obtained from packages (never a hub).

* scikit-image's wheel bundles ``astronaut``, ``coffee``, ``chelsea``, ``motorcycle_left``,
  ``rocket``, and ``page`` (a photographed book page, for the text-regions model)...
* Debian's ``darknet`` package ships ``kite`` (1352×900, many small people and kites),
  ``dog``, ``person``, ``horses``, ``eagle``, ``giraffe``. When the package is not installed
  the .deb is fetched with ``apt-get download`` and unpacked into the cache (no root install).
* Debian's ``opencv-doc`` ships ``vtest`` (``vtest.avi``: 768×576, 79.5 s at 10 fps, MPEG-4
  v3 — pedestrians and cars on a campus street), fetched the same way; only that file is
  extracted from the 96 MB package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from tilescope.models.weights import cache_root

SKIMAGE_SAMPLES = ("astronaut", "coffee", "chelsea", "motorcycle_left", "rocket",
                   "page")  # page: a photographed page of text (grey)
DARKNET_SAMPLES = ("kite", "dog", "person", "horses", "eagle", "giraffe")
VIDEO_SAMPLES = ("vtest",)
_DARKNET_DIR = Path("/usr/share/darknet/data")
_OPENCV_DATA_DIR = Path("/usr/share/doc/opencv-doc/examples/data")


def sample_names() -> tuple[str, ...]:
    return SKIMAGE_SAMPLES + DARKNET_SAMPLES + VIDEO_SAMPLES


def sample_path(name: str) -> Path:
    """A local file of the named sample (PNG for scikit-image ones, JPEG for darknet, AVI
    for the opencv-doc video)."""
    if name in SKIMAGE_SAMPLES:
        return _skimage_sample(name)
    if name in DARKNET_SAMPLES:
        return _darknet_sample(name)
    if name in VIDEO_SAMPLES:
        return _opencv_doc_video(name)
    raise KeyError(f"unknown sample {name!r}; known: {', '.join(sample_names())}")


def sample_array(name: str) -> np.ndarray:
    """The named sample as an RGB uint8 array."""
    from PIL import Image

    with Image.open(sample_path(name)) as image:
        return np.asarray(image.convert("RGB"))


def _skimage_sample(name: str) -> Path:
    target = cache_root() / "samples" / f"{name}.png"
    if not target.exists():
        import skimage.data
        from PIL import Image

        # motorcycle_left is the left view of scikit-image's bundled stereo pair
        pixels = (skimage.data.stereo_motorcycle()[0] if name == "motorcycle_left"
                  else getattr(skimage.data, name)())
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        Image.fromarray(pixels).save(tmp, format="PNG")
        os.replace(tmp, target)
    return target


def _darknet_sample(name: str) -> Path:
    installed = _DARKNET_DIR / f"{name}.jpg"
    if installed.exists():
        return installed
    target = cache_root() / "samples" / "darknet" / f"{name}.jpg"
    if not target.exists():
        _unpack_darknet_photos(target.parent)
    return target


def _unpack_darknet_photos(dest: Path) -> None:
    """``apt-get download darknet`` and keep only its sample photos."""
    _unpack_from_deb("darknet", "./usr/share/darknet/data/*.jpg", dest)


def _opencv_doc_video(name: str) -> Path:
    installed = _OPENCV_DATA_DIR / f"{name}.avi"
    if installed.exists():
        return installed
    target = cache_root() / "samples" / "opencv-doc" / f"{name}.avi"
    if not target.exists():
        _unpack_from_deb("opencv-doc", f"./{_OPENCV_DATA_DIR.relative_to('/')}/{name}.avi",
                         target.parent)
    return target


def _unpack_from_deb(package: str, pattern: str, dest: Path) -> None:
    """``apt-get download PACKAGE`` and copy the files matching ``pattern`` (a path inside
    the package, ``*`` allowed) into ``dest`` — extracting only those, not the package.
    Raises :class:`RuntimeError` saying why when the package cannot be had."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(f"sample files from Debian's {package!r} need apt-get and dpkg-deb")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", "-q", package]
        if subprocess.run(download, cwd=tmp, capture_output=True).returncode != 0:
            # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            fetched = subprocess.run(download, cwd=tmp, capture_output=True, text=True)
            if fetched.returncode != 0:
                raise RuntimeError(f"apt-get download {package} failed: "
                                   f"{fetched.stderr.strip()[-300:]}")
        (deb,) = Path(tmp).glob(f"{package}_*.deb")
        tree = Path(tmp) / "tree"
        tree.mkdir()
        contents = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                    stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(tree), "--wildcards", pattern],
                       stdin=contents.stdout, check=True)
        contents.wait()
        found = list(tree.glob(pattern.removeprefix("./")))
        if not found:
            raise RuntimeError(f"{package} has no file matching {pattern}")
        for path in found:  # copy, then rename: a reader never sees half a file
            tmp_copy = dest / f".{path.name}.{os.getpid()}.tmp"
            shutil.copy(path, tmp_copy)
            os.replace(tmp_copy, dest / path.name)


def build_mosaic(size: int, names: tuple[str, ...] = ("kite", "astronaut", "dog", "horses",
                                                       "chelsea", "person", "coffee", "giraffe"),
                 seed: int = 0) -> np.ndarray:
    """A ``size × size`` RGB image tiled from real photos at their native scale.

    Large test images made of real content: objects keep their natural size, so a sliced
    detector finds what a whole-image pass cannot.
    """
    rng = np.random.default_rng(seed)
    photos = [sample_array(n) for n in names]
    canvas = np.zeros((size, size, 3), np.uint8)
    y = 0
    while y < size:
        x, row_height = 0, 0
        while x < size:
            photo = photos[int(rng.integers(len(photos)))]
            h, w = min(photo.shape[0], size - y), min(photo.shape[1], size - x)
            canvas[y:y + h, x:x + w] = photo[:h, :w]
            x += w
            row_height = max(row_height, h)
        y += row_height
    return canvas
