"""Re-rank variants on validation, from one set of relation scores (no training).

For each query's top-K [Ret] candidates the relation network is run once; the candidates are
then ordered by
  * the relation score alone (the paper's, the shipped default),
  * `relation score + w x [Ret] cosine` (`rerank_ret_weight` w: `ZseModel.rerank_score`),
  * a hubness correction `relation logit - beta x b(photo)`, where b is the photo's mean relation
    logit against a fixed reference set of training-fit sketches (never queries, never the
    validation or test classes): photos that every sketch scores high are pulled down.
  * with `--flip`: horizontal-flip test-time augmentation of the relation score (the mean with
    the score of the mirrored pair, the mean or the max with the mirrored photo's),
  * with `--extra-head DIR` (repeatable): the mean relation score of the model's pair head and
    the pair heads of other models that share its encoder (e.g. other relation-stage checkpoints;
    checked to 1e-3), adding one head at a time.
Each variant's mAP@all is printed with its difference to the relation-only order and the paired
class-bootstrap 95% interval of that difference (`zse_hf.compare`), for the split's gallery and
the `--gallery all` one. Choose on validation; `--split test` needs `--allow-test`.

    python benchmarks/bench_rerank_variants.py --model hub_card              # ~12 min on 2 cores
    python benchmarks/bench_rerank_variants.py --model hub_card --weights --betas --flip \
        --extra-head runs/relstamps/checkpoint-600 --extra-head runs/r224/checkpoint-450
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps
from safetensors.torch import load_file

from zse_hf.compare import compare_results
from zse_hf.data import open_dataset
from zse_hf.evaluation import data_hash, encode_dataset, place_reranked
from zse_hf.loading import load_model
from zse_hf.metrics import compute_metrics, rank_gallery
from zse_hf.modeling_zse import ZseImageFeatures, ZseModel

HEAD_PREFIXES = ("cross_attention.", "relation_network.")


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


class Mirrored:
    """A dataset's images mirrored left-right (items `{"image"}`)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        image = self.dataset.load(i) if hasattr(self.dataset, "load") else self.dataset[i]["image"]
        return {"image": ImageOps.mirror(image)}


def head_state(model: ZseModel, folder: str) -> dict[str, torch.Tensor]:
    """The pair-head tensors (cross-attention, relation network) of the model or Trainer checkpoint in
    `folder`, after checking that its encoder matches `model`'s (to 1e-3: fp16 exports round)."""
    state = {k.removeprefix("model."): v for k, v in load_file(str(Path(folder) / "model.safetensors")).items()}
    own = model.state_dict()
    if set(state) != set(own):
        raise SystemExit(f"{folder}: not a model of the same architecture")
    for k, v in state.items():
        if k.startswith("encoder.") and (v.float() - own[k].float()).abs().max() > 1e-3:
            raise SystemExit(f"{folder}: its encoder differs from the model's ({k}): its head reads other tokens")
    return {k: v.to(own[k].dtype) for k, v in state.items() if k.startswith(HEAD_PREFIXES)}


