"""Merging overlapping detections: NMS, NMM and greedy NMM with IoU or IoS matching, plus
Soft-NMS and Weighted Boxes Fusion (:func:`soft_nms`, :func:`weighted_boxes_fusion`; not SAHI
modes, described where they are defined).

The results reproduce SAHI 0.12.8's postprocess classes (``NMSPostprocess``,
``NMMPostprocess``, ``GreedyNMMPostprocess``) box for box, but run in time roughly linear in
the number of *overlapping* pairs instead of SAHI's per-box Python loops and per-pair object
merges. Pure numpy, no global state, safe to call from several threads.

How it works, and why it is fast:

1. **Candidate pairs from a sweep in strips.** The plane is cut into horizontal strips about
   twice the median box height; each box is entered in the strips it touches, and the entries
   are sorted by one exact integer key (category when class-aware, strip, ``x1``). In a strip,
   the boxes overlapping an entry in x are exactly the next entries whose ``x1`` is below its
   ``x2`` - one ``searchsorted`` - and a pair is only taken in the strip holding the larger
   ``y1``, so each overlapping pair comes out once. Work is proportional to the pairs that
   overlap in x within a strip, not to N squared.
2. **Exact thresholding in SAHI's arithmetic.** The IoU / IoS of each candidate pair is
   computed in float32 with SAHI's formulas and operation order, and compared with ``>=``, so
   boundary cases fall the same way.
3. **Greedy selection without a per-box loop.** The sparse "matches" graph is oriented from the
   higher to the lower ranked box. NMS keeps are found in rounds (a box is decided once all
   its better-ranked neighbours are), which needs as many rounds as the longest chain of
   dependent decisions - a handful for detections from overlapping slices. A plain Python loop
   finishes the rare long chains. Greedy NMM has the same keepers as NMS (each box goes to its
   best-ranked kept neighbour); NMM's "claimed by the first box that dominates it" is a
   minimum over in-edges followed by pointer jumping to the group's keeper.
4. **SAHI's sequential merge, vectorized across groups.** SAHI re-checks every member of a
   group against the *growing* merged box (float64) before merging it; this is replayed with
   one numpy step per position in the group, across all groups at once.
5. **Small inputs** (one slice's ~10-100 boxes) skip all that: one all-pairs matrix, rows as
   Python-int bitsets, plain loops - per-call overhead is what counts there.

Limitation: memory and time grow with the number of *matching* pairs. Thousands of boxes
piled on one spot (every pair matching) make that quadratic - e.g. 10k boxes in a 70 px square
take seconds, where SAHI's tree-streaming path takes a fraction of one. Detections from
overlapping slices of real images stay far from that.

SAHI semantics reproduced on purpose (they matter for equality, and some are surprising):

- Rank: score descending, ties broken by ``x1, y1, x2, y2`` ascending, then input order
  (``np.lexsort((y2, x2, y1, x1, -score))``).
- Matching is ``metric >= threshold``; areas have no ``+1``; a zero denominator gives 0.
  IoS is intersection over the smaller area.
- ``threshold <= 0`` matches every pair (even disjoint ones), as in SAHI's ``*_match_all``.
- Merging (NMM / greedy NMM): the keeper absorbs its members in SAHI's order; a member is
  merged only if it still matches the merged box so far (float64 check). A member failing
  that re-check is **dropped** (neither merged nor kept) - SAHI does the same. The merged
  box is the union, the score the maximum (the keeper's), and the category is the keeper's
  unless a merged member has an *equal* score, in which case the member's category wins
  (SAHI's ``get_merged_category`` uses strict ``>``) - only possible when class-agnostic.
- NMM (non-greedy): a box claims the unclaimed later boxes it matches and *dominates*
  (lower score, or equal score and identical coordinates); claimed boxes keep claiming for
  their keeper, transitively. Consequently two boxes with equal scores but different
  coordinates never merge under NMM.
- Output order: rank order when class-agnostic. Class-aware NMS is sorted by score
  (stable over category ascending, then rank); class-aware NMM / greedy NMM is grouped by
  category ascending, then rank - exactly the order SAHI's per-category batching yields.

Intentional differences from SAHI:

- Categories are compared as exact ``int32``; SAHI goes through float32, which would conflate
  ids above 2**24.
- Any coordinates are accepted (SAHI's ``BoundingBox`` rejects negative ones).
- Masks are not handled (``Detections`` has none).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, cast

import numpy as np

from tilescope.detections import Detections
from tilescope.instance_masks import Mask

Strategy = Literal["nms", "nmm", "greedynmm", "softnms", "softnms-linear", "wbf"]
MatchMetric = Literal["iou", "ios"]

_STRATEGIES = ("nms", "nmm", "greedynmm", "softnms", "softnms-linear", "wbf")
_METRICS = ("iou", "ios")

# Up to this many boxes (one slice's worth) an all-pairs matrix with Python-int bitset rows
# is cheapest: per-call overhead, not asymptotics, is what counts there.
_SMALL_MAX = 128
# Strip entries (box x strip) allowed per box on average before the strips are made taller.
_MAX_ENTRIES_PER_BOX = 32
# Candidate pairs are generated and filtered in chunks of about this many, to bound memory.
_PAIR_CHUNK = 2_000_000
# NMS rounds before the remaining (chain-like) part is finished by a sequential loop.
_MAX_ROUNDS = 24
# When this few groups are still merging, a scalar loop beats another numpy step.
_SCALAR_GROUPS = 4


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def nms(
    dets: Detections,
    threshold: float = 0.5,
    metric: MatchMetric = "iou",
    class_agnostic: bool = False,
    *,
    seams: bool = False,
) -> Detections:
    """Non-maximum suppression: keep each box no better-ranked kept box matches.

    Matches SAHI's ``NMSPostprocess(match_threshold=threshold, match_metric=metric.upper(),
    class_agnostic=class_agnostic)``, including its output order (see the module docstring).
    Note the default here is class-aware, like ``get_sliced_prediction``; SAHI's postprocess
    classes themselves default to ``class_agnostic=True``. ``metric`` also accepts SAHI's
    upper-case spelling. Cheap for the ~10-100 boxes of one slice as well as for whole images.
    ``seams``: only pairs that meet across a slice overlap match (:func:`seam_pairs`).
    """
    index = nms_index(dets, threshold, metric, class_agnostic, seams=seams)
    return dets.select(index) if len(dets) else Detections.empty()


def nms_index(
    dets: Detections,
    threshold: float = 0.5,
    metric: MatchMetric = "iou",
    class_agnostic: bool = False,
    *,
    seams: bool = False,
) -> np.ndarray:
    """The indices of the boxes :func:`nms` keeps, in its output order: for work that only
    the kept boxes need (e.g. an instance mask each, made after suppression)."""
    metric = _check_metric(metric)
    threshold = _check_threshold(threshold)
    _check_seams(dets, seams, threshold)
    n = len(dets)
    if n == 0:
        return np.zeros(0, np.int64)
    if n <= _SMALL_MAX and threshold > 0 and not seams:
        return _small_nms_index(dets, metric, threshold, class_agnostic)
    ctx = _Context(dets, class_agnostic, seams)
    if threshold <= 0:
        kept = _match_all_tops(ctx)
    else:
        src, dst = _match_edges(ctx, metric, threshold)
        kept = _nms_keep(n, src, dst, ctx.rank, ctx.order)
    keep = np.flatnonzero(kept)
    return keep[_output_order(ctx, keep, by_score=not class_agnostic)]


def merge(
    dets: Detections,
    strategy: Strategy = "greedynmm",
    metric: MatchMetric = "ios",
    threshold: float = 0.5,
    class_agnostic: bool = False,
    *,
    sigma: float = 0.5,
    score_threshold: float = 0.0,
    seams: bool = False,
) -> Detections:
    """Merge overlapping ``dets`` with SAHI's ``strategy`` ("greedynmm", "nmm" or "nms"), or
    "softnms" / "softnms-linear" (:func:`soft_nms`, Gaussian with ``sigma`` or linear with
    ``threshold``; boxes decayed below ``score_threshold`` are dropped) or "wbf"
    (:func:`weighted_boxes_fusion` with ``threshold``), which are not SAHI's.

    ``greedynmm`` / ``ios`` / 0.5 / class-aware are the defaults of SAHI's
    ``get_sliced_prediction``; the result equals SAHI's postprocess class of that name
    (``GreedyNMMPostprocess``, ``NMMPostprocess``, ``NMSPostprocess``) on the same boxes.
    Merged boxes are the union of their members, with the keeper's score. ``strategy`` and
    ``metric`` also accept SAHI's upper-case spellings ("GREEDYNMM", "IOS").

    ``seams`` (greedynmm, nmm, nms): only boxes that meet across a slice overlap may match —
    from different slices, their intersection inside those slices' overlap
    (:func:`seam_pairs`); ``dets`` must carry ``slices``. Two overlapping objects that one
    slice saw apart are then never merged, whatever the threshold.

    Masks (``dets.masks``): a merged detection's mask is the union of the masks of the
    members that merged into it, as SAHI merges ``ObjectPrediction`` masks; NMS and Soft-NMS
    keep the kept box's mask; WBF's fused boxes carry none. Matching stays on the boxes.
    """
    strategy = _check_strategy(strategy)
    metric = _check_metric(metric)
    threshold = _check_threshold(threshold)
    if seams and strategy not in ("nms", "nmm", "greedynmm"):
        raise ValueError(f"seam-aware merging works with nms, nmm and greedynmm, not "
                         f"{strategy!r}")
    _check_seams(dets, seams, threshold)
    if strategy == "nms":
        return nms(dets, threshold, metric, class_agnostic, seams=seams)
    if strategy in ("softnms", "softnms-linear"):
        return soft_nms(dets, "linear" if strategy == "softnms-linear" else "gaussian",
                        sigma, threshold, metric, class_agnostic, score_threshold)
    if strategy == "wbf":
        return weighted_boxes_fusion(dets, threshold, metric, class_agnostic)
    n = len(dets)
    if n == 0:
        return Detections.empty()
    if n <= _SMALL_MAX and threshold > 0 and not seams:
        return _small(dets, strategy, metric, threshold, class_agnostic)
    ctx = _Context(dets, class_agnostic, seams)
    if threshold <= 0:
        owner, member_key = _match_all_groups(ctx, strategy)
    else:
        src, dst = _match_edges(ctx, metric, threshold)
        if strategy == "greedynmm":
            kept = _nms_keep(n, src, dst, ctx.rank, ctx.order)
            owner, member_key = _greedy_groups(n, src, dst, kept, ctx)
        else:
            owner, member_key = _nmm_groups(n, src, dst, ctx)
    keep = np.flatnonzero(owner == np.arange(n))
    keep = keep[_output_order(ctx, keep, by_score=False)]
    into = None if dets.masks is None else np.full(n, -1, np.int64)
    boxes, scores, cats = _apply_merge(ctx, owner, member_key, keep, metric, threshold, into)
    if dets.masks is None or into is None:
        return Detections(boxes, scores, cats)
    into[keep] = np.arange(len(keep))
    return Detections(boxes, scores, cats, masks=_united_masks(dets.masks, into, len(keep)))


def _united_masks(masks: Sequence[Mask], into: np.ndarray, groups: int) -> tuple[Mask, ...]:
    """Per merged detection, the union of the masks of the inputs that went into it
    (``into[i]``: its output index, -1 for an input dropped by the merge)."""
    taken = np.flatnonzero(into >= 0)
    taken = taken[np.argsort(into[taken], kind="stable")]
    bounds = np.searchsorted(into[taken], np.arange(groups + 1))
    return tuple(Mask.union(masks[i] for i in taken[bounds[g]:bounds[g + 1]].tolist())
                 for g in range(groups))


# ---------------------------------------------------------------------------
# Shared preparation
# ---------------------------------------------------------------------------


class _Context:
    """Per-call arrays every strategy needs: float32 columns, rank and category groups."""

    def __init__(self, dets: Detections, class_agnostic: bool, seams: bool = False) -> None:
        boxes = np.ascontiguousarray(dets.boxes, dtype=np.float32)
        self.n = len(dets)
        self.x1, self.y1, self.x2, self.y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))
        self.scores = np.ascontiguousarray(dets.scores, dtype=np.float32)
        self.cats = np.ascontiguousarray(dets.category_ids, dtype=np.int32)
        self.class_agnostic = class_agnostic
        #: the slice of each box when only seam pairs may match (:func:`seam_pairs`)
        self.slices = dets.slices if seams else None
        # SAHI's formula, so the float32 values (and hence threshold decisions) are identical.
        self.area = (self.x2 - self.x1) * (self.y2 - self.y1)
        self.order = _rank_order(self.scores, self.x1, self.y1, self.x2, self.y2)
        self.rank = np.empty(self.n, dtype=np.int64)
        self.rank[self.order] = np.arange(self.n)
        if class_agnostic:
            self.group: np.ndarray | None = None
        else:
            # Dense category codes in ascending id order (SAHI iterates np.unique's order).
            self.group = np.unique(self.cats, return_inverse=True)[1].astype(np.int64).reshape(-1)


def _rank_order(
    scores: np.ndarray, x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray
) -> np.ndarray:
    """SAHI's processing order: score descending, then x1, y1, x2, y2 ascending, then index.

    Same result as SAHI's ``np.lexsort((y2, x2, y1, x1, -scores))`` in about a quarter of the
    time: one stable sort on an exact (score, x1) integer key, then a full lexsort only over
    the entries that tie on it.
    """
    k1 = (_sortable_bits(-scores) << np.uint64(32)) | _sortable_bits(x1)
    order = np.argsort(k1, kind="stable")
    ks = k1[order]
    tie = np.flatnonzero(ks[1:] == ks[:-1])
    if len(tie):
        in_tie = np.zeros(len(order), dtype=bool)
        in_tie[tie] = True
        in_tie[tie + 1] = True
        pos = np.flatnonzero(in_tie)
        sub = order[pos]
        k2 = (_sortable_bits(y1[sub]) << np.uint64(32)) | _sortable_bits(x2[sub])
        order[pos] = sub[np.lexsort((_sortable_bits(y2[sub]), k2, ks[pos]))]
    return order


def _check_metric(metric: str) -> MatchMetric:
    m = str(metric).lower()
    if m not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    return cast(MatchMetric, m)  # one of _METRICS, checked above


def _check_threshold(threshold: float) -> float:
    # NaN would silently match nothing (or, via "<= 0" shortcuts, everything).
    if threshold != threshold:
        raise ValueError("threshold must be a number, got NaN")
    return threshold


def _check_strategy(strategy: str) -> Strategy:
    s = str(strategy).lower()
    s = s if s in _STRATEGIES else s.replace("_", "")
    if s not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
    return cast(Strategy, s)  # one of _STRATEGIES, checked above


def _output_order(ctx: _Context, keep: np.ndarray, by_score: bool) -> np.ndarray:
    """Positions into ``keep`` giving SAHI's output order (see the module docstring)."""
    rank = ctx.rank[keep]
    if ctx.group is None:
        return np.argsort(rank, kind="stable")
    group = ctx.group[keep]
    if by_score:
        return np.lexsort((rank, group, -ctx.scores[keep]))
    return np.lexsort((rank, group))


