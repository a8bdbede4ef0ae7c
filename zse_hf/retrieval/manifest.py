"""The manifest of a saved index (what it holds, and the size and sha256 of every file) and
of its `rows.json`: building them, and checking every field of a file read back.

A manifest is confined to its directory: every file it names is a plain file name (no
path separators, no leading dot), and the files it lists are exactly the ones the index
uses (`index.faiss`, `rows.json`, every segment file and, with a token codec,
`token_codec.faiss`), each with its size and checksum.
Anything else is a `ValueError` naming the file.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from .faiss_index import SEARCH_PARAM_NAMES, faiss
from .token_store import KINDS

FORMAT_NAME = "zse-sbir-index"
FORMAT_VERSION = 3  # 2: stored projections; 3: a token codec; an index with neither is still written as 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _bad(where, what: str) -> ValueError:
    return ValueError(f"index file {where} is malformed: {what}")


def _int(value, where, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(where, f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _dims(value, where, what: str, length: int) -> list[int]:
    if not isinstance(value, list) or len(value) != length:
        raise _bad(where, f"{what} must be a list of {length} integers, got {value!r}")
    return [_int(v, where, what, 1) for v in value]


def check_file_name(name, where) -> str:
    """`name` when it is a plain file name inside the index directory, else ValueError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == MANIFEST:
        raise _bad(where, f"{name!r} is not a file name inside the index directory (no paths, no leading dot)")
    return name


def parse_manifest(text: bytes | str, where) -> dict:
    """The checked manifest in `text` (read from `where`)."""
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"index file {where} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{where} is not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _bad(where, f"format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{Path(where).parent} has index format version {version}, newer than this zse_hf supports "
                         f"({FORMAT_VERSION}); upgrade zse-sbir to load it")
    check_manifest(manifest, where)
    return manifest


def check_manifest(m: dict, where) -> None:
    """ValueError naming `where` unless every field the loader uses is present and well typed."""
    required = ("model", "embedding_dim", "index_factory", "factory", "search_params", "tokens", "shard",
                "segments", "files")
    missing = [k for k in required if k not in m]
    if missing:
        raise _bad(where, f"missing {', '.join(missing)}")
    model = m["model"]
    if model is not None and not (isinstance(model, dict) and isinstance(model.get("sha256"), str)
                                  and isinstance(model.get("name_or_path"), (str, type(None)))):
        raise _bad(where, "model must be null or {name_or_path, sha256}")
    _int(m["embedding_dim"], where, "embedding_dim", 1)
    if not isinstance(m["factory"], str) or not isinstance(m["index_factory"], (str, type(None))):
        raise _bad(where, "factory must be a string and index_factory a string or null")
    params = m["search_params"]
    if not isinstance(params, dict) or set(params) - set(SEARCH_PARAM_NAMES):
        raise _bad(where, f"search_params must be an object with keys among {list(SEARCH_PARAM_NAMES)}")
    for key, value in params.items():
        _int(value, where, f"search_params.{key}", 1)
    if "train_size" in m:
        _int(m["train_size"], where, "train_size", 1)
    tokens = m["tokens"]
    if not isinstance(tokens, dict) or not isinstance(tokens.get("stored"), bool):
        raise _bad(where, "tokens must be an object with a boolean 'stored'")
    for key in ("shape", "grid_size"):
        if tokens["stored"] or tokens.get(key) is not None:
            _dims(tokens.get(key), where, f"tokens.{key}", 2)
    projections = tokens.get("projections", False)
    if not isinstance(projections, bool) or (projections and not tokens["stored"]):
        raise _bad(where, "tokens.projections must be a boolean, true only when tokens are stored")
    codec = tokens.get("codec")
    if codec is not None:
        _check_codec(codec, tokens, where)
    shard = m["shard"]
    if shard is not None:
        if not isinstance(shard, dict) or not isinstance(shard.get("items_sha256"), str):
            raise _bad(where, "shard must be null or {index, count, total_items, items_sha256}")
        count = _int(shard.get("count"), where, "shard.count", 1)
        if _int(shard.get("index"), where, "shard.index") >= count:
            raise _bad(where, "shard.index must be below shard.count")
        _int(shard.get("total_items"), where, "shard.total_items")
    files = m["files"]
    if not isinstance(files, dict):
        raise _bad(where, "files must be an object mapping file names to {bytes, sha256}")
    for name, meta in files.items():
        check_file_name(name, where)
        digest = meta.get("sha256") if isinstance(meta, dict) else None
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _bad(where, f"files[{name!r}] must be {{bytes, sha256 (64 hex digits)}}")
        _int(meta.get("bytes"), where, f"files[{name!r}].bytes")
    segments = m["segments"]
    if not isinstance(segments, list):
        raise _bad(where, "segments must be a list")
    used = [INDEX_FILE, ROWS_FILE] + ([check_file_name(codec["file"], where)] if codec is not None else [])
    for n, seg in enumerate(segments):
        if not isinstance(seg, dict):
            raise _bad(where, f"segments[{n}] must be an object")
        _int(seg.get("rows"), where, f"segments[{n}].rows", 1)
        for kind in KINDS:
            name = seg.get(kind)
            stored = {"embeddings": True, "projections": projections}.get(kind, tokens["stored"])
            if name is None and stored:
                raise _bad(where, f"segments[{n}] has no {kind} file")
            if name is not None:
                if not stored:
                    raise _bad(where, f"segments[{n}] names a {kind} file but the index stores no {kind}")
                used.append(check_file_name(name, where))
    if len(set(used)) != len(used):
        raise _bad(where, "a file is used twice")
    unlisted = [name for name in used if name not in files]
    if unlisted:
        raise _bad(where, f"{', '.join(unlisted)} not listed in files (every file needs its size and sha256)")
    unused = sorted(set(files) - set(used))
    if unused:
        raise _bad(where, f"files lists {', '.join(unused)}, which no part of the index uses")


