"""NMS / NMM / greedy NMM: equal to SAHI 0.12.8 box for box, plus known answers and properties.

SAHI is the reference: every strategy x metric x class-agnostic combination is compared with
SAHI's postprocess classes (numpy backend) on clustered detections of several sizes, on
integer-grid boxes full of exact duplicates, score ties, zero-area boxes and threshold
boundaries, and with the internal fast paths forced one by one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tilescope.detections import Detections
from tilescope.postprocess import combine, merge, nms

STRATEGIES = ["nms", "greedynmm", "nmm"]
METRICS = ["iou", "ios"]
COMBOS = list(itertools.product(STRATEGIES, METRICS, [False, True]))


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def clustered(n: int, seed: int, decimals: int | None = 3) -> Detections:
    """Detections like sliced inference gives: clusters of small objects, each seen by 1-4
    overlapping slices (cut at slice borders) plus lower-scored near-duplicates."""
    rng = np.random.default_rng(seed)
    n_obj = max(8, n // 2)
    side = float(np.sqrt(n_obj / 150e-6))
    n_clusters = max(1, n_obj // 40)
    centers = rng.uniform(0, side, (n_clusters, 2))
    cl = rng.integers(0, n_clusters, n_obj)
    c = centers[cl] + rng.normal(0, 1, (n_obj, 2)) * rng.uniform(20, 200, n_clusters)[cl, None]
    w = np.exp(rng.normal(np.log(22), 0.6, n_obj))
    h = w * np.exp(rng.normal(0, 0.3, n_obj))
    obj = np.clip(
        np.stack([c[:, 0] - w / 2, c[:, 1] - h / 2, c[:, 0] + w / 2, c[:, 1] + h / 2], 1), 0, side
    )
    obj = obj[(obj[:, 2] - obj[:, 0] > 2) & (obj[:, 3] - obj[:, 1] > 2)]
    if not len(obj):
        obj = np.array([[1.0, 1.0, 9.0, 9.0]])
    m = len(obj)
    ocat = rng.integers(0, 3, m)
    oscore = rng.beta(5, 2, m)
    # Every object is cut by the 4 slice offsets it may straddle (slice 256, stride 200).
    parts = []
    for sx, sy in itertools.product((0, 1), (0, 1)):
        x0 = (np.floor(obj[:, 0] / 200) + sx) * 200
        y0 = (np.floor(obj[:, 1] / 200) + sy) * 200
        cut = np.stack(
            [
                np.maximum(obj[:, 0], x0),
                np.maximum(obj[:, 1], y0),
                np.minimum(obj[:, 2], x0 + 256),
                np.minimum(obj[:, 3], y0 + 256),
            ],
            1,
        )
        seen = (cut[:, 2] > cut[:, 0] + 1) & (cut[:, 3] > cut[:, 1] + 1)
        parts.append(np.flatnonzero(seen))
    idx = np.concatenate(parts)
    if not len(idx):  # nothing visible: one object in one slice
        idx = np.zeros(1, dtype=np.int64)
        obj[0], ocat[0], oscore[0] = [1, 1, 9, 9], 0, 0.5
    boxes = obj[idx] + rng.normal(0, 1, (len(idx), 4))
    scores = np.clip(oscore[idx] + rng.normal(0, 0.05, len(idx)), 0.05, 0.999)
    cats = np.where(rng.random(len(idx)) < 0.1, rng.integers(0, 3, len(idx)), ocat[idx])
    dup = rng.random(len(idx)) < 0.4
    boxes = np.concatenate([boxes, boxes[dup] + rng.normal(0, 2, (int(dup.sum()), 4))])
    scores = np.concatenate([scores, scores[dup] - rng.uniform(0.05, 0.3, int(dup.sum()))])
    cats = np.concatenate([cats, cats[dup]])
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    boxes = np.clip(boxes, 0, None)
    perm = rng.permutation(len(scores))
    perm = np.tile(perm, -(-n // len(perm)))[:n]  # repeats give exact duplicates
    scores = np.clip(scores[perm], 0.01, 1)
    if decimals is not None:
        scores = np.round(scores, decimals)
    return Detections(boxes[perm], scores, cats[perm])


def on_grid(n: int, seed: int, span: int = 12) -> Detections:
    """Integer boxes on a small grid: exact duplicates, shared edges, IoU/IoS exactly at common
    thresholds, zero-area boxes and scores with one decimal (many ties)."""
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, span, (n, 2))
    wh = rng.integers(0, 6, (n, 2))
    return Detections(
        np.concatenate([xy, xy + wh], 1), np.round(rng.random(n), 1), rng.integers(0, 3, n)
    )


# ---------------------------------------------------------------------------
# SAHI reference
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sahi_numpy() -> Iterator[None]:
    """SAHI's numpy backend for the whole module (its backend choice is global state)."""
    pytest.importorskip("sahi")
    from sahi.postprocess.backends import get_postprocess_backend, set_postprocess_backend

    before = get_postprocess_backend()
    set_postprocess_backend("numpy")
    yield
    set_postprocess_backend(before)


