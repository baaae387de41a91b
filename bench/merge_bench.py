"""Benchmark tilescope's merge / NMS against SAHI 0.12.8 on realistic sliced-detection output.

Usage::

    python bench/merge_bench.py [--sizes 10000 100000 300000] [--repeat 3] [--sahi-limit 60]

The input imitates what merging sees after sliced inference on a large image: mostly small
objects, clustered (parking lots, crowds), each detected once per overlapping 640 px slice
(cut at slice borders), plus the model's own lower-scored near-duplicates, some class
confusion and false positives. Scores are rounded to 3 decimals, so ties occur. Everything is
drawn from a fixed seed per size, so runs are comparable.

For every size and strategy it prints:

- ``ours s``: best of ``--repeat`` runs of :func:`tilescope.postprocess.merge`.
- ``SAHI s``: one run of SAHI's postprocess class (``GreedyNMMPostprocess`` etc.) on the
  equivalent ``ObjectPrediction`` list, numpy backend - what ``get_sliced_prediction`` pays
  (building the ``ObjectPrediction`` objects is not timed).
- ``SAHI-idx s``: one run of SAHI's numpy-backend function (``batched_greedy_nmm`` etc.) on the
  ``(N, 6)`` array; it only returns indices, so it is a lower bound for SAHI.
- ratios SAHI / ours, kept boxes (ours / SAHI) and whether the outputs are identical (same
  boxes, scores and categories, in the same order).

SAHI runs whose estimated time (extrapolated from the previous size) exceeds ``--sahi-limit``
seconds are skipped with a note. The last line is ``RESULT {json}`` for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from tilescope.detections import Detections
from tilescope.postprocess import merge, nms

CONFIGS = [("greedynmm", "ios"), ("nms", "iou"), ("nmm", "ios")]


def clustered_detections(n: int, seed: int, n_classes: int = 5) -> Detections:
    """``n`` detections like sliced inference (640 px slices, 20 % overlap) produces."""
    rng = np.random.default_rng(seed)
    n_obj = max(1, n // 2)
    side = float(np.sqrt(n_obj / 150e-6))  # ~150 objects per megapixel
    n_clusters = max(1, n_obj // 50)
    centers = rng.uniform(0, side, (n_clusters, 2))
    spread = rng.uniform(30, 400, n_clusters)
    cluster = rng.integers(0, n_clusters, n_obj)
    center = centers[cluster] + rng.normal(0, 1, (n_obj, 2)) * spread[cluster, None]
    w = np.exp(rng.normal(np.log(22), 0.55, n_obj))
    big = rng.random(n_obj) < 0.02
    w[big] *= rng.uniform(4, 12, int(big.sum()))
    h = w * np.exp(rng.normal(0, 0.3, n_obj))
    ox1 = np.clip(center[:, 0] - w / 2, 0, side)
    ox2 = np.clip(center[:, 0] + w / 2, 0, side)
    oy1 = np.clip(center[:, 1] - h / 2, 0, side)
    oy2 = np.clip(center[:, 1] + h / 2, 0, side)
    ok = (ox2 - ox1 > 2) & (oy2 - oy1 > 2)
    ox1, ox2, oy1, oy2, cluster = ox1[ok], ox2[ok], oy1[ok], oy2[ok], cluster[ok]
    m = len(ox1)
    cluster_cat = rng.integers(0, n_classes, n_clusters)
    ocat = np.where(rng.random(m) < 0.85, cluster_cat[cluster], rng.integers(0, n_classes, m))
    oscore = rng.beta(5, 2, m)

    # One detection per slice that sees enough of the object, cut at the slice border.
    size, stride = 640, 512
    kx0 = np.maximum(np.ceil((ox1 - size) / stride), 0).astype(np.int64)
    kx1 = np.floor(ox2 / stride).astype(np.int64)
    ky0 = np.maximum(np.ceil((oy1 - size) / stride), 0).astype(np.int64)
    ky1 = np.floor(oy2 / stride).astype(np.int64)
    nxs = np.maximum(kx1 - kx0 + 1, 1)
    nys = np.maximum(ky1 - ky0 + 1, 1)
    cnt = nxs * nys
    o = np.repeat(np.arange(m), cnt)
    k = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    sx = (kx0[o] + k % nxs[o]) * stride
    sy = (ky0[o] + k // nxs[o]) * stride
    x1, x2 = np.maximum(ox1[o], sx), np.minimum(ox2[o], sx + size)
    y1, y2 = np.maximum(oy1[o], sy), np.minimum(oy2[o], sy + size)
    visible = (x2 - x1) * (y2 - y1) / ((ox2[o] - ox1[o]) * (oy2[o] - oy1[o]))
    keep = (x2 > x1) & (y2 > y1) & (visible > 0.15)
    o, x1, y1, x2, y2 = o[keep], x1[keep], y1[keep], x2[keep], y2[keep]
    d = len(o)
    boxes = np.stack([x1, y1, x2, y2], 1) + rng.normal(0, 1.0, (d, 4))
    scores = np.clip(oscore[o] + rng.normal(0, 0.04, d), 0.05, 0.999)
    cats = np.where(rng.random(d) < 0.05, rng.integers(0, n_classes, d), ocat[o])

    # The model's own lower-scored near-duplicates.
    dup = rng.random(d) < 0.35
    nd = int(dup.sum())
    boxes = np.concatenate([boxes, boxes[dup] + rng.normal(0, 2.0, (nd, 4))])
    scores = np.concatenate([scores, np.clip(scores[dup] - rng.uniform(0.05, 0.4, nd), 0.05, 1)])
    swap = rng.random(nd) < 0.2
    cats = np.concatenate([cats, np.where(swap, rng.integers(0, n_classes, nd), cats[dup])])

    # False positives.
    nfp = len(scores) // 20
    fxy = rng.uniform(0, side - 40, (nfp, 2))
    boxes = np.concatenate([boxes, np.concatenate([fxy, fxy + rng.uniform(5, 40, (nfp, 2))], 1)])
    scores = np.concatenate([scores, rng.uniform(0.05, 0.5, nfp)])
    cats = np.concatenate([cats, rng.integers(0, n_classes, nfp)])

    boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0] + 1)
    boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1] + 1)
    boxes = np.clip(boxes, 0, side)
    perm = rng.permutation(len(scores))
    perm = np.tile(perm, -(-n // len(perm)))[:n]
    return Detections(boxes[perm], np.round(scores[perm], 3), cats[perm])


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Fastest wall time of ``repeat`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def to_sahi(dets: Detections) -> list[Any]:
    """The same detections as SAHI ``ObjectPrediction`` objects (full-image frame)."""
    from sahi.prediction import ObjectPrediction

    return [
        ObjectPrediction(bbox=b, category_id=c, score=s, shift_amount=[0, 0])
        for b, s, c in zip(
            dets.boxes.tolist(), dets.scores.tolist(), dets.category_ids.tolist(), strict=True
        )
    ]


def from_sahi(preds: list[Any]) -> Detections:
    """SAHI's output back in columns, for an exact comparison."""
    if not preds:
        return Detections.empty()
    return Detections(
        np.array([p.bbox.to_xyxy() for p in preds], dtype=np.float64),
        np.array([p.score.value for p in preds]),
        np.array([p.category.id for p in preds]),
    )


