"""Training-data throughput: triplets per second through the DataLoader and the collator (all the
way to tensors), with and without the pre-rendered caches, for a number of loader workers.

    python benchmarks/bench_loader.py [--preset offline-gpu] [--workers 0 1 2] [--batches 8]
        [--target-step 0.1] [--clock thread]   # thread: CPU time, --workers 0

The model is not run: this is what a training step waits for when the loader is the bottleneck.
`workers_for_target` is how many workers keep one batch ready every `--target-step` seconds
(the GPU step time), from the single-worker rate (workers scale until the cores run out).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time


def measure(preset: str, workers: int, batches: int, cached: bool, clock=time.perf_counter) -> dict:
    """Time `batches` batches (after one warm-up batch per worker) of `preset`'s triplets."""
    import torch

    from zse_hf.image_processing_zse import ZseImageProcessor
    from zse_hf.training import TripletCollator, build_datasets, load_train_config

    cfg = load_train_config(preset, render_cache=cached)
    warm = max(1, workers)
    triplets, _, _ = build_datasets(cfg, num_triplets=(batches + warm) * cfg.batch_size)
    collate = TripletCollator(ZseImageProcessor(size=cfg.image_size))
    loader = torch.utils.data.DataLoader(triplets, batch_size=cfg.batch_size, num_workers=workers,
                                         collate_fn=collate, prefetch_factor=2 if workers else None)
    it = iter(loader)
    for _ in range(warm):  # worker start-up and first decodes
        next(it)
    t0 = clock()
    for _ in range(batches):
        next(it)
    dt = (clock() - t0) / batches
    return {"preset": preset, "image_size": cfg.image_size, "batch": cfg.batch_size, "cache": cached,
            "workers": workers, "s_per_batch": round(dt, 3), "triplets_per_s": round(cfg.batch_size / dt, 1)}


def main() -> int:
    """Measure each (cache, workers) setting and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="offline-gpu")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--target-step", type=float, default=0.1, help="GPU seconds per step to keep fed")
    p.add_argument("--clock", choices=["wall", "thread"], default="wall",
                   help="thread: CPU time of the loading thread (workers 0 only, one torch thread), which a "
                   "busy machine does not inflate")
    args = p.parse_args()
    clock = time.perf_counter
    if args.clock == "thread":
        import torch

        if any(args.workers):
            p.error("--clock thread times the main thread: use --workers 0")
        torch.set_num_threads(1)
        clock = time.thread_time
    rows = []
    for cached in (False, True):
        for w in args.workers:
            row = measure(args.preset, w, args.batches, cached, clock)
            per_worker = row["s_per_batch"] * max(1, w)
            row["workers_for_target"] = math.ceil(per_worker / args.target_step)
            rows.append(row)
            print(row, file=sys.stderr)
    keys = ["preset", "image_size", "batch", "cache", "workers", "s_per_batch", "triplets_per_s",
            "workers_for_target"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
