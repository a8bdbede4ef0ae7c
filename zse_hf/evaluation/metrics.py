"""Retrieval metrics for sketch-based image retrieval: the standard category-level ZS-SBIR
protocol (mAP@all, mAP@200, P@100, P@200), defined in the functions' docstrings below.

Pure numpy, vectorised over queries, deterministic.

Conventions used throughout:

* ``scores`` is ``[Q, G]`` (Q queries, G gallery items); higher means more similar
  unless ``descending=False`` is passed.
* Ranking is a *stable* sort: on equal scores the lower gallery index comes first.
  NaN scores are ranked last.
* ``rel`` is a boolean ``[Q, W]`` matrix: ``rel[q, i]`` says whether the item at rank
  ``i`` (0-based) of query ``q`` is relevant. Normally ``W == G`` (the full ranking);
  ``R`` (relevant items per query) is then ``rel.sum(1)``. For a truncated ranking
  pass ``n_relevant`` explicitly.
* Queries with ``R == 0`` have no defined AP or P@k; they get NaN per query and are
  excluded from every query average (``acc@k`` is the exception: it does not use R).
* ``P@k`` is ``mean(rel[:min(k, R)])`` (this project's protocol). The "divide by k" variant used
  by some papers is ``denominator="k"`` and is reported as ``"P@k(÷k)"``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "rank_gallery",
    "relevance",
    "map_at_all",
    "map_at_k",
    "precision_at_k",
    "acc_at_k",
    "per_class_ap",
    "bootstrap_ci",
    "precision_recall_curve",
    "compute_metrics",
    "kernel_locality",
]


# ---------------------------------------------------------------- helpers


def _check_rel(rel: Any) -> np.ndarray:
    rel = np.asarray(rel)
    if rel.ndim != 2:
        raise ValueError(f"rel must be 2-D [Q, G], got shape {rel.shape}")
    return rel.astype(bool, copy=False)


def _check_k(k: int) -> int:
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


def _n_relevant(rel: np.ndarray, n_relevant: Any | None) -> np.ndarray:
    hits = rel.sum(axis=1, dtype=np.int64)
    if n_relevant is None:
        return hits
    r = np.asarray(n_relevant, dtype=np.int64)
    if r.shape != (rel.shape[0],):
        raise ValueError(f"n_relevant must have shape ({rel.shape[0]},), got {r.shape}")
    if np.any(r < hits):
        raise ValueError("n_relevant is smaller than the number of relevant items in rel")
    return r


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (no warnings)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(x: np.ndarray, axis: int = 0) -> Any:
    """Mean ignoring NaN; NaN (no warning) where nothing is finite."""
    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    n = ok.sum(axis=axis)
    s = np.where(ok, x, 0.0).sum(axis=axis)
    m = _safe_div(s, n)
    return float(m) if np.ndim(m) == 0 else m


def _py(x: Any) -> Any:
    """numpy scalar -> Python scalar (for dict keys / JSON)."""
    return x.item() if isinstance(x, np.generic) else x


def _precision_curve(rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tp [Q, W] int64 cumulative hits, precision [Q, W] float64) per rank."""
    tp = np.cumsum(rel, axis=1, dtype=np.int64)
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    return tp, tp / ranks


# ---------------------------------------------------------------- ranking


