"""Second training stage: the pairwise head, trained for re-ranking.

`zse-sbir train-relation --model DIR --out DIR` keeps a trained model's encoder (tokenizer and
backbone, hence its [Ret] ranking) fixed and trains only the cross-attention and relation
network on the job they do at search time: ordering the top-K photos that [Ret] returns. The
encoder features of the training sketches and photos are computed once and cached, so a step
costs only the pairwise head. For every training sketch, its candidates are its top-K
training photos by [Ret] cosine (hard negatives, as at search time), with one photo of its own
class swapped in for the last candidate when [Ret] found none. The loss is listwise:
`-log(sum_pos softmax(relation logits over the K candidates))`.

With `stamp_query_variants > 0` the reviewed extra stamps (real photos outside every reviewed
class) add instance-level queries: pseudo-sketches of each stamp (one straight, the rest through
seeded warps) whose one positive is their own stamp, with candidates mined from the training
photos and the stamps together. The QuickDraw sketches keep their candidates among the
training photos: by [Ret] similarity the stamps that look like a training class (a seagull for
"bird") would be mined as false negatives. With `stamp_distractors` they mine among the stamps
too, minus those the review marks as resembling their class.

The loop is the stock HF `Trainer` (checkpoints, `--resume`, logging); validation is rn@K
mAP@all on the validation classes carved from the training classes, which also picks the
saved model. Under `torchrun` / `accelerate launch` it runs data parallel like `zse-sbir
train` (see `zse_hf.training.trainer`): every process caches the features itself (the caches are
never broadcast), all use process 0's candidate lists, and process 0 alone validates and
writes files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from ..data.split import parse_fold
from ..modeling_zse import ZseImageFeatures, ZseModel
from .config import check_recipe_values
from .trainer import (
    JsonlLogger,
    MarkedCheckpointsMixin,
    TimeLimit,
    checkpoint_step,
    device_arguments,
    from_main_process,
    prepare_run_folder,
    release_process_group_at_exit,
    retrieval_validation,
    save_best,
)


@dataclasses.dataclass
class RelationStageConfig:
    """Recipe of the relation-head stage.

    Attributes:
        top_k: candidates per sketch (the K that search re-ranks).
        batch_size: sketches per step (each with `top_k` candidates).
        max_steps: optimiser steps.
        lr, weight_decay: AdamW settings for the cross-attention and relation network.
        eval_steps, save_steps: validation / checkpoint interval.
        val_classes, val_sketches_per_class, val_fold: the validation split (as in `zse-sbir train`;
            `val_fold` "I/K" holds out fold I of a K-fold partition instead of `val_classes` classes).
        sketches_per_class: training sketches cached per class (0 = all 100).
        stamp_query_variants: pseudo-sketch queries per usable stamp (0 = no stamps).
        stamp_distractors: the QuickDraw sketches also mine candidates among the stamps, except
            those that resemble their class (`training_lookalike`); needs `stamp_query_variants`.
        grid_flip_p: per training pair, the probability of mirroring the sketch's token grid
            left-right, and independently the photo's (the cached features are one view per
            image, so this is the stage's only augmentation; 0 = off).
        seed: sampling seed (and the stamp warps').
    """

    top_k: int = 10
    batch_size: int = 32
    max_steps: int = 1500
    lr: float = 1e-4
    weight_decay: float = 1e-2
    eval_steps: int = 250
    save_steps: int = 250
    val_classes: int = 10
    val_sketches_per_class: int = 30
    sketches_per_class: int = 0
    stamp_query_variants: int = 0
    stamp_distractors: bool = False
    grid_flip_p: float = 0.0
    seed: int = 0
    val_fold: str | None = None

    def __post_init__(self):
        check_recipe_values(self, at_least_one=("top_k", "batch_size", "max_steps", "eval_steps", "save_steps",
                                                "val_classes", "val_sketches_per_class"),
                            at_least_zero=("sketches_per_class", "stamp_query_variants", "weight_decay"),
                            positive=("lr",), unit=("grid_flip_p",))
        parse_fold(self.val_fold)
        if self.stamp_distractors and self.stamp_query_variants == 0:
            raise ValueError("stamp_distractors needs stamp_query_variants >= 1 (the stamps are cached with them)")


def mine_candidates(sketch_embeds: torch.Tensor, photo_embeds: torch.Tensor, sketch_labels, photo_labels,
                    k: int, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`k` photos of each sketch by [Ret] cosine, with a positive guaranteed.

    Args:
        sketch_embeds: `[S, D]` L2-normalised [Ret] embeddings; photo_embeds: `[P, D]`.
        sketch_labels: `[S]` class ids; photo_labels: `[P]`.
        k: candidates per sketch (`k <= P`).
        exclude: `[S, P]` bool, pairs never mined (e.g. look-alikes of the sketch's class that
            are not labelled as it); a sketch's own-class photos must not be excluded.

    Returns:
        `candidates [S, k]` photo indices (by descending cosine) and `positive [S, k]` bool.
        A sketch whose top-`k` holds no photo of its class gets its most similar same-class
        photo in the last slot. Every sketch's class must have a photo.
    """
    s_lab = torch.as_tensor(np.asarray(sketch_labels))
    p_lab = torch.as_tensor(np.asarray(photo_labels))
    if k > len(p_lab):
        raise ValueError(f"top_k {k} exceeds the {len(p_lab)} training photos")
    missing = sorted(set(s_lab.tolist()) - set(p_lab.tolist()))
    if missing:
        raise ValueError(f"sketch classes without photos: {missing}")
    sim = sketch_embeds.float() @ photo_embeds.float().T
    same = s_lab[:, None] == p_lab[None, :]
    if exclude is not None:
        exclude = torch.as_tensor(exclude, dtype=torch.bool)
        if exclude.shape != sim.shape:
            raise ValueError(f"exclude must be [S, P] = {list(sim.shape)}, got {list(exclude.shape)}")
        if (exclude & same).any():
            raise ValueError("exclude marks photos of the sketch's own class")
        if int((~exclude).sum(1).min()) < k:
            raise ValueError(f"a sketch has fewer than top_k {k} photos left after the exclusions")
        sim = sim.masked_fill(exclude, float("-inf"))
    cand = sim.topk(k, dim=1).indices
    pos = same.gather(1, cand)
    lacking = ~pos.any(1)
    if lacking.any():
        best_pos = sim.masked_fill(~same, float("-inf")).argmax(1)
        cand[lacking, -1] = best_pos[lacking]
        pos = same.gather(1, cand)
    return cand, pos


class RelationHeadObjective(nn.Module):
    """The listwise re-ranking loss of a [`ZseModel`]'s pairwise head on cached features.

    Only `model.cross_attention` and `model.relation_network` are trained; the cached tokens
    and candidate lists are non-persistent buffers (not saved in checkpoints).
    In training mode each pair's sketch and photo token grids are mirrored left-right,
    independently, with probability `grid_flip_p` ([`mirror_token_grid`]).
    """

    def __init__(self, model: ZseModel, sketches: ZseImageFeatures, photos: ZseImageFeatures,
                 candidates: torch.Tensor, positive: torch.Tensor, grid_flip_p: float = 0.0):
        super().__init__()
        self.model = model
        self.grid_flip_p = grid_flip_p
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        self.grid_size = sketches.grid_size
        self.register_buffer("sketch_tokens", sketches.local_tokens, persistent=False)
        self.register_buffer("sketch_mask", sketches.token_mask, persistent=False)
        self.register_buffer("photo_tokens", photos.local_tokens, persistent=False)
        self.register_buffer("photo_mask", photos.token_mask, persistent=False)
        self.register_buffer("candidates", candidates, persistent=False)
        self.register_buffer("positive", positive, persistent=False)

    def _features(self, tokens, mask, index) -> ZseImageFeatures:
        dtype = next(self.model.relation_network.parameters()).dtype
        tokens, mask = tokens[index].to(dtype), mask[index]
        if self.training and self.grid_flip_p > 0:
            flip = torch.rand(tokens.shape[0], device=tokens.device) < self.grid_flip_p
            tokens, mask = mirror_token_grid(tokens, mask, self.grid_size, flip)
        return ZseImageFeatures(local_tokens=tokens, token_mask=mask, grid_size=self.grid_size)

    def forward(self, sketch_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss for sketches `sketch_index [B]` against their `K` candidates.

        Returns: `{"loss": scalar, "logits": [B, K]}`.
        """
        b, k = sketch_index.shape[0], self.candidates.shape[1]
        cand = self.candidates[sketch_index]  # [B, K]
        s = self._features(self.sketch_tokens, self.sketch_mask, sketch_index.repeat_interleave(k))
        p = self._features(self.photo_tokens, self.photo_mask, cand.reshape(-1))
        logits = self.model.relation_logits(s, p).view(b, k).float()
        pos = self.positive[sketch_index]
        loss = (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), 1)).mean()
        return {"loss": loss, "logits": logits}


def mirror_token_grid(tokens: torch.Tensor, mask: torch.Tensor, grid_size: tuple[int, int], flip: torch.Tensor):
    """Mirror the token grids of the rows where `flip` is True, left to right.

    Args:
        tokens: `[B, h*w, D]` patch tokens on grid `grid_size = (h, w)`, row-major.
        mask: `[B, h*w]` bool token mask.
        flip: `[B]` bool, the rows to mirror.

    Returns: `(tokens [B, h*w, D], mask [B, h*w])`, new tensors.
    """
    h, w = grid_size
    b, n, d = tokens.shape
    if n != h * w:
        raise ValueError(f"{n} tokens do not lie on a {h}x{w} grid")
    mirrored = tokens.view(b, h, w, d).flip(2).reshape(b, n, d)
    mirrored_mask = mask.view(b, h, w).flip(2).reshape(b, n)
    return torch.where(flip[:, None, None], mirrored, tokens), torch.where(flip[:, None], mirrored_mask, mask)


class _SketchIndices(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"sketch_index": i}


class RelationStageTrainer(MarkedCheckpointsMixin, Trainer):
    """`Trainer` whose evaluation is rn@K retrieval on the validation split."""

    def __init__(self, *args, val_queries=None, val_gallery=None, image_processor=None, top_k: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_queries, self.val_gallery = val_queries, val_gallery
        self.image_processor, self.top_k = image_processor, top_k

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        return retrieval_validation(self, self.model.model, rerank_k=self.top_k, prefix=metric_key_prefix)


def cache_features(model: ZseModel, image_processor, cfg: RelationStageConfig, fit=None, stamps=None):
    """Encode the training-fit sketches and photos once; returns `(sketches, photos, labels...)`.

    `fit`: the `evaluation_set("train_fit", ...)` pair (built from `cfg` when not given).
    `stamps`: the stage's stamp set (:func:`stage_stamps`, built from `cfg` when not given).

    Returns: `(sketch_features, photo_features, sketch_labels [S], photo_labels [P])`; the
    features carry fp16 local tokens `[N, T, D]` and fp32 [Ret] embeddings. With
    `cfg.stamp_query_variants`, the stamp pseudo-sketches follow the training sketches and the
    stamps follow the training photos, labelled after every class label.
    """
    from ..evaluation.runner import encode_dataset

    if fit is None:
        fit = _fit_set(cfg, image_processor)
    model.eval()
    s = encode_dataset(model, image_processor, fit.queries, "sketch", desc="caching training sketches")
    p = encode_dataset(model, image_processor, fit.gallery, "photo", desc="caching training photos")
    s_lab, p_lab = np.asarray(fit.queries.labels), np.asarray(fit.gallery.labels)
    if cfg.stamp_query_variants > 0:
        from ..data.stamps import StampPseudoSketchDataset

        stamps = stamps if stamps is not None else stage_stamps(cfg)
        queries = StampPseudoSketchDataset(stamps, cfg.stamp_query_variants, size=fit.queries.size, seed=cfg.seed)
        offset = len(fit.gallery.classes)  # stamp labels after every class label
        s = concat_features([s, encode_dataset(model, image_processor, queries, "sketch",
                                               desc="caching stamp pseudo-sketches")])
        p = concat_features([p, encode_dataset(model, image_processor, stamps, "photo", desc="caching stamp photos")])
        s_lab = np.concatenate([s_lab, offset + queries.labels])
        p_lab = np.concatenate([p_lab, offset + stamps.labels])
    return s, p, s_lab, p_lab


def concat_features(parts: Sequence[ZseImageFeatures]) -> ZseImageFeatures:
    """Stack cached features (`ret_embeds [N_i, D]`, `local_tokens [N_i, T, D]`, `token_mask [N_i, T]`)
    of one grid along the first axis."""
    if len({f.grid_size for f in parts}) != 1:
        raise ValueError("features of different grids cannot be stacked")
    return ZseImageFeatures(ret_embeds=torch.cat([f.ret_embeds for f in parts]),
                            local_tokens=torch.cat([f.local_tokens for f in parts]),
                            token_mask=torch.cat([f.token_mask for f in parts]), grid_size=parts[0].grid_size)


def mine_stage_candidates(s: ZseImageFeatures, p: ZseImageFeatures, s_lab, p_lab, n_class_sketches: int,
                          n_class_photos: int, k: int, stamp_exclusion: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates of every cached query (see :func:`mine_candidates`): the rest (stamp queries)
    among all photos; the first `n_class_sketches` (QuickDraw) among the first `n_class_photos`
    photos only, or, with `stamp_exclusion` `[n_class_sketches, P - n_class_photos]` bool, among
    all photos but the stamps it marks for them (:func:`stamp_lookalike_mask`).

    Returns: `candidates [S, k]` indices into all photos, `positive [S, k]` bool.
    """
    s_lab, p_lab = np.asarray(s_lab), np.asarray(p_lab)
    if stamp_exclusion is None:
        c1, pos1 = mine_candidates(s.ret_embeds[:n_class_sketches], p.ret_embeds[:n_class_photos],
                                   s_lab[:n_class_sketches], p_lab[:n_class_photos], k)
    else:
        stamp_exclusion = torch.as_tensor(stamp_exclusion, dtype=torch.bool)
        exclude = torch.cat([torch.zeros(n_class_sketches, n_class_photos, dtype=torch.bool), stamp_exclusion], 1)
        c1, pos1 = mine_candidates(s.ret_embeds[:n_class_sketches], p.ret_embeds, s_lab[:n_class_sketches], p_lab, k,
                                   exclude=exclude)
    if n_class_sketches == len(s_lab):
        return c1, pos1
    c2, pos2 = mine_candidates(s.ret_embeds[n_class_sketches:], p.ret_embeds, s_lab[n_class_sketches:], p_lab, k)
    return torch.cat([c1, c2]), torch.cat([pos1, pos2])


def stamp_lookalike_mask(sketch_classes: Sequence[str], lookalikes: Sequence[frozenset[str]]) -> torch.Tensor:
    """`[S, N]` bool: True where stamp `n` resembles sketch `s`'s class (`lookalikes[n]`, the
    classes in `training_lookalike`, see :func:`zse_hf.data.stamps.stamp_training_lookalikes`)."""
    return torch.tensor([[c in look for look in lookalikes] for c in sketch_classes], dtype=torch.bool).view(
        len(sketch_classes), len(lookalikes))


def stage_stamps(cfg: RelationStageConfig):
    """The usable stamps of a stage, minus the look-alikes of its validation classes
    (:class:`~zse_hf.data.stamps.StampPhotoDataset`)."""
    from ..data import train_val_split
    from ..data.stamps import StampPhotoDataset

    _, val_classes = train_val_split(seed=cfg.seed, num_val_classes=cfg.val_classes, fold=cfg.val_fold)
    return StampPhotoDataset(withhold_lookalikes_of=val_classes)


def _fit_set(cfg: RelationStageConfig, image_processor):
    from ..data import evaluation_set

    return evaluation_set("train_fit", val_seed=cfg.seed, num_val_classes=cfg.val_classes, val_fold=cfg.val_fold,
                          max_per_class=cfg.sketches_per_class or None, sketch_size=max(image_processor.side, 112))


def train_relation_head(model_dir: str, out_dir: str, cfg: RelationStageConfig, resume: bool = False,
                        time_limit: float | None = None) -> Path:
    """Train the pairwise head of the model in `model_dir`; save the best (by validation rn@K
    mAP@all) to `out_dir/best` with a `training_summary.json`.

    Returns: the path of the saved model folder.
    """
    from ..data import evaluation_set
    from ..loading import load_model, weights_fingerprint

    out = Path(out_dir)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=32,
        max_steps=cfg.max_steps, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        lr_scheduler_type="constant", logging_steps=10, eval_strategy="steps", eval_steps=cfg.eval_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="rn_mAP@all", greater_is_better=True, remove_unused_columns=False,
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(), seed=cfg.seed, data_seed=cfg.seed,
        report_to="none",
        ddp_broadcast_buffers=False,  # the feature caches are buffers: never broadcast by DDP
        ddp_find_unused_parameters=False,  # the loss uses the whole pairwise head
        **device_arguments({}),
    )
    model, processor, built = load_model(str(model_dir))
    if built:
        raise ValueError(f"{model_dir} is a backbone folder; the relation stage needs a trained ZSE model")
    checkpoint = prepare_run_folder(out, args, resume, {"stage": "relation", "base_model": str(model_dir),
                                                        **dataclasses.asdict(cfg)})
    model, ip = model.float(), processor
    base_hash = weights_fingerprint(model, short=True)
    with args.main_process_first(local=True, desc="loading the data"):  # one asset fetch per machine
        fit = _fit_set(cfg, ip)
        val = evaluation_set("val", val_seed=cfg.seed, num_val_classes=cfg.val_classes, val_fold=cfg.val_fold,
                             max_per_class=cfg.val_sketches_per_class, sketch_size=max(ip.side, 112))
    stamps = stage_stamps(cfg) if cfg.stamp_query_variants > 0 else None
    s, p, s_lab, p_lab = cache_features(model, ip, cfg, fit, stamps)
    n_qd, n_ph = len(fit.queries), len(fit.gallery)
    exclusion = None
    if cfg.stamp_distractors:  # the same stamp set as the cached stamp photos
        classes = fit.gallery.classes
        exclusion = stamp_lookalike_mask([classes[i] for i in s_lab[:n_qd]], stamps.lookalikes)
    cand, pos = mine_stage_candidates(s, p, s_lab, p_lab, n_qd, n_ph, cfg.top_k, stamp_exclusion=exclusion)
    cand, pos = from_main_process(args, (cand, pos))  # near-ties may break differently on another device
    objective = RelationHeadObjective(model, s, p, cand, pos, grid_flip_p=cfg.grid_flip_p)
    callbacks = [JsonlLogger(out / "metrics.jsonl")] + ([TimeLimit(time_limit)] if time_limit is not None else [])
    trainer = RelationStageTrainer(
        model=objective, args=args, train_dataset=_SketchIndices(len(s_lab)), eval_dataset=val.queries,
        val_queries=val.queries, val_gallery=val.gallery, image_processor=ip, top_k=cfg.top_k, callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    best_ckpt = trainer.state.best_model_checkpoint
    source = {}
    summary_path = Path(model_dir) / "training_summary.json"
    if summary_path.is_file():
        source = json.loads(summary_path.read_text())
    return save_best(trainer, out, ip, {
        **source,
        "relation_stage": {
            "base_model": str(model_dir), "base_model_hash": base_hash,
            "best_checkpoint": best_ckpt, "best_val_rn_mAP@all": trainer.state.best_metric,
            "step": checkpoint_step(best_ckpt) if best_ckpt else trainer.state.global_step,
            "stopped_at_step": trainer.state.global_step, "processes": args.world_size,
            "config": dataclasses.asdict(cfg),
            "candidates_with_a_positive_from_ret": float(pos[:n_qd, :-1].any(1).float().mean()),
            "stamp_queries": int(len(s_lab) - n_qd), "stamp_photos": int(len(p_lab) - n_ph),
            "sketch_candidates_that_are_stamps": float((cand[:n_qd] >= n_ph).float().mean()),
            "stamp_queries_with_their_stamp_from_ret": (float(pos[n_qd:, :-1].any(1).float().mean())
                                                        if len(s_lab) > n_qd else None),
        },
    }, model=objective.model)


def main(argv: Sequence[str] | None = None) -> int:
    """`zse-sbir train-relation`: train a model's pairwise head for re-ranking (encoder fixed)."""
    p = argparse.ArgumentParser(prog="zse-sbir train-relation", description=main.__doc__)
    p.add_argument("--model", required=True, help="trained ZSE model folder (e.g. hub_card)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, best/)")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    p.add_argument("--time-limit", type=float, metavar="SECONDS")
    for f in dataclasses.fields(RelationStageConfig):
        if isinstance(f.default, bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", action="store_true")
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=str if f.default is None else type(f.default),
                           default=f.default)
    args = p.parse_args(argv)
    try:
        cfg = RelationStageConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RelationStageConfig)})
    except ValueError as err:
        p.error(str(err))  # exit 2 with the usage line
    try:
        best = train_relation_head(args.model, args.out, cfg, resume=args.resume, time_limit=args.time_limit)
    except (ValueError, FileNotFoundError) as err:
        print(f"zse-sbir train-relation: {err}", file=sys.stderr)
        return 1
    finally:
        release_process_group_at_exit()
    if os.environ.get("RANK", "0") == "0":
        print(f"best model: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
