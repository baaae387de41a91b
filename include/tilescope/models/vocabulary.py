"""Open vocabularies: category names discovered at run time, mapped to integer ids.

Embedded detectors have a fixed ``CATEGORY_NAMES`` tuple; cloud models (an LLM, Rekognition,
a user's endpoint) answer with label *strings* nobody listed in advance. Merging and results
work on integer ids, so each open-vocabulary model keeps a :class:`Vocabulary` that hands out
ids as names appear. Two region tasks see different names in different orders, so their ids
disagree; each finding therefore carries its names, and :func:`reconcile` maps every finding
onto one run-wide vocabulary before the cross-region merge.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np

from tilescope.detections import Detections


class Vocabulary:
    """A growing name → id table (thread-safe: slices of one call run concurrently)."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._names: list[str] = []
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()
        for name in names:
            self.id_of(name)

    def id_of(self, name: str) -> int:
        """The id of ``name``, assigning the next free one the first time it is seen."""
        with self._lock:
            found = self._ids.get(name)
            if found is None:
                found = self._ids[name] = len(self._names)
                self._names.append(name)
            return found

    @property
    def names(self) -> tuple[str, ...]:
        """Name per id (index = id), a snapshot."""
        with self._lock:
            return tuple(self._names)

    def __len__(self) -> int:
        return len(self._names)


def remap(dets: Detections, names: Sequence[str], target: Vocabulary) -> Detections:
    """``dets`` (ids into ``names``) with ids into ``target`` instead, same names. Only names
    that label a detection are added to ``target``."""
    if not len(dets):
        return dets
    ids = dets.category_ids
    if ids.min() < 0 or ids.max() >= len(names):
        raise ValueError(f"category id {int(ids.max())} outside a vocabulary of "
                         f"{len(names)} names")
    table = np.full(len(names), -1, np.int32)
    for index in np.unique(ids):
        table[index] = target.id_of(str(names[index]))
    return Detections(dets.boxes, dets.scores, table[ids], dets.slices, dets.masks)


def reconcile(fixed_names: Sequence[str],
              parts: Sequence[tuple[Detections, Sequence[str] | None]]
              ) -> tuple[list[Detections], list[str]]:
    """Put detections from many vocabularies onto one: ``(detections per part, names)``.

    A part with names ``None`` already uses ``fixed_names`` (the fixed-vocabulary path,
    unchanged). Names discovered in open-vocabulary parts are appended after the fixed ones
    in sorted order, and only names that label a detection are kept, so the run-wide ids
    depend on what was found, not on which region happened to be processed first (the CLI
    and the DAG assign identical ids).
    """
    used: set[str] = set()
    for dets, names in parts:
        if names is not None and len(dets):
            used.update(str(names[i]) for i in np.unique(dets.category_ids)
                        if 0 <= i < len(names))  # out of range: remap says so
    vocabulary = Vocabulary(fixed_names)
    for name in sorted(used - set(fixed_names)):
        vocabulary.id_of(name)
    out = [dets if names is None else remap(dets, names, vocabulary) for dets, names in parts]
    return out, list(vocabulary.names)
