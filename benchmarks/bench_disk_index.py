"""A two-stage index on disk at scale (not a test): `--photos` photos (default 1M) with a faiss
IVF index on the [Ret] embeddings and a compressed local-token store, built with
`ZseIndex.from_features` and saved like any index; then searched by a fresh process.

The features are SYNTHETIC: random unit [Ret] embeddings and random normal local tokens of the
model's real shapes (tokens per photo and width, read from the model), so the bytes, build time,
memory and latency are real and the rankings are meaningless. The token codec is trained once on
a sample of the synthetic tokens and passed to the build (as shards would share it), so no
float16 spill of the whole store is ever written.

Reported: bytes per photo on disk (total and by file), build time (features, codec, faiss, save),
the build's peak RSS; then, in a fresh process whose index files were dropped from the page cache
first (`posix_fadvise(DONTNEED)`, before anything maps them), the load time, and the time of the
whole `search([sketch], k=10, rerank_k=K)` call (sketch encoding, ANN, re-rank with decoding)
and of the re-rank alone, for each query sketch cold (first pass: its candidates' rows were never
read) and warm (second pass), as median and best; and the query process's peak RSS.

    python benchmarks/bench_disk_index.py                         # 1M photos, sq4 tokens, IVF4096,SQ8
    python benchmarks/bench_disk_index.py --photos 20k --work-dir /tmp/zse-disk
    python benchmarks/bench_disk_index.py --query-only --work-dir DIR   # search an index built before

The work folder (default: a new one under the system temp dir) holds the index; it is deleted at
the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_retrieval import parse_size  # noqa: E402

EXAMPLES = REPO / "demo" / "examples"


class SyntheticTokens:
    """A lazy `[n, N, D]` float32 array of seeded random normal tokens: slicing rows `s:e` draws
    them (from a generator seeded by `s`), so the whole store is never in memory."""

    def __init__(self, n: int, n_tokens: int, dim: int, seed: int = 0, bar=None):
        self.shape = (n, n_tokens, dim)
        self.seed, self.bar = seed, bar

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        rng = np.random.default_rng([self.seed, start])
        out = rng.standard_normal((stop - start, *self.shape[1:]), dtype=np.float32)
        if self.bar is not None:
            self.bar.update(stop - start)
        return out


def unit_rows(n: int, dim: int, seed: int = 1) -> np.ndarray:
    """`[n, dim]` float32 random unit vectors (the synthetic [Ret] embeddings)."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def token_shape(model, processor) -> tuple[int, int, tuple[int, int]]:
    """`(tokens per photo, width, grid)` of the model's photo features (one blank photo encoded)."""
    import torch
    from PIL import Image

    photo = Image.new("RGB", (model.config.image_size, model.config.image_size), (128, 128, 128))
    with torch.no_grad():
        pixels = processor(images=[photo], modality="photo", return_tensors="pt")["pixel_values"]
        feats = model.get_image_features(pixels)
    _, n_tok, dim = feats.local_tokens.shape
    return int(n_tok), int(dim), tuple(feats.grid_size)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike `ru_maxrss`, not carried over from the
    parent through fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(args, index_dir: Path) -> dict:
    """Build and save the synthetic index; returns the build figures."""
    from zse_hf.loading import load_model
    from zse_hf.retrieval import ZseIndex
    from zse_hf.retrieval.token_codec import TokenCodec, codec_factory, training_sample

    model, processor, _ = load_model(args.model)
    n_tok, dim, grid = token_shape(model, processor)
    n = args.photos
    times = {}
    start = time.perf_counter()
    name, factory = codec_factory(args.codec)
    codec = None
    if factory is not None:
        sample_src = SyntheticTokens(min(n, 256), n_tok, dim, seed=args.seed + 7)[0:min(n, 256)]
        codec = TokenCodec.train(name, factory, training_sample(sample_src, np.ones(sample_src.shape[:2], bool)))
    times["codec"] = time.perf_counter() - start
    start = time.perf_counter()
    ret = unit_rows(n, dim, seed=args.seed)
    times["embeddings"] = time.perf_counter() - start
    work = index_dir.parent / "work"
    with tqdm(total=n, desc=f"synthetic tokens -> {args.codec}", unit="photo") as bar:
        start = time.perf_counter()
        tokens = SyntheticTokens(n, n_tok, dim, seed=args.seed, bar=bar)
        index = ZseIndex.from_features(ret, tokens, grid_size=grid, index_factory=args.factory, work_dir=work,
                                       token_codec=codec if codec is not None else "fp16")
        times["tokens + faiss index"] = time.perf_counter() - start
    del ret
    start = time.perf_counter()
    index.save(index_dir)
    times["save (hard links, checksums)"] = time.perf_counter() - start
    index.close()
    shutil.rmtree(work, ignore_errors=True)
    files = {p.name: p.stat().st_size for p in sorted(index_dir.iterdir()) if p.is_file()}
    return {"photos": n, "tokens": n_tok, "dim": dim, "grid": list(grid), "codec": args.codec,
            "factory": args.factory, "seconds": times, "build_seconds": sum(times.values()),
            "peak_rss_mb": peak_rss_mb(), "files": files, "bytes_per_photo": sum(files.values()) / n}


def drop_page_cache(folder: Path) -> int:
    """Ask the kernel to drop `folder`'s files from the page cache; returns the bytes advised."""
    total = 0
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += p.stat().st_size
            finally:
                os.close(fd)
    return total