def sahi_merge(
    dets: Detections, strategy: str, metric: str, threshold: float, class_agnostic: bool
) -> Detections:
    """SAHI's postprocess class on the same boxes, as ``get_sliced_prediction`` would call it."""
    from sahi.postprocess.combine import GreedyNMMPostprocess, NMMPostprocess, NMSPostprocess
    from sahi.prediction import ObjectPrediction

    cls: Any = {"nms": NMSPostprocess, "nmm": NMMPostprocess, "greedynmm": GreedyNMMPostprocess}
    preds = [
        ObjectPrediction(bbox=b, category_id=c, score=s, shift_amount=[0, 0])
        for b, s, c in zip(
            dets.boxes.tolist(), dets.scores.tolist(), dets.category_ids.tolist(), strict=True
        )
    ]
    post = cls[strategy](
        match_threshold=threshold, match_metric=metric.upper(), class_agnostic=class_agnostic
    )
    out = post(preds) if preds else []
    out = out if isinstance(out, list) else [out]
    if not out:
        return Detections.empty()
    return Detections(
        np.array([p.bbox.to_xyxy() for p in out], dtype=np.float64),
        np.array([p.score.value for p in out]),
        np.array([p.category.id for p in out]),
    )


def assert_same(ours: Detections, ref: Detections) -> None:
    """Same boxes, scores and categories, in the same order (float32 values compare exactly:
    merged coordinates are mins and maxes of the input values)."""
    assert len(ours) == len(ref)
    np.testing.assert_array_equal(ours.boxes, ref.boxes)
    np.testing.assert_array_equal(ours.scores, ref.scores)
    np.testing.assert_array_equal(ours.category_ids, ref.category_ids)


def check_all_combos(dets: Detections, threshold: float = 0.5) -> None:
    for strategy, metric, agnostic in COMBOS:
        ours = merge(dets, strategy, metric, threshold, agnostic)
        ref = sahi_merge(dets, strategy, metric, threshold, agnostic)
        try:
            assert_same(ours, ref)
        except AssertionError as err:
            raise AssertionError(f"{strategy}/{metric}/agnostic={agnostic}: {err}") from None


# ---------------------------------------------------------------------------
# (a) Equivalence with SAHI
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("strategy", "metric", "agnostic"), COMBOS)
@pytest.mark.parametrize("n", [40, 700, 3000])
def test_equals_sahi_on_clustered_detections(
    sahi_numpy: None, n: int, strategy: str, metric: str, agnostic: bool
) -> None:
    # 40 goes through the small all-pairs path, 700 through the strips (SAHI: dense matrix),
    # 3000 through the strips against SAHI's sparse STRtree path (used from 2000 boxes).
    dets = clustered(n, seed=n)
    assert_same(
        merge(dets, strategy, metric, 0.5, agnostic),
        sahi_merge(dets, strategy, metric, 0.5, agnostic),
    )


# SAHI's own float64 re-check divides 0 by 0 for zero-area boxes when every pair matches.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("threshold", [0.5, 1 / 3, 0.8, 1.0, 1e-6, 0.0, -0.5])
@pytest.mark.parametrize("n", [60, 300])
def test_equals_sahi_on_grid_boxes(sahi_numpy: None, n: int, threshold: float) -> None:
    # Exact duplicates, ties, zero-area boxes, metric values exactly at the threshold, and the
    # "every pair matches" thresholds <= 0.
    check_all_combos(on_grid(n, seed=n + abs(int(threshold * 1000))), threshold)


def test_equals_sahi_on_unrounded_scores(sahi_numpy: None) -> None:
    check_all_combos(clustered(500, seed=3, decimals=None))