def _check_codec(codec, tokens: dict, where) -> None:
    """`tokens.codec`: `{name, factory, lossy, code_size, description, file}`, only with stored
    tokens and without projections."""
    fields = {"name": str, "factory": (str, type(None)), "lossy": bool, "description": str, "file": str}
    if not isinstance(codec, dict) or any(not isinstance(codec.get(k), t) for k, t in fields.items()):
        raise _bad(where, "tokens.codec must be null or {name, factory, lossy, code_size, description, file}")
    _int(codec.get("code_size"), where, "tokens.codec.code_size", 1)
    if not tokens["stored"] or tokens.get("projections", False):
        raise _bad(where, "tokens.codec needs stored tokens and no stored projections")


def read_manifest(directory: str | os.PathLike) -> dict:
    """The checked manifest of a saved index (ValueError for a missing, malformed or newer one)."""
    root = Path(directory)
    path = root / MANIFEST
    if not path.is_file():
        raise ValueError(f"{root} is not a ZseIndex directory (no {MANIFEST})")
    return parse_manifest(path.read_bytes(), path)


def parse_rows(text: bytes, where, n_rows: int) -> dict:
    """The checked `rows.json` in `text`: `ids`, `paths` and `positions` with one entry per row
    (`n_rows`), unique ids (null for removed rows), and well-formed `skipped` entries."""
    try:
        rows = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"index file {where} is not valid JSON: {err}") from None
    keys = ("ids", "paths", "positions", "skipped")
    if not isinstance(rows, dict) or any(not isinstance(rows.get(k), list) for k in keys):
        raise _bad(where, "it must be an object with the lists ids, paths, positions and skipped")
    for key in ("ids", "paths", "positions"):
        if len(rows[key]) != n_rows:
            raise _bad(where, f"{key} has {len(rows[key])} entries, the segments hold {n_rows} rows")
    ids = rows["ids"]
    if any(not _is_id(i) and i is not None for i in ids):
        raise _bad(where, "ids must be strings, integers or null")
    live = [i for i in ids if i is not None]
    if len(set(live)) != len(live):
        raise _bad(where, "ids are not unique")
    if any(not isinstance(p, (str, type(None))) for p in rows["paths"]):
        raise _bad(where, "paths must be strings or null")
    for p in rows["positions"]:
        _int(p, where, "positions")
    for n, s in enumerate(rows["skipped"]):
        if (not isinstance(s, dict) or set(s) != {"position", "id", "path", "reason"} or not _is_id(s["id"])
                or not isinstance(s["path"], (str, type(None))) or not isinstance(s["reason"], str)):
            raise _bad(where, f"skipped[{n}] must be {{position, id, path, reason}}")
        _int(s["position"], where, f"skipped[{n}].position")
    return rows


def _is_id(value) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def build_manifest(index, segments: list[dict], files: dict) -> dict:
    """The manifest of `index` whose segment entries and file checksums are given."""
    from .. import __version__

    codec = index.token_codec
    tokens = {"stored": index.store_local_tokens, "shape": list(index.token_shape) if index.token_shape else None,
              "grid_size": list(index.grid_size) if index.grid_size else None,
              "dtype": "float16" if codec is None else "uint8", "projections": index.store_projections}
    if codec is not None:
        tokens["codec"] = codec.record()
    return {
        "format": FORMAT_NAME,
        "format_version": 3 if codec is not None else 2 if index.store_projections else 1,
        "zse_hf_version": __version__,
        "faiss_version": getattr(faiss, "__version__", None),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": index.model_info,
        "embedding_dim": index.dim,
        "metric": "inner_product",
        "index_factory": index.index_factory,
        "factory": index.factory,
        "search_params": index.search_params,
        "tokens": tokens,
        "train_size": index.train_size,
        "counts": {"rows": index.num_rows, "photos": len(index), "removed": index.num_rows - len(index),
                   "skipped": len(index.skipped)},
        "shard": index.shard,
        "segments": segments,
        "files": files,
    }
