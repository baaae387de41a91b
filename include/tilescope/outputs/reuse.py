"""Result reuse: the same bytes, model and parameters are never analysed twice.

A result is content-addressed already (``results/<image id>/<params digest>/``, the image id
being its SHA-256), so an image uploaded again under another key — same bytes, same model
weights (:func:`tilescope.models.fingerprint.model_fingerprint`), same parameters
(:meth:`tilescope.params.InferenceParams.digest`) — would be analysed into the very same
keys. :class:`ResultIndex` finds such a stored result in the catalog (a *complete* computed
row whose ``result.json`` is still there); :func:`record_reused` adds the new arrival's row,
pointing at that result and marked with ``reused_from``. A partial or blocked result, a row
stored before the model's weights were recorded, or a result whose objects are gone is
analysed again.

The command line reuses the same way (``tilescope predict --catalog URL --reuse``):
:class:`ResultIndex` with ``local=True`` also accepts a result ``tilescope predict`` wrote to
a local path, :func:`load_stored` reads the stored ``Result`` back, and
:func:`record_computed` records a computed result's row exactly as the DAG's store does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from tilescope.errors import BadImageError, ConfigError, StorageError
from tilescope.handoffs import StoreSummary
from tilescope.models.fingerprint import model_fingerprint
from tilescope.outputs.catalog import RESULTS, connect, record_results, upsert_rows
from tilescope.params import InferenceParams
from tilescope.results import Result
from tilescope.storage import S3Client, default_s3_client, exists, is_s3_uri, read_bytes

#: only these results are reused (a partial one lost regions; a blocked one was never run)
REUSABLE_STATUS = "complete"
_JSON_COLUMNS = ("failed_regions", "counts", "result_keys", "seconds")
#: sha256s per catalog query (well under every driver's bound-parameter limit)
_QUERY_CHUNK = 500
_HEAD_THREADS = 8


@dataclass(frozen=True)
class StoredResult:
    """A computed catalog row whose result a new arrival reuses (what the run hands on)."""

    row_id: int
    #: the computed row's columns (JSON columns decoded; no timestamps), as stored
    row: dict[str, Any]

    @property
    def keys(self) -> dict[str, str]:
        return dict(self.row["result_keys"])

    def to_dict(self) -> dict[str, Any]:
        return {"row_id": self.row_id, "row": self.row}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoredResult:
        return cls(row_id=int(data["row_id"]), row=dict(data["row"]))

    def summary(self, image_uri: str, scratch_objects_deleted: int = 0) -> StoreSummary:
        """The store summary of a new arrival reusing this result."""
        row = self.row
        return StoreSummary(image_id=str(row["image_id"]), image_uri=image_uri,
                            status=str(row["status"]), detections=int(row["detections"]),
                            counts=dict(row["counts"]),
                            failed_regions=list(row["failed_regions"]),
                            regions=int(row["regions"]), model_share=None, keys=self.keys,
                            scratch_objects_deleted=scratch_objects_deleted)


class ResultIndex:
    """Finds stored results for one run's model and parameters, by image SHA-256.

    ``client`` reads ``s3://`` results (``None``: the environment's, made when a found
    result is in S3). A result at a local path counts only with ``local`` — the command
    line, which wrote it on this machine; a DAG's workers and the consumers of its events
    read results from S3, so a row the CLI recorded with local paths is analysed again there.
    """

    def __init__(self, catalog_url: str, params: InferenceParams, client: S3Client | None,
                 *, local: bool = False) -> None:
        self.catalog_url = catalog_url
        self.params_hash = params.digest()
        self.model_digest = model_fingerprint(params.model, params.model_options)
        self.client = client
        self.local = local

    def find(self, sha256: str) -> StoredResult | None:
        """The stored result of these bytes, or ``None`` (analyse them)."""
        return self.lookup([sha256]).get(sha256)

    __call__ = find  # what :func:`tilescope.tasks.image.prepare` asks

    def lookup(self, sha256s: Iterable[str]) -> dict[str, StoredResult]:
        """sha256 → stored result, for those of ``sha256s`` that have one (one query per
        :data:`_QUERY_CHUNK` images, then a HEAD of each ``result.json``)."""
        wanted = sorted(set(sha256s))
        if not wanted:
            return {}
        found: dict[str, StoredResult] = {}
        engine = connect(self.catalog_url)
        try:
            with engine.connect() as conn:
                for start in range(0, len(wanted), _QUERY_CHUNK):
                    query = sa.select(RESULTS).where(
                        RESULTS.c.image_sha256.in_(wanted[start:start + _QUERY_CHUNK]),
                        RESULTS.c.params_hash == self.params_hash,
                        RESULTS.c.model_digest == self.model_digest,
                        RESULTS.c.reused_from.is_(None),
                        RESULTS.c.status == REUSABLE_STATUS)
                    for record in conn.execute(query):
                        row = _decoded(dict(record._mapping))
                        stored = StoredResult(int(row.pop("id")), row)
                        if self.local or is_s3_uri(stored.keys.get("result", "")):
                            found[row["image_sha256"]] = stored
        finally:
            engine.dispose()
        client = self.client
        if client is None and any(is_s3_uri(s.keys.get("result", "")) for s in found.values()):
            client = default_s3_client()  # one for every HEAD, not one per object
        with ThreadPoolExecutor(_HEAD_THREADS, thread_name_prefix="reuse") as pool:
            present = dict(zip(found, pool.map(
                lambda stored: _exists(stored.keys.get("result", ""), client),
                found.values()), strict=True))
        return {sha: stored for sha, stored in found.items() if present[sha]}


def load_stored(stored: StoredResult, client: S3Client | None = None) -> Result | None:
    """The stored ``result.json`` as a :class:`Result`, or ``None`` when it went away after
    the lookup found it (then the image is analysed again)."""
    try:
        data = read_bytes(stored.keys["result"], client)
    except BadImageError:  # no such object or file
        return None
    return Result.from_dict(json.loads(data))


def check_catalog(catalog_url: str) -> None:
    """Connect to the catalog once (its tables created or migrated), so a bad URL or an
    unreachable database fails before any model runs. Messages show the URL without its
    password."""
    try:
        shown = sa.engine.make_url(catalog_url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError as exc:
        raise ConfigError("--catalog takes an SQLAlchemy URL, e.g. sqlite:///catalog.db or "
                          "postgresql://user@host/db") from exc
    try:
        connect(catalog_url).dispose()
    except (sa.exc.NoSuchModuleError, ModuleNotFoundError) as exc:
        raise ConfigError(f"--catalog {shown}: no database driver for it ({exc})") from exc
    except sa.exc.SQLAlchemyError as exc:  # unreachable, refused: not the parameters' fault
        raise StorageError(f"catalog {shown} cannot be opened: "
                           f"{str(exc).splitlines()[0]}") from exc


def record_computed(catalog_url: str, results: Iterable[tuple[Result, dict[str, str]]],
                    params: InferenceParams, *, run_id: str | None) -> None:
    """The computed rows of ``(result, its result keys)`` (one transaction), with the
    parameters' digest and the model's fingerprint the DAG's store records: a later lookup
    of the same bytes, model and parameters finds them."""
    engine = connect(catalog_url)
    try:
        record_results(engine, [(result, params.digest(), keys) for result, keys in results],
                       run_id, model_fingerprint(params.model, params.model_options))
    finally:
        engine.dispose()


def _exists(uri: str, client: S3Client | None) -> bool:
    """Whether a stored result's object is still there (a retention rule may have gone
    through ``results/`` since the row was written)."""
    return bool(uri) and exists(uri, client)


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """A catalog row as JSON-able values: JSON columns decoded, timestamps dropped."""
    for column in _JSON_COLUMNS:
        row[column] = json.loads(row[column])
    row.pop("created_at", None)
    row.pop("updated_at", None)
    return row


def record_reused(catalog_url: str, arrivals: Iterable[tuple[str, StoredResult]], *,
                  run_id: str | None) -> int:
    """One catalog row per ``(image URI, stored result)``: the stored row's facts, the new
    URI and run, ``reused_from`` set (a re-run of the same arrival updates its row). The
    computed row's own URI again (the same object run twice) adds nothing: that row says
    it already. Returns how many rows were written."""
    now = datetime.now(UTC)
    rows = {}
    for image_uri, stored in arrivals:
        if image_uri == stored.row["image_uri"]:
            continue
        row = {**stored.row, "image_uri": image_uri, "run_id": run_id,
               "reused_from": stored.row_id, "created_at": now, "updated_at": now,
               "seconds": {}}
        for column in _JSON_COLUMNS:
            row[column] = json.dumps(row[column])
        rows[(row["image_sha256"], row["params_hash"], image_uri)] = row
    engine = connect(catalog_url)
    try:
        upsert_rows(engine, list(rows.values()), reused=True)
    finally:
        engine.dispose()
    return len(rows)
