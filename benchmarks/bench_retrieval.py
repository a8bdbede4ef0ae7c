"""Scale benchmark of the two-stage retrieval in `zse_hf.retrieval` (not a test).

Stage 1 (ANN on [Ret] embeddings): synthetic clustered unit-norm embeddings (D=384, the
default DINOv2-S width) at 10k / 100k / 1M photos; for `Flat`, `HNSW32` and IVF settings
(`IVF{nlist},PQ32` and `IVF{nlist},SQ8`, nlist ~ 4 sqrt(n): 4096 at 1M): faiss build time
(train + add from the stored embeddings), index bytes per photo, ms/query at batch 1 and 64,
recall@100 against exact search. All through `ZseIndex.ann_search`, so lossy indexes include
the exact re-scoring from the memory-mapped embedding store.

Stage 2 (re-rank): ms/query to re-rank K = 10, 50, 100 candidates read from a memory-mapped
fp16 token store with the real default-size head (`ZseModel(ZseConfig())`, random weights,
384-wide 16x16 tokens at 224 px), fp32 and bf16 autocast; and FLOPs per query against the
official exhaustive ranking (the relation network on every (sketch, photo) pair, the gallery
re-encoded for every query), counted with `torch.utils.flop_counter.FlopCounterMode`.

    python benchmarks/bench_retrieval.py                    # 10k, 100k, 1M
    python benchmarks/bench_retrieval.py --sizes 10k,100k   # choose sizes
    python benchmarks/bench_retrieval.py --quick            # 10k, fewer queries, small store
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zse_hf import ZseConfig, ZseImageFeatures, ZseModel  # noqa: E402
from zse_hf.retrieval import ZseIndex, auto_factory  # noqa: E402
from zse_hf.retrieval.faiss_index import ivf_lists  # noqa: E402

D = 384
K_RECALL = 100


def parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * mult)


def clustered(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`[n, D]` photos and `[n_queries, D]` sketches, unit norm: classes -> sub-clusters ->
    points (within-class cosine ~0.5); sketches sit near a class centre with more noise."""
    rng = np.random.default_rng(seed)
    n_classes = max(20, n // 2000)
    classes = rng.standard_normal((n_classes, D), dtype=np.float32)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    subs = classes.repeat(8, 0) + 0.7 * rng.standard_normal((n_classes * 8, D), dtype=np.float32) / np.sqrt(D)
    photos = np.empty((n, D), np.float32)
    for s in range(0, n, 200_000):
        m = min(200_000, n - s)
        x = subs[rng.integers(0, len(subs), m)] + 0.8 * rng.standard_normal((m, D), dtype=np.float32) / np.sqrt(D)
        photos[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    noise = rng.standard_normal((n_queries, D), dtype=np.float32) / np.sqrt(D)
    q = classes[rng.integers(0, n_classes, n_queries)] + 1.0 * noise
    return photos, q / np.linalg.norm(q, axis=1, keepdims=True)


def configs(n: int) -> list[tuple[str, list[dict]]]:
    nlist = ivf_lists(n)
    return [
        ("Flat", [{}]),
        ("HNSW32", [{"efSearch": 128}, {"efSearch": 256}]),
        (f"IVF{nlist},PQ32", [{"nprobe": max(1, nlist // 64), "refine": 1},
                              {"nprobe": max(1, nlist // 64), "refine": 4},
                              {"nprobe": max(1, nlist // 16), "refine": 8}]),
        (f"IVF{nlist},SQ8", [{"nprobe": max(1, nlist // 128)}, {"nprobe": max(1, nlist // 64)},
                             {"nprobe": max(1, nlist // 32)}]),
    ]


def index_bytes(index: ZseIndex, folder: Path) -> int:
    path = folder / "probe.faiss"
    faiss.write_index(index.faiss_index, str(path))
    size = path.stat().st_size
    path.unlink()
    return size


def time_search(index: ZseIndex, q: np.ndarray, batch: int, params: dict, max_queries: int) -> tuple[float, np.ndarray]:
    """ms/query and the `[Q, 100]` rows found, for queries in batches of `batch`."""
    q = q[:max_queries]
    index.ann_search(q[:batch], K_RECALL, params)  # warm up
    rows = []
    t = time.perf_counter()
    for s in range(0, len(q), batch):
        rows.append(index.ann_search(q[s:s + batch], K_RECALL, params)[1])
    ms = (time.perf_counter() - t) * 1000 / len(q)
    return ms, np.concatenate(rows)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def bench_ann(n: int, args, folder: Path, out: list[str]) -> None:
    t = time.perf_counter()
    photos, queries = clustered(n, args.queries)
    index = ZseIndex.from_features(photos, index_factory="Flat", work_dir=folder)
    del photos
    print(f"[{n}] data + embedding store: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    truth = None
    for factory, param_sets in configs(n):
        if factory in args.skip:
            continue
        t = time.perf_counter()
        index.rebuild(factory)
        build = time.perf_counter() - t
        per_photo = index_bytes(index, folder) / n
        for params in param_sets:
            b1_queries = args.batch1_queries if factory != "Flat" else max(8, args.batch1_queries // 4)
            ms64, rows = time_search(index, queries, 64, params, len(queries))
            if truth is None:
                truth = rows  # Flat first: exact
            ms1, rows1 = time_search(index, queries, 1, params, b1_queries)
            assert np.array_equal(rows1[:, :10], rows[:b1_queries, :10]) or factory != "Flat"
            shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "-"
            auto = " (auto)" if auto_factory(n, D) == factory else ""
            line = (f"| {n:,} | {factory}{auto} | {shown} | {build:.1f} | {per_photo:,.0f} | {ms1:.2f} | {ms64:.3f} "
                    f"| {recall(rows, truth):.3f} |")
            out.append(line)
            print(line, file=sys.stderr, flush=True)
    del index


RERANK_OPTIONS = ("per-pair (before)", "exact", "exact + stored projections", "select 1/2", "select 1/4",
                  "int8 (lossy)")


def rerank_models(args) -> list[tuple[str, ZseModel]]:
    """The heads to time: the shipped model (112 px: 8x8 tokens, 4x4 relation grid), the same
    weights on 224 px images (16x16 tokens), and the default 224 px config (7x7 grid, random weights)."""
    out = []
    hub = Path(args.model)
    if (hub / "config.json").is_file():
        shipped = ZseModel.from_pretrained(hub).eval()
        size = shipped.config.image_size
        out.append((f"shipped {size} px ({hub.name}, {size // shipped.config.patch_size}^2 tokens, "
                    f"grid {shipped.config.relation_grid})", shipped, size))
        out.append((f"shipped weights at 224 px (16^2 tokens, grid {shipped.config.relation_grid})", shipped, 224))
    else:
        print(f"[rerank] no model at {hub}: shipped rows skipped", file=sys.stderr)
    torch.manual_seed(0)
    out.append(("default config 224 px (16^2 tokens, grid 7, random weights)", ZseModel(ZseConfig()).eval(), 224))
    return out


def _old_rerank(index: ZseIndex, model, q: ZseImageFeatures, rows: np.ndarray, chunk: int = 64) -> torch.Tensor:
    """The re-rank as it was before this benchmark's options: every pair re-projects both sides."""
    uniq, inverse = np.unique(rows.reshape(-1), return_inverse=True)
    cand = ZseImageFeatures(local_tokens=torch.from_numpy(index._gather("tokens", uniq)),
                            token_mask=torch.from_numpy(index._gather("mask", uniq)), grid_size=index.grid_size)
    qi = torch.arange(rows.shape[0]).repeat_interleave(rows.shape[1])
    ci = torch.from_numpy(inverse.reshape(-1))
    out = []
    with torch.inference_mode():
        for s in range(0, len(qi), chunk):
            a = q.select(qi[s:s + chunk]).to_model(model)
            b = cand.select(ci[s:s + chunk]).to_model(model)
            out.append(model.score_pairs(a, b).relation_scores)
    return torch.cat(out)


def _random_mask(m: int, n_tok: int, keep: int | None, rng) -> np.ndarray:
    mask = np.ones((m, n_tok), dtype=bool)
    if keep is not None:
        mask[:] = False
        np.put_along_axis(mask, np.argsort(rng.random((m, n_tok)), axis=1)[:, :keep], True, axis=1)
    return mask


def bench_rerank(args, folder: Path, sizes: list[int]) -> list[str]:
    """ms/query to re-rank the top K (10, 50, 100) through `ZseIndex.rerank_rows`, per head and option."""
    ks = (10, 50) if args.quick else (10, 50, 100)
    device = torch.device(args.device)
    lines = [f"Device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                    f", {torch.get_num_threads()} threads"), "",
             "| head | option | " + " | ".join(f"top-{k} ms/query" for k in ks)
             + f" | top-{ks[-1]} GFLOP/query | store KiB/photo |",
             "|---|---|" + "---:|" * (len(ks) + 2)]
    rng = np.random.default_rng(0)
    last_model = None
    for label, model, size in rerank_models(args):
        model = model.to(device)
        width = model.config.hidden_size
        side = size // model.config.patch_size
        n_tok = side * side
        m = args.store_rows
        emb = rng.standard_normal((m, width), dtype=np.float32)
        tokens = rng.standard_normal((m, n_tok, width), dtype=np.float32).astype(np.float16)
        for option in RERANK_OPTIONS:
            if option.startswith("int8") and device.type != "cpu":
                continue
            keep = {"select 1/2": n_tok // 2, "select 1/4": n_tok // 4}.get(option)
            mask = _random_mask(m, n_tok, keep, rng)
            index = ZseIndex.from_features(emb / np.linalg.norm(emb, axis=1, keepdims=True), local_tokens=tokens,
                                           token_mask=mask, grid_size=(side, side), model=model, work_dir=folder)
            store = sum(p.stat().st_size for p in Path(index._work).glob("*.npy") if not p.name.startswith("emb"))
            if option == "exact + stored projections":
                store += index.precompute_projections(progress=False)
            q = ZseImageFeatures(local_tokens=torch.randn(1, n_tok, width),
                                 token_mask=torch.from_numpy(_random_mask(1, n_tok, keep, rng)), grid_size=(side, side))
            rows = rng.choice(m, size=(1, ks[-1]), replace=False)
            counter = FlopCounterMode(display=False)  # load-independent: the work each option does
            with counter:
                if option.startswith("per-pair"):
                    _old_rerank(index, model, q, rows)
                else:
                    index.rerank_rows(q, rows, int8=option.startswith("int8"))
            gflop = "n/a" if option.startswith("int8") else f"{counter.get_total_flops() / 1e9:.1f}"
            times = []
            for k in ([] if args.flops_only else ks):
                samples = []
                for r in range(args.repeats + 1):
                    q = ZseImageFeatures(local_tokens=torch.randn(1, n_tok, width),
                                         token_mask=torch.from_numpy(_random_mask(1, n_tok, keep, rng)),
                                         grid_size=(side, side))
                    rows = rng.choice(m, size=(1, k), replace=False)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t = time.perf_counter()
                    if option.startswith("per-pair"):
                        _old_rerank(index, model, q, rows)
                    else:
                        index.rerank_rows(q, rows, int8=option.startswith("int8"))
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if r:  # first run warms up (and makes the int8 copy)
                        samples.append((time.perf_counter() - t) * 1000)
                times.append(min(samples) if args.best_of else statistics.median(samples))
            index.close()
            shown = [f"{t:.0f}" for t in times] or ["-"] * len(ks)
            line = f"| {label} | {option} | " + " | ".join(shown) + f" | {gflop} | {store / m / 1024:.0f} |"
            lines.append(line)
            print(line, file=sys.stderr, flush=True)
        last_model = model
    # FLOPs of the default head, as before (exhaustive vs two-stage)
    model = last_model.cpu()
    n_tok, width = (model.config.image_size // model.config.patch_size) ** 2, model.config.hidden_size
    side = int(n_tok ** 0.5)
    with torch.inference_mode():
        pair = _pair_flops(model, n_tok, width, side)
        enc = _encoder_flops(model)
    lines += ["", "Options: `per-pair (before)` re-projects both sides for every (query, candidate) pair (the "
              "re-rank before this change); `exact` projects each query once and each candidate once "
              "(`ZseIndex.rerank_rows`); `+ stored projections` reads the photo side's projections from "
              "`ZseIndex.precompute_projections()`; `select 1/2`, `1/4` keep that many tokens per image "
              "(token selection: the pair head runs on the kept tokens only; exact against the masked head, "
              "but a different model than no selection); `int8` quantises the pair head's linear layers "
              "(LOSSY; CPU only).", "",
              "| photos | two-stage GFLOP/query (sketch encode + Flat scan + K=100 re-rank) | exhaustive TFLOP/query "
              "(encode gallery + every pair) | ratio |", "|---:|---:|---:|---:|"]
    for n in sorted(set(sizes) | {17_000}):
        two = enc + 2 * n * width + 100 * pair
        full = enc + n * (enc + pair)
        lines.append(f"| {n:,} | {two / 1e9:,.0f} | {full / 1e12:,.1f} | {full / two:,.0f}x |")
    lines += ["", f"Default 224 px config: per image encoder {enc / 1e9:.1f} GFLOP; "
                  f"per (sketch, photo) pair head {pair / 1e9:.2f} GFLOP (before this change's savings)."]
    return lines


def _encoder_flops(model) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        model.get_image_features(torch.randn(1, 3, model.config.image_size, model.config.image_size))
    return counter.get_total_flops()


def _pair_flops(model, n_tok, width, side) -> float:
    feats = ZseImageFeatures(local_tokens=torch.randn(2, n_tok, width),
                             token_mask=torch.ones(2, n_tok, dtype=torch.bool), grid_size=(side, side))
    counter = FlopCounterMode(display=False)
    with counter:
        model.relation_score(feats, feats)
    return counter.get_total_flops() / 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10k,100k,1M", help="comma-separated gallery sizes (default 10k,100k,1M)")
    p.add_argument("--quick", action="store_true", help="10k only, fewer queries, small token store")
    p.add_argument("--queries", type=int, default=256, help="queries for recall and batch-64 timing")
    p.add_argument("--batch1-queries", type=int, default=64, help="queries timed one at a time")
    p.add_argument("--store-rows", type=int, default=4096, help="rows of the re-rank token store")
    p.add_argument("--repeats", type=int, default=3, help="timed re-rank runs per K")
    p.add_argument("--skip", default="", help="comma-separated factories to leave out, e.g. HNSW32")
    p.add_argument("--no-rerank", action="store_true")
    p.add_argument("--rerank-only", action="store_true", help="skip the ANN table")
    p.add_argument("--flops-only", action="store_true", help="re-rank: count FLOPs only, no timing")
    p.add_argument("--best-of", action="store_true",
                   help="re-rank: report the fastest of --repeats runs instead of the median (shared machines)")
    p.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "hub_card"),
                   help="the shipped model folder for the re-rank rows (default: hub_card/)")
    p.add_argument("--device", default="cpu", help="re-rank device: cpu or cuda (the GPU row; int8 is CPU only)")
    p.add_argument("--threads", type=int, default=None, help="torch/faiss threads (default: all cores)")
    p.add_argument("--work-dir", default=None, help="where the stores go (default: a temporary directory)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.batch1_queries, args.store_rows, args.repeats = "10k", 128, 32, 512, 1
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    args.skip = {s for s in args.skip.split(",") if s}
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-", dir=args.work_dir) as tmp:
        folder = Path(tmp)
        header = [f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"torch {torch.__version__}, "
                  f"faiss {faiss.__version__}, {torch.get_num_threads()} threads, load average at start "
                  f"{os.getloadavg()[0]:.1f}; D={D}, {args.queries} queries "
                  f"(batch 1 timed on {args.batch1_queries}), recall@{K_RECALL} vs exact search.", "",
                  "| photos | index | search params | build s | index B/photo | ms/query b=1 | ms/query b=64 "
                  "| recall@100 |",
                  "|---:|---|---|---:|---:|---:|---:|---:|"]
        rows: list[str] = []
        for n in ([] if args.rerank_only else sizes):
            bench_ann(n, args, folder, rows)
        rerank = [] if args.no_rerank else bench_rerank(args, folder, sizes)
    if rows:
        print("\n".join(header + rows))
    if rerank:
        how = "fastest" if args.best_of else "median"
        print(f"\nRe-rank (relation network on stored tokens, per query; {how} of {args.repeats} runs):\n")
        print("\n".join(rerank))
    return 0


if __name__ == "__main__":
    sys.exit(main())
