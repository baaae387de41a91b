"""The DAG's ``transform`` step: change the image before it is kept, on the basis of the
result — today an anonymized copy (:mod:`tilescope.anonymize`).

It runs between synthesize and store: the staged full-resolution pixels are still in scratch,
so the copy is read from them region by region (the face detector too, when asked), written
beside the result under ``results/<image-id>/<digest>/anonymized.<ext>``, and recorded in the
parked result, which store then keeps (and lists in the catalog row's keys). The original is
not touched here: an archival copy, when asked, is encoded by store from the same regions
(the record's ``regions``), and only after it is read back does the keep policy apply.
"""

from __future__ import annotations

import json
from typing import Any

from tilescope.anonymize import check_anonymize
from tilescope.errors import ConfigError
from tilescope.handoffs import BatchPrepared, Prepared
from tilescope.layout import ANONYMIZED, ResultsLayout, open_source
from tilescope.outputs.anonymized import anonymize_copy, copy_extension
from tilescope.outputs.writers import result_json
from tilescope.params import InferenceParams
from tilescope.readers.base import ImageReader
from tilescope.results import Result
from tilescope.storage import S3Client, parse_s3_uri, read_bytes, write_bytes
from tilescope.tasks.archive import earlier_record


def check_transform(params: InferenceParams) -> None:
    """What preprocess refuses up front: classes the model does not have (and anonymize
    with a magnification). Anonymize with an archival copy is fine, one image or a batch:
    the copy is encoded from the anonymized pixels (:mod:`tilescope.tasks.archive`); a batch
    makes each image's copies in its store step (:func:`tilescope.tasks.batch.store_batch`)."""
    check_anonymize(params)


def anonymize_beside(result: Result, reader: ImageReader, params: InferenceParams,
                     client: S3Client) -> dict[str, Any]:
    """Write the anonymized copy of ``result``'s image (read by ``reader``, full resolution)
    beside its result, ``results/<image-id>/<digest>/anonymized.<ext>`` → the record."""
    layout = ResultsLayout(parse_s3_uri(result.image.uri).bucket, result.image.image_id,
                           params.digest())
    ext = copy_extension(result.image.format, reader.width, reader.height)
    return anonymize_copy(reader, result, params, layout.uri(f"{ANONYMIZED}.{ext}"), ext,
                          client)


def transform(result_uri: str, prepared: Prepared | BatchPrepared, params: InferenceParams,
              *, client: S3Client) -> str:
    """Write the anonymized copy the run asks for (nothing when ``anonymize`` is empty) and
    record it in the parked result. Returns the result URI for store (the same key)."""
    if not params.anonymize:
        return result_uri
    if isinstance(prepared, BatchPrepared):
        raise ConfigError("a batch anonymizes each image in its own store step "
                          "(tilescope.tasks.batch.store_batch), not here")
    if prepared.video:
        raise ConfigError(f"{prepared.image.uri} is a video: anonymize works on images")
    result = Result.from_dict(json.loads(read_bytes(result_uri, client)))
    layout = ResultsLayout(parse_s3_uri(result.image.uri).bucket, result.image.image_id,
                           params.digest())
    # a retry after keep_original removed an original that was the source itself (a tiled
    # TIFF read in place): the copy the earlier attempt stored stands, regions and all
    result.anonymized = earlier_record(prepared.source_uri, result.image, layout, "anonymized",
                                       client)
    if result.anonymized is None:
        with open_source(prepared.source_uri, client) as reader:
            result.anonymized = anonymize_beside(result, reader, params, client)
    write_bytes(result_uri, result_json(result), "application/json", client)
    return result_uri
