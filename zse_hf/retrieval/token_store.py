"""The row store behind an index: per segment (one `build`/`add` call), `[n, D]` float32
[Ret] embeddings, `[n, N, D]` float16 local tokens (or, with a token codec, their codes
`[n, N, C]` uint8, see `token_codec`), `[n, N]` bool masks and, when the index stores them,
`[n, 3, N, D]` float16 cross-attention projections of the photos (the pair head's photo-side
q, k, v), each a `.npy` file streamed once and then memory-mapped read-only.

A segment file is never modified once written. Every file is mapped when its segment is
opened, so a loaded index keeps reading the bytes it verified even when its directory is
replaced or deleted afterwards. Unsaved segments live in a work directory
(`zse-index-<pid>-*`) that is removed when the index is closed or garbage-collected, and by the
next index that makes a work directory in the same place when its process died.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_NPY_HEADER = 128  # fixed .npy header length of streamed segment files
KINDS = ("embeddings", "tokens", "mask", "projections")
DTYPES = {"embeddings": np.dtype(np.float32), "tokens": np.dtype(np.float16), "mask": np.dtype(np.bool_),
          "projections": np.dtype(np.float16)}
CODE_DTYPE = np.dtype(np.uint8)  # token codes, when the index has a token codec
WORK_PREFIX = "zse-index-"


class NpyWriter:
    """Streams rows `[*, *row_shape]` of one dtype into a `.npy` file whose row count is only
    known at the end: a fixed 128-byte header is reserved and filled in by `close`."""

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...]):
        """Open `path` for rows of `row_shape` and `dtype`."""
        self.path, self.dtype, self.row_shape, self.n = path, np.dtype(dtype), tuple(row_shape), 0
        self.file = open(path, "wb")
        self.file.write(b"\0" * _NPY_HEADER)

    def append(self, rows: np.ndarray) -> None:
        """Write rows `[m, *row_shape]`."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"row shape {rows.shape[1:]} != {self.row_shape}")
        self.file.write(rows.tobytes())
        self.n += rows.shape[0]

    def close(self) -> None:
        """Fill in the header, fsync and close."""
        header = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                       "shape": (self.n, *self.row_shape)})
        body = header.ljust(_NPY_HEADER - 10 - 1) + "\n"
        if len(body) + 10 != _NPY_HEADER:
            raise ValueError(f"shape {(self.n, *self.row_shape)} does not fit the .npy header")
        self.file.seek(0)
        self.file.write(b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1"))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def abort(self) -> None:
        """Close and delete the partial file."""
        self.file.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class StoredArray:
    """One mapped `.npy` file: `array` (read-only memory map), the file it was opened from
    (`path`, and its `(st_dev, st_ino)` `identity`), and its `header` bytes."""

    array: np.ndarray
    path: Path
    identity: tuple[int, int]
    header: bytes

    def save_to(self, dst: Path) -> None:
        """Put this array's file at `dst`: a hard link when `path` still is the file that was
        mapped, else a copy of the mapped bytes (never another version's file)."""
        try:
            if _identity(os.stat(self.path)) == self.identity:
                os.link(self.path, dst)
                if _identity(os.stat(dst)) == self.identity:
                    return
                os.unlink(dst)
        except OSError:
            pass
        with open(dst, "wb") as f:
            f.write(self.header)
            flat = self.array.reshape(len(self.array), -1) if self.array.ndim > 1 else self.array
            for s in range(0, len(flat), 4096):
                f.write(np.ascontiguousarray(flat[s:s + 4096]).tobytes())


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def open_npy(fd: int, path: Path, dtype: np.dtype, shape: tuple[int, ...], label: str) -> StoredArray:
    """Map the `.npy` file open at `fd` (read-only), checking that it holds exactly `shape`
    of `dtype` (C order). `path` is where it was opened from; `label` names it in errors.
    Takes ownership of `fd`."""
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (ValueError, SyntaxError, TypeError, EOFError, OSError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise ValueError(f"{label} is not a valid .npy file: {reason}") from None
        offset = f.tell()
        if got_dtype != dtype or tuple(got_shape) != tuple(shape) or fortran:
            raise ValueError(f"{label} holds {got_dtype} {list(got_shape)}{' (Fortran order)' if fortran else ''}, "
                             f"expected {dtype} {list(shape)}")
        if st.st_size != offset + int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{label} is {st.st_size} bytes, which does not match its header {list(shape)} {dtype}")
        f.seek(0)
        header = f.read(offset)
        array = np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))
    return StoredArray(array, Path(path), _identity(st), header)


