"""The row store behind an index: per segment (one `build`/`add` call), `[n, D]` float32
[Ret] embeddings, `[n, N, D]` float16 local tokens and `[n, N]` bool masks, each a `.npy`
file streamed once and then memory-mapped read-only."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

_NPY_HEADER = 128  # fixed .npy header length of streamed segment files
KINDS = ("embeddings", "tokens", "mask")


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


class Segment:
    """Rows written by one `build`/`add` call: embeddings `[n, D]` float32, and optionally
    tokens `[n, N, D]` float16 and masks `[n, N]` bool, each a memory-mapped `.npy` file."""

    def __init__(self, n: int, embeddings: Path, tokens: Path | None, mask: Path | None):
        self.n, self.paths = n, {"embeddings": embeddings, "tokens": tokens, "mask": mask}
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, kind: str) -> np.ndarray:
        if kind not in self._arrays:
            path = self.paths[kind]
            if path is None:
                raise ValueError("this index stores no local tokens (built with store_local_tokens=False)")
            arr = np.lib.format.open_memmap(path, mode="r")
            if arr.shape[0] != self.n:
                raise ValueError(f"{path.name} holds {arr.shape[0]} rows, expected {self.n}")
            self._arrays[kind] = arr
        return self._arrays[kind]



class SegmentWriter:
    """Writes one segment's embedding / token / mask files side by side."""

    def __init__(self, folder: Path, dim: int, token_shape, grid_size, index_token_shape=None, index_grid_size=None):
        """Files in `folder` for rows of width `dim` (and tokens `token_shape = (N, D)` unless None);
        `index_*`: what the index already holds (None for a new one), which must match."""
        self.dim, self.token_shape, self.grid_size = dim, index_token_shape or token_shape, index_grid_size or grid_size
        if index_token_shape is not None and token_shape is not None and tuple(token_shape) != tuple(index_token_shape):
            raise ValueError(f"local tokens of shape {tuple(token_shape)} do not match the index ({tuple(index_token_shape)})")
        tag = uuid.uuid4().hex[:12]
        self.emb = NpyWriter(folder / f"embeddings-{tag}.npy", np.float32, (dim,))
        self.tok = self.mask = None
        if token_shape is not None:
            self.tok = NpyWriter(folder / f"tokens-{tag}.npy", np.float16, tuple(token_shape))
            self.mask = NpyWriter(folder / f"mask-{tag}.npy", np.bool_, (token_shape[0],))

    def append(self, emb, tok=None, mask=None, grid_size=None) -> None:
        if grid_size is not None and self.grid_size is not None and tuple(grid_size) != tuple(self.grid_size):
            raise ValueError(f"token grid {tuple(grid_size)} does not match the index ({tuple(self.grid_size)}); "
                             "use the processor (image size) the index was built with")
        self.emb.append(emb)
        if self.tok is not None:
            self.tok.append(tok)
            self.mask.append(mask)

    def close(self) -> Segment | None:
        writers = [w for w in (self.emb, self.tok, self.mask) if w is not None]
        if self.emb.n == 0:
            for w in writers:
                w.abort()
            return None
        for w in writers:
            w.close()
        return Segment(self.emb.n, self.emb.path, self.tok.path if self.tok else None, self.mask.path if self.mask else None)

    def abort(self) -> None:
        for w in (self.emb, self.tok, self.mask):
            if w is not None:
                w.abort()

