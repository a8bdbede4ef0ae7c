"""Training: the recipe (`config`), its data (`data`: triplets, collator, validation sets), the
starting model (`model`), the `Trainer` loop with resumable checkpoints (`trainer`), the relation-head
stage (`relation`) and weight averaging (`soup`). `zse-sbir train`, `train-relation` and `soup`.

May import: the model, `loading`, `assets`, `cli_args`, `model_summary`, data, retrieval, explain and
evaluation (validation runs the evaluation). Never imported by retrieval, data, evaluation or serving.
"""

from .config import PRESETS, SELECTIONS, TrainConfig, check_recipe_values, load_train_config
from .data import TripletCollator, build_datasets, natural_validation_set
from .model import build_model, freeze_early_blocks, freeze_unused, warm_start_model
from .trainer import (
    COMPLETE_MARKER,
    JsonlLogger,
    MarkedCheckpointsMixin,
    RunFolderError,
    TimeLimit,
    ZseTrainer,
    checkpoint_step,
    checkpoint_world_size,
    device_arguments,
    export_best,
    from_main_process,
    last_complete_checkpoint,
    launched_world_size,
    main,
    portable_config,
    portable_path,
    prepare_run_folder,
    recipe_stamps,
    release_process_group_at_exit,
    retrieval_validation,
    save_best,
    selection_score,
    train,
    trained_stamps,
    trim_log,
    wait_for_everyone,
    warm_start_record,
)

__all__ = [
    "build_datasets", "build_model", "check_recipe_values", "checkpoint_step", "checkpoint_world_size",
    "COMPLETE_MARKER", "device_arguments", "export_best", "freeze_early_blocks", "freeze_unused", "from_main_process",
    "JsonlLogger", "last_complete_checkpoint", "launched_world_size", "load_train_config", "main",
    "MarkedCheckpointsMixin", "natural_validation_set", "portable_config", "portable_path", "prepare_run_folder",
    "PRESETS", "recipe_stamps", "release_process_group_at_exit", "retrieval_validation", "RunFolderError",
    "save_best", "selection_score", "SELECTIONS", "TimeLimit", "train", "TrainConfig", "trained_stamps", "trim_log",
    "TripletCollator", "wait_for_everyone", "warm_start_model", "warm_start_record", "ZseTrainer",
]