# ---------------------------------------------------------------------------
# Matching: the sparse graph of pairs with metric >= threshold
# ---------------------------------------------------------------------------


def _match_edges(ctx: _Context, metric: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Matching pairs as directed edges ``src -> dst`` with ``rank[src] < rank[dst]``.

    Only for ``threshold > 0``: then a match needs a positive intersection, so only boxes that
    overlap need to be looked at.
    """
    a, b = _strip_matches(ctx, metric, threshold)
    if ctx.slices is not None:
        boxes = np.stack([ctx.x1, ctx.y1, ctx.x2, ctx.y2], axis=1)
        seam = seam_pairs(boxes, ctx.slices, a, b)
        a, b = a[seam], b[seam]
    flip = ctx.rank[a] > ctx.rank[b]
    return np.where(flip, b, a), np.where(flip, a, b)


def _pair_metric(p: tuple[np.ndarray, ...], q: tuple[np.ndarray, ...], metric: str) -> np.ndarray:
    """IoU or IoS of paired boxes ``(x1, y1, x2, y2, area)`` in float32, as SAHI computes it.

    Same formulas and operation order as SAHI's numpy backend, so ``>= threshold`` falls the
    same way on every boundary case; a zero (or negative) denominator gives 0.
    """
    px1, py1, px2, py2, parea = p
    qx1, qy1, qx2, qy2, qarea = q
    iw = np.minimum(px2, qx2) - np.maximum(px1, qx1)
    ih = np.minimum(py2, qy2) - np.maximum(py1, qy1)
    inter = np.maximum(np.float32(0), iw) * np.maximum(np.float32(0), ih)
    denom = parea + qarea - inter if metric == "iou" else np.minimum(parea, qarea)
    out = np.zeros(len(inter), dtype=np.float32)
    np.divide(inter, denom, out=out, where=denom > 0)
    return out


def seam_pairs(boxes: np.ndarray, slices: np.ndarray, a: np.ndarray,
               b: np.ndarray) -> np.ndarray:
    """Which pairs ``(a[k], b[k])`` meet across a slice overlap: the two boxes come from
    different slices and their intersection has area inside the overlap of those slices.

    A box clipped to its slice meets a box of another slice only inside the two slices'
    overlap, so for such models this is "from different slices"; the overlap test keeps the
    rule true for models whose boxes reach beyond their slice.
    """
    sa, sb = slices[a], slices[b]
    different = np.any(sa != sb, axis=1)
    lo = np.maximum(np.maximum(boxes[a, :2], boxes[b, :2]), np.maximum(sa[:, :2], sb[:, :2]))
    hi = np.minimum(np.minimum(boxes[a, 2:], boxes[b, 2:]), np.minimum(sa[:, 2:], sb[:, 2:]))
    return different & np.all(hi > lo, axis=1)


def _check_seams(dets: Detections, seams: bool, threshold: float) -> None:
    """Seam-aware merging needs each box's slice, and a threshold that needs an overlap."""
    if not seams:
        return
    if dets.slices is None and len(dets):
        raise ValueError("seam-aware merging needs each detection's slice (Detections.slices)")
    if threshold <= 0:
        raise ValueError("seam-aware merging needs a threshold > 0: at 0 every pair matches")


def _sortable_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> uint64 whose unsigned order is the float order (-0.0 and 0.0 equal)."""
    u = (values + np.float32(0)).view(np.uint32)
    return np.where(u >> 31, ~u, u | np.uint32(0x80000000)).astype(np.uint64)


def _strip_matches(ctx: _Context, metric: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of boxes with ``metric >= threshold`` (each once), by a sweep within y-strips.

    The plane is cut into horizontal strips about twice the median box height. Each box is
    entered in every strip it touches, and the entries are sorted by (category when
    class-aware, strip, x1) in one exact integer key. Within a strip, the boxes that overlap
    entry ``p`` in x are exactly the following entries whose ``x1`` is below ``p``'s ``x2``,
    found by one ``searchsorted``. A pair is only kept in the strip holding the larger of the
    two ``y1`` - a strip both boxes touch when they overlap - so it comes out exactly once.
    The candidate pairs are then tested in y and thresholded in chunks to bound memory.
    """
    empty = np.zeros(0, dtype=np.int64)
    # Only boxes with positive width and height can have a positive intersection.
    valid = np.flatnonzero((ctx.x2 > ctx.x1) & (ctx.y2 > ctx.y1))
    if len(valid) < 2:
        return empty, empty
    y1 = ctx.y1[valid].astype(np.float64)
    y2 = ctx.y2[valid].astype(np.float64)
    oy = float(y1.min())
    extent = max(float(y2.max()) - oy, 1e-30)
    height = max(2.0 * float(np.median(y2 - y1)), extent / 2**20)
    nvalid = len(valid)
    while True:
        s0 = np.floor((y1 - oy) / height).astype(np.int64)
        s1 = np.floor((y2 - oy) / height).astype(np.int64)
        counts = s1 - s0 + 1
        n_ent = int(counts.sum())
        if n_ent <= _MAX_ENTRIES_PER_BOX * nvalid or height >= extent:
            break
        height *= 2.0

    ent = np.repeat(np.arange(nvalid, dtype=np.int64), counts)
    strip = np.arange(n_ent, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    first = strip == 0  # the entry is in its box's first strip
    strip += s0[ent]
    if ctx.group is not None:
        strip += ctx.group[valid][ent] * (int(s1.max()) + 1)
        if int(strip.max()) >= 2**32:
            strip = np.unique(strip, return_inverse=True)[1].reshape(-1).astype(np.int64)
    hi_key = strip.astype(np.uint64) << np.uint64(32)
    box = valid[ent]
    key = hi_key | _sortable_bits(ctx.x1[box])
    srt = np.argsort(key)
    key, box, first, hi_key = key[srt], box[srt], first[srt], hi_key[srt]
    # Partners of entry p: the entries after it (same strip) with x1 < x2 of p.
    end = np.searchsorted(key, hi_key | _sortable_bits(ctx.x2[box]), side="left")
    partners = end - np.arange(1, n_ent + 1)
    np.maximum(partners, 0, out=partners)

    ex1, ey1, ex2, ey2, earea = (
        ctx.x1[box],
        ctx.y1[box],
        ctx.x2[box],
        ctx.y2[box],
        ctx.area[box],
    )
    total = np.cumsum(partners)
    parts_a: list[np.ndarray] = []
    parts_b: list[np.ndarray] = []
    lo, done = 0, 0
    while lo < n_ent:
        hi = max(int(np.searchsorted(total, done + _PAIR_CHUNK, side="right")), lo + 1)
        cnt = partners[lo:hi]
        npairs = int(total[hi - 1]) - done
        done = int(total[hi - 1])
        if npairs:
            p = np.repeat(np.arange(lo, hi, dtype=np.int64), cnt)
            q = np.arange(npairs, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt - 1, cnt) + p
            # One strip per pair, and the two boxes must overlap in y as well.
            ok = (first[p] | first[q]) & (ey1[q] < ey2[p]) & (ey1[p] < ey2[q])
            p, q = p[ok], q[ok]
            ok = (
                _pair_metric(
                    (ex1[p], ey1[p], ex2[p], ey2[p], earea[p]),
                    (ex1[q], ey1[q], ex2[q], ey2[q], earea[q]),
                    metric,
                )
                >= threshold
            )
            parts_a.append(box[p[ok]])
            parts_b.append(box[q[ok]])
        lo = hi
    if not parts_a:
        return empty, empty
    return np.concatenate(parts_a), np.concatenate(parts_b)


# ---------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------


def _nms_keep(
    n: int, src: np.ndarray, dst: np.ndarray, rank: np.ndarray, order: np.ndarray
) -> np.ndarray:
    """Greedy NMS keep mask over the match graph (edges point from better to worse rank).

    A box is kept once all its better-ranked neighbours are suppressed, and suppressed as soon
    as one of them is kept; each round settles at least the best undecided box of every
    connected component. After ``_MAX_ROUNDS`` the remaining undecided boxes (long chains)
    are settled by a sequential loop in rank order.
    """
    status = np.zeros(n, dtype=np.int8)  # 0 undecided, 1 kept, 2 suppressed
    for _ in range(_MAX_ROUNDS):
        has_in = np.zeros(n, dtype=bool)
        has_in[dst] = True
        status[(status == 0) & ~has_in] = 1
        if len(src) == 0:
            return status == 1
        s = status[src]
        status[dst[s == 1]] = 2
        live = (status[dst] == 0) & (s == 0)
        src, dst = src[live], dst[live]
        if len(src) == 0:
            status[status == 0] = 1
            return status == 1

    # Sequential finish over the undecided boxes and the edges still between them.
    und = order[status[order] == 0]
    srt = np.argsort(src, kind="stable")
    src, dst = src[srt], dst[srt]
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=ptr[1:])
    ptr_l, dst_l = ptr.tolist(), dst.tolist()
    st = bytearray(status.tobytes())
    for v in und.tolist():
        if st[v] == 2:
            continue
        st[v] = 1
        for w in dst_l[ptr_l[v] : ptr_l[v + 1]]:
            st[w] = 2
    return np.frombuffer(bytes(st), dtype=np.int8) == 1


def _greedy_groups(
    n: int, src: np.ndarray, dst: np.ndarray, kept: np.ndarray, ctx: _Context
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy NMM groups: every non-kept box joins its best-ranked kept neighbour.

    Members are merged in rank order (SAHI's greedy NMM emits candidates in score order).
    Returns ``owner`` (keeper index per box, itself for keepers) and the member sort key.
    """
    from_kept = kept[src]
    best = np.full(n, n, dtype=np.int64)
    np.minimum.at(best, dst[from_kept], ctx.rank[src[from_kept]])
    owner = np.arange(n)
    joined = best < n
    owner[joined] = ctx.order[best[joined]]
    return owner, ctx.rank


def _nmm_groups(
    n: int, src: np.ndarray, dst: np.ndarray, ctx: _Context
) -> tuple[np.ndarray, np.ndarray]:
    """NMM groups: each box is claimed by its best-ranked dominating neighbour, transitively.

    SAHI processes boxes in rank order; each (keeper or already claimed) box claims the
    unclaimed matches it dominates for its keeper. The first box to try is the best-ranked
    dominating neighbour, so that is the claimer; following claimers up to a box nobody
    claimed gives the keeper. Members are merged in (claimer rank, index) order, SAHI's
    append order. Returns ``owner`` and a member sort key.
    """
    dom = ctx.scores[src] > ctx.scores[dst]
    tie = ~dom
    if tie.any():
        s, d = src[tie], dst[tie]
        dom[tie] = (
            (ctx.x1[s] == ctx.x1[d])
            & (ctx.y1[s] == ctx.y1[d])
            & (ctx.x2[s] == ctx.x2[d])
            & (ctx.y2[s] == ctx.y2[d])
        )
    s, d = src[dom], dst[dom]
    best = np.full(n, n, dtype=np.int64)
    np.minimum.at(best, d, ctx.rank[s])
    parent = np.arange(n)
    claimed = best < n
    parent[claimed] = ctx.order[best[claimed]]
    owner = parent
    while True:
        nxt = owner[owner]
        if np.array_equal(nxt, owner):
            break
        owner = nxt
    # Sort key: claimer rank first, then index (n < 2**31, so the product fits in int64).
    key = np.where(claimed, best, 0) * n + np.arange(n)
    return owner, key


def _match_all_tops(ctx: _Context) -> np.ndarray:
    """``threshold <= 0``: every pair matches, so NMS keeps the best box of each category."""
    kept = np.zeros(ctx.n, dtype=bool)
    if ctx.group is None:
        kept[ctx.order[0]] = True
    else:
        g = ctx.group[ctx.order]
        srt = np.argsort(g, kind="stable")  # by category, rank order inside
        g = g[srt]
        first = np.ones(ctx.n, dtype=bool)
        first[1:] = g[1:] != g[:-1]
        kept[ctx.order[srt][first]] = True
    return kept


def _match_all_groups(ctx: _Context, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """``threshold <= 0`` groups, as SAHI's ``greedy_nmm_match_all`` / ``nmm_match_all``.

    Greedy NMM: the best box of each category absorbs all others in rank order. NMM: it
    absorbs every lower-scored box and its own exact duplicates (in index order); boxes tied
    with it on score but not on coordinates stay separate keepers with nothing merged.
    """
    n = ctx.n
    tops = np.flatnonzero(_match_all_tops(ctx))
    cat_of = np.zeros(n, dtype=np.int64) if ctx.group is None else ctx.group
    top_of_group = np.empty(int(cat_of.max()) + 1, dtype=np.int64)
    top_of_group[cat_of[tops]] = tops
    top = top_of_group[cat_of]
    if strategy == "greedynmm":
        return top, ctx.rank
    tied = ctx.scores == ctx.scores[top]
    dup = (
        tied
        & (ctx.x1 == ctx.x1[top])
        & (ctx.y1 == ctx.y1[top])
        & (ctx.x2 == ctx.x2[top])
        & (ctx.y2 == ctx.y2[top])
    )
    owner = np.where(~tied | dup, top, np.arange(n))
    return owner, np.arange(n)


# ---------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------


def _apply_merge(
    ctx: _Context,
    owner: np.ndarray,
    member_key: np.ndarray,
    keep: np.ndarray,
    metric: str,
    threshold: float,
    into: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merged box, score and category of every keeper in ``keep`` (SAHI's ``_apply_merge``).

    Each keeper takes its members in ``member_key`` order, merging a member only if it still
    matches the merged box so far (float64, ``>=``); members that fail are dropped.
    ``into`` (when given): set to the output index of each member that merged (for masks).
    """
    n = ctx.n
    gbox = np.stack([ctx.x1[keep], ctx.y1[keep], ctx.x2[keep], ctx.y2[keep]], axis=1).astype(
        np.float64
    )
    gscore = ctx.scores[keep].copy()
    gcat = ctx.cats[keep].copy()
    members = np.flatnonzero(owner != np.arange(n))
    if len(members) == 0:
        return gbox.astype(np.float32), gscore, gcat

    slot = np.full(n, -1, dtype=np.int64)
    slot[keep] = np.arange(len(keep))
    mslot = slot[owner[members]]
    lengths = np.bincount(mslot, minlength=len(keep))
    # Groups by length descending, so the groups still merging at step t are a prefix.
    gorder = np.argsort(-lengths, kind="stable")
    gpos = np.empty(len(keep), dtype=np.int64)
    gpos[gorder] = np.arange(len(keep))
    srt = np.lexsort((member_key[members], gpos[mslot]))
    members = members[srt]
    lens = lengths[gorder]
    starts = np.cumsum(lens) - lens

    mx1 = ctx.x1[members].astype(np.float64)
    my1 = ctx.y1[members].astype(np.float64)
    mx2 = ctx.x2[members].astype(np.float64)
    my2 = ctx.y2[members].astype(np.float64)
    ms = ctx.scores[members]
    mc = ctx.cats[members]

    bx1, by1, bx2, by2 = (np.ascontiguousarray(gbox[gorder, k]) for k in range(4))
    bs = gscore[gorder]
    bc = gcat[gorder]
    is_iou = metric == "iou"
    maxlen = int(lens[0])
    neg_lens = -lens
    for t in range(maxlen):
        na = int(np.searchsorted(neg_lens, -t, side="left"))  # groups with length > t
        if na <= _SCALAR_GROUPS:
            _merge_scalar(
                (bx1, by1, bx2, by2, bs, bc),
                (mx1, my1, mx2, my2, ms, mc),
                starts,
                lens,
                t,
                na,
                is_iou,
                threshold,
                None if into is None else (into, members, gorder),
            )
            break
        i = starts[:na] + t
        cx1, cy1, cx2, cy2 = bx1[:na], by1[:na], bx2[:na], by2[:na]
        px1, py1, px2, py2 = mx1[i], my1[i], mx2[i], my2[i]
        w = np.minimum(cx2, px2) - np.maximum(cx1, px1)
        h = np.minimum(cy2, py2) - np.maximum(cy1, py1)
        inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
        area_c = (cx2 - cx1) * (cy2 - cy1)
        area_p = (px2 - px1) * (py2 - py1)
        denom = area_c + area_p - inter if is_iou else np.minimum(area_c, area_p)
        ratio = np.full(na, np.nan)
        np.divide(inter, denom, out=ratio, where=denom != 0)
        ok = ratio >= threshold
        if not ok.any():
            continue
        j = np.flatnonzero(ok)
        k = i[j]
        if into is not None:
            into[members[k]] = gorder[j]
        # Category of the higher score; SAHI's strict ">" hands ties to the member.
        take_cat = ~(bs[j] > ms[k])
        bc[j[take_cat]] = mc[k[take_cat]]
        bs[j] = np.maximum(bs[j], ms[k])
        bx1[j] = np.minimum(bx1[j], mx1[k])
        by1[j] = np.minimum(by1[j], my1[k])
        bx2[j] = np.maximum(bx2[j], mx2[k])
        by2[j] = np.maximum(by2[j], my2[k])

    out_box = np.empty((len(keep), 4), dtype=np.float32)
    out_box[gorder] = np.stack([bx1, by1, bx2, by2], axis=1)
    out_score = np.empty(len(keep), dtype=np.float32)
    out_score[gorder] = bs
    out_cat = np.empty(len(keep), dtype=np.int32)
    out_cat[gorder] = bc
    return out_box, out_score, out_cat


def _merge_scalar(
    state: tuple[np.ndarray, ...],
    member: tuple[np.ndarray, ...],
    starts: np.ndarray,
    lens: np.ndarray,
    t0: int,
    na: int,
    is_iou: bool,
    threshold: float,
    record: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> None:
    """Finish the merge of the first ``na`` groups from position ``t0`` with Python floats.

    Only avoids numpy's per-call overhead for the long tail of a few very large groups.
    ``record`` (``into``, members, group order): note where each merged member went.
    """
    bx1, by1, bx2, by2, bs, bc = state
    for g in range(na):
        lo, hi = int(starts[g]) + t0, int(starts[g] + lens[g])
        cols = [a[lo:hi].tolist() for a in member]
        merged: list[int] | None = None if record is None else []
        out = _merge_group(
            [float(bx1[g]), float(by1[g]), float(bx2[g]), float(by2[g])],
            float(bs[g]),
            int(bc[g]),
            zip(*cols, strict=True),
            is_iou,
            threshold,
            merged,
        )
        (bx1[g], by1[g], bx2[g], by2[g]), bs[g], bc[g] = out
        if record is not None and merged:
            into, members, gorder = record
            into[members[lo + np.asarray(merged)]] = gorder[g]


def _merge_group(
    box: list[float],
    score: float,
    cat: int,
    members: Iterable[tuple[float, float, float, float, float, int]],
    is_iou: bool,
    threshold: float,
    merged: list[int] | None = None,
) -> tuple[list[float], float, int]:
    """SAHI's ``_apply_merge`` for one keeper, in Python floats (IEEE double = numpy float64).

    Each member ``(x1, y1, x2, y2, score, category)`` is merged only if it still matches the
    merged box so far; a zero denominator is SAHI's 0/0 = nan, i.e. no match. ``merged``
    (when given) collects the positions of the members that merged.
    """
    c1, d1, c2, d2 = box
    for t, (p1, q1, p2, q2, ms, mc) in enumerate(members):
        inter = max(min(c2, p2) - max(c1, p1), 0.0) * max(min(d2, q2) - max(d1, q1), 0.0)
        area_c = (c2 - c1) * (d2 - d1)
        area_p = (p2 - p1) * (q2 - q1)
        denom = area_c + area_p - inter if is_iou else min(area_c, area_p)
        if denom == 0 or not inter / denom >= threshold:
            continue
        if not score > ms:  # SAHI's get_merged_category: strict ">" gives ties to the member
            cat = mc
        score = max(score, ms)
        c1, d1, c2, d2 = min(c1, p1), min(d1, q1), max(c2, p2), max(d2, q2)
        if merged is not None:
            merged.append(t)
    return [c1, d1, c2, d2], score, cat


# ---------------------------------------------------------------------------
# Small inputs
# ---------------------------------------------------------------------------


def _small(
    dets: Detections, strategy: str, metric: str, threshold: float, class_agnostic: bool
) -> Detections:
    """Any strategy on a few boxes (``threshold > 0``): one all-pairs matrix, then Python loops.

    Same semantics as the sparse path (and SAHI's dense numpy path): boxes are processed in
    rank order, and each row of the match matrix, restricted to later-ranked boxes, is a Python
    int bitset, so suppressing or claiming a whole row is a single ``|`` / ``& ~``.
    """
    if strategy == "nms":
        return dets.select(_small_nms_index(dets, metric, threshold, class_agnostic))
    order, b, s, rows, cats = _small_matches(dets, strategy, metric, threshold, class_agnostic)
    return _small_merge(dets, strategy, metric, threshold, class_agnostic,
                        (order, b, s, rows, cats))


def _small_nms_index(dets: Detections, metric: str, threshold: float,
                     class_agnostic: bool) -> np.ndarray:
    """:func:`_small`'s NMS: the kept boxes' indices in NMS's output order."""
    order, _, s, rows, cats = _small_matches(dets, "nms", metric, threshold, class_agnostic)
    keep: list[int] = []
    done = 0
    for i in range(len(dets)):
        if not (done >> i) & 1:
            keep.append(i)
            done |= rows[i]
    if not class_agnostic:
        scores = s.tolist()
        keep.sort(key=lambda i: (-scores[i], cats[i], i))
    return order[np.array(keep, dtype=np.int64)]


def _small_matches(
    dets: Detections, strategy: str, metric: str, threshold: float, class_agnostic: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], list[int]]:
    """Rank order, ranked boxes and scores, each ranked box's matches among the later
    ranked ones as a Python int bitset, and the ranked categories."""
    n = len(dets)
    boxes = dets.boxes
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -dets.scores))
    b = boxes[order]
    s = dets.scores[order]
    c = dets.category_ids[order]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x2 - x1) * (y2 - y1)
    iw = np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :])
    ih = np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :])
    inter = np.maximum(np.float32(0), iw) * np.maximum(np.float32(0), ih)
    if metric == "iou":
        denom = area[:, None] + area[None, :] - inter
    else:
        denom = np.minimum(area[:, None], area[None, :])
    # inter / denom where denom > 0, else 0 (SAHI's _safe_ratio), without a masked divide.
    positive = denom > 0
    match = (inter / np.where(positive, denom, np.float32(1)) >= threshold) & positive
    if not class_agnostic:
        match &= c[:, None] == c[None, :]
    if strategy == "nmm":
        # NMM only claims dominated boxes: lower score, or equal score and equal coordinates.
        ti, tj = np.nonzero(match & (s[:, None] == s[None, :]))
        if len(ti):
            match[ti, tj] = (b[ti] == b[tj]).all(axis=1)
    packed = np.packbits(match, axis=1, bitorder="little")
    width = packed.shape[1]
    raw = packed.tobytes()
    # Row i as a bitset of the later-ranked boxes it matches (bits > i).
    rows = [
        int.from_bytes(raw[i * width : (i + 1) * width], "little") >> (i + 1) << (i + 1)
        for i in range(n)
    ]
    return order, b, s, rows, c.tolist()


