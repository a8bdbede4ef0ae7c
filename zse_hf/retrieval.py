"""Two-stage sketch retrieval with faiss: ANN search on [Ret] embeddings, then a
relation-network re-rank of the top K from a memory-mapped token store.

```python
>>> import zse_hf
>>> from transformers import AutoModel, AutoProcessor
>>> from zse_hf.retrieval import ZseIndex
>>> model = AutoModel.from_pretrained("path/to/zse-model").eval()
>>> processor = AutoProcessor.from_pretrained("path/to/zse-model")
>>> index = ZseIndex.build(model, processor, "photos/")      # a folder, or a list of paths/images
>>> index.save("photos.zse-index")
>>> hits = index.search("sketch.png", k=10, rerank_k=50)[0]  # list[Hit], best first
```

A saved index is a directory (format version 1):

    manifest.json            format version, model name and weight hash, sizes, counts, factory,
                             search parameters, size + sha256 of every other file
    index.faiss              the faiss index (inner product); its ids are row numbers
    rows.json                per row: id (null once removed), path, position; skipped items
    embeddings-NNNN.npy      [n, D] float32 [Ret] embeddings (merge, rebuild, exact re-scoring)
    tokens-NNNN.npy          [n, N, D] float16 encoder local tokens (re-ranking), memory-mapped
    mask-NNNN.npy            [n, N] bool token-selection masks

Rows are appended in segments (one per `build`/`add` call); segment files are never modified
after they are written, so saving hard-links them instead of copying when it can. Saving is
atomic: everything is written to a temporary sibling directory that is then renamed over the
target. No pickle is used anywhere.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

try:
    import faiss
except ImportError as _err:  # pragma: no cover
    raise ImportError("zse_hf.retrieval needs faiss: pip install 'zse-sbir[faiss]' (or faiss-gpu)") from _err

from .modeling_zse import ZseImageFeatures

FORMAT_NAME = "zse-sbir-index"
FORMAT_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FLAT_MAX = 50_000  # automatic factory: exact search below this many photos
IVF_SQ_MAX = 5_000_000  # ... IVF + 8-bit scalar quantizer below this, IVF-PQ above
DEFAULT_TRAIN_SIZE = 262_144  # at most this many embeddings train IVF/PQ (64 per list at IVF4096)
_NPY_HEADER = 128  # fixed .npy header length of streamed segment files
_MANIFEST = "manifest.json"
_INDEX_FILE = "index.faiss"
_ROWS_FILE = "rows.json"

# Test hook: called with each file name once it is written during `save` (and with "swap").
_SAVE_FILE_HOOK: Callable[[str], None] | None = None


# ----------------------------------------------------------------------------- public records


@dataclass(frozen=True)
class Hit:
    """One search result.

    Args:
        id: the photo's id (`str` or `int`).
        path: the photo's file path, or None for in-memory images.
        rank: 1 for the best hit.
        ret_score: cosine of the [Ret] embeddings (exact: lossy PQ/SQ indexes are re-scored
            from the stored float32 embeddings).
        relation_score: relation-network score in (0, 1) when the hit was re-ranked, else None.
    """

    id: str | int
    path: str | None
    rank: int
    ret_score: float
    relation_score: float | None = None


@dataclass(frozen=True)
class Skipped:
    """An item that `build`/`add` could not read: its position in the input, id, path and why."""

    position: int
    id: str | int
    path: str | None
    reason: str


# ----------------------------------------------------------------------------- helpers


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All image files (by extension) under `folder`, recursively, in sorted order."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"not a directory: {root}")
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def auto_factory(n: int, dim: int) -> str:
    """The faiss factory string used when none is given, for `n` photos of width `dim`.

    - `n < 50k`: `"Flat"` (exact; 4*dim bytes/photo; removal supported).
    - `n < 5M`: `"IVF{nlist},SQ8"` with `nlist ~ 4 sqrt(n)` (a power of two): 8-bit scalar
      quantizer, ~dim + 16 bytes/photo, removal supported; hits are re-scored exactly from the
      stored embeddings. `nprobe` defaults to nlist/64 (16 below nlist 1024).
    - larger: `"IVF{nlist},PQ{dim/8}"` (~dim/8 + 16 B/photo), re-scored the same way from a 4x
      larger candidate list.

    On clustered synthetic embeddings (dim 384, `benchmarks/bench_retrieval.py`, 2 busy CPU
    cores) IVF4096,SQ8 at 1M photos gave recall@100 0.989 at 4 ms/query, 398 B/photo, built in
    3.5 min; HNSW32 took 8 min to build and reached only 0.84 at efSearch 256; IVF4096,PQ32
    (47 B/photo) 0.92 with 8x refinement at 12 ms. HNSW also cannot remove photos; pass
    `index_factory="HNSW32"` to use it anyway.
    """
    if n < FLAT_MAX:
        return "Flat"
    nlist = _ivf_lists(n)
    if n < IVF_SQ_MAX:
        return f"IVF{nlist},SQ8"
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return f"IVF{nlist},PQ{m}"


def _ivf_lists(n: int) -> int:
    return int(min(65536, max(64, 2 ** round(np.log2(4 * np.sqrt(max(n, 1)))))))


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the model's `state_dict` (names, shapes, and values cast to float32 for
    floating tensors), so the same weights hash the same whatever their dtype or device."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        if t.is_floating_point():
            t = t.float()
        h.update(f"{name}|{list(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _model_name(model) -> str | None:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name:
        return None
    p = Path(name)
    return str(p.resolve()) if p.exists() else str(name)


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


def _json_id(value) -> str | int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"ids must be str or int, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"ids must be str or int, got {type(value).__name__}")


def _image_processor(processor):
    """The object whose `__call__(images, modality=...)` gives `pixel_values`."""
    return getattr(processor, "image_processor", processor)


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


class _NpyWriter:
    """Streams rows `[*, *row_shape]` of one dtype into a `.npy` file whose row count is only
    known at the end: a fixed 128-byte header is reserved and filled in by `close`."""

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...]):
        self.path, self.dtype, self.row_shape, self.n = path, np.dtype(dtype), tuple(row_shape), 0
        self.file = open(path, "wb")
        self.file.write(b"\0" * _NPY_HEADER)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"row shape {rows.shape[1:]} != {self.row_shape}")
        self.file.write(rows.tobytes())
        self.n += rows.shape[0]

    def close(self) -> None:
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
        self.file.close()
        self.path.unlink(missing_ok=True)


class _Segment:
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


# ----------------------------------------------------------------------------- faiss helpers


def _new_faiss_index(factory: str, dim: int):
    """A faiss index for `factory` with inner-product metric that accepts `add_with_ids`:
    IVF indexes keep their own ids, everything else is wrapped in `IDMap2`."""
    try:
        base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(f"invalid faiss index factory string {factory!r}: {str(err).splitlines()[-1]}") from None
    if faiss.try_extract_index_ivf(base) is None and not isinstance(base, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        base = faiss.index_factory(dim, "IDMap2," + factory, faiss.METRIC_INNER_PRODUCT)
    core = _core(base)
    if isinstance(core, (faiss.IndexIVFPQ, faiss.IndexPQ)):
        core.do_polysemous_training = False  # slow, and only serves Hamming-filtered search
    return base


def _core(index):
    """The innermost index under IDMap / PreTransform / Refine wrappers."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform, faiss.IndexRefine)):
        index = faiss.downcast_index(index.base_index if isinstance(index, faiss.IndexRefine) else index.index)
    return index