def variant_table(name: str, ret, top, logits, cos_top, bias, labels, weights, betas, model,
                  flipped: dict | None = None, heads: dict | None = None) -> list[str]:
    """Markdown rows of every variant on one gallery. `flipped`: `{"pair", "photo"}` logits `[Q, K]`
    of the mirrored pair / mirrored photo; `heads`: `{name: logits [Q, K]}` of extra pair heads."""
    q_lab, g_lab = labels
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    rel = sig(logits)
    variants = {"[Ret] only": ret, "relation score (w = 0)": place_reranked(ret, top, rel)}
    for w in weights:
        variants[f"relation + {w:g} x cosine"] = place_reranked(ret, top, model.rerank_score(rel, cos_top, w))
    for beta in betas:
        variants[f"relation logit - {beta:g} x photo bias"] = place_reranked(ret, top, logits - beta * bias[top])
    if flipped:
        pair, photo = sig(flipped["pair"]), sig(flipped["photo"])
        variants["mean with the mirrored pair"] = place_reranked(ret, top, (rel + pair) / 2)
        variants["mean with the mirrored photo"] = place_reranked(ret, top, (rel + photo) / 2)
        variants["max with the mirrored photo"] = place_reranked(ret, top, np.maximum(rel, photo))
    scores = [rel]
    for head, head_logits in (heads or {}).items():
        scores.append(sig(head_logits))
        variants[f"head {head} alone"] = place_reranked(ret, top, scores[-1])
        variants[f"mean of {len(scores)} heads (+ {head})"] = place_reranked(ret, top, np.mean(scores, 0))
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
    p.add_argument("--flip", action="store_true", help="also the horizontal-flip variants")
    p.add_argument("--extra-head", action="append", default=[], metavar="DIR",
                   help="a model folder or Trainer checkpoint with the same encoder: average its pair head in")
    args = p.parse_args()
    if args.split == "test" and not args.allow_test:
        p.error("choose a re-rank on validation; --split test needs --allow-test (after the decision)")

    t0 = time.time()
    torch.manual_seed(0)
    model, processor, _ = load_model(args.model, None)
    model.eval()
    shipped_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIXES)}
    extra_heads = {d: head_state(model, d) for d in args.extra_head}
    reference_set, reference = None, None
    if args.betas:  # the photo bias needs the reference sketches; skip encoding them otherwise
        reference_set, _ = open_dataset("offline", "train_fit", max_per_class=args.reference_per_class)
        reference = encode_dataset(model, processor, reference_set, "sketch", 32, keep_local=True)
    lines, queries_feat, mirrored_queries = [], None, None
    for gallery_kind in ("split", "all"):
        extra = {"gallery": "all"} if gallery_kind == "all" else {}
        queries, gallery = open_dataset("offline", args.split, max_per_class=args.max_per_class, **extra)
        if queries_feat is None:
            queries_feat = encode_dataset(model, processor, queries, "sketch", 32, keep_local=True)
        g = encode_dataset(model, processor, gallery, "photo", 32, keep_local=True)
        ret = (queries_feat.ret_embeds @ g.ret_embeds.T).numpy()
        k = min(args.rerank_k, ret.shape[1])
        top = rank_gallery(ret, k=k)
        qi, gi = np.repeat(np.arange(len(queries)), k), top.reshape(-1)
        logits = pair_logits(model, queries_feat, g, qi, gi)
        bias = photo_bias(model, reference, g) if args.betas else np.zeros(ret.shape[1])
        flipped = None
        if args.flip:
            if mirrored_queries is None:
                mirrored_queries = encode_dataset(model, processor, Mirrored(queries), "sketch", 32, keep_local=True)
            g_mirrored = encode_dataset(model, processor, Mirrored(gallery), "photo", 32, keep_local=True)
            flipped = {"pair": pair_logits(model, mirrored_queries, g_mirrored, qi, gi).reshape(-1, k),
                       "photo": pair_logits(model, queries_feat, g_mirrored, qi, gi).reshape(-1, k)}
        heads = {}
        for head, state in extra_heads.items():
            model.load_state_dict(state, strict=False)
            heads[head] = pair_logits(model, queries_feat, g, qi, gi).reshape(-1, k)
        model.load_state_dict(shipped_head, strict=False)
        name = (f"{args.split}, gallery {gallery_kind}: {len(queries)} sketches x {len(gallery)} photos, top-{k} "
                f"(data_hash {data_hash(queries, gallery)})")
        lines += variant_table(name, ret, top, logits.reshape(-1, k), np.take_along_axis(ret, top, 1), bias,
                               (queries.labels, gallery.labels), args.weights, args.betas, model, flipped, heads)
    print(f"model {args.model}" + (f"; photo bias b: mean relation logit against {len(reference_set)} training-fit "
                                   f"sketches ({len(reference_set.classes)} classes)" if reference_set else ""))
    print("\n".join(lines))
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
