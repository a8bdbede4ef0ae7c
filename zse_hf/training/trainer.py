"""Training ZSE models with the Hugging Face `Trainer`.

`zse-sbir train --config offline-cpu|paper|FILE.yaml --out DIR [--resume]`. The loop is the
stock `Trainer` with:

* a collator that turns (sketch, positive, negative) triplets of PIL images into tensors;
* a sequential sampler over an index-deterministic triplet stream, so `--resume` continues
  exactly where it stopped (optimizer, scheduler and RNG state come from the checkpoint);
* validation by retrieval mAP@all on classes carved from the *training* classes (never the
  test classes), which selects the best checkpoint;
* checkpoints marked complete only after everything is written, so a kill at any moment
  never makes `--resume` pick a half-written checkpoint;
* a JSON-lines metrics log (`metrics.jsonl`), trimmed back to the checkpoint on `--resume`.

Data parallel: under `torchrun` or `accelerate launch` (N processes, one per GPU, or gloo on
CPU) the Trainer's DDP runs it. The stream holds `max_steps x batch x N` triplets and rank `r`
gets batches `r, r + N, ...`, so step `s` trains on triplets `[s N B, (s + 1) N B)`: N ranks see
N times the data of one, no item twice. Process 0 alone writes files (run config, log,
checkpoint marker, `best/`) and validates (the metrics are broadcast); `--time-limit` stops
all ranks at the same step; a checkpoint is marked complete once every rank's state is in it.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..image_processing_zse import ZseImageProcessor
from ..modeling_zse import ZseModel
from .config import PRESETS, TrainConfig, load_train_config
from .data import TripletCollator, build_datasets, natural_validation_set
from .model import build_model

COMPLETE_MARKER = "zse_checkpoint_complete"
logger = logging.getLogger(__name__)


class RunFolderError(ValueError):
    """A run folder that cannot be (re)started as asked (earlier checkpoints, another process count)."""


# ----------------------------------------------------------------------------- trainer


class MarkedCheckpointsMixin:
    """`Trainer` mixin: a checkpoint folder gets its completion marker only once fully written,
    by every process (each one saves its own RNG state there)."""

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        self.accelerator.wait_for_everyone()  # all ranks' files are on disk past this point
        if folder.exists() and self.args.should_save:
            with open(folder / COMPLETE_MARKER, "w") as f:
                f.write(str(self.state.global_step))
                f.flush()
                os.fsync(f.fileno())


class ZseTrainer(MarkedCheckpointsMixin, Trainer):
    """`Trainer` with a sequential triplet sampler, two learning rates, retrieval validation
    and checkpoints that are marked complete only once fully written."""

    def __init__(self, *args, val_queries=None, val_gallery=None, head_lr: float | None = None,
                 image_processor=None, val_natural=None, selection: str = "cutout", **kwargs):
        super().__init__(*args, **kwargs)
        self.val_queries, self.val_gallery = val_queries, val_gallery
        self.val_natural, self.selection = val_natural, selection
        self.head_lr = head_lr
        self.image_processor = image_processor

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return torch.utils.data.SequentialSampler(dataset)

    def create_optimizer(self, *args, **kwargs):
        if self.optimizer is None:
            model = self.model
            backbone = {id(p) for p in model.encoder.backbone.parameters()}
            decay, no_decay, head = [], [], []
            for name, p in model.named_parameters():
                if not p.requires_grad:
                    continue
                if id(p) not in backbone:
                    head.append(p)
                elif p.ndim < 2 or "norm" in name or "lambda" in name:
                    no_decay.append(p)
                else:
                    decay.append(p)
            wd = self.args.weight_decay
            groups = [
                {"params": decay, "weight_decay": wd},
                {"params": no_decay, "weight_decay": 0.0},
                {"params": head, "weight_decay": wd, "lr": self.head_lr or self.args.learning_rate},
            ]
            groups = [g for g in groups if g["params"]]
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate)
        return self.optimizer

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if self.val_queries is None:
            return {}
        return retrieval_validation(self, self.model, rerank_k=10, prefix=metric_key_prefix)


def retrieval_validation(trainer: Trainer, model: ZseModel, rerank_k: int, prefix: str = "eval") -> dict[str, float]:
    """Validate `model` by retrieval on `trainer.val_queries` / `trainer.val_gallery`.

    Logs and returns `{prefix}_mAP@all` and `{prefix}_P@100` of [Ret] ranking and
    `{prefix}_rn_mAP@all` of the rn@`rerank_k` re-rank; with `trainer.val_natural` (queries,
    gallery) also `{prefix}_natural_mAP@all` ([Ret] on the natural photos) and `{prefix}_select`,
    the number `trainer.selection` picks checkpoints by. Fires the `on_evaluate` callbacks.
    With several processes, process 0 validates and the others receive its metrics (so every
    rank takes the same best-checkpoint decision).
    """
    from ..evaluation.runner import evaluate as run_eval

    metrics = None
    if trainer.is_world_process_zero():
        was_training = model.training
        res = run_eval(model, trainer.image_processor, trainer.val_queries, trainer.val_gallery, modes=("ret", "rn"),
                       rerank_k=rerank_k, batch_size=trainer.args.per_device_eval_batch_size, n_bootstrap=0)
        metrics = {
            f"{prefix}_mAP@all": res["ret"]["mAP@all"],
            f"{prefix}_P@100": res["ret"]["P@100"],
            f"{prefix}_rn_mAP@all": res[f"rn@{rerank_k}"]["mAP@all"],
        }
        natural = getattr(trainer, "val_natural", None)
        if natural is not None:
            nat = run_eval(model, trainer.image_processor, *natural, modes=("ret",),
                           batch_size=trainer.args.per_device_eval_batch_size, n_bootstrap=0)
            metrics[f"{prefix}_natural_mAP@all"] = nat["ret"]["mAP@all"]
            metrics[f"{prefix}_select"] = selection_score(metrics, getattr(trainer, "selection", "cutout"), prefix)
        model.train(was_training)
    metrics = from_main_process(trainer.args, metrics)
    trainer.log(metrics)
    trainer.control = trainer.callback_handler.on_evaluate(trainer.args, trainer.state, trainer.control, metrics)
    return metrics


def selection_score(metrics: dict[str, float], selection: str, prefix: str = "eval") -> float:
    """The validation number checkpoints are picked by (`TrainConfig.selection`): cut-out [Ret]
    mAP@all, or its mean with natural-photo [Ret] mAP@all (`"cutout+natural"`, equal weights)."""
    if selection == "cutout+natural":
        return 0.5 * (metrics[f"{prefix}_mAP@all"] + metrics[f"{prefix}_natural_mAP@all"])
    return metrics[f"{prefix}_mAP@all"]


class JsonlLogger(TrainerCallback):
    """Appends every `Trainer` log record (loss, lr, validation metrics) to a JSON-lines file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "time": round(time.time(), 1), **logs}
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class TimeLimit(TrainerCallback):
    """Ends training after `seconds` of wall clock, validating and checkpointing the last step
    so that the best-model choice sees it and `--resume` can continue from it. With several
    processes the decision is agreed (any rank over the limit stops all at the same step)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is None:
            return control
        over = time.monotonic() - self.start >= self.seconds
        if args.world_size > 1:
            flag = torch.tensor([float(over)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            over = bool(flag.item())
        if over:
            control.should_training_stop = True
            control.should_evaluate = True
            control.should_save = True
        return control


# ----------------------------------------------------------------------------- processes


def launched_world_size() -> int:
    """The number of processes a launcher started (`WORLD_SIZE` of torchrun / accelerate, or MPI's)."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 1


def device_arguments(overrides: dict) -> dict:
    """`TrainingArguments` keywords that make a multi-process launch real data parallelism.

    Several processes on a machine without an accelerator get `use_cpu=True` (DDP over gloo);
    otherwise the Trainer sees a process group but no device to spread over and would run N
    independent copies. Warns when `accelerate launch --cpu --num_processes N` started one
    process (accelerate starts several CPU processes only through mpirun).
    """
    world = launched_world_size()
    if hasattr(torch, "accelerator"):  # torch >= 2.6: CUDA, XPU, MPS, ...
        has_accelerator = torch.accelerator.current_accelerator() is not None
    else:
        has_accelerator = torch.cuda.is_available()
    if world > 1 and not has_accelerator and "use_cpu" not in overrides:
        return {"use_cpu": True}
    cpu_flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if world == 1 and cpu_flag and os.environ.get("MASTER_ADDR"):
        print("zse-sbir train: `accelerate launch --cpu --num_processes N` starts ONE process (accelerate "
              "uses mpirun for several CPU processes); for N CPU processes use `accelerate launch --multi_gpu "
              "--num_processes N` or `torchrun --nproc_per_node N` (both train with gloo on CPU)", file=sys.stderr)
    return {}


def from_main_process(args: TrainingArguments, obj: Any) -> Any:
    """`obj` of process 0, on every process (a no-op for one process)."""
    if args.world_size <= 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


def wait_for_everyone(args: TrainingArguments) -> None:
    """A barrier across the processes of the run (a no-op for one process)."""
    if args.world_size > 1:
        args.distributed_state.wait_for_everyone()


def release_process_group_at_exit() -> None:
    """Destroy the launcher's process group when this process exits (a clean NCCL shutdown), not
    when a command ends: a later command of the same process (a script running train, then
    train-relation) reuses the group, since re-creating one is unreliable under torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and not _release_registered:
        _release_registered.append(True)
        atexit.register(_destroy_process_group)


_release_registered: list[bool] = []


def _destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def checkpoint_world_size(folder: str | os.PathLike) -> int | None:
    """How many processes wrote a checkpoint (from its per-rank RNG files); `None`: unknown."""
    folder = Path(folder)
    ranked = list(folder.glob("rng_state_*.pth"))
    if ranked:
        return len(ranked)
    return 1 if (folder / "rng_state.pth").exists() else None


def trim_log(path: str | os.PathLike, last_step: int) -> None:
    """Drop the records after `last_step` (and any torn last line) from a `metrics.jsonl`,
    atomically: a resumed run logs those steps again."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= last_step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in kept))
    os.replace(tmp, path)


def prepare_run_folder(out: Path, args: TrainingArguments, resume: bool, config: dict) -> Path | None:
    """Process 0 picks the checkpoint to resume (removing incomplete ones), checks it was written
    by as many processes as this run has, trims `metrics.jsonl` to it and writes
    `train_config.json`; every process gets the checkpoint (or the same `RunFolderError`).

    A fresh run (no `resume`) refuses a folder holding complete checkpoints of an earlier run.
    """
    checkpoint, error = None, None
    if args.process_index == 0:
        out.mkdir(parents=True, exist_ok=True)
        found = last_complete_checkpoint(out)
        if resume:
            checkpoint = found
            if checkpoint is None:
                print(f"no complete checkpoint in {out}; starting from scratch", file=sys.stderr)
            elif (written := checkpoint_world_size(checkpoint)) not in (None, args.world_size):
                error = (f"{checkpoint} was written by {written} process(es) but this run has {args.world_size}: "
                         f"resume with {written} (the data stream and per-rank RNG states depend on it)")
        elif found is not None:
            error = f"{out} holds checkpoints of an earlier run ({found.name}); use --resume or another --out"
        if error is None:
            trim_log(out / "metrics.jsonl", checkpoint_step(checkpoint) if checkpoint else 0)
            (out / "train_config.json").write_text(json.dumps(config, indent=1))
    checkpoint, error = from_main_process(args, (checkpoint, error))
    if error:
        raise RunFolderError(error)
    return checkpoint


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step N of a `checkpoint-N` folder."""
    return int(Path(path).name.split("-")[-1])


def last_complete_checkpoint(out_dir: Path) -> Path | None:
    """The newest `checkpoint-N` holding the completion marker; incomplete ones are removed."""
    best, best_step = None, -1
    for folder in Path(out_dir).glob("checkpoint-*"):
        try:
            step = checkpoint_step(folder)
        except ValueError:
            continue
        if not (folder / COMPLETE_MARKER).exists():
            shutil.rmtree(folder, ignore_errors=True)
            continue
        if step > best_step:
            best, best_step = folder, step
    return best


def train(cfg: TrainConfig, out_dir: str | os.PathLike, resume: bool = False,
          report_to: str | list[str] = "none", callbacks: Sequence[TrainerCallback] = (),
          time_limit: float | None = None, **training_overrides: Any) -> Path:
    """Train a model and save the best one (by validation mAP@all) to `out_dir/best`.

    `time_limit` (seconds) ends the run early, after validating and checkpointing its last step.
    Under `torchrun` / `accelerate launch` every process calls this; `cfg.batch_size` is per
    process and `out_dir` must be on a file system all processes share.

    Returns:
        the path of the saved best model folder (`save_pretrained` + processor).
    """
    out = Path(out_dir)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=32,
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_schedule,
        warmup_steps=cfg.warmup_steps,
        logging_steps=max(1, min(10, cfg.eval_steps)),
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="select" if cfg.selection != "cutout" else "mAP@all",
        greater_is_better=True,
        remove_unused_columns=False,
        dataloader_num_workers=cfg.dataloader_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=report_to,
        eval_on_start=cfg.init_from is not None and not resume,  # the warm start's own validation row
        # every trainable weight gets a gradient (see freeze_unused), so DDP need not search for unused ones
        **{"ddp_find_unused_parameters": False, **device_arguments(training_overrides), **training_overrides},
    )
    checkpoint = prepare_run_folder(out, args, resume, dataclasses.asdict(cfg))
    # one stream for all ranks: max_steps optimiser steps of world_size x batch triplets each
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    num_triplets = args.max_steps * per_step
    with args.main_process_first(local=True, desc="building the model and data"):  # one asset fetch per machine
        torch.manual_seed(cfg.seed)
        model = build_model(cfg)
        triplets, val_q, val_g = build_datasets(cfg, num_triplets=num_triplets)
        val_natural = natural_validation_set(cfg)
    image_processor = ZseImageProcessor.from_model_config(model.config)
    trainer = ZseTrainer(
        model=model,
        args=args,
        train_dataset=triplets,
        eval_dataset=val_q,  # validation itself is the retrieval evaluation in ZseTrainer.evaluate
        data_collator=TripletCollator(image_processor),
        val_queries=val_q,
        val_gallery=val_g,
        val_natural=val_natural,
        selection=cfg.selection,
        head_lr=cfg.head_lr,
        image_processor=image_processor,
        callbacks=[JsonlLogger(out / "metrics.jsonl"), *callbacks,
                   *([TimeLimit(time_limit)] if time_limit is not None else [])],
    )
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    best_ckpt = trainer.state.best_model_checkpoint
    return save_best(trainer, out, image_processor, {
        "best_checkpoint": portable_path(best_ckpt, out),
        "best_val_mAP@all": trainer.state.best_metric,
        # the step of the saved (best) weights; `stopped_at_step` is where the run ended
        "global_step": checkpoint_step(best_ckpt) if best_ckpt else trainer.state.global_step,
        "stopped_at_step": trainer.state.global_step,
        "processes": args.world_size,
        "config": portable_config(cfg),
        **trained_stamps(triplets),
        **recipe_natural_photos(cfg),
        **warm_start_record(cfg),
    })


def portable_path(path: str | os.PathLike | None, base: str | os.PathLike | None = None) -> str | None:
    """`path` as a summary records it: relative to `base` (default: the working directory) when it
    lies inside it, else its last component, so that no machine's absolute paths are recorded."""
    if path is None:
        return None
    p = Path(path).absolute()
    root = Path(base if base is not None else os.getcwd()).absolute()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.name


def portable_config(cfg: TrainConfig) -> dict:
    """`dataclasses.asdict(cfg)` with `init_from` and a backbone folder as portable paths."""
    config = dataclasses.asdict(cfg)
    for key in ("init_from", "backbone"):
        if config.get(key) and os.path.isabs(config[key]):
            config[key] = portable_path(config[key])
    return config


def warm_start_record(cfg: TrainConfig) -> dict:
    """`{"init_from_summary": ...}`: the `training_summary.json` of the folder a warm start began
    from (so a chain of runs records every stamp any of its stages drew from), or `{}`."""
    if not cfg.init_from:
        return {}
    path = Path(cfg.init_from) / "training_summary.json"
    try:
        return {"init_from_summary": json.loads(path.read_text())}
    except (OSError, ValueError):
        return {"init_from_summary": None}


def trained_stamps(triplets) -> dict:
    """`{"stamps": [{"path", "sha256"}, ...], "stamps_withheld": [path, ...]}`: the reviewed extra
    stamps a run could draw (paths relative to the stamps folder), or `{}` when it used none."""
    extra = getattr(triplets, "extra_photos", None)
    if extra is None or not (triplets.extra_pair_prob or triplets.extra_negative_prob):
        return {}
    return _stamp_record(extra)


def recipe_stamps(cfg: TrainConfig) -> dict:
    """:func:`trained_stamps` of an offline recipe, rebuilt from the recipe alone (the stamps
    `build_datasets` gives it: the usable ones minus the look-alikes of its validation classes);
    `{}` without stamps or for research layouts (whose validation classes come from the data)."""
    if not (cfg.stamp_pair_prob > 0 or cfg.stamp_negative_prob > 0) or cfg.data != "offline":
        return {}
    from ..data import train_val_split
    from ..data.stamps import StampPhotoDataset

    _, val_classes = train_val_split(seed=cfg.seed, num_val_classes=cfg.val_classes, fold=cfg.val_fold)
    return _stamp_record(StampPhotoDataset(verify=False, withhold_lookalikes_of=val_classes))


def recipe_natural_photos(cfg: TrainConfig) -> dict:
    """`{"natural_photos": [{"class", "resource_path", "sha256"}, ...], "natural_validation_classes": [...]}`:
    the reviewed natural photos (GCompris, with backgrounds) an offline recipe with `natural_photos`
    trains on, and the classes whose natural photos it validates on; `{}` otherwise."""
    if not getattr(cfg, "natural_photos", False) or cfg.data != "offline":
        return {}
    from ..data.natural_photos import natural_photo_records
    from ..data.split import natural_val_split

    fit, val = natural_val_split(cfg.seed, cfg.val_classes, fold=cfg.val_fold)
    return {"natural_photos": [{"class": r.class_name, "resource_path": r.resource_path, "sha256": r.sha256}
                               for r in natural_photo_records(fit)],
            "natural_validation_classes": list(val)}


def _stamp_record(stamps) -> dict:
    return {"stamps": [{"path": r.stamp_path, "sha256": r.sha256} for r in stamps.records],
            "stamps_withheld": list(getattr(stamps, "withheld", []))}


def save_best(trainer: Trainer, out: Path, image_processor, summary: dict, model: ZseModel | None = None) -> Path:
    """`_save_best` of `model` (default `trainer.model`) on process 0, then a barrier so that
    every process returns once `out/best` is complete."""
    best = out / "best"
    if trainer.is_world_process_zero():
        _save_best(out, model if model is not None else trainer.model, image_processor, summary)
    wait_for_everyone(trainer.args)
    return best


def _save_best(out: Path, model: ZseModel, image_processor, summary: dict) -> Path:
    """Atomically write `out/best`: model, processor and `training_summary.json`."""
    from ..loading import save_model_folder

    return save_model_folder(out / "best", model, image_processor, "training_summary.json", summary)


def export_best(out_dir: str | os.PathLike) -> Path:
    """Write `out_dir/best` from the best complete checkpoint of a run that was stopped early.

    The best checkpoint is the one `trainer_state.json` of the newest complete checkpoint names
    (by validation mAP@all); the run's `train_config.json` is recorded in the summary.
    """
    out = Path(out_dir)
    last = last_complete_checkpoint(out)
    if last is None:
        raise ValueError(f"no complete checkpoint in {out}")
    state = json.loads((last / "trainer_state.json").read_text())
    chosen = Path(state.get("best_model_checkpoint") or last)
    if not chosen.is_absolute() and not chosen.exists():
        chosen = out / chosen.name
    model = ZseModel.from_pretrained(chosen)
    config = json.loads((out / "train_config.json").read_text()) if (out / "train_config.json").exists() else None
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in config.items() if k in fields}) if config else None
    recipe = {"config": portable_config(cfg), **recipe_stamps(cfg), **recipe_natural_photos(cfg),
              **warm_start_record(cfg)} if cfg else \
        {"config": None}
    return _save_best(out, model, ZseImageProcessor.from_model_config(model.config), {
        "best_checkpoint": portable_path(chosen, out),
        "best_val_mAP@all": state.get("best_metric"),
        "global_step": checkpoint_step(chosen),
        "stopped_at_step": state.get("global_step"),
        **recipe,
    })