def identical(a: Detections, b: Detections) -> bool:
    """Same boxes, scores and categories in the same order."""
    return (
        len(a) == len(b)
        and np.array_equal(a.boxes, b.boxes)
        and np.array_equal(a.scores, b.scores)
        and np.array_equal(a.category_ids, b.category_ids)
    )


def run_sahi(dets: Detections, strategy: str, metric: str) -> tuple[float, float, Detections]:
    """(full postprocess seconds, index-only seconds, output) for SAHI's numpy backend."""
    from sahi.postprocess import combine as sahi_combine
    from sahi.postprocess.backends import set_postprocess_backend

    set_postprocess_backend("numpy")
    cls = {
        "greedynmm": sahi_combine.GreedyNMMPostprocess,
        "nmm": sahi_combine.NMMPostprocess,
        "nms": sahi_combine.NMSPostprocess,
    }[strategy]
    func = {
        "greedynmm": sahi_combine.batched_greedy_nmm,
        "nmm": sahi_combine.batched_nmm,
        "nms": sahi_combine.batched_nms,
    }[strategy]
    array = np.concatenate(
        [dets.boxes, dets.scores[:, None], dets.category_ids[:, None].astype(np.float32)], axis=1
    )
    t = time.perf_counter()
    func(array, match_metric=metric.upper(), match_threshold=0.5)
    t_idx = time.perf_counter() - t
    preds = to_sahi(dets)
    post = cls(match_threshold=0.5, match_metric=metric.upper(), class_agnostic=False)
    t = time.perf_counter()
    out = post(preds)
    t_full = time.perf_counter() - t
    return t_full, t_idx, from_sahi(out if isinstance(out, list) else [out])


