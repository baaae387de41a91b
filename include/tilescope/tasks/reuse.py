"""Result reuse in the DAG's tasks: a stored result stands in for the analysis.

preprocess asks a :class:`~tilescope.outputs.reuse.ResultIndex` once an image's bytes are
hashed (:func:`tilescope.tasks.image.prepare`; a batch asks once for all its small images).
A one-image run whose image has a result returns no regions — ``analyze`` is mapped over
nothing and is skipped — and ``prepared.reused``; synthesize hands the stored
``result.json`` on, and store (:func:`store_reused`) records the arrival's own catalog row,
marked reused, instead of writing outputs. finalize settles the arrival as for any stored
result. Nothing here imports Airflow.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from tilescope.handoffs import Prepared, StoreSummary
from tilescope.layout import ScratchLayout, preview_names
from tilescope.moderation import ModerationPolicy
from tilescope.outputs.reuse import ResultIndex, StoredResult, record_reused
from tilescope.params import InferenceParams
from tilescope.results import ImageInfo
from tilescope.slicing import SlicePlan
from tilescope.storage import S3Client, parse_s3_uri


def reuse_index(catalog_url: str | None, params: InferenceParams, client: S3Client, *,
                enabled: bool = True,
                moderation: ModerationPolicy | None = None) -> ResultIndex | None:
    """The run's lookup of stored results, or ``None`` (analyse everything): reuse turned
    off (the ``reuse`` Param), no catalog to look in, or a moderation gate asked for — the
    stored result may have been made without that gate, so the image must pass it here."""
    if not enabled or not catalog_url or (moderation is not None and moderation.enabled):
        return None
    return ResultIndex(catalog_url, params, client)


def reused_prepared(image: ImageInfo, plan: SlicePlan, stored: StoredResult,
                    run: str) -> Prepared:
    """A one-image run's hand-off when its image has a stored result: nothing staged."""
    scratch = ScratchLayout(parse_s3_uri(image.uri).bucket, image.image_id, run)
    # the stored result's own plain picture, in whatever format it was stored (before the
    # preview format existed: always thumbnail.png, not in its keys)
    thumbnail = stored.keys["result"].rsplit("/", 1)[0] + "/" \
        + preview_names(stored.keys)["thumbnail"]
    return Prepared(image=image, plan=plan.summary(), source_uri="", thumbnail_uri=thumbnail,
                    scratch_prefix=scratch.prefix_uri, ready_at=time.time(),
                    reused=stored.to_dict())


def stored_result_uri(prepared: Prepared) -> str:
    """synthesize's answer for a reused image: the stored ``result.json``."""
    return StoredResult.from_dict(prepared.reused or {}).keys["result"]


def store_reused(prepared: Prepared, *, catalog_url: str | None,
                 run_id: str | None) -> StoreSummary:
    """store for a reused image: its own catalog row pointing at the stored result."""
    stored = StoredResult.from_dict(prepared.reused or {})
    if catalog_url:
        record_reused(catalog_url, [(prepared.image.uri, stored)], run_id=run_id)
    return stored.summary(prepared.image.uri)


def reused_outcome(stored: dict[str, Any], image_uri: str) -> dict[str, Any]:
    """A batch image's outcome fields when it reused a stored result."""
    summary = StoredResult.from_dict(stored).summary(image_uri)
    return {"image_id": summary.image_id, "keys": summary.keys,
            "detections": summary.detections, "counts": summary.counts,
            "result_status": summary.status,
            "reused_from": int(stored["row_id"])}


def mark_reused(items: Sequence[Any], index: ResultIndex) -> int:
    """Set ``reused`` on the batch's small images (``tasks.batch.BatchItem``) that have a
    stored result (one lookup for all of them; a big image was asked when it was prepared).
    Returns how many were marked."""
    small = [i for i in items if i.whole and not i.bad and not i.reused and i.image]
    found = index.lookup(str((i.image or {})["sha256"]) for i in small)
    marked = 0
    for item in small:
        stored = found.get(str((item.image or {})["sha256"]))
        if stored is not None:
            item.reused = stored.to_dict()
            marked += 1
    return marked


def record_batch_reused(catalog_url: str, entries: Sequence[Mapping[str, Any]],
                        items: Mapping[int, Any], *, run_id: str | None) -> int:
    """The reused catalog rows of a batch's stored entries that reused a result."""
    return record_reused(catalog_url, [
        (items[int(e["index"])].uri, StoredResult.from_dict(e["reused"]))
        for e in entries if e.get("reused")], run_id=run_id)