def main(argv: Sequence[str] | None = None) -> int:
    """`zse-sbir train`: train with a preset or YAML recipe; `--resume` continues a run."""
    p = argparse.ArgumentParser(prog="zse-sbir train", description=main.__doc__)
    p.add_argument("--config", default="offline-cpu", help=f"preset ({', '.join(PRESETS)}) or YAML file")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, best/)")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    p.add_argument("--export-best", action="store_true",
                   help="do not train: write OUT/best from the best checkpoint of a stopped run")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--backbone")
    p.add_argument("--data")
    p.add_argument("--eval-steps", type=int)
    p.add_argument("--save-steps", type=int)
    p.add_argument("--relation-rank-weight", type=float, help="weight of the listwise relation loss")
    p.add_argument("--relation-grid", type=int, help="G of the relation network (7 with 224 px: the paper's)")
    p.add_argument("--correspondence-weight", type=float,
                   help="weight of the correspondence term on warped pseudo-sketch pairs (0 = off)")
    p.add_argument("--correspondence-fraction", type=float, help="share of triplets carrying a warped pair")
    p.add_argument("--stamp-pair-prob", type=float,
                   help="share of triplets replaced by instance pairs from the reviewed extra stamps (0 = off)")
    p.add_argument("--stamp-negative-prob", type=float,
                   help="share of triplets with a reviewed extra stamp as negative")
    p.add_argument("--dataloader-workers", type=int)
    p.add_argument("--init-from", metavar="DIR",
                   help="warm start from a saved ZSE model folder (e.g. hub_card, RUN/best)")
    p.add_argument("--lr-schedule", help="constant (default), linear, cosine, ... over --max-steps")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--triplet-seed", type=int, help="seed of the triplet stream alone (default: --seed's)")
    p.add_argument("--val-fold", metavar="I/K",
                   help="validate on fold I of a K-fold partition of the validation candidates (the ranking "
                        "protocol: one run per fold)")
    p.add_argument("--render-cache", action="store_true", default=None,
                   help="pre-render the photos' inputs once into a file the loader workers share")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop after this much wall clock (validating and checkpointing the last step)")
    args = p.parse_args(argv)
    if args.export_best:
        print(f"best model: {export_best(args.out)}")
        return 0
    try:
        cfg = load_train_config(args.config, max_steps=args.max_steps, batch_size=args.batch_size,
                                image_size=args.image_size, backbone=args.backbone, data=args.data,
                                eval_steps=args.eval_steps, save_steps=args.save_steps,
                                relation_rank_weight=args.relation_rank_weight,
                                dataloader_workers=args.dataloader_workers, relation_grid=args.relation_grid,
                                correspondence_weight=args.correspondence_weight,
                                correspondence_fraction=args.correspondence_fraction,
                                stamp_pair_prob=args.stamp_pair_prob, stamp_negative_prob=args.stamp_negative_prob,
                                init_from=args.init_from, lr_schedule=args.lr_schedule,
                                warmup_steps=args.warmup_steps, triplet_seed=args.triplet_seed,
                                render_cache=args.render_cache, val_fold=args.val_fold)
    except ValueError as err:
        p.error(str(err))  # exit 2 with the usage line, before anything is loaded
    try:
        best = train(cfg, args.out, resume=args.resume, time_limit=args.time_limit)
    except RunFolderError as err:
        print(f"zse-sbir train: {err}", file=sys.stderr)
        return 2
    finally:
        release_process_group_at_exit()
    if launched_world_size() == 1 or os.environ.get("RANK", "0") == "0":
        print(f"best model: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
