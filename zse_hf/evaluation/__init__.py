"""Evaluation: scoring a model on queries and a gallery (`runner`: `zse-sbir eval`), the metrics
(`metrics`), paired comparisons of rankings (`compare`), the K-fold ranking protocol
(`ranking_protocol`), the offline side-by-side report (`report`) and its pictures (`plots`).

May import: the model, `loading`, `assets`, `cli_args`, `model_summary`, data, retrieval, explain,
hub and conversion (the report's baselines). Never imports training or serving.
"""

from .runner import (
    RN_OFFSET,
    baseline_scores,
    data_hash,
    encode_dataset,
    evaluate,
    evaluate_instances,
    evaluate_locality,
    fine_grained_targets,
    main,
    pair_kernels,
    place_reranked,
    raw_pixel_features,
    rerank_scores,
    save_pictures,
    warped_pairs,
)

__all__ = [
    "baseline_scores", "data_hash", "encode_dataset", "evaluate", "evaluate_instances", "evaluate_locality",
    "fine_grained_targets", "main", "pair_kernels", "place_reranked", "raw_pixel_features", "rerank_scores",
    "RN_OFFSET", "save_pictures", "warped_pairs",
]
