"""Re-rank variants on validation, from one set of relation scores (no training).

For each query's top-K [Ret] candidates the relation network is run once; the candidates are
then ordered by
  * the relation score alone (the paper's, the shipped default),
  * `relation score + w x [Ret] cosine` (`rerank_ret_weight` w: `ZseModel.rerank_score`),
  * a hubness correction `relation logit - beta x b(photo)`, where b is the photo's mean relation
    logit against a fixed reference set of training-fit sketches (never queries, never the
    validation or test classes): photos that every sketch scores high are pulled down.
Each variant's mAP@all is printed with its difference to the relation-only order and the paired
class-bootstrap 95% interval of that difference (`zse_hf.compare`), for the split's gallery and
the `--gallery all` one. Choose on validation; `--split test` needs `--allow-test`.

    python benchmarks/bench_rerank_variants.py --model hub_card              # ~12 min on 2 cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from zse_hf.compare import compare_results
from zse_hf.data import open_dataset
from zse_hf.evaluation import data_hash, encode_dataset, place_reranked
from zse_hf.loading import load_model
from zse_hf.metrics import compute_metrics, rank_gallery
from zse_hf.modeling_zse import ZseImageFeatures, ZseModel


@torch.inference_mode()
def pair_logits(model: ZseModel, queries: ZseImageFeatures, gallery: ZseImageFeatures, qi, gi) -> np.ndarray:
    """Relation logits `[M]` of the pairs `(qi[m], gi[m])` (float64)."""
    out = model.score_indexed_pairs(queries, gallery, torch.as_tensor(qi), torch.as_tensor(gi),
                                    return_logits=True, progress=True)
    return out.float().cpu().numpy().astype(np.float64)


def photo_bias(model: ZseModel, reference: ZseImageFeatures, gallery: ZseImageFeatures) -> np.ndarray:
    """`[G]` mean relation logit of each gallery photo against every reference sketch."""
    r_n, g_n = reference.local_tokens.shape[0], gallery.local_tokens.shape[0]
    logits = pair_logits(model, reference, gallery, np.repeat(np.arange(r_n), g_n), np.tile(np.arange(g_n), r_n))
    return logits.reshape(r_n, g_n).mean(0)


def variant_table(name: str, ret, top, logits, cos_top, bias, labels, weights, betas, model) -> list[str]:
    """Markdown rows of every variant on one gallery."""
    q_lab, g_lab = labels
    rel = 1.0 / (1.0 + np.exp(-logits))
    variants = {"[Ret] only": ret, "relation score (w = 0)": place_reranked(ret, top, rel)}
    for w in weights:
        variants[f"relation + {w:g} x cosine"] = place_reranked(ret, top, model.rerank_score(rel, cos_top, w))
    for beta in betas:
        variants[f"relation logit - {beta:g} x photo bias"] = place_reranked(ret, top, logits - beta * bias[top])
    metrics = {k: compute_metrics(s, q_lab, g_lab, n_bootstrap=0) for k, s in variants.items()}
    base = {"data_hash": name, "results": metrics}
    rows = [f"\n{name}\n", "| re-rank order | mAP@all | minus relation-only [95% CI] | classes better / worse |",
            "|---|---|---|---|"]
    for k, m in metrics.items():
        if k == "relation score (w = 0)":
            rows.append(f"| **{k}** | **{m['mAP@all']:.4f}** | | |")
            continue
        c = compare_results(base, base, "relation score (w = 0)", k)
        lo, hi = c["difference_CI"]
        rows.append(f"| {k} | {m['mAP@all']:.4f} | {c['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] | "
                    f"{c['classes_b_better']} / {c['classes_a_better']} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="hub_card")
    p.add_argument("--split", default="val")
    p.add_argument("--allow-test", action="store_true", help="allow --split test (only after a decision)")
    p.add_argument("--max-per-class", type=int, default=30, help="query sketches per class")
    p.add_argument("--rerank-k", type=int, default=10)
    p.add_argument("--weights", type=float, nargs="*", default=[0.25, 0.5, 1, 2, 4, 8, 16, 32])
    p.add_argument("--betas", type=float, nargs="*", default=[0.5, 1.0])
    p.add_argument("--reference-per-class", type=int, default=5, help="training-fit sketches per class for b")
    args = p.parse_args()
    if args.split == "test" and not args.allow_test:
        p.error("choose a re-rank on validation; --split test needs --allow-test (after the decision)")

    t0 = time.time()
    torch.manual_seed(0)
    model, processor, _ = load_model(args.model, None)
    model.eval()
    reference_set, _ = open_dataset("offline", "train_fit", max_per_class=args.reference_per_class)
    reference = encode_dataset(model, processor, reference_set, "sketch", 32, keep_local=True)
    lines, queries_feat = [], None
    for gallery_kind in ("split", "all"):
        extra = {"gallery": "all"} if gallery_kind == "all" else {}
        queries, gallery = open_dataset("offline", args.split, max_per_class=args.max_per_class, **extra)
        if queries_feat is None:
            queries_feat = encode_dataset(model, processor, queries, "sketch", 32, keep_local=True)
        g = encode_dataset(model, processor, gallery, "photo", 32, keep_local=True)
        ret = (queries_feat.ret_embeds @ g.ret_embeds.T).numpy()
        k = min(args.rerank_k, ret.shape[1])
        top = rank_gallery(ret, k=k)
        logits = pair_logits(model, queries_feat, g, np.repeat(np.arange(len(queries)), k), top.reshape(-1))
        bias = photo_bias(model, reference, g) if args.betas else np.zeros(ret.shape[1])
        name = (f"{args.split}, gallery {gallery_kind}: {len(queries)} sketches x {len(gallery)} photos, top-{k} "
                f"(data_hash {data_hash(queries, gallery)})")
        lines += variant_table(name, ret, top, logits.reshape(-1, k), np.take_along_axis(ret, top, 1), bias,
                               (queries.labels, gallery.labels), args.weights, args.betas, model)
    print(f"model {args.model}; photo bias b: mean relation logit against {len(reference_set)} training-fit "
          f"sketches ({len(reference_set.classes)} classes)")
    print("\n".join(lines))
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
