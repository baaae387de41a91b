"""Soft-NMS and Weighted Boxes Fusion: hand-computed answers, and equality with plain-loop
reference implementations of the papers' algorithms on random boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tilescope.detections import Detections
from tilescope.postprocess import merge, soft_nms, weighted_boxes_fusion

Box = tuple[float, float, float, float]


def _dets(boxes: list[Box], scores: list[float], cats: list[int]) -> Detections:
    return Detections(np.array(boxes, np.float32), np.array(scores, np.float32),
                      np.array(cats, np.int32))


def _metric(p: Box, q: Box, metric: str) -> float:
    iw = min(p[2], q[2]) - max(p[0], q[0])
    ih = min(p[3], q[3]) - max(p[1], q[1])
    inter = max(0.0, iw) * max(0.0, ih)
    ap = (p[2] - p[0]) * (p[3] - p[1])
    aq = (q[2] - q[0]) * (q[3] - q[1])
    denom = ap + aq - inter if metric == "iou" else min(ap, aq)
    return inter / denom if denom > 0 else 0.0


def _random(n: int, seed: int, n_classes: int = 3) -> Detections:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 400, (n // 4 + 1, 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(10, 40, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
    return Detections(boxes.astype(np.float32), rng.uniform(0.3, 1.0, n).astype(np.float32),
                      rng.integers(0, n_classes, n).astype(np.int32))


def _as_lists(dets: Detections) -> tuple[list[Box], list[float], list[int]]:
    boxes = [tuple(float(v) for v in b) for b in dets.boxes]
    return boxes, [float(s) for s in dets.scores], [int(c) for c in dets.category_ids]  # type: ignore[misc]


def reference_soft_nms(dets: Detections, method: str, sigma: float, nt: float, metric: str,
                       agnostic: bool, floor: float) -> list[tuple[int, float]]:
    """Bodla et al.'s Algorithm 1, literally: (input index, final score) in selection order."""
    boxes, scores, cats = _as_lists(dets)
    remaining = list(range(len(boxes)))
    s = list(scores)
    out = []
    while remaining:
        m = max(remaining, key=lambda i: s[i])
        remaining.remove(m)
        out.append((m, s[m]))
        for i in remaining:
            if not agnostic and cats[i] != cats[m]:
                continue
            v = _metric(boxes[m], boxes[i], metric)
            if method == "gaussian":
                s[i] *= math.exp(-v * v / sigma)
            elif v >= nt:
                s[i] *= 1.0 - v
    return [(i, sc) for i, sc in out if sc >= floor]


def reference_wbf(dets: Detections, thr: float, metric: str, agnostic: bool
                  ) -> list[tuple[Box, float, int]]:
    """Solovyev et al.'s WBF for one model, with plain loops: (box, score, category)."""
    boxes, scores, cats = _as_lists(dets)
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    clusters: list[list[int]] = []
    fused: list[Box] = []
    for i in order:
        best, best_m = -1, -1.0
        for k, f in enumerate(fused):
            if not agnostic and cats[clusters[k][0]] != cats[i]:
                continue
            v = _metric(f, boxes[i], metric)
            if v >= thr and v > best_m:
                best, best_m = k, v
        if best < 0:
            clusters.append([i])
            fused.append(boxes[i])
        else:
            clusters[best].append(i)
            w = sum(scores[j] for j in clusters[best])
            fused[best] = tuple(sum(scores[j] * boxes[j][c] for j in clusters[best]) / w
                                for c in range(4))  # type: ignore[assignment]
    out = [(fused[k], sum(scores[j] for j in cl) / len(cl) * min(len(cl), 1) / 1,
            cats[cl[0]]) for k, cl in enumerate(clusters)]
    return sorted(out, key=lambda t: -t[1])


# ---------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------

# A (0,0,10,10) 0.9; B (0,0,10,5) 0.8, IoU(A, B) = 50/100 = 0.5, IoS = 1;
# C (20,20,30,30) 0.7 overlaps nothing; D = B in another class.
HAND = _dets([(0, 0, 10, 10), (0, 0, 10, 5), (20, 20, 30, 30), (0, 0, 10, 5)],
             [0.9, 0.8, 0.7, 0.6], [1, 1, 1, 2])


def test_soft_nms_gaussian_hand_computed() -> None:
    """B decays by exp(-0.5**2 / 0.5) = exp(-0.5); D (another class) does not unless
    agnostic, where it decays by A (IoU 0.5) and then by B (IoU 1): exp(-0.5) * exp(-2)."""
    out = soft_nms(HAND, "gaussian", sigma=0.5)
    assert out.scores.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.8 * math.exp(-0.5)], abs=1e-7)
    assert out.boxes[3].tolist() == [0, 0, 10, 5]
    assert out.category_ids.tolist() == [1, 1, 2, 1]
    agn = soft_nms(HAND, "gaussian", sigma=0.5, class_agnostic=True)
    assert agn.scores.tolist() == pytest.approx(
        [0.9, 0.7, 0.8 * math.exp(-0.5), 0.6 * math.exp(-0.5) * math.exp(-2.0)], abs=1e-7)
    # The run's score threshold drops B (0.485 < 0.5) but keeps D (other class).
    kept = merge(HAND, "softnms", "iou", 0.3, sigma=0.5, score_threshold=0.5)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.7, 0.6], abs=1e-7)


