"""Saving and loading an index directory.

Concurrency: any number of processes may load (and search) an index while one process saves
over it.

- A save writes a complete new directory `.NAME.tmp-<pid>-*` next to the target and swaps it
  in with one atomic `renameat2(RENAME_EXCHANGE)` (Linux); elsewhere it renames the old
  directory aside (`.NAME.old-<pid>-*`) and the new one in. The old directory is then deleted.
- A load opens the index directory once and reads every file relative to that handle, so all
  of them come from one version; it maps every data file and verifies it against the manifest
  it was listed in before returning. A loaded index therefore never reads another version's
  bytes, even after its directory is replaced or deleted. If the directory is replaced while it
  is being opened, the load starts again.
- A load never moves, creates or deletes anything. After a save that was killed between its two
  renames (the fallback path), loads read the moved-aside copy and warn; the next save puts it
  back. Leftovers of killed saves are deleted by the next save of the same target.

Two processes saving the same target at once are not supported (use one writer).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from ..assets import sha256_file
from .faiss_index import DEFAULT_TRAIN_SIZE, faiss, read_index_bytes
from .manifest import INDEX_FILE, MANIFEST, ROWS_FILE, build_manifest, parse_manifest, parse_rows
from .model_binding import check_model, default_processor
from .records import Skipped
from .token_codec import CODEC_FILE, TokenCodec
from .token_store import KINDS, Segment, open_npy, pid_alive, row_dtypes, row_shapes

# Test seam: called with each file name once it is written during a save, and with "swap" at
# the moment the new directory replaces the old one (tests pause or kill the process there).
save_hook: Callable[[str], None] | None = None
# Swap with renameat2(RENAME_EXCHANGE) where the system has it (False: the two-rename fallback).
use_rename_exchange: bool = sys.platform.startswith("linux")
LOAD_TIMEOUT_S = 30.0  # a load waits at most this long for a directory that keeps changing
SWAP_WAIT_S = 5.0  # ... and this long for a save that is between its two renames

_SHA_CACHE: dict[tuple, str] = {}
_O_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


class _Replaced(Exception):
    """The directory being loaded was replaced or deleted meanwhile: load again."""


class _Missing(ValueError):
    """A file the manifest lists is not in the (unchanged) index directory."""


# ----------------------------------------------------------------------------- saving


def save_index(index, directory: str | os.PathLike) -> Path:
    """Write `index` to `directory` atomically; see [`ZseIndex.save`]."""
    if index._index is None:
        raise ValueError("nothing to save: the index is empty")
    target = Path(directory).absolute()
    if target.is_symlink() and target.is_dir():
        target = target.resolve()  # replace the directory the link points to; the link stays
    check_save_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted(target)
    _clean_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a saved index is as readable as a file
        files = []
        faiss.write_index(index._index, str(tmp / INDEX_FILE))
        files.append(_written(tmp, INDEX_FILE))
        rows = {"ids": index._ids, "paths": index._paths, "positions": index._positions,
                "skipped": [asdict(s) for s in index.skipped]}
        (tmp / ROWS_FILE).write_text(json.dumps(rows))
        files.append(_written(tmp, ROWS_FILE))
        if index.token_codec is not None:  # the bytes it was trained or loaded as: its sha256 stays the same
            (tmp / CODEC_FILE).write_bytes(index.token_codec.data)
            files.append(_written(tmp, CODEC_FILE))
        segments = []
        for n, seg in enumerate(index._segments):
            entry = {"rows": seg.n}
            for kind in KINDS:
                # projections only when every segment has them (an interrupted precompute leaves some)
                stored = seg.arrays[kind] if kind != "projections" or index.store_projections else None
                entry[kind] = None
                if stored is not None:
                    entry[kind] = f"{kind}-{n:04d}.npy"
                    stored.save_to(tmp / entry[kind])
                    files.append(_written(tmp, entry[kind]))
            segments.append(entry)
        manifest = build_manifest(index, segments, {name: {"bytes": (tmp / name).stat().st_size,
                                                          "sha256": _sha256(tmp / name)} for name in files})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _written(tmp, MANIFEST)
        _fsync(tmp)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def check_save_target(target: str | os.PathLike) -> Path:
    """ValueError when `target` cannot receive a saved index (an existing file, a directory that
    is not an index, or a folder that is not writable); checked before any work is done."""
    target = Path(target).absolute()
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise ValueError(f"refusing to replace {target}: it is a file, not a ZseIndex directory")
        if not (target / MANIFEST).exists() and any(target.iterdir()):
            raise ValueError(f"refusing to replace {target}: it exists and is not a ZseIndex directory")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot save to {target}: {parent} is a file")
    try:  # the real test of writability (os.access is wrong for root and for read-only mounts)
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.probe-{os.getpid()}-", dir=parent))
    except OSError as err:
        raise ValueError(f"cannot save to {target}: {parent} is not writable ({err.strerror})") from None
    return target


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, racy under threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _written(folder: Path, name: str) -> str:
    _fsync(folder / name)
    _hook(name)
    return name


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False when unsupported."""
    if not use_rename_exchange:
        return False
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if func(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(tmp: Path, target: Path) -> None:
    """Put the finished `tmp` at `target` and delete what was there."""
    if not target.exists():
        _hook("swap")
        os.rename(tmp, target)
        _fsync(target.parent)
        return
    if use_rename_exchange:
        _hook("swap")
    if _exchange(tmp, target):
        old = tmp  # now holds the previous index
    else:  # two renames; a crash in between is repaired by `_recover_interrupted`
        old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        if not use_rename_exchange:
            _hook("swap")
        os.rename(tmp, target)
    _fsync(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _hook(name: str) -> None:
    if save_hook is not None:
        save_hook(name)


def _siblings(target: Path, kind: str) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.{kind}-*"))


def _sibling_pid(path: Path, kind: str) -> int | None:
    try:
        return int(path.name.rsplit(f".{kind}-", 1)[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _interrupted_copy(target: Path, any_pid: bool = False) -> Path | None:
    """The newest complete `.NAME.old-*` directory left by a save whose process is gone (or by
    any save, with `any_pid`)."""
    olds = [p for p in _siblings(target, "old") if (p / MANIFEST).is_file() and _sibling_pid(p, "old") is not None
            and (any_pid or (_sibling_pid(p, "old") != os.getpid() and not pid_alive(_sibling_pid(p, "old"))))]
    return max(olds, key=lambda p: p.stat().st_mtime) if olds else None


def _recover_interrupted(target: Path) -> None:
    """(Writer only.) If a save died after moving the old index aside, put the old index back."""
    if target.exists():
        return
    old = _interrupted_copy(target)
    if old is not None:
        os.rename(old, target)
        warnings.warn(f"restored {target} from {old.name} left by an interrupted save")


def _clean_stale(target: Path) -> None:
    """(Writer only.) Delete temporary / moved-aside directories left by saves whose process is gone."""
    for kind in ("tmp", "old", "probe"):
        for p in _siblings(target, kind):
            pid = _sibling_pid(p, kind)
            if pid is not None and pid != os.getpid() and not pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- loading


def load_index(cls, directory: str | os.PathLike, model=None, processor=None, verify: bool = True,
               use_gpu: bool | None = None):
    """A `cls` ([`ZseIndex`]) loaded from `directory`; see [`ZseIndex.load`]."""
    root = Path(directory).absolute()
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while True:
        try:
            with _open_index_dir(root, deadline) as (dir_fd, where):
                return _load_from(cls, dir_fd, where, model, processor, verify, use_gpu)
        except _Replaced:
            if time.monotonic() > deadline:
                raise ValueError(f"{root} kept being replaced while loading for {LOAD_TIMEOUT_S:.0f} s") from None
            time.sleep(0.001)


@contextlib.contextmanager
def _open_index_dir(root: Path, deadline: float):
    """Yield `(fd, path)` of the directory to load: `root`, or, after a save killed between its
    renames, the moved-aside copy (read in place, with a warning). Waits (at most `SWAP_WAIT_S`)
    while a live save is between its renames."""
    swap_deadline = min(deadline, time.monotonic() + SWAP_WAIT_S)
    while True:
        try:
            fd = os.open(root, _O_FLAGS | getattr(os, "O_DIRECTORY", 0))
            where = root
            break
        except NotADirectoryError:
            raise ValueError(f"{root} is not a ZseIndex directory (it is a file)") from None
        except FileNotFoundError:
            busy = [p for p in _siblings(root, "old") if _sibling_pid(p, "old") and pid_alive(_sibling_pid(p, "old"))]
            if busy and time.monotonic() < swap_deadline:
                time.sleep(0.002)  # a save is between its two renames
                continue
            old = _interrupted_copy(root, any_pid=bool(busy))
            if old is None:
                if root.exists():
                    continue
                raise ValueError(f"{root} is not a ZseIndex directory (it does not exist)") from None
            warnings.warn(f"{root} is missing after an interrupted save; loading the previous index from {old.name} "
                          "(the next save restores it)")
            try:
                fd = os.open(old, _O_FLAGS | getattr(os, "O_DIRECTORY", 0))
            except FileNotFoundError:
                continue
            where = old
            break
    try:
        yield fd, where
    finally:
        os.close(fd)


def _still_there(where: Path, dir_fd: int) -> bool:
    try:
        st = os.stat(where)
    except FileNotFoundError:
        return False
    own = os.fstat(dir_fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino) and own.st_nlink > 0


def _open_member(dir_fd: int, where: Path, name: str) -> int:
    """fd of the regular file `name` inside the opened index directory (no symlinks)."""
    try:
        fd = os.open(name, _O_FLAGS | getattr(os, "O_NOFOLLOW", 0), dir_fd=dir_fd)
    except FileNotFoundError:
        if not _still_there(where, dir_fd):
            raise _Replaced from None
        raise _Missing(f"index file {where / name} is missing") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(f"index file {where / name} is a symbolic link; index files must be regular files "
                             "inside the index directory") from None
        raise ValueError(f"cannot open index file {where / name}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"index file {where / name} is not a regular file")
    return fd


def _read_member(dir_fd: int, where: Path, name: str) -> bytes:
    fd = _open_member(dir_fd, where, name)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _check_bytes(name: str, meta: dict, size: int, digest, where: Path) -> None:
    """Size always, and sha256 (`digest()` computes it) when `digest` is given."""
    if size != meta["bytes"]:
        raise ValueError(f"index file {where / name} is truncated or changed: {size} bytes, expected {meta['bytes']}")
    if digest is not None and digest() != meta["sha256"]:
        raise ValueError(f"index file {where / name} is corrupt: its sha256 does not match the manifest")


def _sha256(path: Path) -> str:
    """sha256 of a file, cached on (device, inode, size, mtime) since saved files never change."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def _member_sha256(fd: int) -> str:
    """sha256 of the file open at `fd`, read through `fd` itself (`pread`, so the offset the
    mapping uses is untouched): a save that swaps the directory meanwhile cannot make it read
    another file or lose this one."""
    own = os.fstat(fd)
    key = (own.st_dev, own.st_ino, own.st_size, own.st_mtime_ns)
    if key not in _SHA_CACHE:
        h, offset = hashlib.sha256(), 0
        while block := os.pread(fd, 1 << 20, offset):
            h.update(block)
            offset += len(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _load_from(cls, dir_fd: int, where: Path, model, processor, verify: bool, use_gpu):
    try:
        text = _read_member(dir_fd, where, MANIFEST)
    except _Missing:
        raise ValueError(f"{where} is not a ZseIndex directory (no {MANIFEST})") from None
    manifest = parse_manifest(text, where / MANIFEST)
    files = manifest["files"]
    if model is not None:
        check_model(manifest["model"], model)
    dim = manifest["embedding_dim"]
    tokens = manifest["tokens"]
    token_shape = tuple(tokens["shape"]) if tokens["stored"] else None
    record = tokens.get("codec")
    codec = None
    if record is not None:  # read and checked first: the token files hold its codes
        data = _read_member(dir_fd, where, record["file"])
        _check_bytes(record["file"], files[record["file"]], len(data),
                     (lambda: _sha256_bytes(data)) if verify else None, where)
        codec = TokenCodec.from_bytes(data, where / record["file"], record["name"], record["factory"], record)
        if codec.dim != token_shape[1]:
            raise ValueError(f"index file {where / record['file']} does not match its manifest: a codec for "
                             f"width {codec.dim}, the tokens are {token_shape[1]} wide")
    code_size = codec.code_size if codec is not None else None

    # rows.json, then the segments (each file verified, then mapped from the same handle)
    rows_bytes = _read_member(dir_fd, where, ROWS_FILE)
    _check_bytes(ROWS_FILE, files[ROWS_FILE], len(rows_bytes),
                 (lambda: _sha256_bytes(rows_bytes)) if verify else None, where)
    n_rows = sum(seg["rows"] for seg in manifest["segments"])
    rows = parse_rows(rows_bytes, where / ROWS_FILE, n_rows)
    segments = []
    for seg in manifest["segments"]:
        n = seg["rows"]
        shapes = {kind: (n, *shape) for kind, shape in row_shapes(dim, token_shape, code_size).items()}
        dtypes = row_dtypes(code_size)
        arrays = {}
        for kind in KINDS:
            name = seg.get(kind)
            if name is None:
                continue
            fd = _open_member(dir_fd, where, name)
            try:
                digest = (lambda fd=fd: _member_sha256(fd)) if verify else None
                _check_bytes(name, files[name], os.fstat(fd).st_size, digest, where)
            except BaseException:
                os.close(fd)
                raise
            arrays[kind] = open_npy(fd, where / name, dtypes[kind], shapes[kind], f"index file {where / name}")
        segments.append(Segment(n, arrays))

    # the faiss index, parsed from the very bytes that were checked
    data = _read_member(dir_fd, where, INDEX_FILE)
    _check_bytes(INDEX_FILE, files[INDEX_FILE], len(data), (lambda: _sha256_bytes(data)) if verify else None, where)
    live = np.asarray([r for r, i in enumerate(rows["ids"]) if i is not None], dtype=np.int64)
    faiss_index = read_index_bytes(data, where / INDEX_FILE, dim, live)

    index = cls(None, None, index_factory=manifest["index_factory"], store_local_tokens=tokens["stored"],
                use_gpu=use_gpu, train_size=manifest.get("train_size", DEFAULT_TRAIN_SIZE),
                store_projections=tokens.get("projections", False), token_codec=codec)
    index.model, index.model_info = model, manifest["model"]
    index.processor = processor if processor is not None or model is None else \
        default_processor(model, index.model_info)  # later adds and explanations crop as the rows were
    index.factory, index.search_params, index.dim = manifest["factory"], manifest["search_params"], dim
    index.token_shape = token_shape
    index.grid_size = tuple(tokens["grid_size"]) if tokens.get("grid_size") else None
    index.shard = manifest["shard"]
    index._index = faiss_index
    index._ids, index._paths, index._positions = rows["ids"], rows["paths"], rows["positions"]
    index.skipped = [Skipped(**s) for s in rows["skipped"]]
    index._row_of = {i: r for r, i in enumerate(index._ids) if i is not None}
    index._segments = segments
    index._starts = np.concatenate([[0], np.cumsum([s.n for s in segments], dtype=np.int64)]).astype(np.int64)
    return index


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
