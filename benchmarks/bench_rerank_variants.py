"""Re-rank variants on validation, from one set of relation scores (no training).

For each query's top-K [Ret] candidates the relation network is run once; the candidates are
then ordered by
  * the relation score alone (the paper's, the shipped default),
  * `relation score + w x [Ret] cosine` (`rerank_ret_weight` w: `ZseModel.rerank_score`),
  * the same with a calibrated w* = std(relation score) / std(cosine) over the reference sketches'
    top-K pairs on the same gallery (no labels), so both terms weigh alike: the relation score as a
    residual on the cosine,
  * a hubness correction `relation logit - beta x b(photo)`, where b is the photo's mean relation
    logit against a fixed reference set of training-fit sketches (never queries, never the
    validation or test classes): photos that every sketch scores high are pulled down.
  * with `--flip`: horizontal-flip test-time augmentation of the relation score (the mean with
    the score of the mirrored pair, the mean or the max with the mirrored photo's),
  * with `--extra-head DIR` (repeatable): the mean relation score of the model's pair head and
    the pair heads of other models that share its encoder (e.g. other relation-stage checkpoints;
    checked to 1e-3), adding one head at a time.
Each variant's mAP@all is printed with its difference to the relation-only order and the paired
class-bootstrap 95% interval of that difference (`zse_hf.evaluation.compare`), for the split's gallery and
the `--gallery all` one. Choose on validation; `--split test` needs `--allow-test`. `--val-fold I/K`
scores the validation fold of the ranking protocol (the reference sketches then come from that
fold's training classes), and `--out` writes every variant's metrics as a `zse-sbir eval` JSON
(mode keys below), so `zse-sbir compare --pool` can pool the K folds:

    ret, rn@K, rn@K+cos*W, rn@K+cos*calibrated, rn@K-hub*BETA, rn@K-flip-pair, rn@K-flip-photo-mean,
    rn@K-flip-photo-max, rn@K-heads<N>

    python benchmarks/bench_rerank_variants.py --model hub_card              # ~12 min on 2 cores
    python benchmarks/bench_rerank_variants.py --model hub_card --weights --betas --flip \
        --extra-head runs/relstamps/checkpoint-600 --extra-head runs/r224/checkpoint-450
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps
from safetensors.torch import load_file

from zse_hf.data import open_dataset
from zse_hf.data.split import parse_fold
from zse_hf.evaluation import data_hash, encode_dataset, place_reranked
from zse_hf.evaluation.compare import compare_results
from zse_hf.evaluation.metrics import compute_metrics, rank_gallery
from zse_hf.loading import load_model
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


def trained_at(model_dir: str) -> dict:
    """`{"model_training": {...}}`: which model of a run is scored. A run's `best/` (its
    `training_summary.json`): the best step and its validation mAP@all, `selected: true`; a Trainer
    `checkpoint-N` inside a run folder (the run's `train_config.json`): its step, `selected: false`
    (not chosen on the validation classes). `{}` for a model of neither kind."""
    folder = Path(model_dir)
    if (folder / "training_summary.json").is_file():
        summary = json.loads((folder / "training_summary.json").read_text())
        keys = ("best_checkpoint", "best_val_mAP@all", "global_step", "stopped_at_step")
        record = {**{k: summary.get(k) for k in keys}, "selected": True}
        config = summary.get("config") or {}
    elif (folder.parent / "train_config.json").is_file() and folder.name.startswith("checkpoint-"):
        record = {"checkpoint": folder.name, "selected": False}
        config = json.loads((folder.parent / "train_config.json").read_text())
    else:
        return {}
    return {"model_training": {**record, "val_fold": config.get("val_fold")}}


def calibrated_weight(model: ZseModel, reference: ZseImageFeatures, gallery: ZseImageFeatures, k: int) -> float:
    """w* = std(relation score) / std([Ret] cosine) over each reference sketch's top-`k` gallery photos
    by [Ret]: the fusion weight at which both terms spread alike (labels are not used)."""
    ret = (reference.ret_embeds @ gallery.ret_embeds.T).numpy()
    top = rank_gallery(ret, k=k)
    rel = 1.0 / (1.0 + np.exp(-pair_logits(model, reference, gallery, np.repeat(np.arange(len(ret)), k),
                                           top.reshape(-1))))
    return float(rel.std() / max(np.take_along_axis(ret, top, 1).std(), 1e-12))


def variant_metrics(ret, top, logits, cos_top, bias, labels, weights, betas, model, k: int,
                    calibrated: float | None = None, flipped: dict | None = None,
                    heads: dict | None = None) -> dict[str, dict]:
    """`{mode key: compute_metrics(...)}` of every variant on one gallery (keys as in the module
    docstring). `ret` `[Q, G]`; `top`, `logits`, `cos_top` `[Q, K]`; `bias` `[G]`; `flipped`:
    `{"pair", "photo"}` logits `[Q, K]` of the mirrored pair / mirrored photo; `heads`:
    `{name: logits [Q, K]}` of extra pair heads."""
    q_lab, g_lab = labels
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    rel = sig(logits)
    rn = f"rn@{k}"
    variants = {"ret": ret, rn: place_reranked(ret, top, rel)}
    for w in weights:
        variants[f"{rn}+cos*{w:g}"] = place_reranked(ret, top, model.rerank_score(rel, cos_top, w))
    if calibrated is not None:
        variants[f"{rn}+cos*calibrated"] = place_reranked(ret, top, rel + calibrated * cos_top)
    for beta in betas:
        variants[f"{rn}-hub*{beta:g}"] = place_reranked(ret, top, logits - beta * bias[top])
    if flipped:
        pair, photo = sig(flipped["pair"]), sig(flipped["photo"])
        variants[f"{rn}-flip-pair"] = place_reranked(ret, top, (rel + pair) / 2)
        variants[f"{rn}-flip-photo-mean"] = place_reranked(ret, top, (rel + photo) / 2)
        variants[f"{rn}-flip-photo-max"] = place_reranked(ret, top, np.maximum(rel, photo))
    scores = [rel]
    for head_logits in (heads or {}).values():
        scores.append(sig(head_logits))
        variants[f"{rn}-heads{len(scores)}"] = place_reranked(ret, top, np.mean(scores, 0))
    return {key: compute_metrics(s, q_lab, g_lab, n_bootstrap=0) for key, s in variants.items()}


def variant_table(name: str, metrics: dict[str, dict], base_key: str) -> list[str]:
    """Markdown rows: each variant's mAP@all and its difference to `base_key` with the paired interval."""
    payload = {"data_hash": name, "results": metrics}
    rows = [f"\n{name}\n", f"| re-rank order | mAP@all | minus {base_key} [95% CI] | classes better / worse |",
            "|---|---|---|---|"]
    for key, m in metrics.items():
        if key == base_key:
            rows.append(f"| **{key}** | **{m['mAP@all']:.4f}** | | |")
            continue
        c = compare_results(payload, payload, base_key, key)
        lo, hi = c["difference_CI"]
        rows.append(f"| {key} | {m['mAP@all']:.4f} | {c['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] | "
                    f"{c['classes_b_better']} / {c['classes_a_better']} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="hub_card")
    p.add_argument("--split", default="val")
    p.add_argument("--val-fold", default=None, metavar="I/K",
                   help="with --split val: fold I of the K-fold ranking protocol (as `zse-sbir eval --val-fold`)")
    p.add_argument("--allow-test", action="store_true", help="allow --split test (only after a decision)")
    p.add_argument("--max-per-class", type=int, default=30, help="query sketches per class")
    p.add_argument("--rerank-k", type=int, default=10)
    p.add_argument("--weights", type=float, nargs="*", default=[0.25, 0.5, 1, 2, 4, 8, 16, 32])
    p.add_argument("--no-calibrated", dest="calibrated", action="store_false",
                   help="skip the calibrated fusion weight (std ratio over the reference sketches)")
    p.add_argument("--betas", type=float, nargs="*", default=[0.5, 1.0])
    p.add_argument("--reference-per-class", type=int, default=5, help="training-fit sketches per class for b")
    p.add_argument("--flip", action="store_true", help="also the horizontal-flip variants")
    p.add_argument("--extra-head", action="append", default=[], metavar="DIR",
                   help="a model folder or Trainer checkpoint with the same encoder: average its pair head in")
    p.add_argument("--out", default=None, help="write every variant's metrics as a `zse-sbir eval` JSON")
    args = p.parse_args()
    if args.split == "test" and not args.allow_test:
        p.error("choose a re-rank on validation; --split test needs --allow-test (after the decision)")
    if args.val_fold is not None:
        if args.split != "val":
            p.error("--val-fold applies to --split val")
        try:
            parse_fold(args.val_fold)
        except ValueError as err:
            p.error(str(err))
    fold = {"val_fold": args.val_fold} if args.val_fold else {}
    trained = trained_at(args.model)
    if args.val_fold and trained and parse_fold(trained["model_training"]["val_fold"]) != parse_fold(args.val_fold):
        p.error(f"{args.model} was trained with val_fold {trained['model_training']['val_fold']!r}: scoring fold "
                f"{args.val_fold} with it would score classes its encoder trained on")

    t0 = time.time()
    torch.manual_seed(0)
    model, processor, _ = load_model(args.model, None)
    model.eval()
    shipped_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIXES)}
    extra_heads = {d: head_state(model, d) for d in args.extra_head}
    reference_set, reference = None, None
    if args.betas or args.calibrated:  # the photo bias and w* need the reference sketches
        reference_set, _ = open_dataset("offline", "train_fit", max_per_class=args.reference_per_class, **fold)
        reference = encode_dataset(model, processor, reference_set, "sketch", 32, keep_local=True)
    lines, queries_feat, mirrored_queries, payload = [], None, None, {}
    for gallery_kind in ("split", "all"):
        extra = {"gallery": "all"} if gallery_kind == "all" else {}
        queries, gallery = open_dataset("offline", args.split, max_per_class=args.max_per_class, **extra, **fold)
        if queries_feat is None:
            queries_feat = encode_dataset(model, processor, queries, "sketch", 32, keep_local=True)
        g = encode_dataset(model, processor, gallery, "photo", 32, keep_local=True)
        ret = (queries_feat.ret_embeds @ g.ret_embeds.T).numpy()
        k = min(args.rerank_k, ret.shape[1])
        top = rank_gallery(ret, k=k)
        qi, gi = np.repeat(np.arange(len(queries)), k), top.reshape(-1)
        logits = pair_logits(model, queries_feat, g, qi, gi)
        bias = photo_bias(model, reference, g) if args.betas else np.zeros(ret.shape[1])
        calibrated = calibrated_weight(model, reference, g, k) if args.calibrated else None
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
        metrics = variant_metrics(ret, top, logits.reshape(-1, k), np.take_along_axis(ret, top, 1), bias,
                                  (queries.labels, gallery.labels), args.weights, args.betas, model, k,
                                  calibrated, flipped, heads)
        digest = data_hash(queries, gallery)
        name = (f"{args.split}{' fold ' + args.val_fold if args.val_fold else ''}, gallery {gallery_kind}: "
                f"{len(queries)} sketches x {len(gallery)} photos, top-{k} (data_hash {digest})"
                + (f"; calibrated w* = {calibrated:.4g}" if calibrated is not None else ""))
        lines += variant_table(name, metrics, f"rn@{k}")
        if gallery_kind == "split":
            payload.update({"model": str(args.model), **trained, "split": args.split, **fold,
                            "data_hash": digest,
                            "n_queries": len(queries), "n_gallery": len(gallery), "results": metrics,
                            "calibrated_weight": calibrated, "extra_heads": list(args.extra_head)})
        else:
            payload.update({"results_gallery_all": metrics, "calibrated_weight_gallery_all": calibrated,
                            "gallery_all": {"n_gallery": len(gallery), "data_hash": digest}})
    print(f"model {args.model}" + (f"; reference sketches (photo bias b, w*): {len(reference_set)} training-fit "
                                   f"sketches ({len(reference_set.classes)} classes)" if reference_set else ""))
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=float))
        tmp.replace(out)
        print(f"wrote {out}")
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