def _small_merge(
    dets: Detections, strategy: str, metric: str, threshold: float, class_agnostic: bool,
    matches: tuple[np.ndarray, np.ndarray, np.ndarray, list[int], list[int]],
) -> Detections:
    """:func:`_small`'s greedy NMM and NMM over :func:`_small_matches`."""
    order, b, s, rows, cats = matches
    n = len(dets)
    groups: dict[int, list[int]] = {}
    done = 0
    if strategy == "greedynmm":
        for i in range(n):
            if not (done >> i) & 1:
                m = rows[i] & ~done
                done |= m
                groups[i] = _bits(m)
    else:
        owner = list(range(n))
        index = order.tolist()
        for i in range(n):
            if not (done >> i) & 1:
                done |= 1 << i
                groups[i] = []
            m = rows[i] & ~done
            if m:
                done |= m
                js = sorted(_bits(m), key=index.__getitem__)  # SAHI appends in index order
                for j in js:
                    owner[j] = owner[i]
                groups[owner[i]].extend(js)

    keepers = list(groups)
    if not class_agnostic:
        keepers.sort(key=lambda k: (cats[k], k))
    cols = [col.tolist() for col in (b[:, 0], b[:, 1], b[:, 2], b[:, 3], s)]
    bx1, by1, bx2, by2, sc = cols
    out_boxes, out_scores, out_cats = [], [], []
    out_masks: list[Mask] | None = None if dets.masks is None else []
    is_iou = metric == "iou"
    for k in keepers:
        members = ((bx1[j], by1[j], bx2[j], by2[j], sc[j], cats[j]) for j in groups[k])
        merged: list[int] | None = None if out_masks is None else []
        box, score, cat = _merge_group(
            [bx1[k], by1[k], bx2[k], by2[k]], sc[k], cats[k], members, is_iou, threshold,
            merged
        )
        out_boxes.append(box)
        out_scores.append(score)
        out_cats.append(cat)
        if out_masks is not None and dets.masks is not None and merged is not None:
            taken = [k] + [groups[k][t] for t in merged]
            out_masks.append(Mask.union(dets.masks[int(order[i])] for i in taken))
    return Detections(np.array(out_boxes), np.array(out_scores), np.array(out_cats),
                      masks=None if out_masks is None else tuple(out_masks))


