"""Saving and loading an index directory: atomic save (a temporary sibling renamed over the
target), checksummed load, and clean-up after interrupted saves."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from .faiss_index import DEFAULT_TRAIN_SIZE
from .manifest import INDEX_FILE, MANIFEST, ROWS_FILE, build_manifest, read_manifest
from .model_binding import check_model, default_processor
from .records import Skipped
from .token_store import Segment

# Test seam: called with each file name once it is written during a save (and with "swap").
save_hook: Callable[[str], None] | None = None

_SHA_CACHE: dict[tuple, str] = {}


def _sha256_file(path: Path) -> str:
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def save_index(index, directory: str | os.PathLike) -> Path:
    """Write `index` to `directory` atomically; see [`ZseIndex.save`]."""
    if index._index is None:
        raise ValueError("nothing to save: the index is empty")
    target = Path(directory).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted(target)
    _clean_stale(target)
    if target.exists() and not (target / MANIFEST).exists() and any(target.iterdir()):
        raise ValueError(f"refusing to replace {target}: it exists and is not a ZseIndex directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        files = []
        faiss.write_index(index._index, str(tmp / INDEX_FILE))
        files.append(_written(tmp, INDEX_FILE))
        rows = {"ids": index._ids, "paths": index._paths, "positions": index._positions,
                "skipped": [asdict(s) for s in index.skipped]}
        (tmp / ROWS_FILE).write_text(json.dumps(rows))
        files.append(_written(tmp, ROWS_FILE))
        segments = []
        for n, seg in enumerate(index._segments):
            entry = {"rows": seg.n}
            for kind, src in seg.paths.items():
                if src is None:
                    entry[kind] = None
                    continue
                name = f"{kind}-{n:04d}.npy"
                _link_or_copy(src, tmp / name)
                files.append(_written(tmp, name))
                entry[kind] = name
            segments.append(entry)
        manifest = build_manifest(index, segments, {name: {"bytes": (tmp / name).stat().st_size,
                                                          "sha256": _sha256_file(tmp / name)} for name in files})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _written(tmp, MANIFEST)
        _fsync(tmp)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_index(cls, directory: str | os.PathLike, model=None, processor=None, verify: bool = True,
               use_gpu: bool | None = None):
    """A `cls` ([`ZseIndex`]) loaded from `directory`; see [`ZseIndex.load`]."""
    root = Path(directory).absolute()
    _recover_interrupted(root)
    manifest = read_manifest(root)
    for name, meta in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise ValueError(f"index file {name} is missing from {root}")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise ValueError(f"index file {name} is truncated or changed: {size} bytes, expected {meta['bytes']}")
        if verify and _sha256_file(path) != meta["sha256"]:
            raise ValueError(f"index file {name} is corrupt: its sha256 does not match the manifest")
    if model is not None:
        check_model(manifest["model"], model)
    index = cls(None, None, index_factory=manifest["index_factory"], store_local_tokens=manifest["tokens"]["stored"],
                use_gpu=use_gpu, train_size=manifest.get("train_size", DEFAULT_TRAIN_SIZE))
    index.model, index.model_info = model, manifest["model"]
    index.processor = processor if processor is not None or model is None else default_processor(model)
    index.factory, index.search_params, index.dim = manifest["factory"], manifest["search_params"], manifest["embedding_dim"]
    tokens = manifest["tokens"]
    index.token_shape = tuple(tokens["shape"]) if tokens["shape"] else None
    index.grid_size = tuple(tokens["grid_size"]) if tokens["grid_size"] else None
    index.shard = manifest["shard"]
    index._index = faiss.read_index(str(root / INDEX_FILE))
    rows = json.loads((root / ROWS_FILE).read_text())
    index._ids, index._paths, index._positions = rows["ids"], rows["paths"], rows["positions"]
    index.skipped = [Skipped(**s) for s in rows["skipped"]]
    index._row_of = {i: r for r, i in enumerate(index._ids) if i is not None}
    for seg in manifest["segments"]:
        paths = {k: (root / seg[k]) if seg.get(k) else None for k in ("embeddings", "tokens", "mask")}
        index._segments.append(Segment(seg["rows"], paths["embeddings"], paths["tokens"], paths["mask"]))
    index._starts = np.concatenate([[0], np.cumsum([s.n for s in index._segments], dtype=np.int64)]).astype(np.int64)
    if index._index.ntotal != len(index) or index.num_rows != len(index._ids):
        raise ValueError(f"inconsistent index in {root}: faiss holds {index._index.ntotal} vectors, "
                         f"rows.json {len(index)} photos in {len(index._ids)} rows, segments {index.num_rows} rows")
    return index


def _written(folder: Path, name: str) -> str:
    _fsync(folder / name)
    if save_hook is not None:
        save_hook(name)
    return name


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _siblings(target: Path, kind: str) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.{kind}-*"))


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename the finished `tmp` to `target`, moving an old `target` aside first and deleting
    it after. A crash between the two renames is repaired by `_recover_interrupted`."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        if save_hook is not None:
            save_hook("swap")
    os.rename(tmp, target)
    _fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _recover_interrupted(target: Path) -> None:
    """If a save died after moving the old index aside, put the old index back."""
    if target.exists():
        return
    olds = [p for p in _siblings(target, "old") if (p / MANIFEST).is_file()]
    if olds:
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.rename(newest, target)
        warnings.warn(f"restored {target} from {newest.name} left by an interrupted save")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(target: Path) -> None:
    """Delete temporary / moved-aside directories left by saves whose process is gone."""
    for kind in ("tmp", "old"):
        for p in _siblings(target, kind):
            try:
                pid = int(p.name.rsplit(f".{kind}-", 1)[1].split("-")[0])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)