@pytest.mark.parametrize(
    "knobs",
    [
        {"_SMALL_MAX": 0},  # strips even for a handful of boxes
        {"_MAX_ROUNDS": 1},  # NMS finished by the sequential loop
        {"_SCALAR_GROUPS": 0},  # merge replay fully vectorized
        {"_SCALAR_GROUPS": 10**9},  # merge replay fully scalar
        {"_PAIR_CHUNK": 64},  # candidate pairs in many small chunks
        {"_MAX_ENTRIES_PER_BOX": 1},  # strips grown until tall boxes fit
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()),
)
def test_internal_paths_equal_sahi(
    sahi_numpy: None, monkeypatch: pytest.MonkeyPatch, knobs: dict[str, int]
) -> None:
    for name, value in knobs.items():
        monkeypatch.setattr(combine, name, value)
    check_all_combos(on_grid(150, seed=11, span=20))
    check_all_combos(clustered(300, seed=12))


def test_long_chains_and_big_groups_equal_sahi(sahi_numpy: None) -> None:
    # A chain of boxes each overlapping the next (many NMS rounds), and boxes nested in a few
    # big top-scoring boxes (very long merge groups).
    n = 300
    x = np.arange(n, dtype=np.float32) * 3
    chain = Detections(np.stack([x, x, x + 10, x + 10], 1), np.linspace(1, 0.1, n), np.zeros(n))
    check_all_combos(chain)
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 200, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(3, 10, (n, 2))], 1)
    boxes[:4] = [[0, 0, 210, 210], [0, 0, 100, 210], [100, 0, 210, 210], [5, 5, 150, 150]]
    scores = rng.random(n) * 0.9
    scores[:4] = [0.99, 0.98, 0.97, 0.96]
    check_all_combos(Detections(boxes, scores, rng.integers(0, 2, n)))


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    boxes=st.lists(
        st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(0, 6), st.integers(0, 6)),
        min_size=1,
        max_size=25,
    ),
    scores=st.lists(st.sampled_from([0.3, 0.5, 0.5, 0.7, 0.9]), min_size=25, max_size=25),
    cats=st.lists(st.integers(0, 1), min_size=25, max_size=25),
    threshold=st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0]),
)
def test_equals_sahi_property(
    sahi_numpy: None,
    boxes: list[tuple[int, int, int, int]],
    scores: list[float],
    cats: list[int],
    threshold: float,
) -> None:
    b = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=np.float32)
    n = len(b)
    check_all_combos(Detections(b, scores[:n], cats[:n]), threshold)


# ---------------------------------------------------------------------------
# (b) Known answers
# ---------------------------------------------------------------------------


def dets_of(rows: list[tuple[float, float, float, float, float, int]]) -> Detections:
    """Detections from ``(x1, y1, x2, y2, score, category)`` rows."""
    a = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return Detections(a[:, :4], a[:, 4], a[:, 5])


def rows_of(dets: Detections) -> list[tuple[float, ...]]:
    return [
        (*map(float, b), round(float(s), 6), int(c))
        for b, s, c in zip(dets.boxes, dets.scores, dets.category_ids, strict=True)
    ]


def test_two_overlapping_boxes_of_one_class_merge() -> None:
    # IoS = 50 / 100 = 0.5, which matches (>=).
    dets = dets_of([(5, 0, 15, 10, 0.8, 1), (0, 0, 10, 10, 0.9, 1)])
    assert rows_of(merge(dets)) == [(0.0, 0.0, 15.0, 10.0, 0.9, 1)]
    assert rows_of(merge(dets, "nmm")) == [(0.0, 0.0, 15.0, 10.0, 0.9, 1)]
    assert rows_of(nms(dets, 0.5, "ios")) == [(0.0, 0.0, 10.0, 10.0, 0.9, 1)]
    # IoU = 50 / 150 = 1/3 does not reach 0.5.
    assert len(merge(dets, metric="iou")) == 2


def test_different_classes_merge_only_when_class_agnostic() -> None:
    dets = dets_of([(0, 0, 10, 10, 0.9, 1), (1, 0, 11, 10, 0.8, 2)])
    assert len(merge(dets)) == 2
    assert len(nms(dets)) == 2
    assert rows_of(merge(dets, class_agnostic=True)) == [(0.0, 0.0, 11.0, 10.0, 0.9, 1)]
    assert rows_of(nms(dets, class_agnostic=True)) == [(0.0, 0.0, 10.0, 10.0, 0.9, 1)]