def _bits(mask: int) -> list[int]:
    """Positions of the set bits of ``mask``, ascending."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


# ---------------------------------------------------------------------------
# Soft-NMS and Weighted Boxes Fusion (not SAHI modes)
# ---------------------------------------------------------------------------

SoftMethod = Literal["gaussian", "linear"]


def _overlap_pairs(ctx: _Context, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair with a positive intersection (same category when class-aware), each once,
    with its IoU / IoS in float64."""
    a, b = _strip_matches(ctx, metric, float(np.finfo(np.float32).smallest_subnormal))
    return a, b, _pair_metric64(ctx, a, b, metric)


def _pair_metric64(ctx: _Context, a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """IoU or IoS of boxes ``a[k]``, ``b[k]`` in float64 (0 for a zero denominator)."""
    x1, y1, x2, y2 = (c.astype(np.float64) for c in (ctx.x1, ctx.y1, ctx.x2, ctx.y2))
    iw = np.minimum(x2[a], x2[b]) - np.maximum(x1[a], x1[b])
    ih = np.minimum(y2[a], y2[b]) - np.maximum(y1[a], y1[b])
    inter = np.maximum(0.0, iw) * np.maximum(0.0, ih)
    area = (x2 - x1) * (y2 - y1)
    denom = area[a] + area[b] - inter if metric == "iou" else np.minimum(area[a], area[b])
    out = np.zeros(len(inter))
    np.divide(inter, denom, out=out, where=denom > 0)
    return out


def soft_nms(
    dets: Detections,
    method: SoftMethod = "gaussian",
    sigma: float = 0.5,
    threshold: float = 0.3,
    metric: MatchMetric = "iou",
    class_agnostic: bool = False,
    score_threshold: float = 0.0,
) -> Detections:
    """Soft-NMS (Bodla et al. 2017): instead of removing the boxes a selected box overlaps,
    decay their scores, then select again.

    The paper's algorithm: repeatedly select the box with the highest *current* score and
    multiply the score of every remaining box ``b`` (of its category unless
    ``class_agnostic``) by ``exp(-m(M, b)**2 / sigma)`` ("gaussian") or, when
    ``m(M, b) >= threshold``, by ``1 - m(M, b)`` ("linear"); ``m`` is IoU (the paper's) or
    IoS. Boxes whose score falls below ``score_threshold`` are dropped. The result holds the
    decayed scores, in selection order (score descending); ties go to SAHI's rank.

    Only overlapping pairs decay, so the work is the strip sweep of :func:`merge` plus one
    heap step per box and one numpy update per box with neighbours - no all-pairs matrix
    (a pile where every pair overlaps is quadratic, as for the other modes).
    """
    import heapq

    metric = _check_metric(metric)
    if method not in ("gaussian", "linear"):
        raise ValueError(f"method must be 'gaussian' or 'linear', got {method!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    threshold = _check_threshold(threshold)
    n = len(dets)
    if n == 0:
        return Detections.empty()
    ctx = _Context(dets, class_agnostic)
    a, b, m = _overlap_pairs(ctx, metric)
    if method == "gaussian":
        factor = np.exp(-(m * m) / float(sigma))
    else:
        factor = np.where(m >= threshold, 1.0 - m, 1.0)
    live = factor < 1.0
    a, b, factor = a[live], b[live], factor[live]
    # Symmetric adjacency in CSR form.
    src = np.concatenate([a, b])
    by_src = np.argsort(src, kind="stable")
    nbr = np.concatenate([b, a])[by_src]
    fac = np.concatenate([factor, factor])[by_src]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    has_nbr = (indptr[1:] > indptr[:-1]).tolist()
    score = ctx.scores.astype(np.float64)
    rank = ctx.rank.tolist()
    heap = [(-s, r, i) for i, (s, r) in enumerate(zip(score.tolist(), rank, strict=True))]
    heapq.heapify(heap)
    done = np.zeros(n, dtype=bool)
    selected: list[int] = []
    floor = float(score_threshold)
    while heap:
        neg, _, i = heapq.heappop(heap)
        if done[i] or -neg != score[i]:
            continue  # selected already, or a stale entry from before a decay
        if -neg < floor:
            break  # every remaining score is at most this one
        done[i] = True
        selected.append(i)
        if has_nbr[i]:
            lo, hi = indptr[i], indptr[i + 1]
            js = nbr[lo:hi]
            open_ = ~done[js]
            js = js[open_]
            score[js] *= fac[lo:hi][open_]
            for j, s in zip(js.tolist(), score[js].tolist(), strict=True):
                heapq.heappush(heap, (-s, rank[j], j))
    keep = np.asarray(selected, dtype=np.int64)
    return Detections(np.asarray(dets.boxes, dtype=np.float32)[keep],
                      score[keep].astype(np.float32),
                      np.asarray(dets.category_ids)[keep],
                      masks=None if dets.masks is None else
                      tuple(dets.masks[i] for i in keep.tolist()))


def weighted_boxes_fusion(
    dets: Detections,
    threshold: float = 0.55,
    metric: MatchMetric = "iou",
    class_agnostic: bool = False,
) -> Detections:
    """Weighted Boxes Fusion (Solovyev et al. 2019) of one model's boxes.

    In rank order (score descending), each box joins the cluster whose fused box it matches
    best with ``m >= threshold`` (``m`` IoU, the paper's, or IoS; clusters of its category
    unless ``class_agnostic``), or starts a new one. A fused box is the score-weighted mean of
    its members' coordinates, recomputed after each join; its score is the paper's: the mean
    member score times ``min(count, models) / models`` with ``models = 1``, i.e. the mean.
    The category is the first (best) member's. Output: score descending, ties by rank.

    WBF is designed for *ensembles* of models, whose boxes for one object disagree
    independently; for one model over overlapping slices the fused boxes are averages of
    mostly truncated views, and the mean score penalises objects seen by several slices, so
    it is usually weaker than greedy NMM there. Cost: one numpy step per box over the
    category's clusters so far (O(boxes × clusters) per category).
    """
    metric = _check_metric(metric)
    threshold = _check_threshold(threshold)
    n = len(dets)
    if n == 0:
        return Detections.empty()
    ctx = _Context(dets, class_agnostic)
    box64 = np.stack([ctx.x1, ctx.y1, ctx.x2, ctx.y2], axis=1).astype(np.float64)
    s64 = ctx.scores.astype(np.float64)
    groups = np.zeros(n, dtype=np.int64) if ctx.group is None else ctx.group
    order = ctx.order[np.argsort(groups[ctx.order], kind="stable")]
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    out_box, out_score, out_cat, out_rank = [], [], [], []
    for idx in np.split(order, bounds):
        k = len(idx)
        wsum = np.zeros((k, 4))  # score-weighted coordinate sums
        ssum = np.zeros(k)
        count = np.zeros(k)
        fused = np.zeros((k, 4))
        first = np.zeros(k, dtype=np.int64)
        used = 0
        for i in idx.tolist():
            bx = box64[i]
            best = -1
            if used:
                f = fused[:used]
                iw = np.minimum(f[:, 2], bx[2]) - np.maximum(f[:, 0], bx[0])
                ih = np.minimum(f[:, 3], bx[3]) - np.maximum(f[:, 1], bx[1])
                inter = np.maximum(0.0, iw) * np.maximum(0.0, ih)
                fa = (f[:, 2] - f[:, 0]) * (f[:, 3] - f[:, 1])
                ba = (bx[2] - bx[0]) * (bx[3] - bx[1])
                denom = fa + ba - inter if metric == "iou" else np.minimum(fa, ba)
                m = np.zeros(used)
                np.divide(inter, denom, out=m, where=denom > 0)
                c = int(np.argmax(m))
                if m[c] >= threshold:
                    best = c
            if best < 0:
                best = used
                first[best] = i
                used += 1
            wsum[best] += s64[i] * bx
            ssum[best] += s64[i]
            count[best] += 1
            fused[best] = wsum[best] / ssum[best] if ssum[best] > 0 else bx
        out_box.append(fused[:used])
        out_score.append(ssum[:used] / count[:used] * np.minimum(count[:used], 1.0) / 1.0)
        out_cat.append(ctx.cats[first[:used]])
        out_rank.append(ctx.rank[first[:used]])
    boxes = np.concatenate(out_box)
    scores = np.concatenate(out_score)
    cats = np.concatenate(out_cat)
    sort = np.lexsort((np.concatenate(out_rank), -scores))
    return Detections(boxes[sort].astype(np.float32), scores[sort].astype(np.float32),
                      cats[sort])
