"""The manifest of a saved index: what it holds, and the size and sha256 of every file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import faiss

FORMAT_NAME = "zse-sbir-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.json"


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of a saved index (ValueError for a missing, unreadable or newer one)."""
    root = Path(directory)
    path = root / MANIFEST
    if not path.is_file():
        raise ValueError(f"{root} is not a ZseIndex directory (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{root} has index format version {version}, newer than this zse_hf supports "
                         f"({FORMAT_VERSION}); upgrade zse-sbir to load it")
    return manifest


def build_manifest(index, segments: list[dict], files: dict) -> dict:
    """The manifest of `index` whose segment entries and file checksums are given."""
    from .. import __version__

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "zse_hf_version": __version__,
        "faiss_version": getattr(faiss, "__version__", None),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": index.model_info,
        "embedding_dim": index.dim,
        "metric": "inner_product",
        "index_factory": index.index_factory,
        "factory": index.factory,
        "search_params": index.search_params,
        "tokens": {"stored": index.store_local_tokens, "shape": list(index.token_shape) if index.token_shape else None,
                   "grid_size": list(index.grid_size) if index.grid_size else None, "dtype": "float16"},
        "train_size": index.train_size,
        "counts": {"rows": index.num_rows, "photos": len(index), "removed": index.num_rows - len(index),
                   "skipped": len(index.skipped)},
        "shard": index.shard,
        "segments": segments,
        "files": files,
    }