def test_soft_nms_linear_hand_computed() -> None:
    """Linear: B decays by 1 - 0.5 only when IoU >= Nt; with IoS it matches fully (0)."""
    out = soft_nms(HAND, "linear", threshold=0.5, metric="iou")
    assert out.scores.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.4], abs=1e-7)
    untouched = soft_nms(HAND, "linear", threshold=0.51, metric="iou")
    assert untouched.scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6], abs=1e-7)
    ios = merge(HAND, "softnms-linear", "ios", 0.5, score_threshold=0.01)
    assert ios.scores.tolist() == pytest.approx([0.9, 0.7, 0.6], abs=1e-7)


def test_wbf_hand_computed() -> None:
    """A and B fuse (IoU 0.5 >= 0.5): y2 = (0.9*10 + 0.8*5) / 1.7, score (0.9 + 0.8) / 2."""
    out = weighted_boxes_fusion(HAND, 0.5, "iou")
    np.testing.assert_allclose(out.boxes, [[0, 0, 10, 13 / 1.7], [20, 20, 30, 30],
                                           [0, 0, 10, 5]], atol=1e-5, rtol=0)
    assert out.scores.tolist() == pytest.approx([0.85, 0.7, 0.6], abs=1e-7)
    assert out.category_ids.tolist() == [1, 1, 2]
    # Agnostic: D joins the fused box (IoU with (0,0,10,7.647) = 50/76.47 = 0.654).
    agn = merge(HAND, "wbf", "iou", 0.5, class_agnostic=True)
    y2 = (0.9 * 10 + 0.8 * 5 + 0.6 * 5) / 2.3
    np.testing.assert_allclose(agn.boxes, [[0, 0, 10, y2], [20, 20, 30, 30]], atol=1e-5, rtol=0)
    assert agn.scores.tolist() == pytest.approx([(0.9 + 0.8 + 0.6) / 3, 0.7], abs=1e-7)
    # Just above the IoU nothing fuses.
    assert len(weighted_boxes_fusion(HAND, 0.51, "iou")) == 4


# ---------------------------------------------------------------------------
# Against the reference loops
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("metric", ["iou", "ios"])
@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_soft_nms_equals_reference(method: str, metric: str, agnostic: bool, seed: int) -> None:
    dets = _random(300, seed)
    ref = reference_soft_nms(dets, method, 0.5, 0.3, metric, agnostic, 0.2)
    out = merge(dets, "softnms" if method == "gaussian" else "softnms-linear", metric, 0.3,
                agnostic, sigma=0.5, score_threshold=0.2)
    assert len(out) == len(ref)
    assert len(ref) < len(dets)  # the floor did drop boxes
    ref_boxes = dets.boxes[[i for i, _ in ref]]
    assert np.array_equal(out.boxes, ref_boxes)
    assert out.scores.tolist() == pytest.approx([s for _, s in ref], abs=1e-6, rel=0)
    assert out.category_ids.tolist() == dets.category_ids[[i for i, _ in ref]].tolist()


@pytest.mark.parametrize("metric", ["iou", "ios"])
@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_wbf_equals_reference(metric: str, agnostic: bool, seed: int) -> None:
    dets = _random(300, seed)
    ref = reference_wbf(dets, 0.55, metric, agnostic)
    out = merge(dets, "wbf", metric, 0.55, agnostic)
    assert len(ref) < len(dets)  # something fused
    assert len(out) == len(ref)
    np.testing.assert_allclose(out.boxes, [list(b) for b, _, _ in ref], atol=1e-4, rtol=0)
    assert out.scores.tolist() == pytest.approx([s for _, s, _ in ref], abs=1e-6, rel=0)
    assert out.category_ids.tolist() == [c for _, _, c in ref]


def test_new_modes_in_params_form_and_pipeline() -> None:
    """The choices reach InferenceParams (and so the DAG form and CLI, generated), the
    sigma is validated, and the pipeline passes sigma and the score threshold through."""
    from tilescope.errors import ConfigError
    from tilescope.params import InferenceParams, form_fields
    from tilescope.pipeline import merge_detections

    enum = form_fields()["postprocess"][2]["enum"]
    assert {"softnms", "softnms-linear", "wbf"} <= set(enum)
    with pytest.raises(ConfigError):
        InferenceParams(soft_nms_sigma=0)
    assert "soft_nms_sigma" not in InferenceParams().to_dict()  # digests unchanged
    params = InferenceParams(postprocess="softnms", match_metric="iou", soft_nms_sigma=0.5,
                             score_threshold=0.5)
    assert merge_detections(HAND, params).scores.tolist() == pytest.approx([0.9, 0.7, 0.6],
                                                                           abs=1e-7)
    wide = InferenceParams(postprocess="softnms", match_metric="iou", soft_nms_sigma=5.0,
                           score_threshold=0.5)
    assert len(merge_detections(HAND, wide)) == 4  # exp(-0.25/5) * 0.8 = 0.76 stays