def rank_gallery(scores: Any, k: int | None = None, descending: bool = True) -> np.ndarray:
    """Rank the gallery for every query.

    Args:
        scores: ``[Q, G]`` similarity scores (float, int or bool).
        k: keep only the first ``k`` ranks (the sort is still a full sort, so the
            result equals the first ``k`` columns of the full ranking).
        descending: True ranks the highest score first (similarities); False ranks
            the lowest first (distances).

    Returns:
        ``[Q, G]`` (or ``[Q, min(k, G)]``) int64 gallery indices, best first.
        Tie-break: stable, the lower gallery index comes first on equal scores.
        NaN scores are ranked last in either direction.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D [Q, G], got shape {s.shape}")
    if descending:
        if s.dtype.kind == "f":
            key = -s  # NaN stays NaN -> sorted last
        elif s.dtype.kind in "biu":
            key = ~s  # order-reversing without overflow (~x == -x - 1; bool: not)
        else:
            raise TypeError(f"unsupported score dtype {s.dtype}")
    else:
        key = s
    order = np.argsort(key, axis=1, kind="stable").astype(np.int64, copy=False)
    if k is not None:
        order = order[:, : _check_k(k)]
    return order


def relevance(query_labels: Any, gallery_labels: Any, order: Any) -> np.ndarray:
    """Relevance of each ranked item.

    Args:
        query_labels: ``[Q]`` class labels of the queries.
        gallery_labels: ``[G]`` class labels of the gallery.
        order: ``[Q, W]`` gallery indices from :func:`rank_gallery` (``W <= G``).

    Returns:
        ``[Q, W]`` bool, ``gallery_labels[order[q, i]] == query_labels[q]``.
    """
    ql = np.asarray(query_labels)
    gl = np.asarray(gallery_labels)
    order = np.asarray(order)
    if ql.ndim != 1 or gl.ndim != 1 or order.ndim != 2 or order.shape[0] != ql.shape[0]:
        raise ValueError(
            f"shape mismatch: query_labels {ql.shape}, gallery_labels {gl.shape}, order {order.shape}"
        )
    rel = np.asarray(gl[order] == ql[:, None], dtype=bool)
    if rel.shape != order.shape:  # e.g. incomparable label types
        raise TypeError("query and gallery labels could not be compared elementwise")
    return rel


# ---------------------------------------------------------------- metrics


def map_at_all(rel: Any, n_relevant: Any | None = None, per_query: bool = False) -> Any:
    """VOC-interpolated average precision over the full ranking ("mAP@all").

    Per query: precision at each rank is made monotone from the right
    (``p_interp[i] = max_{j >= i} p[j]``) and summed over the recall steps, i.e.
    ``AP = (1/R) * sum_{i: rel[i]} p_interp[i]``.

    Args:
        rel: ``[Q, G]`` bool relevance of the full ranking.
        n_relevant: optional ``[Q]`` R per query. With a truncated ranking the
            unseen tail counts as recall steps with precision 0 (a lower bound).
        per_query: return the ``[Q]`` per-query AP (NaN where R == 0).

    Returns:
        float mean over queries with R > 0 (NaN if none), or ``[Q]`` if per_query.
    """
    rel = _check_rel(rel)
    R = _n_relevant(rel, n_relevant)
    if rel.shape[1] == 0:
        ap = _safe_div(np.zeros(rel.shape[0]), R)
    else:
        _, prec = _precision_curve(rel)
        interp = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
        ap = _safe_div(np.where(rel, interp, 0.0).sum(axis=1), R)
    return ap if per_query else _nanmean(ap)


def map_at_k(rel: Any, k: int = 200, n_relevant: Any | None = None, per_query: bool = False) -> Any:
    """Average precision cut at rank k ("mAP@k", not interpolated).

    Per query: ``AP@k = sum_{i <= k, rel[i]} P@i / min(k, R)`` (ranks 1-based).
    If k exceeds the gallery size it is the plain AP over the whole ranking.

    Args:
        rel: ``[Q, W]`` bool relevance; must cover the first ``min(k, G)`` ranks.
        k: cut-off rank.
        n_relevant: optional ``[Q]`` R per query (needed when rel is truncated).
        per_query: return the ``[Q]`` per-query values (NaN where R == 0).

    Returns:
        float mean over queries with R > 0 (NaN if none), or ``[Q]`` if per_query.
    """
    rel = _check_rel(rel)
    k = _check_k(k)
    R = _n_relevant(rel, n_relevant)
    relk = rel[:, :k]
    _, prec = _precision_curve(relk)
    ap = _safe_div(np.where(relk, prec, 0.0).sum(axis=1), np.minimum(k, R))
    return ap if per_query else _nanmean(ap)


def precision_at_k(
    rel: Any,
    k: int,
    denominator: str = "min_kR",
    n_relevant: Any | None = None,
    per_query: bool = False,
) -> Any:
    """Precision at rank k.

    * ``denominator="min_kR"`` (the default): ``mean(rel[:min(k, R)])`` = hits in the first
      ``min(k, R)`` ranks divided by ``min(k, R)``; reported as ``"P@k"``.
    * ``denominator="k"``: hits in the first k ranks divided by k (even if k > G);
      reported as ``"P@k(÷k)"``.

    Queries with R == 0 are NaN / excluded under both denominators.

    Args:
        rel: ``[Q, W]`` bool relevance; must cover the first ``min(k, G)`` ranks.
        k: cut-off rank.
        denominator: ``"min_kR"`` or ``"k"``.
        n_relevant: optional ``[Q]`` R per query (needed when rel is truncated).
        per_query: return the ``[Q]`` per-query values.

    Returns:
        float mean over queries with R > 0 (NaN if none), or ``[Q]`` if per_query.
    """
    rel = _check_rel(rel)
    k = _check_k(k)
    R = _n_relevant(rel, n_relevant)
    Q, W = rel.shape
    relk = rel[:, :k]  # min(k, R) <= k, so only the first k ranks matter
    tp = np.concatenate([np.zeros((Q, 1), np.int64), np.cumsum(relk, axis=1, dtype=np.int64)], axis=1)
    if denominator == "min_kR":
        m = np.minimum(k, R)
        if np.any(m > W):
            raise ValueError("rel is shorter than min(k, R); pass the full ranking")
        hits = tp[np.arange(Q), m]
        p = _safe_div(hits, m)
    elif denominator == "k":
        hits = tp[:, -1]
        p = np.where(R > 0, hits / k, np.nan)
    else:
        raise ValueError(f"denominator must be 'min_kR' or 'k', got {denominator!r}")
    return p if per_query else _nanmean(p)


def acc_at_k(order: Any, true_index: Any, k: int, per_query: bool = False) -> Any:
    """Fine-grained accuracy: the query's true photo is among the top k.

    Args:
        order: ``[Q, W]`` ranked gallery indices (``W >= k`` or the full gallery).
        true_index: ``[Q]`` gallery index of each query's true photo.
        k: cut-off rank.
        per_query: return the ``[Q]`` bool hits instead of the mean.

    Returns:
        float fraction of queries hit (NaN if Q == 0), or ``[Q]`` bool if per_query.
    """
    order = np.asarray(order)
    ti = np.asarray(true_index)
    k = _check_k(k)
    if order.ndim != 2 or ti.shape != (order.shape[0],):
        raise ValueError(f"shape mismatch: order {order.shape}, true_index {ti.shape}")
    hit = (order[:, :k] == ti[:, None]).any(axis=1)
    if per_query:
        return hit
    return float(hit.mean()) if hit.size else float("nan")


def per_class_ap(
    per_query_ap: Any, query_labels: Any, return_counts: bool = False
) -> dict[Any, float] | tuple[dict[Any, float], dict[Any, int]]:
    """Mean AP per query class.

    Args:
        per_query_ap: ``[Q]`` per-query values (e.g. ``map_at_all(rel, per_query=True)``);
            NaN entries (R == 0) are skipped.
        query_labels: ``[Q]`` class of each query.
        return_counts: also return the number of queries averaged per class.

    Returns:
        ``{label: mean AP}`` sorted by label (classes with no finite value are
        omitted); with ``return_counts``, ``(that dict, {label: count})``.
    """
    ap = np.asarray(per_query_ap, dtype=np.float64)
    labels = np.asarray(query_labels)
    if ap.ndim != 1 or labels.shape != ap.shape:
        raise ValueError(f"shape mismatch: per_query_ap {ap.shape}, query_labels {labels.shape}")
    ok = ~np.isnan(ap)
    uniq, inv = np.unique(labels[ok], return_inverse=True)
    inv = inv.reshape(-1)
    counts = np.bincount(inv, minlength=len(uniq))
    sums = np.bincount(inv, weights=ap[ok], minlength=len(uniq))
    means = {_py(u): float(s / c) for u, s, c in zip(uniq, sums, counts)}
    if return_counts:
        return means, {_py(u): int(c) for u, c in zip(uniq, counts)}
    return means


def bootstrap_ci(
    per_class_values: Any,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    weights: Any | None = None,
) -> tuple[float, float]:
    """Percentile confidence interval for the mean by a class bootstrap.

    Classes (not queries) are resampled with replacement ``n`` times; the statistic
    is the mean of the resampled per-class values, or with ``weights`` the weighted
    mean ``sum(w v) / sum(w)`` (weights = queries per class make it the
    query-averaged mAP). Deterministic for a given ``seed``.

    Args:
        per_class_values: ``[C]`` finite values, or a ``{class: value}`` mapping.
        n: number of bootstrap resamples.
        seed: seed for ``numpy.random.default_rng``.
        alpha: two-sided level; the interval covers ``1 - alpha``.
        weights: optional ``[C]`` non-negative weights (or mapping with the same keys).

    Returns:
        ``(low, high)`` floats; ``(nan, nan)`` when there are no classes.
    """
    if isinstance(per_class_values, Mapping):
        keys = list(per_class_values)
        v = np.asarray([per_class_values[c] for c in keys], dtype=np.float64)
        if isinstance(weights, Mapping):
            weights = [weights[c] for c in keys]
    else:
        v = np.asarray(per_class_values, dtype=np.float64).reshape(-1)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not np.all(np.isfinite(v)):
        raise ValueError("per_class_values must be finite (drop NaN classes first)")
    C = v.size
    if C == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, C, size=(int(n), C))
    if weights is None:
        stats = v[idx].mean(axis=1)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != v.shape or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("weights must be [C], non-negative, with a positive sum")
        stats = _safe_div((v * w)[idx].sum(axis=1), w[idx].sum(axis=1))
        stats = stats[~np.isnan(stats)]  # resamples drawing only zero-weight classes
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def precision_recall_curve(
    rel: Any,
    n_points: int = 11,
    n_relevant: Any | None = None,
    per_query: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision at fixed recall levels, averaged over queries.

    Levels are ``linspace(0, 1, n_points)`` (11-point VOC style, or 101).
    Per query: ``p(r) = max precision at any rank whose recall (hits / R) >= r``,
    0 if the ranking never reaches recall r.

    Args:
        rel: ``[Q, G]`` bool relevance of the full ranking.
        n_points: number of recall levels (>= 2).
        n_relevant: optional ``[Q]`` R per query.
        per_query: return precision ``[Q, S]`` (NaN rows where R == 0).

    Returns:
        ``(recall [S], precision [S])``, precision averaged over queries with R > 0
        (NaN if none); or ``(recall [S], precision [Q, S])`` if per_query.
    """
    rel = _check_rel(rel)
    if int(n_points) < 2:
        raise ValueError("n_points must be >= 2")
    levels = np.linspace(0.0, 1.0, int(n_points))
    R = _n_relevant(rel, n_relevant)
    Q, W = rel.shape
    out = np.zeros((Q, levels.size))
    if W > 0 and Q > 0:
        tp, prec = _precision_curve(rel)
        interp = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
        Rf = np.where(R > 0, R, 1).astype(np.float64)[:, None]
        # m = smallest integer with m / R >= level, in the same float arithmetic
        m = np.ceil(levels[None, :] * Rf).astype(np.int64)
        m = np.where((m >= 1) & ((m - 1) / Rf >= levels), m - 1, m)
        m = np.where(m / Rf < levels, m + 1, m)
        m = np.clip(m, 0, W + 1)
        # first rank with tp >= m, row-wise, via one searchsorted on offset rows
        off = np.arange(Q, dtype=np.int64)[:, None] * (W + 1)
        pos = np.searchsorted((tp + off).ravel(), (m + off).ravel(), side="left").reshape(Q, -1)
        pos -= np.arange(Q, dtype=np.int64)[:, None] * W
        found = pos < W
        out = np.where(found, np.take_along_axis(interp, np.minimum(pos, W - 1), axis=1), 0.0)
    out[R == 0] = np.nan
    if per_query:
        return levels, out
    return levels, _nanmean(out, axis=0)


