"""The two-stage ranking every photo store shares: relation scores of each sketch's candidates,
and the hits in the order of the model's ranking (re-ranked head by the re-rank key, then the
rest in [Ret] order). [`ZseIndex`] and [`ZseMilvusStore`] differ only in where the candidates
and their tokens come from."""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from ..modeling_zse import ZseImageFeatures
from .model_binding import model_device_dtype
from .records import Hit


def check_k(k) -> None:
    """ValueError unless `k` is an integer >= 1."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def check_rerank_k(rerank_k) -> None:
    """ValueError unless `rerank_k` is None or an integer >= 0."""
    bad = isinstance(rerank_k, bool) or not isinstance(rerank_k, (int, np.integer)) or rerank_k < 0
    if rerank_k is not None and bad:
        raise ValueError(f"rerank_k must be None or an integer >= 0 (0: no re-ranking), got {rerank_k!r}")


def relation_scores(model, query_features: ZseImageFeatures, candidates: ZseImageFeatures,
                    candidate_index: np.ndarray, batch_size: int | None = None,
                    autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Relation scores `[Q, K]` of each query against its own candidates.

    Args:
        model: the [`ZseModel`] whose pair head scores (eval mode for the call).
        query_features: features of Q sketches (`local_tokens [Q, N, D]`, `token_mask`, `grid_size`).
        candidates: features of M distinct candidate photos (`local_tokens [M, N, D]`,
            `token_mask [M, N]`, optionally `cross_projections [M, 3, N, D]` for the photo side).
        candidate_index: `[Q, K]` int, which of the M candidates each (query, slot) is; `-1` gives NaN.
        batch_size: pairs per `model.score_indexed_pairs` chunk (None: the model's `pair_chunk_size`).
        autocast_dtype: run the head under `torch.autocast` with this dtype (e.g. `torch.bfloat16`).

    Each query's projections are made once for all its candidates.
    """
    candidate_index = np.asarray(candidate_index, dtype=np.int64)
    q_n, k_n = candidate_index.shape
    flat = candidate_index.reshape(-1)
    valid = np.flatnonzero(flat >= 0)
    out = torch.full((q_n * k_n,), float("nan"))
    if len(valid) == 0:
        return out.view(q_n, k_n)
    dev = model_device_dtype(model)[0]
    ctx = torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), ctx:
            queries = model.project_image_features(query_features.to_model(model), "sketch")
            scores = model.score_indexed_pairs(queries, candidates, torch.from_numpy(valid // k_n),
                                               torch.from_numpy(flat[valid]), chunk_size=batch_size)
        out[torch.from_numpy(valid)] = scores.float().cpu()
    finally:
        model.train(was_training)
    return out.view(q_n, k_n)


def ranked_hits(model, scores: np.ndarray, rows: np.ndarray, rel: np.ndarray | None, k: int,
                rerank_ret_weight: float | None, record: Callable[[int], tuple]) -> list[list[Hit]]:
    """The hits of each query, best first.

    Args:
        model: gives the re-rank key (`model.rerank_score`); unused without `rel`.
        scores: `[Q, L]` [Ret] cosines of the candidates, best first; rows: `[Q, L]` their row
            numbers (`-1` pads a query with fewer candidates).
        rel: `[Q, H]` relation scores of the first H candidates (`H <= L`; NaN for padding), or
            None for no re-rank. The first H come first, by re-rank key (relation score +
            `rerank_ret_weight` x cosine; ties and NaN keep [Ret] order), then the rest in [Ret] order.
        k: hits per query at most.
        record: `row -> (id, path)`.
    """
    key = None
    if rel is not None:
        key = model.rerank_score(rel, scores[:, :rel.shape[1]], rerank_ret_weight)
    results = []
    for qi in range(rows.shape[0]):
        order = list(range(rows.shape[1]))
        if rel is not None:
            n_head = rel.shape[1]
            head_order = sorted(range(n_head), key=lambda j: (np.isnan(key[qi, j]), -np.nan_to_num(key[qi, j]), j))
            order = head_order + order[n_head:]
        hits = []
        for j in order:
            r = int(rows[qi, j])
            if r < 0:
                continue
            score = float(rel[qi, j]) if rel is not None and j < rel.shape[1] else None
            photo_id, path = record(r)
            hits.append(Hit(photo_id, path, len(hits) + 1, float(scores[qi, j]), score))
            if len(hits) == k:
                break
        results.append(hits)
    return results
