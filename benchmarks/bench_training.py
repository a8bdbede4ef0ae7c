"""Seconds per training step and peak memory of the training presets; data-parallel throughput.

    python benchmarks/bench_training.py [--presets offline-cpu paper] [--steps 3] [--device cpu]
        [--relation-rank-weight W] [--backbone DIR]
    python benchmarks/bench_training.py --processes 1 2 [--presets offline-cpu] [--steps 6]

Each preset runs in its own subprocess (so peak RSS is its own): it builds the preset's
model (the `paper` preset uses a random DINOv2-small-shaped backbone, since no Hub access is
assumed), samples real offline triplets, and times full optimiser steps (collate + forward +
backward + AdamW) after one warm-up step. Prints a markdown table.

`--processes N ...` instead runs `zse-sbir train` itself (HF Trainer, DDP) under `torchrun
--nproc_per_node N` for `--steps` steps without validation, and reports the Trainer's own
runtime as seconds per step and triplets per second over all processes (CPU: gloo, one thread
per process unless OMP_NUM_THREADS is set; GPU: one process per GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_one(preset: str, steps: int, device: str, batch_size: int | None,
            relation_rank_weight: float | None = None, backbone: str | None = None) -> dict:
    """Time `steps` optimiser steps of `preset` in this process; returns a result row."""
    import torch
    from transformers import Dinov2Config

    from zse_hf import ZseConfig, ZseModel
    from zse_hf.image_processing_zse import ZseImageProcessor
    from zse_hf.training import TripletCollator, build_datasets, freeze_early_blocks, load_train_config

    cfg = load_train_config(preset, batch_size=batch_size, relation_rank_weight=relation_rank_weight)
    if backbone and cfg.backbone == "offline":
        cfg.backbone = backbone  # a converted backbone folder (machines without the ONNX source)
    if cfg.backbone == "offline" or Path(cfg.backbone).is_dir():
        from zse_hf.training import build_model

        model = build_model(cfg)
    else:  # no Hub here: same shape as facebook/dinov2-small, random weights
        bb = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=518)
        model = ZseModel(ZseConfig(backbone_config=bb, image_size=cfg.image_size, relation_grid=cfg.relation_grid,
                                   infonce_weight=cfg.infonce_weight,
                                   relation_rank_weight=cfg.relation_rank_weight))
        freeze_early_blocks(model, cfg.freeze_blocks)
    model.to(device).train()
    cfg.data = "offline"
    triplets, _, _ = build_datasets(cfg)
    collate = TripletCollator(ZseImageProcessor.from_model_config(model.config))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    times, data_times = [], []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        batch = collate([triplets[step * cfg.batch_size + i] for i in range(cfg.batch_size)])
        t1 = time.perf_counter()
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step:  # the first step is warm-up
            times.append(time.perf_counter() - t0)
            data_times.append(t1 - t0)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {
        "preset": preset + (f" +rank {cfg.relation_rank_weight:g}" if cfg.relation_rank_weight else ""),
        "device": device,
        "image_size": cfg.image_size,
        "batch": cfg.batch_size,
        "frozen_blocks": cfg.freeze_blocks,
        "trainable_M": round(sum(p.numel() for p in params) / 1e6, 2),
        "s_per_step": round(sorted(times)[len(times) // 2], 3),
        "data_s_per_step": round(sorted(data_times)[len(data_times) // 2], 3),
        "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "peak_gpu_GiB": None if peak_gpu is None else round(peak_gpu, 2),
    }


def run_data_parallel(preset: str, processes: int, steps: int, batch_size: int | None,
                      backbone: str | None) -> dict | None:
    """`zse-sbir train` of `preset` for `steps` steps in `processes` processes; a result row."""
    from zse_hf.training import load_train_config

    cfg = load_train_config(preset, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "zse_hf.training", "--config", preset, "--out", str(Path(tmp) / "run"),
               "--max-steps", str(steps), "--eval-steps", str(steps + 1), "--save-steps", str(steps + 1),
               "--batch-size", str(cfg.batch_size)]
        if backbone:
            cmd += ["--backbone", backbone]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"{preset} x{processes}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            return None
        log = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    runtime = next(r["train_runtime"] for r in log if "train_runtime" in r)
    return {"preset": preset, "processes": processes, "batch_per_process": cfg.batch_size, "steps": steps,
            "s_per_step": round(runtime / steps, 3),
            "triplets_per_s": round(processes * cfg.batch_size * steps / runtime, 2)}


def _table(rows: list[dict], keys: list[str]) -> None:
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


def main() -> int:
    """Run each preset in a subprocess and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["offline-cpu", "paper"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=None, help="override every preset's batch size")
    p.add_argument("--relation-rank-weight", type=float, default=None,
                   help="also train the listwise relation loss with this weight")
    p.add_argument("--backbone", default=None, help="converted backbone folder for the offline presets")
    p.add_argument("--processes", type=int, nargs="+", default=None,
                   help="data-parallel mode: run `zse-sbir train` under torchrun with each process count")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.processes:
        rows = [run_data_parallel(preset, n, args.steps, args.batch_size, args.backbone)
                for preset in args.presets for n in args.processes]
        _table([r for r in rows if r], ["preset", "processes", "batch_per_process", "steps", "s_per_step",
                                        "triplets_per_s"])
        return 0
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.device, args.batch_size,
                                 args.relation_rank_weight, args.backbone)))
        return 0
    rows = []
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--one", preset, "--steps", str(args.steps), "--device", args.device]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        if args.relation_rank_weight is not None:
            cmd += ["--relation-rank-weight", str(args.relation_rank_weight)]
        if args.backbone:
            cmd += ["--backbone", args.backbone]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{preset}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    _table(rows, ["preset", "device", "image_size", "batch", "frozen_blocks", "trainable_M", "s_per_step",
                  "data_s_per_step", "peak_rss_GiB", "peak_gpu_GiB"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
