"""The `zse-sbir index`, `zse-sbir merge-index` and `zse-sbir search` commands."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from .faiss_index import FLAT_MAX, IVF_SQ_MAX
from .index import ZseIndex
from .manifest import read_manifest
from .sharding import parse_shard


def _load_model(model_dir: str, device: str | None):
    from ..evaluation import load_model_and_processor

    return load_model_and_processor(model_dir, device)


def index_main(argv: list[str] | None = None) -> int:
    """`zse-sbir index PHOTO_DIR --model DIR --out INDEX_DIR [--factory F] [--shard I/N] [--batch-size B]`."""
    p = argparse.ArgumentParser(prog="zse-sbir index", description="Build a faiss index of all images under PHOTO_DIR.")
    p.add_argument("photo_dir")
    p.add_argument("--model", required=True, help="ZSE model folder or Hub id")
    p.add_argument("--out", required=True, help="index directory to write (replaced atomically)")
    p.add_argument("--factory", default=None, help="faiss index_factory string (default: by gallery size: Flat "
                   f"below {FLAT_MAX}, IVF+SQ8 below {IVF_SQ_MAX}, IVF+PQ above)")
    p.add_argument("--shard", default=None, help="I/N: embed only every N-th image starting at I ('auto': RANK/WORLD_SIZE; "
                   "writes OUT/shard-I-of-N); combine with merge-index")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2, help="image decoding threads")
    p.add_argument("--device", default=None)
    p.add_argument("--no-tokens", action="store_true", help="do not store local tokens (no re-ranking)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        shard = parse_shard(args.shard) if args.shard else None
        out = Path(args.out)
        if args.shard == "auto":
            out = out / f"shard-{shard[0]}-of-{shard[1]}"
        model, processor = _load_model(args.model, args.device)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index = ZseIndex.build(model, processor, args.photo_dir, index_factory=args.factory,
                                   store_local_tokens=not args.no_tokens, batch_size=args.batch_size, shard=shard,
                                   num_workers=args.num_workers, progress=not args.quiet)
        for s in index.skipped:
            print(f"skipped {s.path or s.id}: {s.reason}", file=sys.stderr)
        if len(index) == 0:
            print(f"zse-sbir index: no readable images under {args.photo_dir}", file=sys.stderr)
            return 1
        index.save(out)
    except (ValueError, FileNotFoundError) as err:
        print(f"zse-sbir index: error: {err}", file=sys.stderr)
        return 2
    print(f"indexed {len(index)} photos ({len(index.skipped)} skipped) with {index.factory} into {out} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def merge_main(argv: list[str] | None = None) -> int:
    """`zse-sbir merge-index SHARD_DIRS... --out INDEX_DIR [--factory F]`."""
    p = argparse.ArgumentParser(prog="zse-sbir merge-index", description="Merge sharded (or separate) indexes.")
    p.add_argument("shard_dirs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--factory", default="same", help="faiss factory of the merged index (default: the shards')")
    p.add_argument("--no-verify", action="store_true", help="check file sizes only, not checksums")
    args = p.parse_args(argv)
    try:
        factory = None if args.factory == "auto" else args.factory
        merged = ZseIndex.merge(args.shard_dirs, index_factory=factory, verify=not args.no_verify)
        merged.save(args.out)
    except (ValueError, FileNotFoundError) as err:
        print(f"zse-sbir merge-index: error: {err}", file=sys.stderr)
        return 2
    print(f"merged {len(args.shard_dirs)} indexes: {len(merged)} photos ({merged.factory}) into {args.out}")
    return 0


def search_main(argv: list[str] | None = None) -> int:
    """`zse-sbir search INDEX_DIR SKETCH... [--model DIR] [-k 10] [--rerank-k 50] [--json]`."""
    p = argparse.ArgumentParser(prog="zse-sbir search", description="Search an index with sketches.")
    p.add_argument("index_dir")
    p.add_argument("sketches", nargs="+")
    p.add_argument("--model", default=None, help="model folder (default: the one recorded in the index)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--rerank-k", type=int, default=None, help="re-rank this many [Ret] candidates with the relation network")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default=None)
    p.add_argument("--no-verify", action="store_true", help="check index file sizes only, not checksums")
    args = p.parse_args(argv)
    try:
        manifest = read_manifest(args.index_dir)
        model_dir = args.model or (manifest.get("model") or {}).get("name_or_path")
        if not model_dir:
            raise ValueError("the index records no model; pass --model")
        model, processor = _load_model(model_dir, args.device)
        index = ZseIndex.load(args.index_dir, model=model, processor=processor, verify=not args.no_verify)
        results = index.search(args.sketches, k=args.k, rerank_k=args.rerank_k)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"zse-sbir search: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"sketch": s, "hits": [asdict(h) for h in hits]} for s, hits in zip(args.sketches, results)], indent=2))
        return 0
    for sketch, hits in zip(args.sketches, results):
        print(f"# {sketch}")
        for h in hits:
            rel = f"  relation {h.relation_score:.4f}" if h.relation_score is not None else ""
            print(f"{h.rank:>4}  {h.ret_score:+.4f}{rel}  {h.id}" + (f"  ({h.path})" if h.path and h.path != h.id else ""))
    return 0