def row_shapes(dim: int, token_shape, code_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """The shape of one row of each kind: embeddings `(D,)` and, when tokens are stored
    (`token_shape = (N, D)`, else None), tokens `(N, D)` (`(N, code_size)` codes with a token
    codec), mask `(N,)`, projections `(3, N, D)`."""
    shapes = {"embeddings": (dim,)}
    if token_shape is not None:
        tokens = (token_shape[0], code_size) if code_size else tuple(token_shape)
        shapes.update(tokens=tokens, mask=(token_shape[0],), projections=(3, *token_shape))
    return shapes


def row_dtypes(code_size: int | None = None) -> dict[str, np.dtype]:
    """The stored dtype of each kind (tokens are uint8 codes when `code_size` is given)."""
    return {**DTYPES, "tokens": CODE_DTYPE} if code_size else dict(DTYPES)


class Segment:
    """Rows written by one `build`/`add` call: `n` rows of `arrays["embeddings"]` `[n, D]`
    float32 and, when tokens are stored, `arrays["tokens"]` `[n, N, D]` float16 and
    `arrays["mask"]` `[n, N]` bool, and `arrays["projections"]` `[n, 3, N, D]` float16 when
    projections are stored (each a [`StoredArray`], or None)."""

    def __init__(self, n: int, arrays: dict[str, StoredArray | None]):
        """A segment of `n` rows over already-opened arrays."""
        self.n, self.arrays = int(n), {k: arrays.get(k) for k in KINDS}

    @classmethod
    def open_files(cls, n: int, paths: dict[str, Path | None], dim: int, token_shape,
                   code_size: int | None = None) -> Segment:
        """Open and map the files of a segment written in a work directory (`code_size`: the
        tokens are codes of that many bytes per token)."""
        shapes, dtypes = row_shapes(dim, token_shape, code_size), row_dtypes(code_size)
        arrays = {}
        for kind, path in paths.items():
            if path is not None:
                arrays[kind] = open_file(path, kind, (n, *shapes[kind]), dtypes[kind])
        return cls(n, arrays)

    def with_array(self, kind: str, stored: StoredArray) -> Segment:
        """This segment with one more array (e.g. projections made after it was written)."""
        if len(stored.array) != self.n:
            raise ValueError(f"{kind} has {len(stored.array)} rows, the segment {self.n}")
        return Segment(self.n, {**self.arrays, kind: stored})

    def array(self, kind: str) -> np.ndarray:
        """The memory-mapped rows of `kind` ("embeddings", "tokens", "mask" or "projections")."""
        stored = self.arrays[kind]
        if stored is None:
            if kind == "projections":
                raise ValueError("this segment stores no projections (see ZseIndex.precompute_projections)")
            raise ValueError("this index stores no local tokens (built with store_local_tokens=False)")
        return stored.array


def open_file(path: Path, kind: str, shape: tuple[int, ...], dtype=None) -> StoredArray:
    """Map the work-directory file `path` holding `shape` rows of `kind` (of `dtype`, default
    the kind's)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    return open_npy(fd, path, DTYPES[kind] if dtype is None else np.dtype(dtype), shape, path.name)


class SegmentWriter:
    """Writes one segment's embedding / token / mask (and projection) files side by side."""

    def __init__(self, folder: Path, dim: int, token_shape, grid_size, index_token_shape=None, index_grid_size=None,
                 projections: bool = False, code_size: int | None = None):
        """Files in `folder` for rows of width `dim` (and tokens `token_shape = (N, D)` unless None);
        `index_*`: what the index already holds (None for a new one), which must match;
        `projections`: also a `[n, 3, N, D]` projections file (needs tokens); `code_size`: tokens
        are appended as codes `[m, N, code_size]` uint8 (encoded by the caller)."""
        self.dim, self.token_shape, self.grid_size = dim, index_token_shape or token_shape, index_grid_size or grid_size
        self.code_size = code_size if token_shape is not None else None
        if index_token_shape is not None and token_shape is not None and tuple(token_shape) != tuple(index_token_shape):
            raise ValueError(f"local tokens of shape {tuple(token_shape)} do not match the index "
                             f"({tuple(index_token_shape)})")
        tag = uuid.uuid4().hex[:12]
        self.emb = NpyWriter(folder / f"embeddings-{tag}.npy", np.float32, (dim,))
        self.tok = self.mask = self.proj = None
        if token_shape is not None:
            tok_shape = (token_shape[0], code_size) if code_size else tuple(token_shape)
            self.tok = NpyWriter(folder / f"tokens-{tag}.npy", CODE_DTYPE if code_size else np.float16, tok_shape)
            self.mask = NpyWriter(folder / f"mask-{tag}.npy", np.bool_, (token_shape[0],))
            if projections:
                self.proj = NpyWriter(folder / f"projections-{tag}.npy", np.float16, (3, *token_shape))
        elif projections:
            raise ValueError("projections need stored local tokens")

    @property
    def _writers(self) -> list[NpyWriter]:
        return [w for w in (self.emb, self.tok, self.mask, self.proj) if w is not None]

    def append(self, emb, tok=None, mask=None, grid_size=None, proj=None) -> None:
        """Write rows: `emb [m, D]`, and `tok [m, N, D]` (codes `[m, N, code_size]` uint8 with
        `code_size`), `mask [m, N]` when tokens are stored, and `proj [m, 3, N, D]` when projections are."""
        if grid_size is not None and self.grid_size is not None and tuple(grid_size) != tuple(self.grid_size):
            raise ValueError(f"token grid {tuple(grid_size)} does not match the index ({tuple(self.grid_size)}); "
                             "use the processor (image size) the index was built with")
        if (proj is None) != (self.proj is None):
            raise ValueError("projections must be given exactly when the segment stores them")
        self.emb.append(emb)
        if self.tok is not None:
            self.tok.append(tok)
            self.mask.append(mask)
        if self.proj is not None:
            self.proj.append(proj)

    def close(self) -> Segment | None:
        """Finish the files and map them as a [`Segment`] (None, files deleted, when no rows)."""
        if self.emb.n == 0:
            self.abort()
            return None
        for w in self._writers:
            w.close()
        paths = {kind: w.path if w is not None else None
                 for kind, w in zip(KINDS, (self.emb, self.tok, self.mask, self.proj))}
        return Segment.open_files(self.emb.n, paths, self.dim, self.token_shape if self.tok else None, self.code_size)

    def abort(self) -> None:
        """Delete the partial files."""
        for w in self._writers:
            w.abort()


# ----------------------------------------------------------------------------- work directories


def pid_alive(pid: int) -> bool:
    """True when a process `pid` exists (or may: no permission to signal it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_in(name: str, prefix: str) -> int | None:
    try:
        return int(name[len(prefix):].split("-", 1)[0])
    except ValueError:
        return None


def remove_stale_work_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Delete `root/zse-index-<pid>-*` directories (default root: the system temp directory) of
    this user whose process is gone (left by a killed build); returns what was removed."""
    root = os.fspath(root) if root is not None else tempfile.gettempdir()
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(WORK_PREFIX):
            continue
        pid = _pid_in(entry.name, WORK_PREFIX)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if pid is None or pid == os.getpid() or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        if not pid_alive(pid):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def new_work_dir(owner, root: str | os.PathLike | None = None) -> Path:
    """A new `zse-index-<pid>-*` directory under `root` (default: the system temp directory),
    removed when `owner` is garbage-collected or at exit; stale ones in `root` are removed first."""
    root = os.fspath(root) if root is not None else tempfile.gettempdir()
    os.makedirs(root, exist_ok=True)
    remove_stale_work_dirs(root)
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=root))
    weakref.finalize(owner, shutil.rmtree, work, True)
    return work
