"""Archival copies of a batch: what a burst of photos keeps and what it costs the store step.

The bundled sample photos (Debian darknet's JPEGs by default) go through one batch run's
task bodies on an in-process moto S3 server — preprocess, analyze (NanoDet), synthesize —
then ``store_batch`` runs once without a copy and once per archive format
(``keep_original=keep``, adaptive quality at SSIM ≥ 0.95 unless ``--quality``). Prints, per
format, the copies' bytes as a share of the originals' and the store step's added wall time
per image (its copies are made ``COPY_THREADS`` at a time), and each image's quality, SSIM
and share.

    python bench/batch_archive_bench.py [--formats webp,avif] [--photos kite,dog,...]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

BUCKET = "bench-archive"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="webp,avif")
    parser.add_argument("--photos", default="kite,dog,person,horses,eagle,giraffe")
    parser.add_argument("--ssim", type=float, default=0.95)
    parser.add_argument("--quality", type=int, default=0)
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    from tilescope.archival import ArchivePolicy
    from tilescope.models.nanodet import NanoDetModel
    from tilescope.params import InferenceParams
    from tilescope.samples import sample_path
    from tilescope.storage import read_bytes
    from tilescope.tasks.batch import (
        COPY_THREADS,
        analyze_unit,
        combine_batch,
        prepare_batch,
        store_batch,
    )

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    client.create_bucket(Bucket=BUCKET)
    originals = {}
    for name in args.photos.split(","):
        data = Path(sample_path(name)).read_bytes()
        client.put_object(Bucket=BUCKET, Key=f"in/{name}.jpg", Body=data)
        originals[f"s3://{BUCKET}/in/{name}.jpg"] = data
    params = InferenceParams(model="nanodet-coco")
    mapped, prepared = prepare_batch([{"uri": uri} for uri in originals], params,
                                     client=client, run="bench", model_slice_size=416)
    with NanoDetModel() as model:
        findings = [analyze_unit(m, prepared, params, model, client=client, budget=48_000)
                    for m in mapped]
    results = combine_batch(prepared, findings, params, "nanodet-coco", client=client)

    def timed_store(policy: ArchivePolicy | None) -> tuple[float, list]:
        started = time.perf_counter()
        _, outcomes = store_batch(results, prepared, params, client=client, catalog_url=None,
                                  archive=policy)
        return time.perf_counter() - started, outcomes

    base, _ = timed_store(None)
    total = sum(len(data) for data in originals.values())
    print(f"{len(originals)} photos, {total:,} bytes; store without a copy: {base:.2f} s "
          f"({COPY_THREADS} copies at a time)")
    for fmt in args.formats.split(","):
        wall, outcomes = timed_store(ArchivePolicy(fmt, quality=args.quality, ssim=args.ssim))
        kept = 0
        rows = []
        for outcome in outcomes:
            facts = json.loads(read_bytes(outcome.keys["result"], client))["archive"]
            kept += facts["bytes"]
            share = facts["bytes"] / facts["original_bytes"]
            rows.append(f"{outcome.uri.rsplit('/', 1)[1]} {share:.0%} q{facts['quality']} "
                        f"ssim {facts['ssim']:.3f}")
        print(f"{fmt}: {kept:,} bytes = {kept / total:.1%} of the originals; store "
              f"{wall:.2f} s, +{(wall - base) / len(originals):.2f} s per image; "
              + "; ".join(rows))
    server.stop()


if __name__ == "__main__":
    main()
