"""Tests for zse_hf.evaluation.metrics and zse_hf.evaluation.plots (fast, CPU only)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from zse_hf.evaluation import metrics as M

# ------------------------------------------------------------------ references
# Plain-Python loops, written straight from the metric definitions in zse_hf/evaluation/metrics.py's docstrings.


def ref_rank(row):
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def ref_curve(rel):
    """Recall and precision after each rank (pure Python); None when nothing is relevant."""
    R = sum(rel)
    if R == 0:
        return None
    tp, rec, prec = 0, [], []
    for i, r in enumerate(rel):
        tp += r
        rec.append(tp / R)
        prec.append(tp / (i + 1))
    return rec, prec


def ref_voc_ap(rel):
    """Classic VOC code: pad, monotone from the right, sum over recall changes."""
    curve = ref_curve(rel)
    if curve is None:
        return None
    rec, prec = curve
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    ap = 0.0
    for i in range(len(mrec) - 1):
        if mrec[i + 1] != mrec[i]:
            ap += (mrec[i + 1] - mrec[i]) * mpre[i + 1]
    return ap


def ref_ap_at_k(rel, k):
    R = sum(rel)
    if R == 0:
        return None
    tp, s = 0, 0.0
    for i, r in enumerate(rel[:k]):
        tp += r
        if r:
            s += tp / (i + 1)
    return s / min(k, R)


def ref_p_at_k(rel, k, denominator):
    R = sum(rel)
    if R == 0:
        return None
    if denominator == "min_kR":
        m = min(k, R)
        return sum(rel[:m]) / m
    return sum(rel[:k]) / k


def ref_pr(rel, levels):
    curve = ref_curve(rel)
    if curve is None:
        return None
    rec, prec = curve
    out = []
    for lv in levels:
        cand = [p for p, rc in zip(prec, rec) if rc >= lv]
        out.append(max(cand) if cand else 0.0)
    return out


def ref_mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def random_case(seed, Q=23, G=41, n_classes=4):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=(Q, G)).astype(np.float64)  # many ties
    gallery_labels = rng.integers(0, n_classes, size=G)
    query_labels = rng.integers(0, n_classes + 1, size=Q)  # label n_classes: R = 0
    query_labels[0] = n_classes
    return scores, query_labels, gallery_labels


def ref_rel(scores, query_labels, gallery_labels):
    rows = []
    for q in range(scores.shape[0]):
        order = ref_rank(scores[q].tolist())
        rows.append([int(gallery_labels[j] == query_labels[q]) for j in order])
    return rows


# ------------------------------------------------------------------ ranking

def test_rank_gallery_tie_break_hand():
    s = np.array([[0.5, 0.9, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])
    # row 0: 0.9 (idx 1), then the tie 0.5 in index order (0, 2), then 0.1 (3)
    assert M.rank_gallery(s).tolist() == [[1, 0, 2, 3], [0, 1, 2, 3]]
    assert M.rank_gallery(s, k=2).tolist() == [[1, 0], [0, 1]]
    # ascending (distances): ties still lower index first
    assert M.rank_gallery(s, descending=False).tolist() == [[3, 0, 2, 1], [0, 1, 2, 3]]


def test_rank_gallery_nan_and_int_dtypes():
    assert M.rank_gallery(np.array([[np.nan, 1.0, 0.0]])).tolist() == [[1, 2, 0]]
    assert M.rank_gallery(np.array([[np.nan, 1.0, 0.0]]), descending=False).tolist() == [[2, 1, 0]]
    i64 = np.iinfo(np.int64)
    assert M.rank_gallery(np.array([[i64.min, 0, i64.max]])).tolist() == [[2, 1, 0]]
    assert M.rank_gallery(np.array([[0, 255, 3, 255]], dtype=np.uint8)).tolist() == [[1, 3, 2, 0]]
    assert M.rank_gallery(np.array([[False, True, True]])).tolist() == [[1, 2, 0]]


def test_rank_gallery_matches_reference_and_is_deterministic():
    scores, _, _ = random_case(1)
    order = M.rank_gallery(scores)
    assert order.tolist() == [ref_rank(r) for r in scores.tolist()]
    assert np.array_equal(order, M.rank_gallery(scores.copy()))
    assert np.array_equal(order, M.rank_gallery(scores.astype(np.float32)))
    assert np.array_equal(order, M.rank_gallery(scores.astype(np.int64)))


def test_relevance_hand():
    order = np.array([[2, 0, 1], [1, 2, 0]])
    rel = M.relevance(np.array(["a", "b"]), np.array(["a", "b", "a"]), order)
    # q0 'a': gallery 2,0,1 -> a,a,b ; q1 'b': gallery 1,2,0 -> b,a,a
    assert rel.tolist() == [[True, True, False], [True, False, False]]
    assert rel.dtype == bool


# ------------------------------------------------------------------ hand cases

REL_A = [[1, 0, 1, 0, 0, 1]]  # R = 3, hits at ranks 1, 3, 6
REL_B = [[0, 1, 0, 0, 1, 1]]  # R = 3, hits at ranks 2, 5, 6


def test_map_at_all_hand():
    # A: P@1=1, P@3=2/3, P@6=3/6; already monotone at the hits -> (1 + 2/3 + 1/2)/3 = 13/18
    assert M.map_at_all(REL_A) == pytest.approx(13 / 18)
    # B: P@2=1/2, P@5=2/5, P@6=1/2; monotone from right: P@5 -> max(2/5, 1/2) = 1/2
    #    -> (1/2 + 1/2 + 1/2)/3 = 1/2   (non-interpolated would be 1.4/3)
    assert M.map_at_all(REL_B) == pytest.approx(0.5)
    assert M.map_at_all(REL_A + REL_B) == pytest.approx((13 / 18 + 0.5) / 2)
    assert M.map_at_all(REL_A + REL_B, per_query=True) == pytest.approx([13 / 18, 0.5])


def test_map_at_k_hand():
    # A, k=3: hits at 1, 3 -> (1 + 2/3) / min(3, 3) = 5/9
    assert M.map_at_k(REL_A, 3) == pytest.approx(5 / 9)
    # A, k=2: hit at 1 -> 1 / min(2, 3) = 1/2
    assert M.map_at_k(REL_A, 2) == pytest.approx(0.5)
    # A, k=10 > G: (1 + 2/3 + 1/2) / min(10, 3) = 13/18
    assert M.map_at_k(REL_A, 10) == pytest.approx(13 / 18)
    # B, k=6: (1/2 + 2/5 + 1/2) / 3 = 1.4/3 (no interpolation here)
    assert M.map_at_k(REL_B, 6) == pytest.approx(1.4 / 3)


def test_precision_at_k_hand():
    # A, k=2: min(2,3)=2, rel[:2]=[1,0] -> 1/2 ; ÷k: 1/2
    assert M.precision_at_k(REL_A, 2) == pytest.approx(0.5)
    assert M.precision_at_k(REL_A, 2, denominator="k") == pytest.approx(0.5)
    # A, k=4: min(4,3)=3, rel[:3]=[1,0,1] -> 2/3 ; ÷k: rel[:4] has 2 hits -> 2/4
    assert M.precision_at_k(REL_A, 4) == pytest.approx(2 / 3)
    assert M.precision_at_k(REL_A, 4, denominator="k") == pytest.approx(0.5)
    # A, k=10 > G: min(10,3)=3 -> 2/3 ; ÷k: 3 hits / 10
    assert M.precision_at_k(REL_A, 10) == pytest.approx(2 / 3)
    assert M.precision_at_k(REL_A, 10, denominator="k") == pytest.approx(0.3)
    with pytest.raises(ValueError):
        M.precision_at_k(REL_A, 2, denominator="bogus")


def test_acc_at_k_hand():
    order = np.array([[2, 0, 1], [1, 2, 0]])
    true = np.array([0, 0])
    # true photo 0 is at rank 2 for q0 and rank 3 for q1
    assert M.acc_at_k(order, true, 1) == 0.0
    assert M.acc_at_k(order, true, 2) == 0.5
    assert M.acc_at_k(order, true, 3) == 1.0
    assert M.acc_at_k(order, true, 99) == 1.0
    assert M.acc_at_k(order, true, 2, per_query=True).tolist() == [True, False]


def test_precision_recall_curve_hand():
    # A: recall per rank 1/3,1/3,2/3,2/3,2/3,1 ; interpolated precision 1,2/3,2/3,1/2,1/2,1/2
    # levels 0..0.3 -> rank 1 (1.0); 0.4..0.6 -> rank 3 (2/3); 0.7..1.0 -> rank 6 (1/2)
    r, p = M.precision_recall_curve(REL_A, n_points=11)
    assert r == pytest.approx(np.linspace(0, 1, 11))
    assert p == pytest.approx([1, 1, 1, 1, 2 / 3, 2 / 3, 2 / 3, 0.5, 0.5, 0.5, 0.5])
    r, p = M.precision_recall_curve(REL_A, n_points=101)
    assert r.shape == p.shape == (101,)


def test_per_class_ap_hand():
    ap = np.array([0.5, 1.0, np.nan, 0.25])
    labels = np.array(["a", "a", "b", "c"])
    # a: (0.5 + 1.0)/2 = 0.75 ; b: only a NaN (R = 0) -> omitted ; c: 0.25
    assert M.per_class_ap(ap, labels) == {"a": 0.75, "c": 0.25}
    means, counts = M.per_class_ap(ap, labels, return_counts=True)
    assert counts == {"a": 2, "c": 1}
    assert all(type(k) is str for k in means)


# ------------------------------------------------------------------ edge cases

def test_r_zero_query_excluded():
    rel = REL_A + [[0, 0, 0, 0, 0, 0]]
    assert M.map_at_all(rel) == pytest.approx(13 / 18)
    assert M.map_at_k(rel, 3) == pytest.approx(5 / 9)
    assert M.precision_at_k(rel, 4) == pytest.approx(2 / 3)
    assert M.precision_at_k(rel, 4, denominator="k") == pytest.approx(0.5)
    assert np.isnan(M.map_at_all(rel, per_query=True)[1])
    _, p = M.precision_recall_curve(rel)
    assert p[0] == pytest.approx(1.0)


def test_none_relevant_gives_nan_without_warning():
    rel = np.zeros((3, 5), bool)
    with np.errstate(all="raise"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert math.isnan(M.map_at_all(rel))
            assert math.isnan(M.map_at_k(rel, 2))
            assert math.isnan(M.precision_at_k(rel, 2))
            assert math.isnan(M.precision_at_k(rel, 2, denominator="k"))
            assert np.isnan(M.precision_recall_curve(rel)[1]).all()


def test_all_relevant():
    rel = np.ones((2, 7), bool)
    assert M.map_at_all(rel) == 1.0
    assert M.map_at_k(rel, 3) == 1.0
    assert M.map_at_k(rel, 100) == 1.0
    assert M.precision_at_k(rel, 100) == 1.0
    assert M.precision_at_k(rel, 100, denominator="k") == pytest.approx(7 / 100)
    assert M.precision_recall_curve(rel)[1] == pytest.approx(np.ones(11))


def test_k_larger_than_gallery_and_invalid_k():
    rel = np.array([[0, 1, 1]], bool)
    # k = 50 > G = 3: AP over the whole list = (1/2 + 2/3) / 2
    assert M.map_at_k(rel, 50) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # min(50, R=2) = 2 -> rel[:2] = [0, 1] -> 1/2 ; ÷k: 2 hits / 50
    assert M.precision_at_k(rel, 50) == pytest.approx(0.5)
    assert M.precision_at_k(rel, 50, denominator="k") == pytest.approx(2 / 50)
    order = np.array([[2, 1, 0]])
    assert M.acc_at_k(order, np.array([0]), 50) == 1.0
    for fn in (lambda: M.map_at_k(rel, 0), lambda: M.precision_at_k(rel, 0)):
        with pytest.raises(ValueError):
            fn()


def test_truncated_ranking_with_n_relevant():
    rel = np.array([[1, 0, 1, 0, 0, 1]], bool)
    R = np.array([3])
    # first 4 ranks + true R give the same cut-off metrics as the full ranking
    assert M.map_at_k(rel[:, :4], 3, n_relevant=R) == pytest.approx(M.map_at_k(rel, 3))
    assert M.precision_at_k(rel[:, :4], 4, n_relevant=R) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        M.map_at_k(rel, 3, n_relevant=np.array([1]))  # fewer than the hits shown


# ------------------------------------------------------------------ vs reference

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_matches_reference_on_random_ties(seed):
    scores, ql, gl = random_case(seed)
    rel_ref = ref_rel(scores, ql, gl)
    rel = M.relevance(ql, gl, M.rank_gallery(scores))
    assert rel.astype(int).tolist() == rel_ref

    ap = M.map_at_all(rel, per_query=True)
    for q, row in enumerate(rel_ref):
        want = ref_voc_ap(row)
        assert (np.isnan(ap[q]) if want is None else ap[q] == pytest.approx(want, abs=1e-12))
    assert M.map_at_all(rel) == pytest.approx(ref_mean([ref_voc_ap(r) for r in rel_ref]))

    G = scores.shape[1]
    for k in (1, 5, 17, G, G + 10):
        assert M.map_at_k(rel, k) == pytest.approx(ref_mean([ref_ap_at_k(r, k) for r in rel_ref]))
        for den in ("min_kR", "k"):
            want = ref_mean([ref_p_at_k(r, k, den) for r in rel_ref])
            assert M.precision_at_k(rel, k, denominator=den) == pytest.approx(want)

    for n_points in (11, 101):
        levels, p = M.precision_recall_curve(rel, n_points=n_points)
        curves = [c for c in (ref_pr(r, levels.tolist()) for r in rel_ref) if c is not None]
        want = [sum(c[i] for c in curves) / len(curves) for i in range(n_points)]
        assert p == pytest.approx(want, abs=1e-12)

    true = np.random.default_rng(seed).integers(0, G, size=len(ql))
    order_ref = [ref_rank(r) for r in scores.tolist()]
    for k in (1, 5, G):
        want = sum(int(true[q] in order_ref[q][:k]) for q in range(len(ql))) / len(ql)
        assert M.acc_at_k(M.rank_gallery(scores), true, k) == pytest.approx(want)


# ------------------------------------------------------------------ bootstrap

def test_bootstrap_ci_deterministic_and_contains_mean():
    vals = np.random.default_rng(3).random(30)
    a = M.bootstrap_ci(vals, n=1000, seed=0)
    assert a == M.bootstrap_ci(vals, n=1000, seed=0)
    assert a != M.bootstrap_ci(vals, n=1000, seed=1)
    assert a[0] <= vals.mean() <= a[1]
    assert a[0] < a[1]
    # narrower at alpha=0.5
    b = M.bootstrap_ci(vals, n=1000, seed=0, alpha=0.5)
    assert a[0] <= b[0] <= b[1] <= a[1]
    # weighted: brackets the weighted mean
    w = np.arange(1, 31)
    lo, hi = M.bootstrap_ci(vals, seed=0, weights=w)
    assert lo <= (vals * w).sum() / w.sum() <= hi
    # dict input, constant values, no classes
    assert M.bootstrap_ci({"a": 0.4, "b": 0.4}) == (pytest.approx(0.4), pytest.approx(0.4))
    assert all(math.isnan(x) for x in M.bootstrap_ci([]))
    with pytest.raises(ValueError):
        M.bootstrap_ci([0.1, np.nan])


# ------------------------------------------------------------------ bundle

def test_compute_metrics_hand_and_json():
    # q0 (label 0) ranks gallery 0..5 in order -> rel = REL_A; q1 (label 2) has R = 0
    gl = np.array([0, 1, 0, 1, 1, 0])
    ql = np.array([0, 2])
    scores = np.array([[6, 5, 4, 3, 2, 1], [1, 1, 1, 1, 1, 1]], dtype=np.float32)
    out = M.compute_metrics(scores, ql, gl, ks=(4,), map_ks=(3,), true_index=[0, 5], acc_ks=(1, 5))
    assert out["mAP@all"] == pytest.approx(13 / 18)
    assert out["mAP@3"] == pytest.approx(5 / 9)
    assert out["P@4"] == pytest.approx(2 / 3)
    assert out["P@4(÷k)"] == pytest.approx(0.5)
    assert out["acc@1"] == 0.5  # q0 true 0 at rank 1 ; q1 true 5 at rank 6 (ties)
    assert out["acc@5"] == 0.5
    assert out["n_queries"] == 2 and out["n_gallery"] == 6
    assert out["n_queries_evaluated"] == 1 and out["n_queries_no_relevant"] == 1
    assert out["per_class_AP"] == {0: pytest.approx(13 / 18)}
    lo, hi = out["mAP@all_CI"]
    assert lo == pytest.approx(13 / 18) and hi == pytest.approx(13 / 18)
    assert len(out["PR_curve"]["recall"]) == 11
    json.dumps(out)


def test_compute_metrics_chunking_and_reference():
    scores, ql, gl = random_case(5, Q=37, G=29)
    a = M.compute_metrics(scores, ql, gl, ks=(5, 100), map_ks=(10, 200), chunk_size=4)
    b = M.compute_metrics(scores, ql, gl, ks=(5, 100), map_ks=(10, 200), chunk_size=1000)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    rel_ref = ref_rel(scores, ql, gl)
    assert a["mAP@all"] == pytest.approx(ref_mean([ref_voc_ap(r) for r in rel_ref]))
    assert a["mAP@200"] == pytest.approx(ref_mean([ref_ap_at_k(r, 200) for r in rel_ref]))
    assert a["P@100"] == pytest.approx(ref_mean([ref_p_at_k(r, 100, "min_kR") for r in rel_ref]))
    assert a["P@100(÷k)"] == pytest.approx(ref_mean([ref_p_at_k(r, 100, "k") for r in rel_ref]))
    lo, hi = a["mAP@all_CI"]
    assert lo <= a["mAP@all"] <= hi
    # query-weighted mean of per-class AP is the query mean
    _, counts = M.per_class_ap(M.map_at_all(M.relevance(ql, gl, M.rank_gallery(scores)), per_query=True), ql,
                               return_counts=True)
    pc = a["per_class_AP"]
    assert sum(pc[c] * counts[c] for c in pc) / sum(counts.values()) == pytest.approx(a["mAP@all"])
    assert a["per_class_queries"] == counts


def test_compute_metrics_fine_grained_only():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    out = M.compute_metrics(scores, None, None, true_index=[2, 0], acc_ks=(1, 2))
    # q0 order 1,2,0 -> true 2 at rank 2 ; q1 order 0,1,2 -> true 0 at rank 1
    assert out["acc@1"] == 0.5 and out["acc@2"] == 1.0
    assert "mAP@all" not in out
    with pytest.raises(ValueError):
        M.compute_metrics(scores, None, None)


# ------------------------------------------------------------------ plots

def test_plot_pr_curves_png(tmp_path):
    pytest.importorskip("matplotlib")
    from zse_hf.evaluation.plots import plot_pr_curves

    r, p = M.precision_recall_curve(REL_A + REL_B)
    path = plot_pr_curves({"Ret": (r, p), "RN": (r, p * 0.9)}, tmp_path / "sub" / "pr.png", title="t")
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (500, 400)


def test_results_grid_png(tmp_path):
    from zse_hf.evaluation.plots import HIT_COLOR, MISS_COLOR, grid_size, results_grid

    rng = np.random.default_rng(0)
    queries = [Image.new("L", (40, 60), 128), Image.new("RGBA", (50, 50), (0, 0, 255, 100))]
    gallery = [
        [Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)) for _ in range(12)],
        [Image.new("RGB", (10, 10), (0, 0, 0)) for _ in range(3)],  # short row
    ]
    hits = [[i % 2 == 0 for i in range(12)], np.array([False, True, False])]
    thumb, pad = 32, 4
    img = results_grid(queries, gallery, hits, path=tmp_path / "grid.png", thumb=thumb, pad=pad)
    assert img.size == grid_size(2, 10, thumb, pad)
    assert img.size == (pad + 11 * (thumb + pad) + thumb // 4, pad + 2 * (thumb + pad))
    with Image.open(tmp_path / "grid.png") as im:
        assert im.format == "PNG" and im.size == img.size
    x0 = pad + (thumb + pad) + thumb // 4
    assert img.getpixel((x0, pad)) == HIT_COLOR  # row 0, result 1: hit
    assert img.getpixel((x0 + thumb + pad, pad)) == MISS_COLOR  # row 0, result 2: miss
    y1 = pad + thumb + pad
    assert img.getpixel((x0 + thumb + pad, y1)) == HIT_COLOR  # row 1, result 2: hit
    assert img.getpixel((x0 + 3 * (thumb + pad), y1)) == (255, 255, 255)  # empty cell
    with pytest.raises(ValueError):
        results_grid(queries, gallery, [[True], [True]])
