"""Whole-slide scans: a pyramid's levels, microns per pixel, objective power, the level to analyse.

A pathology scan is one picture stored at several resolutions (the *pyramid*): an Aperio SVS
holds them as successive IFDs, a pyramidal OME-TIFF as SubIFDs of its full-resolution page.
tifffile already sorts those pages into ``series[0].levels`` (its SVS and OME-TIFF parsers,
the layouts QuPath and OpenSlide read); this module checks that they really are reductions of
one picture and reads the scale the scanner recorded:

* **SVS**: the ImageDescription's ``MPP = 0.2520`` (µm per level-0 pixel, both axes) and
  ``AppMag = 40`` (the objective power), through tifffile's Aperio description parser;
* **OME-TIFF**: the first Image's ``Pixels`` ``PhysicalSizeX/Y`` with their units (µm when
  unstated, as the OME schema says) and the ``NominalMagnification`` of the ``Objective`` its
  ``ObjectiveSettings`` names (or the document's only Objective).

A level's downsample is exact per axis (level-0 size over the level's size), so a box found at
a reduced level is put back in level-0 pixels by multiplying x by one and y by the other.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tilescope.errors import BadImageError, ConfigError

#: a requested magnification matches a level whose own is within this fraction of it
MAGNIFICATION_TOLERANCE = 0.05

#: OME ``UnitsLength`` values that are physical lengths, in µm
_MICRONS_PER_UNIT = {"m": 1e6, "dm": 1e5, "cm": 1e4, "mm": 1e3, "µm": 1.0, "μm": 1.0,
                     "um": 1.0, "nm": 1e-3, "pm": 1e-6, "Å": 1e-4, "in": 25_400.0,
                     "thou": 25.4}
#: OME units that say the size is not physical: no µm can come from them
_NOT_PHYSICAL = ("pixel", "reference frame")


class SlideError(BadImageError):
    """A whole-slide scan whose pyramid or scale metadata cannot be used as it stands."""


@dataclass(frozen=True)
class SlideScale:
    """A scan's pyramid (each level's width × height, level 0 first), its level-0 µm per
    pixel across and down, its objective power, and the level analysed."""

    kind: str
    levels: tuple[tuple[int, int], ...]
    mpp: tuple[float, float] | None = None
    objective_power: float | None = None
    level: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """The analysed level's width and height: the pixels the model sees."""
        return self.levels[self.level]

    def downsample(self, level: int | None = None) -> tuple[float, float]:
        """Level-0 pixels per pixel of ``level`` (default: the analysed one), across and down."""
        width, height = self.levels[self.level if level is None else level]
        return self.levels[0][0] / width, self.levels[0][1] / height

    def magnification(self, level: int | None = None) -> float | None:
        """The objective power ``level`` corresponds to (power ÷ downsample across)."""
        if self.objective_power is None:
            return None
        return self.objective_power / self.downsample(level)[0]

    def level_mpp(self, level: int | None = None) -> tuple[float, float] | None:
        """µm per pixel of ``level`` (default: the analysed one)."""
        if self.mpp is None:
            return None
        sx, sy = self.downsample(level)
        return self.mpp[0] * sx, self.mpp[1] * sy

    def to_dict(self) -> dict[str, Any]:
        sx, sy = self.downsample()
        return {"kind": self.kind, "mpp": list(self.mpp) if self.mpp else None,
                "objective_power": self.objective_power, "level": self.level,
                "level_width": self.size[0], "level_height": self.size[1],
                "downsample": [sx, sy], "level_mpp": _listed(self.level_mpp()),
                "level_magnification": self.magnification(),
                "levels": [{"width": w, "height": h,
                            "downsample": list(self.downsample(i)),
                            "magnification": self.magnification(i)}
                           for i, (w, h) in enumerate(self.levels)]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SlideScale | None:
        if not data:
            return None
        mpp = data.get("mpp")
        return cls(kind=str(data["kind"]),
                   levels=tuple((int(lv["width"]), int(lv["height"])) for lv in data["levels"]),
                   mpp=(float(mpp[0]), float(mpp[1])) if mpp else None,
                   objective_power=data.get("objective_power"), level=int(data["level"]))


def _listed(pair: tuple[float, float] | None) -> list[float] | None:
    return list(pair) if pair else None


def slide_pages(tiff: Any, name: str) -> list[Any] | None:
    """The pages of a whole-slide scan's pyramid, level 0 first (``None``: not an SVS or
    OME-TIFF). :class:`SlideError` when its levels are not reductions of one picture, or
    are of another kind of pixel than level 0 (those cannot be read as one image)."""
    if not (tiff.is_svs or tiff.is_ome):
        return None
    first = tiff.pages.first
    try:
        pages = [level.keyframe for level in tiff.series[0].levels]
    except Exception as exc:  # tifffile found no series in what it took for a slide
        raise SlideError(f"{name}: its slide pyramid cannot be read: {exc}") from exc
    if not pages or (pages[0].imagewidth, pages[0].imagelength) != (first.imagewidth,
                                                                       first.imagelength):
        raise SlideError(f"{name}: its first image is not its pyramid's full-resolution "
                         "level: an unsupported slide layout")
    width0, height0 = int(first.imagewidth), int(first.imagelength)
    previous = (width0, height0)
    for number, page in enumerate(pages[1:], start=1):
        width, height = int(page.imagewidth), int(page.imagelength)
        sx, sy = width0 / width, height0 / height
        if not (width < previous[0] and height < previous[1]) \
                or abs(width - width0 / sy) > 1 or abs(height - height0 / sx) > 1:
            raise SlideError(f"{name}: pyramid level {number} is {width}×{height}, not a "
                             f"reduction of level 0's {width0}×{height0} (downsample "
                             f"{sx:.3g} across, {sy:.3g} down): a corrupt pyramid")
        if (page.samplesperpixel, page.dtype, page.planarconfig) != \
                (first.samplesperpixel, first.dtype, first.planarconfig):
            raise SlideError(f"{name}: pyramid level {number} holds {page.dtype}×"
                             f"{page.samplesperpixel} pixels, level 0 {first.dtype}×"
                             f"{first.samplesperpixel}: an unsupported pyramid")
        previous = (width, height)
    return pages


def read_slide_scale(tiff: Any, pages: Sequence[Any], name: str) -> SlideScale:
    """The scale of the slide open as ``tiff`` whose pyramid is ``pages``
    (:func:`slide_pages`)."""
    levels = tuple((int(p.imagewidth), int(p.imagelength)) for p in pages)
    if tiff.is_svs:
        mpp, power = _svs_scale(tiff.pages.first.description, name)
        return SlideScale("svs", levels, mpp, power)
    mpp, power = _ome_scale(tiff.ome_metadata or "", name)
    return SlideScale("ome", levels, mpp, power)


def _positive(value: Any, what: str, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (number > 0 and math.isfinite(number)):
        raise SlideError(f"{name}: its {what} is {value!r}, not a positive number")
    return number


def _svs_scale(description: str, name: str) -> tuple[tuple[float, float] | None, float | None]:
    """(µm per pixel across and down, objective power) from an Aperio ImageDescription."""
    from tifffile.tifffile import svs_description_metadata

    try:
        meta = svs_description_metadata(description)
    except ValueError as exc:
        raise SlideError(f"{name}: its Aperio description cannot be read: {exc}") from exc
    mpp = _positive(meta["MPP"], "MPP", name) if "MPP" in meta else None
    power = _positive(meta["AppMag"], "AppMag", name) if "AppMag" in meta else None
    return ((mpp, mpp) if mpp else None), power


def _ome_scale(xml: str, name: str) -> tuple[tuple[float, float] | None, float | None]:
    """(µm per pixel across and down, objective power) from OME-XML."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise SlideError(f"{name}: its OME-XML cannot be parsed: {exc}") from exc
    image = next((e for e in root.iter() if _tag(e) == "Image"), None)
    pixels = next((e for e in image.iter() if _tag(e) == "Pixels"), None) \
        if image is not None else None
    mpp = None
    if pixels is not None:
        sizes = [_microns(pixels, axis, name) for axis in ("X", "Y")]
        if sizes[0] is not None and sizes[1] is not None:
            mpp = (sizes[0], sizes[1])
    objectives = [e for e in root.iter() if _tag(e) == "Objective"]
    chosen = next((e for e in image.iter() if _tag(e) == "ObjectiveSettings"), None) \
        if image is not None else None
    objective = next((o for o in objectives if chosen is not None
                      and o.get("ID") == chosen.get("ID")), None)
    if objective is None and len(objectives) == 1:
        objective = objectives[0]
    power = objective.get("NominalMagnification") if objective is not None else None
    return mpp, (_positive(power, "Objective NominalMagnification", name)
                 if power is not None else None)


def _tag(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _microns(pixels: ET.Element, axis: str, name: str) -> float | None:
    """``PhysicalSize{axis}`` in µm (``None``: not stated, or not a physical length)."""
    value = pixels.get(f"PhysicalSize{axis}")
    if value is None:
        return None
    unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
    if unit in _NOT_PHYSICAL:
        return None
    if unit not in _MICRONS_PER_UNIT:
        raise SlideError(f"{name}: its OME PhysicalSize{axis}Unit {unit!r} is not a length "
                         "unit tilescope knows")
    return _positive(value, f"OME PhysicalSize{axis}", name) * _MICRONS_PER_UNIT[unit]


def not_a_slide(name: str, magnification: float) -> ConfigError:
    """The error for a magnification asked of an image that has no slide pyramid."""
    return ConfigError(f"{name} is not a whole-slide scan (an Aperio SVS or a pyramidal "
                       f"OME-TIFF): it has no {magnification:g}× level")


def choose_level(scale: SlideScale, magnification: float, name: str) -> int:
    """The level of ``scale`` whose magnification is ``magnification`` (within
    :data:`MAGNIFICATION_TOLERANCE`, the closest): :class:`ConfigError` naming the levels a
    slide has when none is, or when the slide does not state its objective power."""
    if scale.objective_power is None:
        source = "AppMag" if scale.kind == "svs" else "Objective NominalMagnification"
        raise ConfigError(f"{name} does not state its objective power (no {source}): "
                          f"magnification {magnification:g} cannot be found in it")
    powers = [scale.magnification(i) or 0.0 for i in range(len(scale.levels))]
    best = min(range(len(powers)), key=lambda i: abs(powers[i] - magnification))
    if abs(powers[best] - magnification) > MAGNIFICATION_TOLERANCE * magnification:
        have = ", ".join(f"{p:.3g}×" for p in powers)
        raise ConfigError(f"{name} has no {magnification:g}× level (its levels are at "
                          f"{have})")
    return best
