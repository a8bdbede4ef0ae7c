"""[`ZseIndex`]: a photo gallery searchable by sketches, faiss over [Ret] embeddings plus a
memory-mapped token store for relation-network re-ranking."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..configuration_zse import default_rerank_k
from ..modeling_zse import ZseImageFeatures
from .encoding import encode_sketches
from .faiss_index import (
    DEFAULT_TRAIN_SIZE,
    auto_factory,
    check_search_params,
    default_search_params,
    faiss,
    is_exact,
    new_faiss_index,
    set_search_params,
)
from .ingest import SegmentIngest
from .inputs import json_id, resolve_items
from .model_binding import bind_photo_crop, check_model, default_processor, model_fingerprint, model_name
from .persistence import load_index, save_index
from .quantization import int8_pair_model
from .ranking import check_k, check_rerank_k, ranked_hits, relation_scores
from .records import Hit, Skipped
from .sharding import check_shard, merge_indexes
from .token_codec import FP16, TokenCodec, default_token_codec, resolve_token_codec
from .token_store import NpyWriter, Segment, new_work_dir, open_file, row_dtypes, row_shapes


class ZseIndex(SegmentIngest):
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
        token_codec: the trained [`TokenCodec`] the tokens are stored with (None: float16 tokens,
            or a codec still to be trained on the first photos); `token_codec_name`: its name.
    """

    def __init__(self, model=None, processor=None, *, index_factory: str | None = None, store_local_tokens: bool = True,
                 use_gpu: bool | None = None, work_dir: str | os.PathLike | None = None,
                 train_size: int = DEFAULT_TRAIN_SIZE, store_projections: bool = False, token_codec=None):
        """An empty index; usually made by `build`, `from_features`, `load` or `merge`. Unlike
        `build`, `token_codec=None` here means exact float16 tokens (what `load` and `merge` rely on)."""
        if store_projections and not store_local_tokens:
            raise ValueError("store_projections needs store_local_tokens=True")
        codec = resolve_token_codec(token_codec)
        if codec is not None and not store_local_tokens:
            raise ValueError(f"token_codec={token_codec!r} needs store_local_tokens=True")
        if codec is not None and store_projections:
            raise ValueError("store_projections is not supported with a token codec: projections are float16 "
                             "(3x the float16 tokens); use token_codec='fp16' to store them")
        self.token_codec: TokenCodec | None = codec if isinstance(codec, TokenCodec) else None
        self._codec_request = codec if isinstance(codec, tuple) else None  # (name, factory) trained on first rows
        self.model = model
        self.processor = processor if processor is not None or model is None else default_processor(model)
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
        self.model_info = None
        if model is not None:
            self.model_info = {"name_or_path": model_name(model), "sha256": model_fingerprint(model)}
        self.shard: dict | None = None
        self._index = None  # CPU faiss index, ids = row numbers
        self._gpu = None  # (resources, gpu index) cache
        self._segments: list[Segment] = []
        self._starts = np.zeros(1, dtype=np.int64)  # row offset of each segment, plus the end
        self._ids: list[str | int | None] = []
        self._paths: list[str | None] = []
        self._positions: list[int] = []
        self._row_of: dict[str | int, int] = {}
        self._work_root = work_dir
        self._work: Path | None = None
        self.store_projections = store_projections  # every segment holds its photos' pair-head projections
        self._int8 = None  # (model, its int8 pair-head copy)

    # ------------------------------------------------------------------ basic views

    def __len__(self) -> int:
        """Number of photos that can be found (removed ones excluded)."""
        return len(self._row_of)

    def __repr__(self) -> str:
        return (f"ZseIndex({len(self)} photos, factory={self.factory!r}, dim={self.dim}, "
                f"tokens={self.token_codec_name if self.store_local_tokens else 'no'}, skipped={len(self.skipped)})")

    @property
    def token_codec_name(self) -> str:
        """`"fp16"` (exact float16 tokens), or the name of the token codec (trained or to be trained)."""
        if self.token_codec is not None:
            return self.token_codec.name
        return self._codec_request[0] if self._codec_request is not None else FP16

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
        ids = [json_id(i) for i in ids]
        missing = [i for i in ids if i not in self._row_of]
        if missing:
            raise KeyError(f"unknown ids: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return np.asarray([self._row_of[i] for i in ids], dtype=np.int64)

    def embeddings(self, ids: Iterable[str | int] | None = None) -> np.ndarray:
        """[Ret] embeddings `[M, D]` float32 of `ids` (default: all searchable photos, row order)."""
        rows = self.rows_of(ids) if ids is not None else self._live_rows()
        return self._gather("embeddings", rows)

    def local_tokens(self, ids: Iterable[str | int]) -> ZseImageFeatures:
        """Stored features of `ids`: `local_tokens [M, N, D]` float16 (float32 decoded from the codes
        with a token codec), `token_mask [M, N]`, `grid_size`."""
        rows = self.rows_of(ids)
        return ZseImageFeatures(local_tokens=torch.from_numpy(self._gather("tokens", rows)),
                                token_mask=torch.from_numpy(self._gather("mask", rows)), grid_size=self.grid_size)

    def _live_rows(self) -> np.ndarray:
        return np.fromiter((r for r, i in enumerate(self._ids) if i is not None), dtype=np.int64)

    def _row_specs(self) -> tuple[dict[str, tuple[int, ...]], dict[str, np.dtype]]:
        """Stored row shape and dtype of each kind (tokens: codes `(N, C)` uint8 with a token codec)."""
        code_size = self.token_codec.code_size if self.token_codec is not None else None
        return row_shapes(self.dim, self.token_shape, code_size), row_dtypes(code_size)

    def _gather(self, kind: str, rows: np.ndarray, decode: bool = True) -> np.ndarray:
        """Rows `[M]` of one stored array, reading only those rows from the memory maps. With a
        token codec, `"tokens"` are decoded to `[M, N, D]` float32 (`decode=False`: the codes)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.dim is None:
            raise ValueError("the index is empty")
        if kind != "embeddings" and not self.store_local_tokens:
            raise ValueError("this index stores no local tokens (built with store_local_tokens=False); "
                             "re-ranking needs them")
        shapes, dtypes = self._row_specs()
        out = np.empty((len(rows), *shapes[kind]), dtype=dtypes[kind])
        seg_of = np.searchsorted(self._starts, rows, side="right") - 1
        for s in np.unique(seg_of):
            sel = np.flatnonzero(seg_of == s)
            local = rows[sel] - self._starts[s]
            order = np.argsort(local, kind="stable")
            out[sel[order]] = self._segments[s].array(kind)[local[order]]
        if kind == "tokens" and decode and self.token_codec is not None:
            return self.token_codec.decode(out)
        return out

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, model, processor, images_or_paths, ids: Sequence | None = None, index_factory: str | None = None,
              store_local_tokens: bool = True, batch_size: int = 32, device: str | torch.device | None = None,
              shard: tuple[int, int] | None = None, num_workers: int = 0, progress: bool = True,
              use_gpu: bool | None = None, work_dir: str | os.PathLike | None = None,
              train_size: int = DEFAULT_TRAIN_SIZE, store_projections: bool = False, token_codec=None) -> ZseIndex:
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
            store_projections: also store each photo's pair-head projections, so re-ranking skips
                them (see [`precompute_projections`]; float16 tokens only).
            token_codec: how local tokens are stored: None for the default, `"sq6"` (LOSSY: the
                re-rank order changes slightly; `"fp16"` with `store_projections` or `shard`, as
                shards must share one trained codec to merge); `"fp16"` (exact
                float16); another LOSSY faiss codec name (`"sq8"`, `"sq4"`, `"pqM"`, `"opqM"`,
                `"rqM"`) or faiss factory string, trained on a seeded sample of this build's tokens
                (see `zse_hf.retrieval.token_codec`); or a trained codec to reuse: a
                [`TokenCodec`], or a `Path` to an index directory or a codec file (shards that will
                be merged must share one codec).

        Unreadable items are skipped with a warning and listed in `index.skipped`.
        """
        token_codec = default_token_codec(token_codec, store_local_tokens, store_projections, shard is not None)
        index = cls(model, processor, index_factory=index_factory, store_local_tokens=store_local_tokens,
                    use_gpu=use_gpu, work_dir=work_dir, train_size=train_size, store_projections=store_projections,
                    token_codec=token_codec)
        index.add(images_or_paths, ids=ids, batch_size=batch_size, device=device, shard=shard,
                  num_workers=num_workers, progress=progress)
        return index

    @classmethod
    def from_features(cls, ret_embeds, local_tokens=None, token_mask=None, grid_size=None, ids: Sequence | None = None,
                      paths: Sequence | None = None, model=None, processor=None, index_factory: str | None = None,
                      use_gpu: bool | None = None, work_dir: str | os.PathLike | None = None,
                      train_size: int = DEFAULT_TRAIN_SIZE, token_codec=None) -> ZseIndex:
        """An index over precomputed features.

        Args:
            ret_embeds: `[M, D]` L2-normalised [Ret] embeddings (array or tensor).
            local_tokens: `[M, N, D]` encoder local tokens (stored as float16), or None.
            token_mask: `[M, N]` bool (default all True); grid_size: `(h, w)` with `h * w = N`.
            ids, paths: per row (default ids `0..M-1`).
            model, processor: attached for `search` (sketch encoding and re-ranking).
            token_codec: how the tokens are stored (see [`build`]; None: the default, LOSSY `"sq6"`).
        """
        token_codec = default_token_codec(token_codec, local_tokens is not None)
        index = cls(model, processor, index_factory=index_factory, store_local_tokens=local_tokens is not None,
                    use_gpu=use_gpu, work_dir=work_dir, train_size=train_size, token_codec=token_codec)
        if isinstance(ret_embeds, torch.Tensor):
            ret_embeds = ret_embeds.detach().cpu()
        emb = np.asarray(ret_embeds, dtype=np.float32)
        m = emb.shape[0]
        ids = list(range(m)) if ids is None else [json_id(i) for i in ids]
        paths = [None] * m if paths is None else [None if p is None else os.fspath(p) for p in paths]
        if len(ids) != m or len(paths) != m:
            raise ValueError(f"{m} embeddings but {len(ids)} ids and {len(paths)} paths")
        bind_photo_crop(index.model_info, index.processor, False)  # taken to be how the features were encoded
        writer = index._open_segment(emb.shape[1], None if local_tokens is None else tuple(local_tokens.shape[1:]),
                                     grid_size)
        try:
            for s in range(0, m, 4096):
                tok = mask = None
                if local_tokens is not None:
                    tok = local_tokens[s:s + 4096]
                    tok = tok.detach().cpu().float().numpy() if isinstance(tok, torch.Tensor) else np.asarray(tok)
                    if token_mask is None:
                        mask = np.ones(tok.shape[:2], dtype=bool)
                    else:
                        part = token_mask[s:s + 4096]
                        mask = np.asarray(part.cpu() if isinstance(part, torch.Tensor) else part)
                writer.append(emb[s:s + 4096], index._stored_tokens(writer, tok), mask)
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
        this batch first. ValueError when the processor's `photo_crop` differs from the one that
        encoded the photos already stored (recorded in `model_info` by the first `add`)."""
        if self.model is None:
            raise ValueError("no model attached: pass model= to ZseIndex.load or call attach_model() first")
        bind_photo_crop(self.model_info, self.processor, bool(self.num_rows))
        items, item_ids, item_paths = resolve_items(images_or_paths, ids)
        base = max(self._positions, default=-1) + 1 if self.num_rows else 0
        if shard is not None:
            i, n = check_shard(shard)
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
        skipped = self._encode(items, item_ids, item_paths, list(selected), base, batch_size, device, num_workers,
                               progress)
        if skipped:
            shown = "; ".join(f"{s.path or s.id}: {s.reason}" for s in skipped[:3])
            warnings.warn(f"skipped {len(skipped)} unreadable item(s) of {len(selected)}: {shown}"
                          f"{' ...' if len(skipped) > 3 else ''} (see index.skipped)", stacklevel=2)
        self.skipped.extend(skipped)
        return skipped

    def _work_dir(self) -> Path:
        if self._work is None:
            self._work = new_work_dir(self, self._work_root)
        return self._work

    def close(self) -> None:
        """Delete this index's unsaved segment files now (they are also deleted when the index is
        garbage-collected or the process exits). The index is unusable afterwards."""
        self._segments, self._index, self._gpu = [], None, None
        self._ids, self._paths, self._positions, self._row_of = [], [], [], {}
        self._starts = np.zeros(1, dtype=np.int64)
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None

    def __enter__(self) -> ZseIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_rows_to_faiss(self, rows: np.ndarray) -> None:
        if self._index is None:
            self.factory = self.index_factory or auto_factory(len(rows), self.dim)
            self._index = new_faiss_index(self.factory, self.dim)
        if not self._index.is_trained:
            self._train(rows)
        for s in range(0, len(rows), 65536):
            chunk = rows[s:s + 65536]
            self._index.add_with_ids(np.ascontiguousarray(self._gather("embeddings", chunk)), chunk)
        self._gpu = None
        if not self.search_params:
            self.search_params = default_search_params(self._index)

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

    def rebuild(self, index_factory: str | None = None, train_size: int | None = None) -> ZseIndex:
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
        rebuilds the faiss index from the remaining stored embeddings. Repeated ids count once."""
        rows = self.rows_of(dict.fromkeys(json_id(i) for i in ids))
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

    def attach_model(self, model, processor=None) -> ZseIndex:
        """Use `model` (and `processor`, default derived from its config and the recorded `photo_crop`)
        for searching; raises ValueError when its weights differ from the model the index was built with."""
        check_model(self.model_info, model)
        self.model = model
        self.processor = processor if processor is not None else default_processor(model, self.model_info)
        if self.model_info is None:
            self.model_info = {"name_or_path": model_name(model), "sha256": model_fingerprint(model)}
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
        check_k(k)
        q = query_embeds.detach().float().cpu().numpy() if isinstance(query_embeds, torch.Tensor) else query_embeds
        q = np.ascontiguousarray(q, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query embeddings must have shape [Q, {self.dim}], got {list(q.shape)}")
        params = check_search_params({**self.search_params, **(search_params or {})})
        k = min(k, len(self))
        exact = is_exact(self._index)
        fetch = k if exact else min(len(self), k * max(1, int(params.get("refine", 1))))
        index, on_gpu = self._search_index()
        set_search_params(index, on_gpu, params, fetch)
        scores, rows = index.search(q, fetch)
        self._check_rows(rows)
        if not exact:
            scores, rows = self._rescore(q, rows, k)
        return scores, rows

    def _check_rows(self, rows: np.ndarray) -> None:
        """ValueError when faiss returned rows that are not photos of this index (a tampered
        or mismatched index.faiss)."""
        found = rows[rows >= 0]
        if (rows < -1).any() or (found >= self.num_rows).any() or any(self._ids[r] is None for r in np.unique(found)):
            raise ValueError("the faiss index returned rows that are not photos of this index: index.faiss does "
                             "not match rows.json")

    def _rescore(self, q: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosines of the candidates from the stored embeddings; keep the best `k` per query."""
        valid = rows >= 0
        emb = self._gather("embeddings", rows[valid])
        scores = np.full(rows.shape, -np.inf, dtype=np.float32)
        scores[valid] = np.einsum("md,md->m", emb, np.repeat(q, valid.sum(1), axis=0))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)

    def precompute_projections(self, batch_size: int = 256, progress: bool = True) -> int:
        """Store every photo's cross-attention projections (`[3, N, D]` fp16 per photo: the
        photo-side `q`, `k`, `v` of the pair head) in the token store, so re-ranking skips them
        (exact: the same scores up to fp16 rounding of the projections). Photos added later get
        theirs when they are encoded, and `save` keeps them (index format version 2). Off by
        default: they cost 3x the token store (144 KiB/photo for 8x8 tokens of width 384, 576 KiB
        at 16x16). They belong to the model the index is bound to (its weights fingerprint is
        checked on `load` and `attach_model`). Returns the bytes the projections take.

        Args:
            batch_size: photos projected per call of the model.
            progress: show a progress bar.
        """
        if self.model is None:
            raise ValueError("precomputing projections needs the model: pass model= or call attach_model()")
        if not self.store_local_tokens:
            raise ValueError("this index stores no local tokens; there is nothing to project")
        if self.token_codec is not None or self._codec_request is not None:
            raise ValueError(f"projections are not stored with a token codec ({self.token_codec_name}); they are "
                             "float16, 3x the float16 tokens: use token_codec='fp16' to store them")
        missing = [i for i, seg in enumerate(self._segments) if seg.arrays["projections"] is None]
        bar = tqdm(total=sum(self._segments[i].n for i in missing), desc="projections", unit="photo",
                   disable=not progress, leave=False)
        with bar:
            for i in missing:
                seg, start = self._segments[i], int(self._starts[i])
                writer = NpyWriter(self._work_dir() / f"projections-{uuid.uuid4().hex[:12]}.npy", np.float16,
                                   (3, *self.token_shape))
                try:
                    for s in range(0, seg.n, batch_size):
                        rows = np.arange(start + s, start + min(seg.n, s + batch_size))
                        writer.append(self._project(self._gather("tokens", rows), self._gather("mask", rows),
                                                    self.grid_size))
                        bar.update(len(rows))
                    writer.close()
                except BaseException:
                    writer.abort()
                    raise
                stored = open_file(writer.path, "projections", (seg.n, 3, *self.token_shape))
                self._segments[i] = seg.with_array("projections", stored)
        self.store_projections = True
        return sum(seg.array("projections").nbytes for seg in self._segments)

    def _project(self, tokens: np.ndarray, mask: np.ndarray, grid_size) -> np.ndarray:
        """Photo-side projections `[m, 3, N, D]` fp16 of stored tokens `[m, N, D]` (rounded to fp16
        first, as re-ranking reads them) and masks `[m, N]`."""
        feats = ZseImageFeatures(local_tokens=torch.from_numpy(np.asarray(tokens, dtype=np.float16)),
                                 token_mask=torch.from_numpy(np.asarray(mask)), grid_size=grid_size)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                proj = self.model.project_image_features(feats.to_model(self.model), "photo").cross_projections
        finally:
            self.model.train(was_training)
        return proj.float().clamp(-65504, 65504).cpu().numpy().astype(np.float16)

    def _stored_projections(self, rows: np.ndarray) -> torch.Tensor | None:
        """Stored projections `[M, 3, N, D]` of `rows`, or None when the index keeps none."""
        if not self.store_projections:
            return None
        return torch.from_numpy(self._gather("projections", rows))

    def _int8_model(self):
        if self._int8 is None or self._int8[0] is not self.model:
            self._int8 = (self.model, int8_pair_model(self.model))
        return self._int8[1]

    def rerank_rows(self, query_features: ZseImageFeatures, rows, batch_size: int | None = None,
                    autocast_dtype: torch.dtype | None = None, int8: bool = False) -> torch.Tensor:
        """Relation scores `[Q, K]` of each query against its own candidates.

        Args:
            query_features: features of Q sketches (`local_tokens [Q, N, D]`, `token_mask`, `grid_size`).
            rows: `[Q, K]` candidate row numbers (e.g. from `ann_search`); `-1` gives NaN.
            batch_size: (query, candidate) pairs per `model.score_indexed_pairs` chunk (None: the
                model's `pair_chunk_size`, cache-sized on the CPU).
            autocast_dtype: e.g. `torch.bfloat16` to run the head under `torch.autocast` (faster
                on CPUs with AMX and on GPUs; scores differ by ~1e-3).
            int8: LOSSY. Run the pair head's linear layers dynamically quantised to int8 (CPU,
                fp32 model; see `zse_hf.retrieval.quantization`): faster, scores approximate.

        Candidate tokens are read from the memory-mapped store (only the needed rows; decoded to
        float32 when the index has a token codec), with their projections when the index stores
        them ([`precompute_projections`]). Each query's projections
        are made once for all its candidates.
        """
        if self.model is None:
            raise ValueError("re-ranking needs the model: pass model= to ZseIndex.load or call attach_model()")
        rows = np.asarray(rows, dtype=np.int64)
        model = self._int8_model() if int8 else self.model
        flat = rows.reshape(-1)
        valid = np.flatnonzero(flat >= 0)
        uniq, inverse = np.unique(flat[valid], return_inverse=True)
        candidate_index = np.full(flat.shape, -1, dtype=np.int64)
        candidate_index[valid] = inverse
        proj = None if int8 or len(valid) == 0 else self._stored_projections(uniq)
        candidates = ZseImageFeatures(local_tokens=torch.from_numpy(self._gather("tokens", uniq)),
                                      token_mask=torch.from_numpy(self._gather("mask", uniq)), grid_size=self.grid_size,
                                      cross_projections=proj, cross_projection_side=None if proj is None else "photo")
        return relation_scores(model, query_features, candidates, candidate_index.reshape(rows.shape),
                               batch_size=batch_size, autocast_dtype=autocast_dtype)

    def encode_sketches(self, sketches, batch_size: int = 32) -> ZseImageFeatures:
        """Encode sketches (one or a list of paths/images) into features: `ret_embeds [Q, D]`,
        `local_tokens [Q, N, D]`, `token_mask [Q, N]`, `grid_size`."""
        if self.model is None:
            raise ValueError("no model attached: pass model= to ZseIndex.load or call attach_model() first")
        return encode_sketches(self.model, self.processor, sketches, batch_size)

    def default_rerank_k(self) -> int:
        """The re-rank depth `search` uses when no `rerank_k` is given: K of the attached model's
        `config.default_ranking` `"rn@K"`, or 0 for `"ret"`, without a model or without stored tokens."""
        if self.model is None or not self.store_local_tokens:
            return 0
        return default_rerank_k(getattr(self.model.config, "default_ranking", "ret"))

    def search(self, sketches, k: int = 10, rerank_k: int | None = None, batch_size: int = 32,
               search_params: dict | None = None, autocast_dtype: torch.dtype | None = None,
               int8: bool = False, rerank_ret_weight: float | None = None) -> list[list[Hit]]:
        """Find the photos that match each sketch.

        Args:
            sketches: one sketch or a list (paths, PIL images, arrays, tensors), or precomputed
                `ZseImageFeatures` of Q sketches.
            k: hits per sketch (all photos when the gallery is smaller).
            rerank_k: re-rank the best `rerank_k` [Ret] candidates with the relation network
                (needs stored tokens); the hits then come in re-rank order (relation score +
                `rerank_ret_weight` * [Ret] cosine), followed by any further [Ret] candidates when
                `k > rerank_k`. 0: no re-ranking. None: the model's `config.default_ranking`
                (`"ret"`: none; `"rn@K"`: K, when the index stores tokens; see [`default_rerank_k`]).
            batch_size: sketches encoded per forward pass.
            search_params: overrides of `self.search_params` (`nprobe`, `efSearch`, `refine`).
            autocast_dtype: see [`rerank_rows`].
            int8: LOSSY int8 re-rank on the CPU; see [`rerank_rows`].
            rerank_ret_weight: weight of the cosine in the re-rank order (None: the model config's
                `rerank_ret_weight`; 0: relation score alone, the paper's), see `ZseModel.rerank_score`.

        Returns: one list of [`Hit`] per sketch, best first.
        """
        check_k(k)
        check_rerank_k(rerank_k)
        if search_params is not None:
            check_search_params(search_params)
        if self._index is None or len(self) == 0:
            raise ValueError("the index is empty: build it or add photos before searching")
        feats = sketches if isinstance(sketches, ZseImageFeatures) else self.encode_sketches(sketches, batch_size)
        rerank = self.default_rerank_k() if rerank_k is None else int(rerank_k)
        scores, rows = self.ann_search(feats.ret_embeds, max(k, rerank), search_params)
        rel = None
        if rerank:
            rel = self.rerank_rows(feats, rows[:, :rerank], autocast_dtype=autocast_dtype, int8=int8).numpy()
        record = lambda r: (self._ids[r], self._paths[r])
        return ranked_hits(self.model, scores, rows, rel, k, rerank_ret_weight, record)

    # ------------------------------------------------------------------ persistence and shards

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index to `directory` atomically (temporary sibling directory, then rename;
        an existing index there is replaced only once the new one is complete). Returns the path."""
        return save_index(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, model=None, processor=None, verify: bool = True,
             use_gpu: bool | None = None) -> ZseIndex:
        """Load an index saved by [`save`].

        Args:
            directory: the index directory.
            model: the model it was built with (checked by weight hash), needed to search with
                sketches; None loads it without one (see [`attach_model`]).
            processor: default: derived from `model.config`, cropping photos as the index records
                (`model_info["photo_crop"]`; absent in older indexes: no crop).
            verify: check every file's sha256 (sizes are always checked).

        Raises:
            ValueError: a newer format version, a missing, truncated or modified file, or a
                model whose weights differ from the recorded ones.
        """
        return load_index(cls, directory, model=model, processor=processor, verify=verify, use_gpu=use_gpu)

    @classmethod
    def merge(cls, directories: Sequence[str | os.PathLike], model=None, index_factory: str | None = "same",
              verify: bool = True, work_dir: str | os.PathLike | None = None) -> ZseIndex:
        """Merge saved indexes (typically the shards of one `build(..., shard=(i, n))` run) into
        one in-memory index (call `save` on it).

        Shards of one run are put back in input order (so the result equals an unsharded build)
        after checking that all `n` shards of the same item list are there; other indexes are
        concatenated. All inputs must come from the same model and store the same features, with
        the same token codec (by sha256; its codes are copied unchanged).
        `index_factory="same"` reuses the inputs' requested factory (automatic ones are
        re-chosen for the merged size); the faiss index is rebuilt (and retrained) from the
        stored embeddings.
        """
        return merge_indexes(cls, directories, model=model, index_factory=index_factory, verify=verify,
                             work_dir=work_dir)