def test_threshold_boundary_is_inclusive() -> None:
    # IoU exactly 50 / 100 = 0.5.
    dets = dets_of([(0, 0, 10, 10, 0.9, 0), (0, 0, 10, 5, 0.8, 0)])
    assert len(nms(dets, 0.5, "iou")) == 1
    assert len(nms(dets, 0.500001, "iou")) == 2
    assert len(merge(dets, "greedynmm", "iou", 0.5)) == 1
    assert len(merge(dets, "greedynmm", "iou", 0.500001)) == 2


def test_equal_scores_hand_the_category_to_the_member() -> None:
    # SAHI's get_merged_category keeps the keeper's category only on a strictly higher score.
    # Rank ties break on x1, so the box at x1=0 is the keeper.
    dets = dets_of([(1, 0, 11, 10, 0.9, 7), (0, 0, 10, 10, 0.9, 3)])
    assert rows_of(merge(dets, class_agnostic=True)) == [(0.0, 0.0, 11.0, 10.0, 0.9, 7)]


def test_nmm_is_transitive_and_greedy_is_not() -> None:
    # A matches B (IoS 0.6), B matches C (IoS 0.5), A does not match C (IoS 0.1).
    dets = dets_of([(0, 0, 10, 10, 0.9, 0), (4, 0, 14, 10, 0.8, 0), (9, 0, 19, 10, 0.7, 0)])
    assert rows_of(merge(dets, "nmm")) == [(0.0, 0.0, 19.0, 10.0, 0.9, 0)]
    assert rows_of(merge(dets, "greedynmm")) == [
        (0.0, 0.0, 14.0, 10.0, 0.9, 0),
        (9.0, 0.0, 19.0, 10.0, 0.7, 0),
    ]


def test_nmm_never_merges_equal_scores_with_different_boxes() -> None:
    # SAHI's NMM only claims "dominated" boxes: lower score, or equal score and equal box.
    dets = dets_of([(0, 0, 10, 10, 0.9, 0), (1, 0, 11, 10, 0.9, 0), (0, 0, 10, 10, 0.9, 0)])
    assert rows_of(merge(dets, "nmm", "iou")) == [
        (0.0, 0.0, 10.0, 10.0, 0.9, 0),
        (1.0, 0.0, 11.0, 10.0, 0.9, 0),
    ]
    assert rows_of(merge(dets, "greedynmm", "iou")) == [(0.0, 0.0, 11.0, 10.0, 0.9, 0)]


def test_member_failing_the_recheck_is_dropped() -> None:
    # M2 matches the keeper (IoU 100/110) but not the keeper grown by M1 (IoU 100/210), so SAHI
    # neither merges nor keeps it.
    dets = dets_of([(0, 0, 10, 10, 0.9, 0), (0, 0, 20, 10, 0.8, 0), (0, 0, 10, 11, 0.7, 0)])
    assert rows_of(merge(dets, "greedynmm", "iou")) == [(0.0, 0.0, 20.0, 10.0, 0.9, 0)]


def test_class_aware_output_order_follows_sahi() -> None:
    dets = dets_of(
        [
            (0, 0, 5, 5, 0.5, 2),
            (10, 0, 15, 5, 0.9, 1),
            (20, 0, 25, 5, 0.7, 2),
            (30, 0, 35, 5, 0.5, 1),
        ]
    )
    # NMS: by score, ties by category then rank. Merging: by category, then rank.
    assert [r[4] for r in rows_of(nms(dets))] == [0.9, 0.7, 0.5, 0.5]
    assert [r[5] for r in rows_of(nms(dets))] == [1, 2, 1, 2]
    assert [(r[5], r[4]) for r in rows_of(merge(dets))] == [(1, 0.9), (1, 0.5), (2, 0.7), (2, 0.5)]
    assert [r[4] for r in rows_of(merge(dets, class_agnostic=True))] == [0.9, 0.7, 0.5, 0.5]


# ---------------------------------------------------------------------------
# (c) Edge cases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty_input(strategy: str) -> None:
    out = merge(Detections.empty(), strategy)
    assert len(out) == 0
    assert out.boxes.shape == (0, 4)
    assert len(nms(Detections.empty())) == 0


