"""Real sample photos for demos, tests and benchmarks, obtained from packages (never a hub).

* scikit-image's wheel bundles ``astronaut``, ``coffee``, ``chelsea``, ``motorcycle_left``,
  ``rocket``, and ``page`` (a photographed book page, for the text-regions model)...
* Debian's ``darknet`` package ships ``kite`` (1352×900, many small people and kites),
  ``dog``, ``person``, ``horses``, ``eagle``, ``giraffe``. When the package is not installed
  the .deb is fetched with ``apt-get download`` and unpacked into the cache (no root install).
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
_DARKNET_DIR = Path("/usr/share/darknet/data")


def sample_names() -> tuple[str, ...]:
    return SKIMAGE_SAMPLES + DARKNET_SAMPLES


def sample_path(name: str) -> Path:
    """A local file of the named sample photo (PNG for scikit-image ones, JPEG for darknet)."""
    if name in SKIMAGE_SAMPLES:
        return _skimage_sample(name)
    if name in DARKNET_SAMPLES:
        return _darknet_sample(name)
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
    if shutil.which("apt-get") is None:
        raise RuntimeError("the darknet sample photos need Debian's apt-get (package 'darknet')")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", "-q", "darknet"]
        if subprocess.run(download, cwd=tmp, capture_output=True).returncode != 0:
            # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            subprocess.run(download, cwd=tmp, capture_output=True, check=True)
        (deb,) = Path(tmp).glob("darknet_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        for photo in (Path(tmp) / "usr/share/darknet/data").glob("*.jpg"):
            shutil.copy(photo, dest / photo.name)


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
