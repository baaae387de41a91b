"""What skipping nodata slices saves (issue 15, item 2): the same scene with and without a
40 % nodata collar, through ``tilescope predict``'s pipeline in one sitting.

A real-photo mosaic (``tilescope.samples.build_mosaic``) is written twice as a
Cloud-Optimized GeoTIFF by GDAL's COG driver (``gdal_translate -of COG``, or the same
driver through rasterio when gdal-bin is missing; UTM zone 33N, 0.5 m): once as it is,
once with a frame around it set to the nodata value (nodata 0; the
frame covers ``--collar`` of the pixels, 40 % by default). Valid pixels that are 0 are
raised to 1 in both scenes, so only the frame is nodata and the two differ only there.
Each scene is analysed ``--repeat`` times, alternating, with the real NanoDet model in this
process (``run_image``, what ``tilescope predict`` runs); the best of each is kept. Printed:
slices seen and skipped, model seconds (``seconds.model``) and wall seconds, and the
collar scene's share of the full scene's.

``--validity sidecar`` measures GDAL's external mask instead: one COG whose frame is 0
(a fill, no nodata value) analysed with its mask beside it as ``<scene>.msk`` (written by
GDAL, ``GDAL_TIFF_INTERNAL_MASK=NO``; the COG's bytes untouched) and without it — the
same pixels, only the sidecar differs.

    python bench/nodata_bench.py [--size 4096] [--collar 0.4] [--repeat 2]
                                 [--validity nodata|sidecar]
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from tilescope.samples import build_mosaic

ORIGIN, PIXEL_METRES = (500_000.0, 5_000_000.0), 0.5


def collar_width(size: int, share: float) -> int:
    """Frame width (pixels) whose frame holds ``share`` of a ``size``² scene's pixels."""
    return round(size * (1 - math.sqrt(1 - share)) / 2)


def write_cog(pixels: np.ndarray, path: Path, nodata: int | None) -> Path:
    """``pixels`` as a COG made by GDAL's COG driver: ``gdal_translate -of COG`` when
    Debian's gdal-bin is here, else the same driver through rasterio's bundled GDAL."""
    import rasterio
    from rasterio.shutil import copy as gdal_copy
    from rasterio.transform import from_origin

    plain = path.with_suffix(".plain.tif")
    height, width = pixels.shape[:2]
    with rasterio.open(plain, "w", driver="GTiff", width=width, height=height, count=3,
                       dtype="uint8", crs="EPSG:32633", tiled=True,
                       transform=from_origin(*ORIGIN, PIXEL_METRES, PIXEL_METRES),
                       **({"nodata": nodata} if nodata is not None else {})) as ds:
        ds.write(np.moveaxis(pixels, 2, 0))
    if shutil.which("gdal_translate"):
        subprocess.run(["gdal_translate", "-q", "-of", "COG", "-co", "COMPRESS=DEFLATE",
                        str(plain), str(path)], check=True)
    else:
        gdal_copy(str(plain), str(path), driver="COG", compress="DEFLATE")
    plain.unlink()
    return path


def write_sidecar(path: Path, valid: np.ndarray) -> Path:
    """GDAL's external mask of ``path`` (0 where ``valid`` is False) as ``<path>.msk``,
    written by GDAL itself (rasterio's ``write_mask`` with ``GDAL_TIFF_INTERNAL_MASK=NO``);
    the COG's own bytes are not changed."""
    import rasterio

    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), \
            rasterio.open(path, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
        ds.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    return Path(f"{path}.msk")


def scenes(size: int, share: float, folder: Path,
           validity: str = "nodata") -> tuple[Path, Path, float]:
    """(scene without the collar said, scene with it, the collar's measured share of the
    pixels): ``nodata`` the full photo and the collar as nodata; ``sidecar`` one COG with a
    0-filled frame, once without and once with its ``.msk`` sidecar."""
    pixels = build_mosaic(size)
    pixels[pixels == 0] = 1  # 0 is the nodata: keep the photo's own black out of it
    width = collar_width(size, share)
    valid = np.zeros(pixels.shape[:2], bool)
    valid[width:size - width, width:size - width] = True
    if validity == "sidecar":
        pixels[~valid] = 0
        without = write_cog(pixels, folder / "unmasked.tif", None)
        masked = folder / "masked.tif"
        shutil.copy(without, masked)
        write_sidecar(masked, valid)
        return without, masked, float(np.mean(~valid))
    full = write_cog(pixels, folder / "full.tif", None)
    pixels[~valid] = 0
    measured = float(np.mean(np.all(pixels == 0, axis=2)))
    collar = write_cog(pixels, folder / "collar.tif", 0)
    return full, collar, measured


def analyse(path: Path, model) -> dict:
    """One ``run_image`` of ``path``: slices, skipped, model and wall seconds."""
    from tilescope.params import InferenceParams
    from tilescope.pipeline import run_image
    from tilescope.readers import open_image

    started = time.perf_counter()
    reader, image = open_image(str(path))
    with reader:
        result = run_image(reader, image, InferenceParams(model="nanodet-coco"), model)
    return {"slices": sum(r.slice_count for r in result.regions),
            "skipped": result.skipped_slices,
            "model_s": result.seconds["model"], "wall_s": time.perf_counter() - started,
            "detections": len(result.detections)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--collar", type=float, default=0.4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--validity", choices=["nodata", "sidecar"], default="nodata",
                        help="how the collar is said: a nodata value, or a .msk sidecar")
    args = parser.parse_args()
    from tilescope.models.registry import load_model

    with tempfile.TemporaryDirectory() as tmp, load_model("nanodet-coco") as model:
        full, collar, share = scenes(args.size, args.collar, Path(tmp), args.validity)
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for name, path in (("full", full), ("collar", collar)):
                run = analyse(path, model)
                if name not in best or run["wall_s"] < best[name]["wall_s"]:
                    best[name] = run
    said = "nodata" if args.validity == "nodata" else "0-filled, .msk-masked"
    print(f"{args.size}² COG, {said} collar {share:.1%} of the pixels "
          f"('full' {'without the collar' if args.validity == 'nodata' else 'without the .msk'})")
    for name, run in best.items():
        print(f"  {name:6s}: {run['slices']} slices, {run['skipped']} skipped, "
              f"model {run['model_s']:.2f} s, wall {run['wall_s']:.2f} s, "
              f"{run['detections']} detections")
    f, c = best["full"], best["collar"]
    print(f"collar / full: slices sent {(c['slices'] - c['skipped']) / f['slices']:.2f}, "
          f"model time {c['model_s'] / f['model_s']:.2f}, wall {c['wall_s'] / f['wall_s']:.2f}")


if __name__ == "__main__":
    main()
