"""The Milvus store beside `ZseIndex` (not a test): the same photos in a faiss index folder, in an embedded
Milvus Lite file and in a Milvus standalone server (the `milvus` package's 2.3.x binary, started here on a
temporary folder), searched with the same sketches.

Two galleries:

- `gallery`: the bundled demo/gallery (166 photos) encoded once with the shipped model (hub_card/);
- `synthetic`: `--photos` (default 100k) SYNTHETIC photos of the model's shapes (random unit [Ret] embeddings,
  random normal 8 x 8 x 384 tokens, as benchmarks/bench_disk_index.py): real bytes and latencies, meaningless
  rankings.

Every store gets the same features and the same trained token codec (sq6, the default), so their codes, and
hence their relation scores, are identical. Reported per store:

- ingest photos/s: writing precomputed features (`from_features`; encoding the photos costs the same for all
  and is reported once);
- search p50 / p95 (ms) of one sketch's `search(features, k=10)` (its features precomputed), without the
  re-rank (`rerank_k=0`) and with it (`rerank_k=--rerank-k`, tokens read from the store and decoded);
- bytes per photo on disk (faiss: the saved folder; Milvus Lite: the .db folder; server: its segment files
  (insert, stats, delta logs and index files), its RocksMQ log separately);
- top-10 agreement with `ZseIndex` (mean overlap of the top-10 ids, for the [Ret] order and for the re-ranked
  order); the [Ret] index of every store is exact (faiss Flat, Milvus FLAT).

    python benchmarks/bench_vector_store.py                        # gallery and 100k, embedded and server
    python benchmarks/bench_vector_store.py --photos 20k --no-server
    python benchmarks/bench_vector_store.py --only gallery --json figures.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_disk_index import SyntheticTokens, token_shape, unit_rows  # noqa: E402
from bench_retrieval import parse_size  # noqa: E402

GALLERY = REPO / "demo" / "gallery"
EXAMPLES = REPO / "demo" / "examples"
SERVER_STORAGE = ("insert_log", "stats_log", "delta_log", "index_files")


class BlockTokens(SyntheticTokens):
    """`SyntheticTokens` whose rows do not depend on how they are sliced (each store reads its own chunk size):
    drawn in blocks of `BLOCK` rows, each from a generator seeded by its first row."""

    BLOCK = 1024

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        if stop <= start:
            return np.empty((0, *self.shape[1:]), dtype=np.float32)
        first, last = start // self.BLOCK, (stop - 1) // self.BLOCK
        blocks = [super(BlockTokens, self).__getitem__(slice(b * self.BLOCK, (b + 1) * self.BLOCK))
                  for b in range(first, last + 1)]
        out = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        return out[start - first * self.BLOCK:stop - first * self.BLOCK]


def du(path: Path) -> int:
    """Bytes of the files under `path` (0 when it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def server_bytes(data_dir: Path) -> tuple[int, int]:
    """`(segment files, RocksMQ log)` bytes of a local server's data folder."""
    data = data_dir / "data"
    return sum(du(data / d) for d in SERVER_STORAGE), du(data / "rocksmq")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pids: list[int], idle: float = 0.1, window: float = 5.0, timeout: float = 600.0) -> float:
    """Wait until each of `pids` (this process, the server) uses under `idle` of a CPU over `window` seconds:
    a database compacts and indexes in the background after an ingest, which would be timed with the
    searches otherwise. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = [cpu_seconds(p) for p in pids]
        time.sleep(window)
        if all((cpu_seconds(p) - b) / window < idle for p, b in zip(pids, before)):
            break
    return time.monotonic() - start


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sketch_queries(model, processor):
    """One `ZseImageFeatures` (Q = 1) per example sketch of demo/examples."""
    from zse_hf.retrieval.encoding import encode_sketches

    paths = sorted(EXAMPLES.glob("*.png"))
    return [encode_sketches(model, processor, [str(p)]) for p in paths]


def gallery_features(model, processor):
    """`(ret [n, D], tokens [n, N, D] fp16, mask [n, N], grid, ids, paths, seconds)` of demo/gallery."""
    import contextlib

    from zse_hf.retrieval.encoding import encode_photos
    from zse_hf.retrieval.inputs import resolve_items

    items, ids, paths = resolve_items(str(GALLERY), None)
    ret, tok, mask, grid = [], [], [], None
    start = time.perf_counter()
    with contextlib.closing(encode_photos(model, processor, items, list(range(len(items))), 32, 2, True)) as batches:
        for kept, feats, failed in batches:
            assert not failed, failed
            ret.append(feats.ret_embeds.float().numpy())
            tok.append(feats.local_tokens.float().clamp(-65504, 65504).numpy().astype(np.float16))
            mask.append(feats.token_mask.numpy())
            grid = feats.grid_size
    seconds = time.perf_counter() - start
    return np.concatenate(ret), np.concatenate(tok), np.concatenate(mask), tuple(grid), ids, paths, seconds


def interleaved_searches(stores: list, queries, repeats: int, rerank_k: int) -> list[dict]:
    """Per store: the seconds of each `search(q, k=10, rerank_k=rerank_k)` call and, from the first pass, each
    query's top-10 ids and relation scores. The stores take turns query by query, so a machine whose load
    changes meanwhile slows them alike; each store answers one warm-up call first."""
    for store in stores:
        store.search(queries[0], k=10, rerank_k=rerank_k)
    out = [{"seconds": [], "tops": [], "relation": []} for _ in stores]
    for r in range(repeats):
        for q in queries:
            for store, rec in zip(stores, out):
                start = time.perf_counter()
                hits = store.search(q, k=10, rerank_k=rerank_k)[0]
                rec["seconds"].append(time.perf_counter() - start)
                if r == 0:
                    rec["tops"].append([h.id for h in hits])
                    rec["relation"].append({h.id: h.relation_score for h in hits})
    return out


def agreement(tops: list[list], reference: list[list]) -> float:
    """Mean |top-10 ∩ reference top-10| / 10."""
    return float(np.mean([len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(tops, reference)]))


def relation_gap(scores: list[dict], reference: list[dict]) -> float:
    """Largest |relation score - the reference's| over the photos both re-ranked into a query's top 10."""
    gaps = [abs(a[i] - b[i]) for a, b in zip(scores, reference) for i in set(a) & set(b)
            if a[i] is not None and b[i] is not None]
    return max(gaps, default=float("nan"))


def pct(values: list[float], q: float) -> float:
    return 1000 * float(np.percentile(values, q))


def run_gallery_or_synthetic(name, args, model, processor, queries, work: Path, server, features) -> list[dict]:
    """Build the faiss index and the stores over `features`; search them; one result dict per store."""
    from zse_hf.retrieval import ZseIndex, ZseMilvusStore

    ret, tokens, mask, grid, ids, paths, codec = features
    n = len(ret)
    folder = work / f"{name}.index"
    start = time.perf_counter()
    with ZseIndex.from_features(ret, tokens, mask, grid, ids=ids, paths=paths, model=model, processor=processor,
                                index_factory="Flat", work_dir=work, token_codec=codec) as index:
        index.save(folder)
        ingest = time.perf_counter() - start
    rows = [{"gallery": name, "photos": n, "store": "ZseIndex (faiss Flat)", "ingest_per_s": n / ingest,
             "bytes_per_photo": du(folder) / n}]
    stores = [ZseIndex.load(folder, model, processor, verify=False)]
    targets = [("Milvus Lite (embedded)", str(work / f"{name}.db"))]
    if server is not None:
        targets.append((f"Milvus {server.version} server", f"{server.uri}?collection={name}"))
    for label, uri in targets:
        before = server_bytes(server.data_dir) if "server" in label else (0, 0)
        start = time.perf_counter()
        store = ZseMilvusStore.from_features(ret, tokens, mask, grid, ids=ids, paths=paths, model=model,
                                             processor=processor, uri=uri, token_codec=codec, recreate=True,
                                             progress=True, timeout=600)
        store.flush()
        ingest = time.perf_counter() - start
        row = {"gallery": name, "photos": n, "store": label, "ingest_per_s": n / ingest}
        if "server" in label:
            wait_indexed(store)
            after = server_bytes(server.data_dir)
            row.update(bytes_per_photo=(after[0] - before[0]) / n, log_bytes_per_photo=(after[1] - before[1]) / n,
                       server_rss_mb=rss_mb(server.pid))
        else:
            store.close()  # the embedded file's size once closed; reopened to search
            row["bytes_per_photo"] = du(Path(uri)) / n
            store = ZseMilvusStore.open(uri, model, processor)
        print(f"{name}: {label} ingested {n:,} photos at {row['ingest_per_s']:,.0f} photos/s", flush=True)
        rows.append(row)
        stores.append(store)
    waited = settle([os.getpid()] + ([server.pid] if server is not None else []))
    print(f"{name}: background work settled after {waited:.0f} s; load average {os.getloadavg()[0]:.2f}", flush=True)
    try:
        plain = interleaved_searches(stores, queries, args.repeats, 0)
        reranked = interleaved_searches(stores, queries, args.repeats, args.rerank_k)
    finally:
        for store in stores:
            store.close()
    print(f"{name}: searched; load average {os.getloadavg()[0]:.2f}", flush=True)
    for row, a, b in zip(rows, plain, reranked):
        row.update(ret_ms=a["seconds"], rerank_ms=b["seconds"], agree_ret=agreement(a["tops"], plain[0]["tops"]),
                   agree_rerank=agreement(b["tops"], reranked[0]["tops"]),
                   relation_gap=relation_gap(b["relation"], reranked[0]["relation"]))
        print(summary_line(row), flush=True)
    return rows


def wait_indexed(store, timeout: float = 600.0) -> None:
    """Until the server has built the [Ret] index of every sealed segment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = store.client.describe_index(store.address.collection, "ret")
        if int(info.get("pending_index_rows", 0)) == 0 and int(info.get("indexed_rows", 0)) >= int(
                info.get("total_rows", 0)):
            return
        time.sleep(1.0)