def query(args, index_dir: Path) -> dict:
    """Search the saved index from this (fresh) process, cold then warm; returns the figures."""
    import torch

    from zse_hf.loading import load_model
    from zse_hf.retrieval import ZseIndex

    advised = drop_page_cache(index_dir)
    model, processor, _ = load_model(args.model)
    start = time.perf_counter()
    index = ZseIndex.load(index_dir, model, processor, verify=False)
    load_s = time.perf_counter() - start
    index.search_params = {**index.search_params, "nprobe": args.nprobe}
    sketches = sorted(EXAMPLES.glob("*.png"))[: args.queries]
    if len(sketches) < args.queries:
        raise SystemExit(f"need {args.queries} example sketches in {EXAMPLES}, found {len(sketches)}")
    feats = [index.encode_sketches([str(s)]) for s in sketches]  # the model's first calls, outside the timings
    timings = {"search": {"cold": [], "warm": []}, "rerank": {"cold": [], "warm": []}}
    rng = np.random.default_rng(args.seed + 1)
    # the re-rank alone reads its own random rows, never read by a search (cold on the first pass)
    heads = [np.sort(rng.choice(len(index), args.rerank_k, replace=False))[None] for _ in sketches]
    with torch.inference_mode():
        for phase in ("cold", "warm"):
            for i, sketch in enumerate(sketches):
                # the candidates differ per sketch: the synthetic embeddings are random
                start = time.perf_counter()
                index.search([str(sketch)], k=10, rerank_k=args.rerank_k)
                timings["search"][phase].append(time.perf_counter() - start)
                head = heads[i]
                start = time.perf_counter()
                index.rerank_rows(feats[i], head)
                timings["rerank"][phase].append(time.perf_counter() - start)
    return {"advised_bytes": advised, "load_seconds": load_s, "queries": len(sketches), "rerank_k": args.rerank_k,
            "nprobe": args.nprobe, "timings": timings, "peak_rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads()}


def table(built: dict | None, q: dict) -> str:
    lines = []
    if built is not None:
        mib = 1024 * 1024
        lines += [f"{built['photos']:,} photos, {built['tokens']} tokens x {built['dim']} per photo "
                  f"(SYNTHETIC features of the model's shapes), tokens {built['codec']}, [Ret] {built['factory']}",
                  "",
                  "| file | bytes per photo | total |", "|---|---:|---:|"]
        for name, size in built["files"].items():
            lines.append(f"| {name} | {size / built['photos']:,.0f} | {size / mib:,.1f} MiB |")
        total = sum(built["files"].values())
        lines += [f"| **all** | **{built['bytes_per_photo']:,.0f}** ({built['bytes_per_photo'] / 1024:.1f} KiB) "
                  f"| **{total / mib / 1024:,.2f} GiB** |", "",
                  "build: " + ", ".join(f"{k} {v:.1f} s" for k, v in built["seconds"].items())
                  + f"; total {built['build_seconds']:.1f} s; peak RSS {built['peak_rss_mb']:,.0f} MB", ""]
    lines += [f"fresh process, {q['advised_bytes'] / 2**30:.2f} GiB of index files dropped from the page cache first; "
              f"load (verify=False) {q['load_seconds']:.2f} s; {q['queries']} sketches, top-{q['rerank_k']} re-rank, "
              f"nprobe {q['nprobe']}, {q['threads']} threads; peak RSS {q['peak_rss_mb']:,.0f} MB", "",
              "| call | page cache | median (ms) | best (ms) |", "|---|---|---:|---:|"]
    calls = (("search", "whole `search` (encode + ANN + re-rank)"), ("rerank", "re-rank alone (decode + head)"))
    for what, label in calls:
        for phase in ("cold", "warm"):
            t = q["timings"][what][phase]
            lines.append(f"| {label} | {phase} | {1000 * statistics.median(t):.0f} | {1000 * min(t):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=parse_size, default=1_000_000, help="gallery size (e.g. 1M, 100k, 20000)")
    p.add_argument("--codec", default="sq4", help="token codec (default sq4; fp16 = exact)")
    p.add_argument("--factory", default=None, help="faiss factory of the [Ret] index (default IVF{4 sqrt(n)},SQ8)")
    p.add_argument("--model", default=str(REPO / "hub_card"), help="model whose shapes and head are used")
    p.add_argument("--queries", type=int, default=8, help="query sketches (from demo/examples)")
    p.add_argument("--rerank-k", type=int, default=100)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="where the index goes (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the index afterwards")
    p.add_argument("--query-only", action="store_true", help="only search the index in --work-dir")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--_query-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.factory is None:
        from zse_hf.retrieval.faiss_index import ivf_lists

        args.factory = f"IVF{ivf_lists(args.photos)},SQ8"
    if args._query_child:
        print(json.dumps(query(args, Path(args.work_dir) / "index")))
        return 0
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="zse-disk-index-"))
    work.mkdir(parents=True, exist_ok=True)
    index_dir = work / "index"
    try:
        built = None
        if not args.query_only:
            if index_dir.exists():
                shutil.rmtree(index_dir)
            built = build(args, index_dir)
            (work / "build.json").write_text(json.dumps(built, indent=2))
        elif (work / "build.json").is_file():
            built = json.loads((work / "build.json").read_text())
        child = [sys.executable, __file__, "--_query-child", "--work-dir", str(work), "--model", args.model,
                 "--queries", str(args.queries), "--rerank-k", str(args.rerank_k), "--nprobe", str(args.nprobe),
                 "--photos", str(args.photos), "--factory", args.factory]
        out = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True).stdout
        q = json.loads(out.strip().splitlines()[-1])
        print(table(built, q))
        if args.json:
            Path(args.json).write_text(json.dumps({"build": built, "query": q}, indent=2))
    finally:
        if not args.keep and not args.query_only:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