@pytest.mark.parametrize(("strategy", "metric", "agnostic"), COMBOS)
def test_one_box_comes_back_unchanged(strategy: str, metric: str, agnostic: bool) -> None:
    dets = dets_of([(1.5, 2.5, 3.5, 4.5, 0.25, 4)])
    assert rows_of(merge(dets, strategy, metric, 0.5, agnostic)) == rows_of(dets)


@pytest.mark.parametrize(("strategy", "metric", "agnostic"), COMBOS)
def test_zero_area_boxes_never_match(strategy: str, metric: str, agnostic: bool) -> None:
    dets = dets_of(
        [(0, 0, 10, 10, 0.9, 0), (5, 5, 5, 5, 0.8, 0), (2, 2, 2, 8, 0.7, 0), (5, 5, 5, 5, 0.6, 0)]
    )
    out = merge(dets, strategy, metric, 0.5, agnostic)
    assert rows_of(out) == rows_of(dets)


def test_negative_coordinates_are_fine() -> None:
    # SAHI's BoundingBox refuses them; boxes in slice frames can be partly outside.
    dets = dets_of([(-10, -10, 0, 0, 0.9, 0), (-9, -10, 1, 0, 0.8, 0)])
    assert rows_of(merge(dets, metric="iou")) == [(-10.0, -10.0, 1.0, 0.0, 0.9, 0)]


def test_rejects_unknown_strategy_and_metric() -> None:
    dets = dets_of([(0, 0, 1, 1, 0.5, 0)])
    with pytest.raises(ValueError, match="strategy"):
        merge(dets, "diou")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metric"):
        nms(dets, metric="giou")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        merge(dets, threshold=float("nan"))


def test_accepts_sahi_spellings() -> None:
    dets = clustered(200, seed=1)
    ref = merge(dets, "greedynmm", "ios")
    assert_same(merge(dets, "GREEDYNMM", "IOS"), ref)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# (d) Properties
# ---------------------------------------------------------------------------


def pairwise_metric(boxes: np.ndarray, metric: str) -> np.ndarray:
    """Dense float32 IoU / IoS matrix, straightforwardly."""
    b = boxes.astype(np.float32)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
    ih = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    if metric == "iou":
        denom = area[:, None] + area[None, :] - inter
    else:
        denom = np.minimum(area[:, None], area[None, :])
    out = np.zeros_like(inter)
    np.divide(inter, denom, out=out, where=denom > 0)
    return out


@settings(max_examples=60, deadline=None, database=None)
@given(
    n=st.integers(1, 300),
    seed=st.integers(0, 2**16),
    metric=st.sampled_from(METRICS),
    agnostic=st.booleans(),
    threshold=st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]),
)
def test_nms_keeps_a_subset_no_two_matching_and_is_idempotent(
    n: int, seed: int, metric: str, agnostic: bool, threshold: float
) -> None:
    dets = on_grid(n, seed, span=30) if seed % 2 else clustered(n, seed)
    out = nms(dets, threshold, metric, agnostic)  # type: ignore[arg-type]
    rows = {tuple(r) for r in np.column_stack([dets.boxes, dets.scores, dets.category_ids])}
    kept = np.column_stack([out.boxes, out.scores, out.category_ids])
    assert all(tuple(r) in rows for r in kept)
    assert 1 <= len(out) <= len(dets)
    same_class = agnostic or np.equal.outer(out.category_ids, out.category_ids)
    matches = (pairwise_metric(out.boxes, metric) >= threshold) & same_class
    np.fill_diagonal(matches, False)
    assert not matches.any()
    assert_same(nms(out, threshold, metric, agnostic), out)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None, database=None)
@given(
    n=st.integers(1, 300),
    seed=st.integers(0, 2**16),
    strategy=st.sampled_from(["greedynmm", "nmm"]),
    metric=st.sampled_from(METRICS),
)
def test_merged_boxes_cover_their_keeper(n: int, seed: int, strategy: str, metric: str) -> None:
    # Every output is an input box (its keeper: same score and category) grown by unions.
    dets = clustered(n, seed)
    out = merge(dets, strategy, metric)  # type: ignore[arg-type]
    assert 1 <= len(out) <= len(dets)
    for box, score, cat in zip(out.boxes, out.scores, out.category_ids, strict=True):
        cand = (dets.scores == score) & (dets.category_ids == cat)
        inside = (dets.boxes[:, :2] >= box[:2]).all(1) & (dets.boxes[:, 2:] <= box[2:]).all(1)
        assert (cand & inside).any()