def summary_line(row: dict) -> str:
    return (f"{row['gallery']:>9} {row['store']:<26} {row['ingest_per_s']:8.0f} photos/s  "
            f"[Ret] p50 {pct(row['ret_ms'], 50):6.1f} ms  re-rank p50 {pct(row['rerank_ms'], 50):6.1f} ms  "
            f"{row['bytes_per_photo']:8.0f} B/photo  agree {row['agree_ret']:.3f} / {row['agree_rerank']:.3f}  "
            f"max relation gap {row['relation_gap']:.1e}")


def table(rows: list[dict], rerank_k: int) -> str:
    lines = ["| gallery | store | ingest photos/s | search p50 / p95 ms, [Ret] only | "
             f"search p50 / p95 ms, top-{rerank_k} re-rank | bytes per photo | top-10 agreement, [Ret] / re-ranked "
             "| max relation score gap |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = f"{r['bytes_per_photo']:,.0f}"
        if "log_bytes_per_photo" in r:
            size += f" (+ {r['log_bytes_per_photo']:,.0f} log)"
        lines.append(f"| {r['gallery']} ({r['photos']:,}) | {r['store']} | {r['ingest_per_s']:,.0f} | "
                     f"{pct(r['ret_ms'], 50):.1f} / {pct(r['ret_ms'], 95):.1f} | "
                     f"{pct(r['rerank_ms'], 50):.0f} / {pct(r['rerank_ms'], 95):.0f} | {size} | "
                     f"{r['agree_ret']:.3f} / {r['agree_rerank']:.3f} | {r['relation_gap']:.1e} |")
    return "\n".join(lines)


class _Server:
    """The local server and its version string."""

    def __init__(self, data_dir: Path):
        import milvus

        from zse_hf.retrieval.milvus_local import LocalMilvusServer

        self.local = LocalMilvusServer(data_dir).start()
        self.version, self.data_dir = milvus.__version__, data_dir

    @property
    def uri(self) -> str:
        return self.local.uri

    @property
    def pid(self) -> int:
        return self.local.pid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=parse_size, default=100_000, help="synthetic gallery size (e.g. 100k, 20000)")
    p.add_argument("--only", choices=("gallery", "synthetic"), default=None)
    p.add_argument("--no-server", action="store_true", help="skip the Milvus server")
    p.add_argument("--model", default=str(REPO / "hub_card"))
    p.add_argument("--rerank-k", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3, help="timed searches per example sketch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="default: a new temporary folder, deleted afterwards")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)

    import torch

    from zse_hf.loading import load_model
    from zse_hf.retrieval.token_codec import DEFAULT_TOKEN_CODEC, TokenCodec, codec_factory, training_sample

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="zse-vector-store-"))
    work.mkdir(parents=True, exist_ok=True)
    server = None
    rows: list[dict] = []
    try:
        model, processor, _ = load_model(args.model)
        queries = sketch_queries(model, processor)
        if not args.no_server:
            start = time.perf_counter()
            server = _Server(work / "milvus-server")
            print(f"Milvus {server.version} server started in {time.perf_counter() - start:.1f} s", flush=True)
        name, factory = codec_factory(DEFAULT_TOKEN_CODEC)
        if args.only in (None, "gallery"):
            ret, tok, mask, grid, ids, paths, seconds = gallery_features(model, processor)
            print(f"encoded {len(ids)} gallery photos in {seconds:.1f} s ({len(ids) / seconds:.1f} photos/s, "
                  f"{torch.get_num_threads()} threads)", flush=True)
            codec = TokenCodec.train(name, factory, training_sample(tok, mask))
            rows += run_gallery_or_synthetic("gallery", args, model, processor, queries, work, server,
                                             (ret, tok, mask, grid, ids, paths, codec))
        if args.only in (None, "synthetic"):
            n = args.photos
            n_tok, dim, grid = token_shape(model, processor)
            sample = SyntheticTokens(min(n, 256), n_tok, dim, seed=args.seed + 7)[0:min(n, 256)]
            codec = TokenCodec.train(name, factory, training_sample(sample, np.ones(sample.shape[:2], bool)))
            tokens = BlockTokens(n, n_tok, dim, seed=args.seed)
            features = (unit_rows(n, dim, seed=args.seed), tokens, None, grid, None, None, codec)
            rows += run_gallery_or_synthetic("synthetic", args, model, processor, queries, work, server, features)
        print()
        print(f"{len(queries)} example sketches x {args.repeats}, k=10, {torch.get_num_threads()} threads; "
              f"tokens sq6 in every store; load average at the end {os.getloadavg()[0]:.2f} (1 min), "
              f"{os.getloadavg()[2]:.2f} (15 min) on {os.cpu_count()} CPUs")
        print(table(rows, args.rerank_k))
        for r in rows:
            if "server_rss_mb" in r:
                print(f"{r['gallery']}: the server's resident memory with the collection loaded: "
                      f"{r['server_rss_mb']:,.0f} MB")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
    finally:
        if server is not None:
            server.local.stop()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