# ---------------------------------------------------------------- bundle


def compute_metrics(
    scores: Any,
    query_labels: Any | None,
    gallery_labels: Any | None,
    ks: Sequence[int] = (100, 200),
    map_ks: Sequence[int] = (200,),
    true_index: Any | None = None,
    acc_ks: Sequence[int] = (1, 5, 10),
    pr_points: int = 11,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    descending: bool = True,
    chunk_size: int = 512,
) -> dict[str, Any]:
    """All retrieval metrics in one dict (JSON-serialisable plain Python values).

    Queries are processed in chunks of ``chunk_size`` rows so a large ``[Q, G]``
    score matrix never needs a ``[Q, G]`` ranking in memory at once.

    Args:
        scores: ``[Q, G]`` scores (higher = better unless ``descending=False``).
        query_labels: ``[Q]`` query classes, or None for fine-grained only.
        gallery_labels: ``[G]`` gallery classes, or None for fine-grained only.
        ks: cut-offs for ``"P@k"`` (÷min(k, R)) and ``"P@k(÷k)"``.
        map_ks: cut-offs for ``"mAP@k"``.
        true_index: optional ``[Q]`` true gallery index per query -> ``"acc@k"``.
        acc_ks: cut-offs for ``"acc@k"``.
        pr_points: recall levels of ``"PR_curve"``.
        n_bootstrap, seed, alpha: class bootstrap of ``"mAP@all"`` (``n_bootstrap=0`` skips it).
        descending: ranking direction (see :func:`rank_gallery`).
        chunk_size: queries per chunk.

    Returns:
        dict with (category level) ``"mAP@all"``, ``"mAP@<k>"``, ``"P@<k>"``,
        ``"P@<k>(÷k)"``, ``"mAP@all_CI"`` ([low, high], class bootstrap weighted by
        queries per class, so it brackets ``"mAP@all"``), ``"mAP@all_class_mean"``,
        ``"per_class_AP"`` ({label: AP}), ``"per_class_queries"`` ({label: queries
        averaged}), ``"PR_curve"`` ({"recall", "precision"}
        lists); (fine-grained) ``"acc@<k>"``; and the counts ``"n_queries"``,
        ``"n_gallery"``, ``"n_queries_evaluated"`` (R > 0),
        ``"n_queries_no_relevant"`` (excluded), ``"n_classes"``; ``"protocol"``
        describes the conventions.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D [Q, G], got shape {s.shape}")
    Q, G = s.shape
    category = query_labels is not None or gallery_labels is not None
    if category and (query_labels is None or gallery_labels is None):
        raise ValueError("give both query_labels and gallery_labels, or neither")
    if not category and true_index is None:
        raise ValueError("nothing to compute: give labels and/or true_index")
    ks = [_check_k(k) for k in ks]
    map_ks = [_check_k(k) for k in map_ks]
    acc_ks = [_check_k(k) for k in acc_ks]
    if category:
        ql = np.asarray(query_labels)
        gl = np.asarray(gallery_labels)
        if ql.shape != (Q,) or gl.shape != (G,):
            raise ValueError(f"labels must be [Q]={Q} and [G]={G}, got {ql.shape}, {gl.shape}")
    if true_index is not None:
        ti = np.asarray(true_index)
        if ti.shape != (Q,):
            raise ValueError(f"true_index must be [Q]={Q}, got {ti.shape}")

    ap_all = np.full(Q, np.nan)
    ap_k = {k: np.full(Q, np.nan) for k in map_ks}
    p_min = {k: np.full(Q, np.nan) for k in ks}
    p_div = {k: np.full(Q, np.nan) for k in ks}
    acc = {k: np.zeros(Q, bool) for k in acc_ks}
    pr = np.full((Q, int(pr_points)), np.nan)
    levels = np.linspace(0.0, 1.0, int(pr_points))
    step = max(1, int(chunk_size))
    for a in range(0, Q, step):
        sl = slice(a, min(a + step, Q))
        order = rank_gallery(s[sl], descending=descending)
        if true_index is not None:
            for k in acc_ks:
                acc[k][sl] = acc_at_k(order, ti[sl], k, per_query=True)
        if not category:
            continue
        rel = relevance(ql[sl], gl, order)
        ap_all[sl] = map_at_all(rel, per_query=True)
        for k in map_ks:
            ap_k[k][sl] = map_at_k(rel, k, per_query=True)
        for k in ks:
            p_min[k][sl] = precision_at_k(rel, k, "min_kR", per_query=True)
            p_div[k][sl] = precision_at_k(rel, k, "k", per_query=True)
        pr[sl] = precision_recall_curve(rel, int(pr_points), per_query=True)[1]

    out: dict[str, Any] = {"n_queries": Q, "n_gallery": G}
    if category:
        valid = ~np.isnan(ap_all)
        out["mAP@all"] = _nanmean(ap_all)
        for k in map_ks:
            out[f"mAP@{k}"] = _nanmean(ap_k[k])
        for k in ks:
            out[f"P@{k}"] = _nanmean(p_min[k])
            out[f"P@{k}(÷k)"] = _nanmean(p_div[k])
        pc, counts = per_class_ap(ap_all, ql, return_counts=True)
        if n_bootstrap > 0:  # 0 skips the interval (e.g. frequent validation)
            out["mAP@all_CI"] = list(
                bootstrap_ci(pc, n=n_bootstrap, seed=seed, alpha=alpha, weights=counts)
            )
        out["mAP@all_class_mean"] = _nanmean(np.asarray(list(pc.values()), dtype=np.float64))
        out["per_class_AP"] = pc
        out["per_class_queries"] = counts
        out["PR_curve"] = {
            "recall": levels.tolist(),
            "precision": np.asarray(_nanmean(pr, axis=0)).tolist(),
        }
        out["n_queries_evaluated"] = int(valid.sum())
        out["n_queries_no_relevant"] = int(Q - valid.sum())
        out["n_classes"] = len(pc)
    if true_index is not None:
        for k in acc_ks:
            out[f"acc@{k}"] = float(acc[k].mean()) if Q else float("nan")
    out["protocol"] = {
        "ranking": "descending score" if descending else "ascending score",
        "tie_break": "stable: lower gallery index first; NaN scores last",
        "mAP@all": "VOC-interpolated AP over the full ranking",
        "mAP@k": "sum of P@i at relevant ranks i <= k, / min(k, R)",
        "P@k": "hits in top min(k, R) / min(k, R)",
        "P@k(÷k)": "hits in top k / k",
        "R=0 queries": "excluded from mAP and P@k averages",
        "CI": (
            f"{100 * (1 - alpha):g}% percentile class bootstrap of mAP@all "
            f"(queries-per-class weighted), n={n_bootstrap}, seed={seed}"
        ),
    }
    return out


# ---------------------------------------------------------------- kernel locality


def _distinct_share(best: np.ndarray, counted: np.ndarray) -> float:
    """Mean over rows with any counted entry of (distinct ``best`` values among them) / (their count)."""
    shares = [len(set(b[c].tolist())) / int(c.sum()) for b, c in zip(best, counted) if c.any()]
    return float(np.mean(shares)) if shares else float("nan")


def kernel_locality(kernels: Any, targets: Any, grid: int, groups: Any | None = None, n_bootstrap: int = 1000,
                    seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Kernel locality: how often the relation kernel points at the right place.

    For each counted sketch cell (``targets >= 0``: inked, with a true photo cell), the best
    photo cell is the argmax of its kernel row (ties: the lower cell index); it is a hit when
    it lies within one cell of the true cell (Chebyshev distance <= 1 on the ``grid x grid``
    layout, cells row-major).

    Args:
        kernels: ``[P, N, N]`` kernels of P pairs, ``N = grid**2`` sketch cells (rows) by photo
            cells (columns).
        targets: ``[P, N]`` int true photo cell of each sketch cell, ``-1`` = not counted.
        grid: G.
        groups: optional ``[P]`` group (e.g. source photo) per pair for the bootstrap interval;
            default one group per pair.
        n_bootstrap, seed, alpha: percentile bootstrap over groups of the pooled hit rate
            (``n_bootstrap=0`` skips it).

    Returns:
        ``{"locality", "locality_CI", "chance", "chance_9_over_G2", "identity_baseline", "exact",
        "exact_chance", "exact_identity_baseline", "n_pairs", "n_cells", "grid"}``: ``locality`` =
        hits / counted cells; ``chance`` = the expected locality of a uniformly random best cell on
        the same cells (edge cells have fewer neighbours, so it is below ``9 / G^2``);
        ``identity_baseline`` = the locality of "the same position as in the sketch" (a kernel
        that ignores content); ``exact``,
        ``exact_chance`` (``1 / G^2``) and ``exact_identity_baseline``: the same with the true cell
        itself as the only hit; ``distinct_best_cells``: per pair, distinct best photo cells over
        counted sketch cells, averaged over pairs with any (1 = every cell points elsewhere; small =
        the kernel sends most cells to the same few photo cells). NaN when no cell counts.
    """
    k = np.asarray(kernels, dtype=np.float64)
    t = np.asarray(targets, dtype=np.int64)
    g = int(grid)
    n = g * g
    if k.ndim != 3 or k.shape[1:] != (n, n):
        raise ValueError(f"kernels must be [P, {n}, {n}] for grid {g}, got {k.shape}")
    if t.shape != k.shape[:2]:
        raise ValueError(f"targets must be [P, N] = {list(k.shape[:2])}, got {list(t.shape)}")
    if np.any((t < -1) | (t >= n)):
        raise ValueError(f"targets must be -1 or a cell index in [0, {n})")
    counted = t >= 0
    best = np.argmax(np.where(np.isnan(k), -np.inf, k), axis=2)  # first maximum: lower index
    tt = np.where(counted, t, 0)

    def near(a, b):
        return np.maximum(np.abs(a // g - b // g), np.abs(a % g - b % g)) <= 1

    hits = near(best, tt) & counted
    here = np.broadcast_to(np.arange(n), t.shape)
    same_pos = near(here, tt) & counted
    row, col = tt // g, tt % g
    span_r = np.minimum(row + 1, g - 1) - np.maximum(row - 1, 0) + 1
    span_c = np.minimum(col + 1, g - 1) - np.maximum(col - 1, 0) + 1
    neigh = span_r * span_c  # cells within one cell of the target, itself included
    cells = int(counted.sum())
    out: dict[str, Any] = {
        "locality": float(hits.sum() / cells) if cells else float("nan"),
        "chance": float((neigh * counted).sum() / (cells * n)) if cells else float("nan"),
        "chance_9_over_G2": 9.0 / n,
        "identity_baseline": float(same_pos.sum() / cells) if cells else float("nan"),
        "exact": float(((best == tt) & counted).sum() / cells) if cells else float("nan"),
        "exact_chance": 1.0 / n,
        "exact_identity_baseline": float(((here == tt) & counted).sum() / cells) if cells else float("nan"),
        "distinct_best_cells": _distinct_share(best, counted),
        "n_pairs": int(k.shape[0]),
        "n_cells": cells,
        "grid": g,
    }
    if n_bootstrap > 0 and cells:
        grp = np.arange(k.shape[0]) if groups is None else np.asarray(groups)
        if grp.shape != (k.shape[0],):
            raise ValueError(f"groups must be [P] = [{k.shape[0]}], got {list(grp.shape)}")
        _, inv = np.unique(grp, return_inverse=True)
        inv = inv.reshape(-1)
        h = np.bincount(inv, weights=hits.sum(1))
        c = np.bincount(inv, weights=counted.sum(1))
        out["locality_CI"] = list(bootstrap_ci(_safe_div(h, np.maximum(c, 1)), n=n_bootstrap, seed=seed, alpha=alpha,
                                               weights=c))
    return out