def per_slice(repeat: int) -> dict[str, float]:
    """Microseconds per call of per-slice NMS (100 boxes): ours vs SAHI."""
    from sahi.postprocess import combine as sahi_combine
    from sahi.postprocess.backends import set_postprocess_backend

    set_postprocess_backend("numpy")
    rng = np.random.default_rng(100)
    xy = rng.uniform(0, 600, (100, 2))
    dets = Detections(
        np.concatenate([xy, xy + rng.uniform(10, 60, (100, 2))], 1),
        rng.random(100),
        rng.integers(0, 3, 100),
    )
    array = np.concatenate(
        [dets.boxes, dets.scores[:, None], dets.category_ids[:, None].astype(np.float32)], axis=1
    )
    preds = to_sahi(dets)
    post = sahi_combine.NMSPostprocess(
        match_threshold=0.5, match_metric="IOU", class_agnostic=False
    )
    calls = 200

    def loop(fn: Callable[[], Any]) -> float:
        return best_of(lambda: [fn() for _ in range(calls)], repeat)[0] / calls * 1e6

    assert identical(nms(dets, 0.5, "iou"), from_sahi(post(preds)))
    return {
        "ours_us": loop(lambda: nms(dets, 0.5, "iou")),
        "sahi_us": loop(lambda: post(preds)),
        "sahi_idx_us": loop(lambda: sahi_combine.batched_nms(array, "IOU", 0.5)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours (best is kept)")
    parser.add_argument("--sahi-limit", type=float, default=60.0, help="skip slower SAHI runs")
    parser.add_argument("--no-sahi", action="store_true", help="time ours only")
    args = parser.parse_args(argv)

    try:
        import sahi  # noqa: F401
    except ImportError:
        print("sahi is not installed: timing ours only")
        args.no_sahi = True

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    last: dict[tuple[str, str], tuple[int, float]] = {}
    head = (
        f"{'size':>8} {'strategy':>14} {'ours s':>8} {'SAHI s':>8} {'ratio':>7} "
        f"{'SAHI-idx s':>10} {'ratio':>7} {'kept ours/SAHI':>16} {'agree':>5}"
    )
    print(head)
    print("-" * len(head))
    for size in args.sizes:
        dets = clustered_detections(size, seed=size)
        for strategy, metric in CONFIGS:
            t_ours, ours = best_of(
                lambda d=dets, s=strategy, m=metric: merge(d, s, m, 0.5), args.repeat
            )
            row: dict[str, Any] = {
                "size": size,
                "strategy": strategy,
                "metric": metric,
                "ours_s": round(t_ours, 4),
                "kept_ours": len(ours),
            }
            sahi_txt = f"{'-':>8} {'-':>7} {'-':>10} {'-':>7} {len(ours):>7}/{'-':<8} {'-':>5}"
            prev = last.get((strategy, metric))
            estimate = prev[1] * size / prev[0] * 1.2 if prev else 0.0
            if not args.no_sahi and estimate > args.sahi_limit:
                notes.append(
                    f"SAHI skipped at {size} {strategy}/{metric}: estimated {estimate:.0f} s "
                    f"> --sahi-limit {args.sahi_limit:.0f} s"
                )
            elif not args.no_sahi:
                t_full, t_idx, ref = run_sahi(dets, strategy, metric)
                last[(strategy, metric)] = (size, t_full + t_idx)
                agree = identical(ours, ref)
                row.update(
                    sahi_s=round(t_full, 4),
                    sahi_idx_s=round(t_idx, 4),
                    ratio=round(t_full / t_ours, 2),
                    ratio_idx=round(t_idx / t_ours, 2),
                    kept_sahi=len(ref),
                    identical=agree,
                )
                sahi_txt = (
                    f"{t_full:8.3f} {t_full / t_ours:6.1f}x {t_idx:10.3f} {t_idx / t_ours:6.1f}x "
                    f"{len(ours):>7}/{len(ref):<8} {'y' if agree else 'n':>5}"
                )
            print(f"{size:>8} {strategy + '/' + metric:>14} {t_ours:8.3f} {sahi_txt}", flush=True)
            rows.append(row)

    small = None
    if not args.no_sahi:
        small = per_slice(args.repeat)
        print(
            f"\nper-slice NMS (100 boxes): ours {small['ours_us']:.0f} us, "
            f"SAHI postprocess {small['sahi_us']:.0f} us, "
            f"SAHI numpy nms {small['sahi_idx_us']:.0f} us"
        )
    for note in notes:
        print("note:", note)
    print("RESULT " + json.dumps({"rows": rows, "per_slice_nms": small, "notes": notes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