def _is_exact(index) -> bool:
    """True when the index stores full float vectors (its scores are exact cosines)."""
    return isinstance(_core(index), (faiss.IndexFlat, faiss.IndexHNSWFlat, faiss.IndexIVFFlat))


def _default_search_params(index) -> dict:
    core = _core(index)
    params: dict[str, Any] = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        params["nprobe"] = max(1, min(ivf.nlist, ivf.nlist // 64 if ivf.nlist >= 1024 else 16))
    if isinstance(core, faiss.IndexHNSW):
        params["efSearch"] = 128
    if not _is_exact(index):
        params["refine"] = 4 if isinstance(core, (faiss.IndexPQ, faiss.IndexIVFPQ)) else 1
    return params


# ----------------------------------------------------------------------------- the index


class ZseIndex:
    """A gallery of photos searchable by sketches: faiss over [Ret] embeddings plus a
    memory-mapped store of encoder local tokens for relation-network re-ranking.

    Build with [`ZseIndex.build`] (or [`ZseIndex.from_features`] for precomputed features),
    grow with [`add`], shrink with [`remove`], query with [`search`], persist with
    [`save`] / [`ZseIndex.load`], and combine shards with [`ZseIndex.merge`].

    Attributes:
        model, processor: used to encode sketches (and photos on `add`); may be None after
            `load` without a model (then only `ann_search` works).
        factory: the resolved faiss factory string; `index_factory` the one asked for (None = auto).
        search_params: `{"nprobe", "efSearch", "refine"}` defaults used by `search`.
        skipped: list of [`Skipped`] items that could not be read.
        dim: embedding width D; `token_shape`: `(N, D)`; `grid_size`: `(h, w)` of the tokens.
    """

    def __init__(self, model=None, processor=None, *, index_factory: str | None = None, store_local_tokens: bool = True,
                 use_gpu: bool | None = None, work_dir: str | os.PathLike | None = None, train_size: int = DEFAULT_TRAIN_SIZE):
        """An empty index; usually made by `build`, `from_features`, `load` or `merge`."""
        self.model = model
        self.processor = processor if processor is not None or model is None else _default_processor(model)
        self.index_factory = index_factory
        self.factory: str | None = None
        self.store_local_tokens = store_local_tokens
        self.use_gpu = use_gpu
        self.train_size = int(train_size)
        self.search_params: dict[str, Any] = {}
        self.skipped: list[Skipped] = []
        self.dim: int | None = None
        self.token_shape: tuple[int, int] | None = None
        self.grid_size: tuple[int, int] | None = None
        self.model_info = {"name_or_path": _model_name(model), "sha256": model_fingerprint(model)} if model is not None else None
        self.shard: dict | None = None
        self._index = None  # CPU faiss index, ids = row numbers
        self._gpu = None  # (resources, gpu index) cache
        self._segments: list[_Segment] = []
        self._starts = np.zeros(1, dtype=np.int64)  # row offset of each segment, plus the end
        self._ids: list[str | int | None] = []
        self._paths: list[str | None] = []
        self._positions: list[int] = []
        self._row_of: dict[str | int, int] = {}
        self._work_root = work_dir
        self._work: Path | None = None

    # ------------------------------------------------------------------ basic views

    def __len__(self) -> int:
        """Number of photos that can be found (removed ones excluded)."""
        return len(self._row_of)

    def __repr__(self) -> str:
        return (f"ZseIndex({len(self)} photos, factory={self.factory!r}, dim={self.dim}, "
                f"tokens={'yes' if self.store_local_tokens else 'no'}, skipped={len(self.skipped)})")

    @property
    def ids(self) -> list[str | int]:
        """Ids of the searchable photos, in row order."""
        return [i for i in self._ids if i is not None]

    @property
    def paths(self) -> list[str | None]:
        """Paths of the searchable photos, in row order (None for in-memory images)."""
        return [p for i, p in zip(self._ids, self._paths) if i is not None]

    @property
    def num_rows(self) -> int:
        """Rows stored, removed ones included."""
        return int(self._starts[-1])

    @property
    def faiss_index(self):
        """The CPU faiss index (inner product; its ids are row numbers)."""
        return self._index

    def rows_of(self, ids: Iterable[str | int]) -> np.ndarray:
        """Row numbers `[M]` int64 of the given photo ids (KeyError for unknown ids)."""
        ids = [_json_id(i) for i in ids]
        missing = [i for i in ids if i not in self._row_of]
        if missing:
            raise KeyError(f"unknown ids: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return np.asarray([self._row_of[i] for i in ids], dtype=np.int64)

    def embeddings(self, ids: Iterable[str | int] | None = None) -> np.ndarray:
        """[Ret] embeddings `[M, D]` float32 of `ids` (default: all searchable photos, row order)."""
        rows = self.rows_of(ids) if ids is not None else self._live_rows()
        return self._gather("embeddings", rows)

    def local_tokens(self, ids: Iterable[str | int]) -> ZseImageFeatures:
        """Stored features of `ids`: `local_tokens [M, N, D]` float16, `token_mask [M, N]`, `grid_size`."""
        rows = self.rows_of(ids)
        return ZseImageFeatures(local_tokens=torch.from_numpy(self._gather("tokens", rows)),
                                token_mask=torch.from_numpy(self._gather("mask", rows)), grid_size=self.grid_size)

    def _live_rows(self) -> np.ndarray:
        return np.fromiter((r for r, i in enumerate(self._ids) if i is not None), dtype=np.int64)

    def _gather(self, kind: str, rows: np.ndarray) -> np.ndarray:
        """Rows `[M]` of one stored array, reading only those rows from the memory maps."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.dim is None:
            raise ValueError("the index is empty")
        shape = {"embeddings": (self.dim,), "tokens": self.token_shape, "mask": self.token_shape[:1] if self.token_shape else None}[kind]
        if kind != "embeddings" and not self.store_local_tokens:
            raise ValueError("this index stores no local tokens (built with store_local_tokens=False); re-ranking needs them")
        dtype = {"embeddings": np.float32, "tokens": np.float16, "mask": np.bool_}[kind]
        out = np.empty((len(rows), *shape), dtype=dtype)
        if len(rows) == 0:
            return out
        seg_of = np.searchsorted(self._starts, rows, side="right") - 1
        for s in np.unique(seg_of):
            sel = np.flatnonzero(seg_of == s)
            local = rows[sel] - self._starts[s]
            order = np.argsort(local, kind="stable")
            out[sel[order]] = self._segments[s].array(kind)[local[order]]
        return out

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, model, processor, images_or_paths, ids: Sequence | None = None, index_factory: str | None = None,
              store_local_tokens: bool = True, batch_size: int = 32, device: str | torch.device | None = None,
              shard: tuple[int, int] | None = None, num_workers: int = 0, progress: bool = True,
              use_gpu: bool | None = None, work_dir: str | os.PathLike | None = None,
              train_size: int = DEFAULT_TRAIN_SIZE) -> "ZseIndex":
        """Encode a gallery and index it.

        Args:
            model: a [`ZseModel`] (its encoder gives `ret_embeds [B, D]` and `local_tokens [B, N, D]`).
            processor: a `ZseProcessor` or `ZseImageProcessor` (photos are processed with
                `modality="photo"`); None derives one from `model.config`.
            images_or_paths: a folder (all images under it, sorted; ids default to paths relative
                to it), or a list of file paths, PIL images, arrays or tensors.
            ids: one id (str or int) per input item; default: the path for file inputs, the
                position in the list otherwise. Must be unique.
            index_factory: any faiss factory string (`"Flat"`, `"HNSW32"`, `"IVF4096,PQ32"`, ...),
                used with inner product; None picks one by gallery size ([`auto_factory`]).
                IVF/PQ indexes are trained on (up to `train_size`) embeddings of this build.
            store_local_tokens: keep each photo's local tokens (fp16) for re-ranking.
            batch_size: images encoded per forward pass.
            device: where to run the model (it is moved there); default: where it is.
            shard: `(i, n)` to embed only items `i, i+n, i+2n, ...` (see [`ZseIndex.merge`]).
            num_workers: threads decoding images ahead of the model (0: inline).
            progress: show a tqdm progress bar.
            use_gpu: search on a GPU when faiss has one (None: when available).
            work_dir: where unsaved segment files go (default: a new temporary directory).

        Unreadable items are skipped with a warning and listed in `index.skipped`.
        """
        index = cls(model, processor, index_factory=index_factory, store_local_tokens=store_local_tokens,
                    use_gpu=use_gpu, work_dir=work_dir, train_size=train_size)
        index.add(images_or_paths, ids=ids, batch_size=batch_size, device=device, shard=shard,
                  num_workers=num_workers, progress=progress)
        return index

    @classmethod
    def from_features(cls, ret_embeds, local_tokens=None, token_mask=None, grid_size=None, ids: Sequence | None = None,
                      paths: Sequence | None = None, model=None, processor=None, index_factory: str | None = None,
                      use_gpu: bool | None = None, work_dir: str | os.PathLike | None = None,
                      train_size: int = DEFAULT_TRAIN_SIZE) -> "ZseIndex":
        """An index over precomputed features.

        Args:
            ret_embeds: `[M, D]` L2-normalised [Ret] embeddings (array or tensor).
            local_tokens: `[M, N, D]` encoder local tokens (stored as float16), or None.
            token_mask: `[M, N]` bool (default all True); grid_size: `(h, w)` with `h * w = N`.
            ids, paths: per row (default ids `0..M-1`).
            model, processor: attached for `search` (sketch encoding and re-ranking).
        """
        index = cls(model, processor, index_factory=index_factory, store_local_tokens=local_tokens is not None,
                    use_gpu=use_gpu, work_dir=work_dir, train_size=train_size)
        emb = np.asarray(ret_embeds.detach().cpu() if isinstance(ret_embeds, torch.Tensor) else ret_embeds, dtype=np.float32)
        m = emb.shape[0]
        ids = list(range(m)) if ids is None else [_json_id(i) for i in ids]
        paths = [None] * m if paths is None else [None if p is None else os.fspath(p) for p in paths]
        if len(ids) != m or len(paths) != m:
            raise ValueError(f"{m} embeddings but {len(ids)} ids and {len(paths)} paths")
        writer = index._open_segment(emb.shape[1], None if local_tokens is None else tuple(local_tokens.shape[1:]),
                                     grid_size)
        try:
            for s in range(0, m, 4096):
                tok = mask = None
                if local_tokens is not None:
                    tok = local_tokens[s:s + 4096]
                    tok = tok.detach().cpu().float().numpy() if isinstance(tok, torch.Tensor) else np.asarray(tok)
                    mask = (np.ones(tok.shape[:2], dtype=bool) if token_mask is None else
                            np.asarray(token_mask[s:s + 4096].cpu() if isinstance(token_mask, torch.Tensor) else token_mask[s:s + 4096]))
                writer.append(emb[s:s + 4096], tok, mask)
        except BaseException:
            writer.abort()
            raise
        index._commit_segment(writer, ids, paths, list(range(m)))
        return index

    def add(self, images_or_paths, ids: Sequence | None = None, batch_size: int = 32,
            device: str | torch.device | None = None, shard: tuple[int, int] | None = None, num_workers: int = 0,
            progress: bool = True) -> list[Skipped]:
        """Encode more photos and add them (same arguments as [`build`]); returns the items skipped
        by this call (also appended to `self.skipped`). An untrained IVF/PQ index is trained on
        this batch first."""
        if self.model is None:
            raise ValueError("no model attached: pass model= to ZseIndex.load or call attach_model() first")
        items, item_ids, item_paths = _resolve_items(images_or_paths, ids)
        base = max(self._positions, default=-1) + 1 if self.num_rows else 0
        if shard is not None:
            i, n = _check_shard(shard)
            if self.num_rows:
                raise ValueError("shard= is only supported when building a new index")
            self.shard = {"index": i, "count": n, "total_items": len(items),
                          "items_sha256": hashlib.sha256(json.dumps(item_ids).encode()).hexdigest()}
            selected = range(i, len(items), n)
        else:
            selected = range(len(items))
        dup = [item_ids[p] for p in selected if item_ids[p] in self._row_of]
        if dup:
            raise ValueError(f"ids already in the index: {dup[:5]}")
        skipped = self._encode(items, item_ids, item_paths, list(selected), base, batch_size, device, num_workers, progress)
        if skipped:
            shown = "; ".join(f"{s.path or s.id}: {s.reason}" for s in skipped[:3])
            warnings.warn(f"skipped {len(skipped)} unreadable item(s) of {len(selected)}: {shown}"
                          f"{' ...' if len(skipped) > 3 else ''} (see index.skipped)", stacklevel=2)
        self.skipped.extend(skipped)
        return skipped

    def _encode(self, items, item_ids, item_paths, selected, base, batch_size, device, num_workers, progress):
        from tqdm.auto import tqdm

        model = self.model
        if device is not None:
            model.to(device)
        dev, dtype = _model_device_dtype(model)
        ip = _image_processor(self.processor)
        skipped: list[Skipped] = []

        def load(p):
            try:
                return ip([items[p]], modality="photo", return_tensors="pt")["pixel_values"]
            except (ValueError, TypeError, OSError) as err:
                return err

        batches = [selected[s:s + batch_size] for s in range(0, len(selected), batch_size)]
        pool = concurrent.futures.ThreadPoolExecutor(num_workers) if num_workers > 0 else None
        submit = (lambda b: [pool.submit(load, p) for p in b]) if pool else (lambda b: b)
        fetch = (lambda f: f.result()) if pool else load
        writer = None
        ok_ids, ok_paths, ok_pos = [], [], []
        was_training = model.training
        model.eval()
        try:
            pending = submit(batches[0]) if batches else None
            with tqdm(total=len(selected), desc="indexing photos", unit="img", disable=not progress) as bar, torch.inference_mode():
                for b, batch in enumerate(batches):
                    loaded = [fetch(x) for x in pending]
                    if b + 1 < len(batches):
                        pending = submit(batches[b + 1])
                    pixels, kept = [], []
                    for p, out in zip(batch, loaded):
                        if isinstance(out, Exception):
                            skipped.append(Skipped(base + p, item_ids[p], item_paths[p], str(out)))
                        else:
                            pixels.append(out)
                            kept.append(p)
                    if pixels:
                        feats = model.get_image_features(torch.cat(pixels).to(dev, dtype))
                        if writer is None:
                            writer = self._open_segment(feats.ret_embeds.shape[1], tuple(feats.local_tokens.shape[1:]),
                                                        feats.grid_size)
                        tok = mask = None
                        if self.store_local_tokens:
                            tok = feats.local_tokens.float().clamp(-65504, 65504).cpu().numpy()
                            mask = feats.token_mask.cpu().numpy()
                        writer.append(feats.ret_embeds.float().cpu().numpy(), tok, mask, grid_size=feats.grid_size)
                        ok_ids += [item_ids[p] for p in kept]
                        ok_paths += [item_paths[p] for p in kept]
                        ok_pos += [base + p for p in kept]
                    bar.update(len(batch))
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            model.train(was_training)
            if pool:
                pool.shutdown(cancel_futures=True)
        if writer is not None:
            self._commit_segment(writer, ok_ids, ok_paths, ok_pos)
        return skipped

    def _work_dir(self) -> Path:
        if self._work is None:
            root = None if self._work_root is None else os.fspath(self._work_root)
            if root is not None:
                os.makedirs(root, exist_ok=True)
            self._work = Path(tempfile.mkdtemp(prefix="zse-index-", dir=root))
            weakref.finalize(self, shutil.rmtree, self._work, True)
        return self._work

    def _open_segment(self, dim: int, token_shape, grid_size) -> "_SegmentWriter":
        if self.dim is not None and dim != self.dim:
            raise ValueError(f"embedding width {dim} does not match the index ({self.dim})")
        return _SegmentWriter(self, self._work_dir(), dim, token_shape if self.store_local_tokens else None, grid_size)

    def _commit_segment(self, writer: "_SegmentWriter", ids, paths, positions) -> None:
        """Register a finished segment and add its rows to faiss (training it first if needed)."""
        seg = writer.close()
        if seg is None:
            return
        if len(ids) != seg.n or len(set(ids)) != len(ids) or any(i in self._row_of for i in ids):
            raise ValueError("ids must be unique (within the batch and against the index)")
        if self.dim is None:
            self.dim, self.grid_size = writer.dim, writer.grid_size
            self.token_shape = writer.token_shape
        start, had_index = self.num_rows, self._index is not None
        self._segments.append(seg)
        self._starts = np.append(self._starts, start + seg.n)
        for r, i in enumerate(ids):
            self._row_of[i] = start + r
        self._ids += list(ids)
        self._paths += list(paths)
        self._positions += [int(p) for p in positions]
        try:
            self._add_rows_to_faiss(np.arange(start, start + seg.n, dtype=np.int64))
        except BaseException:  # roll back, so the index stays consistent
            del self._segments[-1], self._ids[start:], self._paths[start:], self._positions[start:]
            self._starts = self._starts[:-1]
            for i in ids:
                self._row_of.pop(i, None)
            if not had_index:
                self._index, self.factory, self.search_params = None, None, {}
            raise

    def _add_rows_to_faiss(self, rows: np.ndarray) -> None:
        if self._index is None:
            self.factory = self.index_factory or auto_factory(len(rows), self.dim)
            self._index = _new_faiss_index(self.factory, self.dim)
        if not self._index.is_trained:
            self._train(rows)
        for s in range(0, len(rows), 65536):
            chunk = rows[s:s + 65536]
            self._index.add_with_ids(np.ascontiguousarray(self._gather("embeddings", chunk)), chunk)
        self._gpu = None
        if not self.search_params:
            self.search_params = _default_search_params(self._index)

    def _train(self, rows: np.ndarray) -> None:
        if len(rows) > self.train_size:
            rows = np.sort(np.random.default_rng(0).choice(rows, self.train_size, replace=False))
        x = np.ascontiguousarray(self._gather("embeddings", rows))
        try:
            self._index.train(x)
        except RuntimeError as err:
            raise ValueError(
                f"cannot train faiss index {self.factory!r} on {len(x)} embeddings: {str(err).splitlines()[-1]}. "
                "IVF needs at least nlist and 8-bit PQ at least 256 training vectors; use 'Flat' for small galleries"
            ) from None

    def rebuild(self, index_factory: str | None = None, train_size: int | None = None) -> "ZseIndex":
        """Rebuild the faiss index from the stored embeddings of the searchable photos, e.g. with
        another factory (None: automatic for the current size); tokens are kept. Returns self."""
        if train_size is not None:
            self.train_size = int(train_size)
        self.index_factory = index_factory
        self._index, self._gpu, self.search_params = None, None, {}
        rows = self._live_rows()
        if len(rows):
            self._add_rows_to_faiss(rows)
        return self

    def remove(self, ids: Iterable[str | int], rebuild: bool = False) -> int:
        """Remove photos by id; returns how many were removed. Flat and IVF indexes remove in
        place; others (e.g. HNSW) raise NotImplementedError unless `rebuild=True`, which
        rebuilds the faiss index from the remaining stored embeddings."""
        rows = self.rows_of(ids)
        if len(rows) == 0:
            return 0
        try:
            self._index.remove_ids(faiss.IDSelectorBatch(rows))
        except RuntimeError:
            if not rebuild:
                raise NotImplementedError(
                    f"faiss cannot remove from a {self.factory!r} index; call remove(ids, rebuild=True) to rebuild "
                    "it from the stored embeddings, or use a Flat or IVF factory") from None
            self._forget(rows)
            self.rebuild(self.index_factory)
            return len(rows)
        self._forget(rows)
        self._gpu = None
        return len(rows)

    def _forget(self, rows: np.ndarray) -> None:
        for r in rows.tolist():
            self._row_of.pop(self._ids[r], None)
            self._ids[r] = None

    def attach_model(self, model, processor=None) -> "ZseIndex":
        """Use `model` (and `processor`, default derived from its config) for searching; raises
        ValueError when its weights differ from the model the index was built with."""
        _check_model(self.model_info, model)
        self.model = model
        self.processor = processor if processor is not None else _default_processor(model)
        if self.model_info is None:
            self.model_info = {"name_or_path": _model_name(model), "sha256": model_fingerprint(model)}
        return self

    # ------------------------------------------------------------------ searching

    def _search_index(self):
        want = self.use_gpu if self.use_gpu is not None else faiss.get_num_gpus() > 0
        if not want:
            return self._index, False
        if self._gpu is None:
            if faiss.get_num_gpus() == 0 or not hasattr(faiss, "StandardGpuResources"):
                if self.use_gpu:
                    raise ValueError("use_gpu=True but faiss sees no GPU (install faiss-gpu)")
                return self._index, False
            try:
                res = faiss.StandardGpuResources()
                self._gpu = (res, faiss.index_cpu_to_gpu(res, 0, self._index))
            except (RuntimeError, AttributeError) as err:
                warnings.warn(f"faiss cannot move a {self.factory!r} index to the GPU ({err}); searching on CPU")
                self.use_gpu = False
                return self._index, False
        return self._gpu[1], True

    def ann_search(self, query_embeds, k: int, search_params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate nearest neighbours of `query_embeds [Q, D]` (L2-normalised).

        Returns: `scores [Q, k']` float32 cosines (exact, re-scored from the stored embeddings
        for lossy indexes) and `rows [Q, k']` int64 row numbers, best first, `k' = min(k, len(self))`;
        `-1` rows (score `-inf`) pad queries an approximate index found fewer results for.
        """
        if self._index is None or len(self) == 0:
            raise ValueError("the index is empty: build it or add photos before searching")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = query_embeds.detach().float().cpu().numpy() if isinstance(query_embeds, torch.Tensor) else query_embeds
        q = np.ascontiguousarray(q, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query embeddings must have shape [Q, {self.dim}], got {list(q.shape)}")
        params = {**self.search_params, **(search_params or {})}
        k = min(k, len(self))
        exact = _is_exact(self._index)
        fetch = k if exact else min(len(self), k * max(1, int(params.get("refine", 1))))
        index, on_gpu = self._search_index()
        self._set_params(index, on_gpu, params, fetch)
        scores, rows = index.search(q, fetch)
        if not exact:
            scores, rows = self._rescore(q, rows, k)
        return scores, rows

    def _set_params(self, index, on_gpu: bool, params: dict, k: int) -> None:
        if "nprobe" in params:
            if on_gpu:
                faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", int(params["nprobe"]))
            else:
                faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
        core = _core(index)
        if isinstance(core, faiss.IndexHNSW):
            core.hnsw.efSearch = max(int(params.get("efSearch", 128)), k)

    def _rescore(self, q: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosines of the candidates from the stored embeddings; keep the best `k` per query."""
        valid = rows >= 0
        emb = self._gather("embeddings", rows[valid])
        scores = np.full(rows.shape, -np.inf, dtype=np.float32)
        scores[valid] = np.einsum("md,md->m", emb, np.repeat(q, valid.sum(1), axis=0))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)

    def rerank_rows(self, query_features: ZseImageFeatures, rows, batch_size: int = 64,
                    autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Relation scores `[Q, K]` of each query against its own candidates.

        Args:
            query_features: features of Q sketches (`local_tokens [Q, N, D]`, `token_mask`, `grid_size`).
            rows: `[Q, K]` candidate row numbers (e.g. from `ann_search`); `-1` gives NaN.
            batch_size: (query, candidate) pairs per `model.relation_score` call.
            autocast_dtype: e.g. `torch.bfloat16` to run the head under `torch.autocast` (faster
                on CPUs with AMX and on GPUs; scores differ by ~1e-3).

        Candidate tokens are read from the memory-mapped store (only the needed rows).
        """
        if self.model is None:
            raise ValueError("re-ranking needs the model: pass model= to ZseIndex.load or call attach_model()")
        rows = np.asarray(rows, dtype=np.int64)
        q_n, k_n = rows.shape
        dev, dtype = _model_device_dtype(self.model)
        flat = rows.reshape(-1)
        valid = np.flatnonzero(flat >= 0)
        uniq, inverse = np.unique(flat[valid], return_inverse=True)
        tokens = torch.from_numpy(self._gather("tokens", uniq))
        masks = torch.from_numpy(self._gather("mask", uniq))
        q_of = torch.from_numpy(valid // k_n)
        out = torch.full((q_n * k_n,), float("nan"))
        q_tok, q_mask = query_features.local_tokens, query_features.token_mask
        if q_mask is None:
            q_mask = torch.ones(q_tok.shape[:2], dtype=torch.bool, device=q_tok.device)
        ctx = torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), ctx:
                for s in range(0, len(valid), batch_size):
                    qi = q_of[s:s + batch_size].to(q_tok.device)
                    ci = torch.from_numpy(inverse[s:s + batch_size])
                    sketch = ZseImageFeatures(local_tokens=q_tok[qi].to(dev, dtype), token_mask=q_mask[qi].to(dev),
                                              grid_size=query_features.grid_size)
                    photo = ZseImageFeatures(local_tokens=tokens[ci].to(dev, dtype), token_mask=masks[ci].to(dev),
                                             grid_size=self.grid_size)
                    out[torch.from_numpy(valid[s:s + batch_size])] = self.model.relation_score(sketch, photo).float().cpu()
        finally:
            self.model.train(was_training)
        return out.view(q_n, k_n)

    def encode_sketches(self, sketches, batch_size: int = 32) -> ZseImageFeatures:
        """Encode sketches (one or a list of paths/images) into features: `ret_embeds [Q, D]`,
        `local_tokens [Q, N, D]`, `token_mask [Q, N]`, `grid_size`."""
        if self.model is None:
            raise ValueError("no model attached: pass model= to ZseIndex.load or call attach_model() first")
        items = list(sketches) if isinstance(sketches, (list, tuple)) else [sketches]
        if not items:
            raise ValueError("no sketches given")
        ip = _image_processor(self.processor)
        dev, dtype = _model_device_dtype(self.model)
        parts = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for s in range(0, len(items), batch_size):
                    pixels = ip(items[s:s + batch_size], modality="sketch", return_tensors="pt")["pixel_values"]
                    parts.append(self.model.get_image_features(pixels.to(dev, dtype)))
        finally:
            self.model.train(was_training)
        return ZseImageFeatures(ret_embeds=torch.cat([p.ret_embeds for p in parts]).float(),
                                local_tokens=torch.cat([p.local_tokens for p in parts]),
                                token_mask=torch.cat([p.token_mask for p in parts]), grid_size=parts[0].grid_size)

    def search(self, sketches, k: int = 10, rerank_k: int | None = None, batch_size: int = 32,
               search_params: dict | None = None, autocast_dtype: torch.dtype | None = None) -> list[list[Hit]]:
        """Find the photos that match each sketch.

        Args:
            sketches: one sketch or a list (paths, PIL images, arrays, tensors), or precomputed
                `ZseImageFeatures` of Q sketches.
            k: hits per sketch (all photos when the gallery is smaller).
            rerank_k: re-rank the best `rerank_k` [Ret] candidates with the relation network
                (needs stored tokens); the hits then come in relation-score order, followed by
                any further [Ret] candidates when `k > rerank_k`.
            batch_size: sketches encoded per forward pass.
            search_params: overrides of `self.search_params` (`nprobe`, `efSearch`, `refine`).
            autocast_dtype: see [`rerank_rows`].

        Returns: one list of [`Hit`] per sketch, best first.
        """
        if self._index is None or len(self) == 0:
            raise ValueError("the index is empty: build it or add photos before searching")
        feats = sketches if isinstance(sketches, ZseImageFeatures) else self.encode_sketches(sketches, batch_size)
        rerank = int(rerank_k) if rerank_k else 0
        scores, rows = self.ann_search(feats.ret_embeds, max(k, rerank), search_params)
        rel = None
        if rerank:
            head = rows[:, :rerank]
            rel = self.rerank_rows(feats, head, autocast_dtype=autocast_dtype).numpy()
        results = []
        for qi in range(rows.shape[0]):
            order = list(range(rows.shape[1]))
            if rel is not None:
                n_head = rel.shape[1]
                head_order = sorted(range(n_head), key=lambda j: (-np.nan_to_num(rel[qi, j], nan=-1.0), j))
                order = head_order + order[n_head:]
            hits = []
            for j in order:
                r = int(rows[qi, j])
                if r < 0:
                    continue
                score = float(rel[qi, j]) if rel is not None and j < rel.shape[1] else None
                hits.append(Hit(self._ids[r], self._paths[r], len(hits) + 1, float(scores[qi, j]), score))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index to `directory` atomically (temporary sibling directory, then rename;
        an existing index there is replaced only once the new one is complete). Returns the path."""
        if self._index is None:
            raise ValueError("nothing to save: the index is empty")
        target = Path(directory).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        _recover_interrupted(target)
        _clean_stale(target)
        if target.exists() and not (target / _MANIFEST).exists() and any(target.iterdir()):
            raise ValueError(f"refusing to replace {target}: it exists and is not a ZseIndex directory")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
        try:
            files = []
            faiss.write_index(self._index, str(tmp / _INDEX_FILE))
            files.append(_written(tmp, _INDEX_FILE))
            rows = {"ids": self._ids, "paths": self._paths, "positions": self._positions,
                    "skipped": [asdict(s) for s in self.skipped]}
            (tmp / _ROWS_FILE).write_text(json.dumps(rows))
            files.append(_written(tmp, _ROWS_FILE))
            segments = []
            for n, seg in enumerate(self._segments):
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
            manifest = self._manifest(segments, {name: {"bytes": (tmp / name).stat().st_size,
                                                        "sha256": _sha256_file(tmp / name)} for name in files})
            (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2))
            _written(tmp, _MANIFEST)
            _fsync(tmp)
            _swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def _manifest(self, segments, files) -> dict:
        from . import __version__

        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "zse_hf_version": __version__,
            "faiss_version": getattr(faiss, "__version__", None),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": self.model_info,
            "embedding_dim": self.dim,
            "metric": "inner_product",
            "index_factory": self.index_factory,
            "factory": self.factory,
            "search_params": self.search_params,
            "tokens": {"stored": self.store_local_tokens, "shape": list(self.token_shape) if self.token_shape else None,
                       "grid_size": list(self.grid_size) if self.grid_size else None, "dtype": "float16"},
            "train_size": self.train_size,
            "counts": {"rows": self.num_rows, "photos": len(self), "removed": self.num_rows - len(self),
                       "skipped": len(self.skipped)},
            "shard": self.shard,
            "segments": segments,
            "files": files,
        }

    @classmethod
    def load(cls, directory: str | os.PathLike, model=None, processor=None, verify: bool = True,
             use_gpu: bool | None = None) -> "ZseIndex":
        """Load an index saved by [`save`].

        Args:
            directory: the index directory.
            model: the model it was built with (checked by weight hash), needed to search with
                sketches; None loads it without one (see [`attach_model`]).
            processor: default: derived from `model.config`.
            verify: check every file's sha256 (sizes are always checked).

        Raises:
            ValueError: a newer format version, a missing, truncated or modified file, or a
                model whose weights differ from the recorded ones.
        """
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
            _check_model(manifest["model"], model)
        index = cls(None, None, index_factory=manifest["index_factory"], store_local_tokens=manifest["tokens"]["stored"],
                    use_gpu=use_gpu, train_size=manifest.get("train_size", DEFAULT_TRAIN_SIZE))
        index.model, index.model_info = model, manifest["model"]
        index.processor = processor if processor is not None or model is None else _default_processor(model)
        index.factory, index.search_params, index.dim = manifest["factory"], manifest["search_params"], manifest["embedding_dim"]
        tokens = manifest["tokens"]
        index.token_shape = tuple(tokens["shape"]) if tokens["shape"] else None
        index.grid_size = tuple(tokens["grid_size"]) if tokens["grid_size"] else None
        index.shard = manifest["shard"]
        index._index = faiss.read_index(str(root / _INDEX_FILE))
        rows = json.loads((root / _ROWS_FILE).read_text())
        index._ids, index._paths, index._positions = rows["ids"], rows["paths"], rows["positions"]
        index.skipped = [Skipped(**s) for s in rows["skipped"]]
        index._row_of = {i: r for r, i in enumerate(index._ids) if i is not None}
        for seg in manifest["segments"]:
            paths = {k: (root / seg[k]) if seg.get(k) else None for k in ("embeddings", "tokens", "mask")}
            index._segments.append(_Segment(seg["rows"], paths["embeddings"], paths["tokens"], paths["mask"]))
        index._starts = np.concatenate([[0], np.cumsum([s.n for s in index._segments], dtype=np.int64)]).astype(np.int64)
        if index._index.ntotal != len(index) or index.num_rows != len(index._ids):
            raise ValueError(f"inconsistent index in {root}: faiss holds {index._index.ntotal} vectors, "
                             f"rows.json {len(index)} photos in {len(index._ids)} rows, segments {index.num_rows} rows")
        return index

    # ------------------------------------------------------------------ sharding

    @classmethod
    def merge(cls, directories: Sequence[str | os.PathLike], model=None, index_factory: str | None = "same",
              verify: bool = True, work_dir: str | os.PathLike | None = None) -> "ZseIndex":
        """Merge saved indexes (typically the shards of one `build(..., shard=(i, n))` run) into
        one in-memory index (call `save` on it).

        Shards of one run are put back in input order (so the result equals an unsharded build)
        after checking that all `n` shards of the same item list are there; other indexes are
        concatenated. All inputs must come from the same model and store the same features.
        `index_factory="same"` reuses the inputs' requested factory (automatic ones are
        re-chosen for the merged size); the faiss index is rebuilt (and retrained) from the
        stored embeddings.
        """
        if not directories:
            raise ValueError("no indexes to merge")
        parts = [cls.load(d, model=model, verify=verify) for d in directories]
        first = parts[0]
        for d, p in zip(directories, parts):
            if (p.model_info or {}).get("sha256") != (first.model_info or {}).get("sha256"):
                raise ValueError(f"{d} was built with a different model than {directories[0]}")
            if (p.dim, p.token_shape, p.grid_size, p.store_local_tokens) != (first.dim, first.token_shape, first.grid_size, first.store_local_tokens):
                raise ValueError(f"{d} stores features of another shape than {directories[0]}")
        factories = {p.index_factory for p in parts}
        if index_factory == "same":
            if len(factories) > 1:
                raise ValueError(f"the inputs use different factories {sorted(map(str, factories))}; pass index_factory=")
            index_factory = factories.pop()
        shards = [p.shard for p in parts]
        entries = [(pi, r) for pi, p in enumerate(parts) for r in p._live_rows().tolist()]
        if all(shards):
            _check_shard_set(shards, directories)
            entries.sort(key=lambda e: parts[e[0]]._positions[e[1]])
        elif any(shards):
            raise ValueError("cannot merge shards with non-sharded indexes")
        merged = cls(None, None, index_factory=index_factory, store_local_tokens=first.store_local_tokens,
                     work_dir=work_dir, train_size=first.train_size)
        merged.model, merged.model_info = model, first.model_info
        merged.processor = _default_processor(model) if model is not None else None
        for p in parts:
            merged.skipped.extend(p.skipped)
        ids = [parts[pi]._ids[r] for pi, r in entries]
        if len(set(ids)) != len(ids):
            raise ValueError("the indexes share ids; ids must be unique across merged indexes")
        if not entries:
            return merged
        writer = merged._open_segment(first.dim, first.token_shape, first.grid_size)
        try:
            for s in range(0, len(entries), 1024):
                chunk = entries[s:s + 1024]
                emb = np.empty((len(chunk), first.dim), np.float32)
                tok = np.empty((len(chunk), *first.token_shape), np.float16) if first.store_local_tokens else None
                mask = np.empty((len(chunk), first.token_shape[0]), bool) if first.store_local_tokens else None
                for pi in {e[0] for e in chunk}:
                    sel = [j for j, e in enumerate(chunk) if e[0] == pi]
                    rows = np.asarray([chunk[j][1] for j in sel], dtype=np.int64)
                    emb[sel] = parts[pi]._gather("embeddings", rows)
                    if tok is not None:
                        tok[sel] = parts[pi]._gather("tokens", rows)
                        mask[sel] = parts[pi]._gather("mask", rows)
                writer.append(emb, tok, mask)
        except BaseException:
            writer.abort()
            raise
        merged._commit_segment(writer, ids, [parts[pi]._paths[r] for pi, r in entries],
                               [parts[pi]._positions[r] for pi, r in entries])
        return merged


class _SegmentWriter:
    """Writes one segment's embedding / token / mask files side by side."""

    def __init__(self, owner: ZseIndex, folder: Path, dim: int, token_shape, grid_size):
        self.dim, self.token_shape, self.grid_size = dim, owner.token_shape or token_shape, owner.grid_size or grid_size
        if owner.token_shape is not None and token_shape is not None and tuple(token_shape) != owner.token_shape:
            raise ValueError(f"local tokens of shape {tuple(token_shape)} do not match the index ({owner.token_shape})")
        tag = uuid.uuid4().hex[:12]
        self.emb = _NpyWriter(folder / f"embeddings-{tag}.npy", np.float32, (dim,))
        self.tok = self.mask = None
        if token_shape is not None:
            self.tok = _NpyWriter(folder / f"tokens-{tag}.npy", np.float16, tuple(token_shape))
            self.mask = _NpyWriter(folder / f"mask-{tag}.npy", np.bool_, (token_shape[0],))

    def append(self, emb, tok=None, mask=None, grid_size=None) -> None:
        if grid_size is not None and self.grid_size is not None and tuple(grid_size) != tuple(self.grid_size):
            raise ValueError(f"token grid {tuple(grid_size)} does not match the index ({tuple(self.grid_size)}); "
                             "use the processor (image size) the index was built with")
        self.emb.append(emb)
        if self.tok is not None:
            self.tok.append(tok)
            self.mask.append(mask)

    def close(self) -> _Segment | None:
        writers = [w for w in (self.emb, self.tok, self.mask) if w is not None]
        if self.emb.n == 0:
            for w in writers:
                w.abort()
            return None
        for w in writers:
            w.close()
        return _Segment(self.emb.n, self.emb.path, self.tok.path if self.tok else None, self.mask.path if self.mask else None)

    def abort(self) -> None:
        for w in (self.emb, self.tok, self.mask):
            if w is not None:
                w.abort()


# ----------------------------------------------------------------------------- persistence helpers


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of a saved index (ValueError for a missing, unreadable or newer one)."""
    root = Path(directory)
    path = root / _MANIFEST
    if not path.is_file():
        raise ValueError(f"{root} is not a ZseIndex directory (no {_MANIFEST})")
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


def _check_model(info: dict | None, model) -> None:
    if info is None or model is None:
        return
    digest = model_fingerprint(model)
    if digest != info.get("sha256"):
        raise ValueError(f"model mismatch: the index was built with {info.get('name_or_path')!r} "
                         f"(weights sha256 {str(info.get('sha256'))[:12]}...), but the given model's weights hash to "
                         f"{digest[:12]}...; its embeddings would not be comparable")


def _default_processor(model):
    from .processing_zse import ZseProcessor

    return ZseProcessor.from_config(model.config)


def _written(folder: Path, name: str) -> str:
    _fsync(folder / name)
    if _SAVE_FILE_HOOK is not None:
        _SAVE_FILE_HOOK(name)
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
        if _SAVE_FILE_HOOK is not None:
            _SAVE_FILE_HOOK("swap")
    os.rename(tmp, target)
    _fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _recover_interrupted(target: Path) -> None:
    """If a save died after moving the old index aside, put the old index back."""
    if target.exists():
        return
    olds = [p for p in _siblings(target, "old") if (p / _MANIFEST).is_file()]
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


# ----------------------------------------------------------------------------- input helpers


def _resolve_items(images_or_paths, ids):
    """(items, ids, paths) for a folder, a single item, or a list."""
    if isinstance(images_or_paths, (str, os.PathLike)) and Path(images_or_paths).is_dir():
        root = Path(images_or_paths)
        files = list_images(root)
        items = [str(p.absolute()) for p in files]
        default_ids = [p.relative_to(root).as_posix() for p in files]
    else:
        if isinstance(images_or_paths, (str, os.PathLike)) or not isinstance(images_or_paths, (list, tuple)):
            images_or_paths = [images_or_paths]
        items = list(images_or_paths)
        default_ids = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else p for p, x in enumerate(items)]
    paths = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else None for x in items]
    if ids is None:
        ids = default_ids
    else:
        ids = [_json_id(i) for i in ids]
        if len(ids) != len(items):
            raise ValueError(f"{len(items)} images but {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    return items, list(ids), paths


def _check_shard(shard) -> tuple[int, int]:
    if isinstance(shard, str):
        shard = _parse_shard(shard)
    i, n = (int(x) for x in shard)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    return i, n


def _parse_shard(text: str) -> tuple[int, int]:
    if text == "auto":
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = text.split("/")
        return _check_shard((int(i), int(n)))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4) or 'auto', got {text!r}") from None


def _check_shard_set(shards: list[dict], directories) -> None:
    n = shards[0]["count"]
    for d, s in zip(directories, shards):
        if (s["count"], s["total_items"], s["items_sha256"]) != (n, shards[0]["total_items"], shards[0]["items_sha256"]):
            raise ValueError(f"{d} is a shard of another run (other item list or shard count) than {directories[0]}")
    got = sorted(s["index"] for s in shards)
    if got != list(range(n)):
        missing = sorted(set(range(n)) - set(got))
        raise ValueError(f"shards do not form a complete set of {n}: missing {missing}, repeated "
                         f"{sorted({i for i in got if got.count(i) > 1})}")


# ----------------------------------------------------------------------------- command line


def _load_model(model_dir: str, device: str | None):
    from .evaluation import load_model_and_processor

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
        shard = _parse_shard(args.shard) if args.shard else None
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


__all__ = ["Hit", "Skipped", "ZseIndex", "auto_factory", "index_main", "list_images", "merge_main",
           "model_fingerprint", "read_manifest", "search_main"]
