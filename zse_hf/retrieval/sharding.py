"""Sharded builds: `I/N` shard specs, checking that shards form one complete run, and merging
saved indexes (shards or not) into one."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .model_binding import default_processor, recorded_photo_crop
from .token_store import KINDS


def check_shard(shard) -> tuple[int, int]:
    """`(i, n)` from a tuple or an `I/N` string, with `0 <= i < n`."""
    if isinstance(shard, str):
        shard = parse_shard(shard)
    i, n = (int(x) for x in shard)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    return i, n


def parse_shard(text: str) -> tuple[int, int]:
    """`(i, n)` from `I/N`, or from `RANK`/`WORLD_SIZE` for `auto`."""
    if text == "auto":
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = text.split("/")
        return check_shard((int(i), int(n)))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4) or 'auto', got {text!r}") from None


def check_shard_set(shards: list[dict], directories) -> None:
    """ValueError unless `shards` (manifest records) are all `n` shards of one run."""
    n = shards[0]["count"]
    for d, s in zip(directories, shards):
        first = shards[0]
        if (s["count"], s["total_items"], s["items_sha256"]) != (n, first["total_items"], first["items_sha256"]):
            raise ValueError(f"{d} is a shard of another run (other item list or shard count) than {directories[0]}")
    got = sorted(s["index"] for s in shards)
    if got != list(range(n)):
        missing = sorted(set(range(n)) - set(got))
        raise ValueError(f"shards do not form a complete set of {n}: missing {missing}, repeated "
                         f"{sorted({i for i in got if got.count(i) > 1})}")


def merge_indexes(cls, directories: Sequence[str | os.PathLike], model=None, index_factory: str | None = "same",
                  verify: bool = True, work_dir: str | os.PathLike | None = None):
    """Merge saved indexes into one in-memory `cls` ([`ZseIndex`]); see [`ZseIndex.merge`]."""
    if not directories:
        raise ValueError("no indexes to merge")
    parts = [cls.load(d, model=model, verify=verify) for d in directories]
    first = parts[0]
    for d, p in zip(directories, parts):
        if (p.model_info or {}).get("sha256") != (first.model_info or {}).get("sha256"):
            raise ValueError(f"{d} was built with a different model than {directories[0]}")
        if recorded_photo_crop(p.model_info) != recorded_photo_crop(first.model_info):
            raise ValueError(f"{d} encoded its photos with photo_crop={recorded_photo_crop(p.model_info)!r}, "
                             f"{directories[0]} with {recorded_photo_crop(first.model_info)!r}; their embeddings "
                             "would not be comparable")
        shape = (p.dim, p.token_shape, p.grid_size, p.store_local_tokens)
        if shape != (first.dim, first.token_shape, first.grid_size, first.store_local_tokens):
            raise ValueError(f"{d} stores features of another shape than {directories[0]}")
        if _codec_sha256(p) != _codec_sha256(first):
            raise ValueError(f"{d} stores its tokens with another token codec ({_codec_id(p)}) than {directories[0]} "
                             f"({_codec_id(first)}); build every shard with one codec (token_codec=<the first "
                             "shard's directory>, zse-sbir index --token-codec-from)")
    factories = {p.index_factory for p in parts}
    if index_factory == "same":
        if len(factories) > 1:
            raise ValueError(f"the inputs use different factories {sorted(map(str, factories))}; pass index_factory=")
        index_factory = factories.pop()
    shards = [p.shard for p in parts]
    entries = [(pi, r) for pi, p in enumerate(parts) for r in p._live_rows().tolist()]
    if all(shards):
        check_shard_set(shards, directories)
        entries.sort(key=lambda e: parts[e[0]]._positions[e[1]])
    elif any(shards):
        raise ValueError("cannot merge shards with non-sharded indexes")
    merged = cls(None, None, index_factory=index_factory, store_local_tokens=first.store_local_tokens,
                 work_dir=work_dir, train_size=first.train_size,
                 store_projections=all(p.store_projections for p in parts),  # kept when every input has them
                 token_codec=first.token_codec)  # codes are copied as they are
    merged.model, merged.model_info = model, first.model_info
    merged.processor = default_processor(model, first.model_info) if model is not None else None
    for p in parts:
        merged.skipped.extend(p.skipped)
    ids = [parts[pi]._ids[r] for pi, r in entries]
    if len(set(ids)) != len(ids):
        raise ValueError("the indexes share ids; ids must be unique across merged indexes")
    if not entries:
        return merged
    stored = {"embeddings": True, "tokens": first.store_local_tokens, "mask": first.store_local_tokens,
              "projections": merged.store_projections}
    kinds = [k for k in KINDS if stored[k]]
    shapes, dtypes = first._row_specs()
    writer = merged._open_segment(first.dim, first.token_shape, first.grid_size)
    try:
        for s in range(0, len(entries), 1024):
            chunk = entries[s:s + 1024]
            out = {k: np.empty((len(chunk), *shapes[k]), dtypes[k]) for k in kinds}
            for pi in {e[0] for e in chunk}:
                sel = [j for j, e in enumerate(chunk) if e[0] == pi]
                rows = np.asarray([chunk[j][1] for j in sel], dtype=np.int64)
                for k in kinds:
                    out[k][sel] = parts[pi]._gather(k, rows, decode=False)
            writer.append(out["embeddings"], out.get("tokens"), out.get("mask"), proj=out.get("projections"))
    except BaseException:
        writer.abort()
        raise
    merged._commit_segment(writer, ids, [parts[pi]._paths[r] for pi, r in entries],
                           [parts[pi]._positions[r] for pi, r in entries])
    return merged


def _codec_sha256(index) -> str | None:
    return None if index.token_codec is None else index.token_codec.sha256


def _codec_id(index) -> str:
    """`fp16`, or the token codec's name and the first digits of its sha256."""
    codec = index.token_codec
    return "fp16" if codec is None else f"{codec.name}, sha256 {codec.sha256[:12]}"
