"""Writing a [`ZseMilvusStore`]: [`MilvusIngest`] (build, from_features, add, upsert, flush) and the
store's creation (its record, its collection, the token codec trained on the first photos).

Ingest is resumable: rows are written in batches of `INSERT_ROWS` as photos are encoded (an
acknowledged insert is durable: a server logs it before it answers), and `add(...,
existing="skip")` (what `zse-sbir index` does on an existing collection) encodes only the photos
whose ids are not stored yet. A batch is one insert, so a server killed mid-ingest loses at most
the batches it had not acknowledged, and the resumed ingest neither loses nor duplicates a photo.
One writer per collection at a time, or `shard=(i, n)` writers (shard 0 creates the store).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch

from .encoding import encode_photos
from .inputs import json_id, resolve_items
from .milvus_schema import (
    _NAME,
    CHUNK,
    READ_CONSISTENCY,
    RESERVED_FIELDS,
    VARCHAR_MAX,
    VECTOR_INDEXES,
    StoreAddress,
    StoreLayout,
    _pymilvus,
    _unchecked_strings,
    pack_tokens,
    parse_store_uri,
    token_field_count,
)
from .model_binding import check_model, check_photo_crop, model_fingerprint, model_name, photo_crop_of
from .records import Skipped
from .sharding import check_shard
from .token_codec import FP16, TRAIN_PHOTOS, TokenCodec, default_token_codec, resolve_token_codec, training_sample

if TYPE_CHECKING:
    from .milvus_store import ZseMilvusStore

INSERT_ROWS = 256  # rows per insert request (a batch of the resumable ingest)
# Test seam: called with the number of rows written so far after each insert of an ingest
# (tests kill the server there).
insert_hook: Callable[[int], None] | None = None


class MilvusIngest:
    """The writing half of [`ZseMilvusStore`] (a mixin: the store's connection, record and id
    helpers come from the class it is mixed into)."""

    # ------------------------------------------------------------------ creating the store

    def _write_record(self, layout: StoreLayout, codec: TokenCodec | None) -> None:
        """Create `<name>_zse_meta` with the `"store"` record and the codec's bytes (`"codec.I"` chunks)."""
        pymilvus = _pymilvus()
        c = self._client()
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", pymilvus.DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("value", pymilvus.DataType.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field("v", pymilvus.DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field
        params = c.prepare_index_params()
        params.add_index(field_name="v", index_type="FLAT", metric_type="L2")
        self._call("create collection", c.create_collection, self._meta_name, schema=schema, index_params=params,
                   consistency_level="Strong")
        rows = [{"key": "store", "value": json.dumps(asdict(layout)), "v": [0.0, 0.0]}]
        if codec is not None:
            text = base64.b64encode(codec.data).decode("ascii")
            rows += [{"key": f"codec.{i}", "value": text[s:s + CHUNK], "v": [0.0, 0.0]}
                     for i, s in enumerate(range(0, len(text), CHUNK))]
        self._call("insert", c.insert, self._meta_name, rows)

    def _create_data_collection(self) -> None:
        """Create (and load) the photos' collection as `self.layout` describes it."""
        pymilvus = _pymilvus()
        layout, c = self.layout, self._client()
        dt = pymilvus.DataType
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
        if layout.id_type == "int":
            schema.add_field("id", dt.INT64, is_primary=True)
        else:
            schema.add_field("id", dt.VARCHAR, is_primary=True, max_length=VARCHAR_MAX)
        schema.add_field("ret", dt.FLOAT_VECTOR, dim=layout.dim)
        schema.add_field("path", dt.VARCHAR, max_length=VARCHAR_MAX)
        for name in layout.token_field_names:
            schema.add_field(name, dt.VARCHAR, max_length=VARCHAR_MAX)
        params = c.prepare_index_params()
        vi = layout.vector_index
        params.add_index(field_name="ret", index_type=vi["index_type"], metric_type=vi["metric_type"],
                         params=vi.get("params") or {})
        self._call("create collection", c.create_collection, self.address.collection, schema=schema,
                   index_params=params, consistency_level=READ_CONSISTENCY)

    def _create(self, dim: int, token_shape, grid_size, id_type: str, codec: TokenCodec | None) -> None:
        """Write the record and create the collection for the first photos' shapes."""
        if self.model is None:
            raise ValueError("creating a store needs the model it is built with: pass model=")
        record = None
        if codec is not None:
            record = {**codec.record(), "sha256": codec.sha256}
            record.pop("file", None)
        n_bytes = math.ceil(token_shape[0] / 8) + token_shape[0] * (codec.code_size if codec else 2 * token_shape[1])
        model = {"name_or_path": model_name(self.model), "sha256": model_fingerprint(self.model),
                 "photo_crop": photo_crop_of(self.processor)}  # how the rows' photos are encoded
        layout = StoreLayout(model=model,
                             dim=int(dim), token_shape=tuple(int(x) for x in token_shape),
                             grid_size=tuple(int(x) for x in grid_size), id_type=id_type, codec=record,
                             token_fields=token_field_count(n_bytes), vector_index=self.vector_index)
        self._write_record(layout, codec)
        self.layout, self.token_codec = layout, codec
        self._create_data_collection()

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, model, processor, images_or_paths, ids: Sequence | None = None, *, uri,
              collection: str | None = None, metadata: Sequence[dict] | None = None, token_codec=None,
              vector_index: str | None = None,
              index_params: dict | None = None, batch_size: int = 32, device: str | torch.device | None = None,
              num_workers: int = 0, progress: bool = True, existing: str = "error", recreate: bool = False,
              shard: tuple[int, int] | None = None, token: str | None = None,
              timeout: float | None = 60.0) -> ZseMilvusStore:
        """Encode a gallery into a store (created, or added to when it exists).

        Args:
            model, processor: as for [`ZseIndex.build`] (photos are processed with `modality="photo"`).
            images_or_paths: a folder, a list of paths / PIL images / arrays / tensors, or a
                Hugging Face `datasets.Dataset` (or its image column).
            ids: one str or int per item (default: paths relative to a folder, positions for lists);
                one store holds str ids or int ids, not both.
            uri: the store URI (see [`parse_store_uri`]); collection: overrides its `?collection=`.
            metadata: one dict per item of extra fields (dynamic fields, filterable in `search`).
            token_codec: how tokens are stored: None for the default (`"sq6"`, LOSSY, trained on
                the first 256 photos stored), `"fp16"` (exact), another codec name, or a trained
                [`TokenCodec`] / `Path` of an index or codec file (e.g. to share a `ZseIndex`'s).
            vector_index: the Milvus index of the [Ret] field of a new collection (None:
                `"FLAT"`, exact; `"IVF_SQ8"`, `"HNSW"`, `"DISKANN"`, ... on a server) with
                `index_params` (e.g. `{"nlist": 1024}`); inner product always.
            batch_size, device, num_workers, progress: as for [`ZseIndex.build`].
            existing: what to do with ids already stored: `"error"`, `"skip"` (resume an ingest)
                or `"replace"` (upsert).
            recreate: drop an existing collection first.
            shard: `(i, n)` to store only items `i, i+n, ...` (one of n processes; see [`add`]).
            token, timeout: see [`open`].

        Raises:
            ValueError: a collection built with other weights (one line), bad arguments.
        """
        store = cls._for_writing(uri, model, processor, collection, token_codec, vector_index, index_params, recreate,
                                 token, timeout)
        try:
            store.add(images_or_paths, ids=ids, metadata=metadata, batch_size=batch_size, device=device,
                      num_workers=num_workers, progress=progress, existing=existing, shard=shard)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def from_features(cls, ret_embeds, local_tokens, token_mask=None, grid_size=None, ids: Sequence | None = None,
                      paths: Sequence | None = None, model=None, processor=None, *, uri, collection: str | None = None,
                      metadata: Sequence[dict] | None = None, token_codec=None, vector_index: str | None = None,
                      index_params: dict | None = None, existing: str = "error", recreate: bool = False,
                      progress: bool = True, token: str | None = None, timeout: float | None = 60.0
                      ) -> ZseMilvusStore:
        """A store over precomputed features (as [`ZseIndex.from_features`]).

        Args:
            ret_embeds: `[M, D]` L2-normalised [Ret] embeddings; local_tokens: `[M, N, D]`
                (any array-like whose row slices are arrays); token_mask: `[M, N]` bool
                (default all True); grid_size: `(h, w)` with `h * w = N`.
            ids, paths: per row (default ids `0..M-1`); model: the model the features came from
                (its fingerprint is recorded; needed).
            Other arguments: as for [`build`].
        """
        store = cls._for_writing(uri, model, processor, collection, token_codec, vector_index, index_params, recreate,
                                 token, timeout)
        try:
            store.add_features(ret_embeds, local_tokens, token_mask, grid_size, ids=ids, paths=paths,
                               metadata=metadata, existing=existing, progress=progress)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def _for_writing(cls, uri, model, processor, collection, token_codec, vector_index, index_params, recreate,
                     token, timeout) -> ZseMilvusStore:
        if model is None:
            raise ValueError("building a store needs the model (its weights fingerprint is recorded): pass model=")
        address = uri if isinstance(uri, StoreAddress) else parse_store_uri(uri, collection)
        kind = "FLAT" if vector_index is None else str(vector_index).upper()
        if kind not in VECTOR_INDEXES:
            raise ValueError(f"unknown vector_index {vector_index!r}; use one of {list(VECTOR_INDEXES)}")
        if index_params is not None and not isinstance(index_params, dict):
            raise ValueError(f"index_params must be a dict, got {type(index_params).__name__}")
        codec = resolve_token_codec(default_token_codec(token_codec, True))
        store = cls(address, None, None, token=token, timeout=timeout)
        try:
            if recreate:
                store.drop()
            store.attach_model(model, processor)
            if store.layout is None:
                store.vector_index = {"index_type": kind, "metric_type": "IP", "params": dict(index_params or {})}
                store._codec_request = codec
            else:
                store._check_same_settings(codec, token_codec is not None, vector_index, index_params)
                store._ensure_loaded(600.0)
        except BaseException:
            store.close()
            raise
        return store

    def _check_same_settings(self, codec, codec_given: bool, vector_index, index_params) -> None:
        """ValueError when a build asks an existing store for another token codec or vector index."""
        if codec_given:
            stored = self.token_codec_name
            wanted = codec.name if isinstance(codec, TokenCodec) else codec[0] if codec else FP16
            same = codec == self.token_codec if isinstance(codec, TokenCodec) else wanted == stored
            if not same:
                raise ValueError(f"{self.address} stores {stored} tokens; it cannot take token_codec={wanted!r} "
                                 "(recreate it, or leave token_codec out)")
        vi = self.layout.vector_index
        if vector_index is not None and str(vector_index).upper() != vi["index_type"] or (
                index_params is not None and dict(index_params) != (vi.get("params") or {})):
            raise ValueError(f"{self.address} has a {vi['index_type']} index {vi.get('params') or {}}; recreate it "
                             "to change it")

    def _plan(self, item_ids: list, existing: str) -> set:
        """The ids to skip; ValueError for stored ids when `existing="error"`."""
        if existing not in ("error", "skip", "replace"):
            raise ValueError(f"existing must be 'error', 'skip' or 'replace', got {existing!r}")
        kinds = {type(i) for i in item_ids}
        if len(kinds) > 1:
            raise TypeError("ids of one store must all be str or all int")
        self._check_ids(item_ids)
        if existing == "replace" or self.layout is None:
            return set()
        stored = self.existing_ids(item_ids)
        if stored and existing == "error":
            shown = sorted(stored, key=str)[:5]
            raise ValueError(f"ids already in the store: {shown}{' ...' if len(stored) > 5 else ''} (existing='skip' "
                             "resumes an ingest, 'replace' or upsert() replaces them)")
        return stored

    @staticmethod
    def _check_metadata(metadata, n: int) -> list[dict]:
        if metadata is None:
            return [{}] * n
        metadata = list(metadata)
        if len(metadata) != n:
            raise ValueError(f"{n} items but {len(metadata)} metadata entries")
        for m in metadata:
            if not isinstance(m, dict):
                raise ValueError(f"metadata entries must be dicts, got {type(m).__name__}")
            for key in m:
                if not isinstance(key, str) or not _NAME.fullmatch(key) or key.startswith("tokens") \
                        or key in RESERVED_FIELDS:
                    raise ValueError(f"invalid metadata field {key!r}: a name of letters, digits and underscores, "
                                     f"not one of {list(RESERVED_FIELDS)} or tokens_*")
        return metadata

    def add(self, images_or_paths, ids: Sequence | None = None, metadata: Sequence[dict] | None = None,
            batch_size: int = 32, device: str | torch.device | None = None, num_workers: int = 0,
            progress: bool = True, existing: str = "error", shard: tuple[int, int] | None = None,
            create_timeout: float = 3600.0) -> list[Skipped]:
        """Encode photos and store them (arguments as [`build`]); returns the items skipped as
        unreadable by this call (also appended to `self.skipped`). Rows are written in batches
        of `INSERT_ROWS` as they are encoded; rerun with `existing="skip"` to resume an ingest
        that stopped.

        `shard=(i, n)` stores only items `i, i+n, i+2n, ...`: n processes (e.g. under `torchrun`,
        `zse-sbir index --shard auto`) fill one collection together. Shard 0 creates a new store
        (and trains its codec); the others wait up to `create_timeout` seconds for it.

        ValueError (before any photo is encoded) when the processor's `photo_crop` differs from the
        one recorded when the store was created."""
        if self.model is None:
            raise ValueError("no model attached: pass model= or call attach_model() first")
        items, item_ids, item_paths = resolve_items(images_or_paths, ids)
        metadata = self._check_metadata(metadata, len(items))
        part = range(len(items))
        if shard is not None:
            i, n = check_shard(shard)
            part = range(i, len(items), n)
            if self.layout is None and i != 0:
                self._wait_for_record(create_timeout)
        if self.layout is not None:
            check_photo_crop(self.layout.model, self.processor, "collection")
        skip = self._plan([item_ids[p] for p in part], existing)
        selected = [p for p in part if item_ids[p] not in skip]
        if device is not None:
            self.model.to(device)
        skipped: list[Skipped] = []

        def batches():
            with contextlib.closing(encode_photos(self.model, self.processor, items, selected, batch_size,
                                                  num_workers, progress)) as encoded:
                for kept, feats, failed in encoded:
                    skipped.extend(Skipped(p, item_ids[p], item_paths[p], reason) for p, reason in failed)
                    if feats is None:
                        continue
                    yield (feats.ret_embeds.float().cpu().numpy(),
                           feats.local_tokens.float().clamp(-65504, 65504).cpu().numpy().astype(np.float16),
                           feats.token_mask.cpu().numpy(), feats.grid_size,
                           [item_ids[p] for p in kept], [item_paths[p] for p in kept], [metadata[p] for p in kept])

        try:
            self._ingest(batches(), existing == "replace", progress=False)
        finally:
            self.skipped.extend(skipped)
        if skipped:
            shown = "; ".join(f"{s.path or s.id}: {s.reason}" for s in skipped[:3])
            warnings.warn(f"skipped {len(skipped)} unreadable item(s) of {len(selected)}: {shown}"
                          f"{' ...' if len(skipped) > 3 else ''} (see store.skipped)", stacklevel=2)
        return skipped

    def _wait_for_record(self, timeout: float) -> None:
        """Until another process (shard 0) has created the store; ValueError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._read_record()
            except ValueError:  # its record is being written
                pass
            if self.layout is not None:
                check_model(self.layout.model, self.model, "collection")
                self._ensure_loaded(600.0)
                return
            if time.monotonic() > deadline:
                raise ValueError(f"{self.address} was not created within {timeout:.0f} s: shard 0 creates a new store; "
                                 "start it too (or create the store first)")
            time.sleep(2.0)

    def upsert(self, images_or_paths, ids: Sequence | None = None, metadata: Sequence[dict] | None = None,
               **kwargs) -> list[Skipped]:
        """Encode photos and store them, replacing stored photos of the same ids (`add(...,
        existing="replace")`)."""
        return self.add(images_or_paths, ids=ids, metadata=metadata, existing="replace", **kwargs)

    def add_features(self, ret_embeds, local_tokens, token_mask=None, grid_size=None, ids: Sequence | None = None,
                     paths: Sequence | None = None, metadata: Sequence[dict] | None = None, existing: str = "error",
                     progress: bool = True, chunk: int = 1024) -> int:
        """Store precomputed features (see [`from_features`]); returns the rows written."""
        if isinstance(ret_embeds, torch.Tensor):
            ret_embeds = ret_embeds.detach().cpu().numpy()
        emb = np.asarray(ret_embeds, dtype=np.float32)
        m = emb.shape[0]
        if len(local_tokens) != m:
            raise ValueError(f"{m} embeddings but {len(local_tokens)} rows of local tokens")
        ids = list(range(m)) if ids is None else [json_id(i) for i in ids]
        paths = [None] * m if paths is None else [None if p is None else os.fspath(p) for p in paths]
        if len(ids) != m or len(paths) != m:
            raise ValueError(f"{m} embeddings but {len(ids)} ids and {len(paths)} paths")
        if len(set(ids)) != m:
            raise ValueError("ids must be unique")
        metadata = self._check_metadata(metadata, m)
        skip = self._plan(ids, existing)
        keep = np.asarray([i not in skip for i in ids])

        def as_array(x):
            return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

        def batches():
            for s in range(0, m, chunk):
                sel = np.flatnonzero(keep[s:s + chunk])
                if len(sel) == 0:
                    continue
                tok = as_array(local_tokens[s:s + chunk])[sel]
                mask = (np.ones(tok.shape[:2], dtype=bool) if token_mask is None
                        else as_array(token_mask[s:s + chunk]).astype(bool)[sel])
                if grid_size is None:
                    side = int(round(math.sqrt(tok.shape[1])))
                    if side * side != tok.shape[1]:
                        raise ValueError(f"give grid_size for {tok.shape[1]} tokens per photo")
                grid = tuple(grid_size) if grid_size is not None else (side, side)
                yield (emb[s:s + chunk][sel], np.clip(tok, -65504, 65504).astype(np.float16), mask, grid,
                       [ids[s + j] for j in sel], [paths[s + j] for j in sel], [metadata[s + j] for j in sel])

        return self._ingest(batches(), existing == "replace", progress=progress, total=int(keep.sum()))

    def _ingest(self, batches: Iterator, replace: bool, progress: bool, total: int | None = None) -> int:
        """Write `(emb [m, D], tokens [m, N, D] fp16, mask [m, N], grid, ids, paths, metadata)`
        batches; the store is created (and its codec trained on the first `TRAIN_PHOTOS` photos)
        before the first row is written."""
        from tqdm.auto import tqdm

        self.added = 0
        pending: list[tuple] = []
        buffered = 0
        written = 0
        bar = tqdm(total=total, desc="storing photos", unit="photo", disable=not progress or total is None)
        with bar:
            for batch in batches:
                if self.layout is None:
                    pending.append(batch)
                    buffered += len(batch[0])
                    if buffered < TRAIN_PHOTOS and isinstance(self._codec_request, tuple):
                        continue
                    self._create_from(pending)
                    batch_list, pending = pending, []
                else:
                    batch_list = [batch]
                for b in batch_list:
                    written += self._write(b, replace, written)
                    bar.update(len(b[0]))
            if pending:
                self._create_from(pending)
                for b in pending:
                    written += self._write(b, replace, written)
                    bar.update(len(b[0]))
        self.added = written
        return written

    def flush(self) -> None:
        """Seal the collection's growing segments into the database's storage (Milvus does this on
        its own; an acknowledged insert is durable before, in the server's log). Worth calling
        once after a bulk ingest, so the segments get their vector index built."""
        if self.layout is not None:
            self._call("flush", self._client().flush, self.address.collection)

    def _create_from(self, batches: list[tuple]) -> None:
        """Create the store for the first batches (training the requested codec on them)."""
        emb, tok, mask, grid, ids = batches[0][:5]
        codec = self._codec_request
        if isinstance(codec, tuple):
            name, factory = codec
            tokens = np.concatenate([b[1] for b in batches])
            masks = np.concatenate([b[2] for b in batches])
            codec = TokenCodec.train(name, factory, training_sample(tokens, masks))
        self._create(emb.shape[1], tok.shape[1:], grid, "str" if isinstance(ids[0], str) else "int", codec)

    def _write(self, batch: tuple, replace: bool, written: int) -> int:
        emb, tok, mask, grid, ids, paths, metadata = batch
        layout = self.layout
        if emb.shape[1] != layout.dim:
            raise ValueError(f"embedding width {emb.shape[1]} does not match the store ({layout.dim})")
        if tuple(tok.shape[1:]) != tuple(layout.token_shape):
            raise ValueError(f"local tokens of shape {tuple(tok.shape[1:])} do not match the store "
                             f"({tuple(layout.token_shape)})")
        if tuple(grid) != tuple(layout.grid_size):
            raise ValueError(f"token grid {tuple(grid)} does not match the store ({tuple(layout.grid_size)}); use the "
                             "processor (image size) the store was built with")
        self._check_ids(ids)
        too_long = [x for x in (*paths, *(i for i in ids if isinstance(i, str))) if x and len(x.encode()) > VARCHAR_MAX]
        if too_long:
            raise ValueError(f"ids and paths are at most {VARCHAR_MAX} bytes in a Milvus store, got one of "
                             f"{len(too_long[0].encode())}")
        c = self._client()
        op = c.upsert if replace else c.insert
        for s in range(0, len(ids), INSERT_ROWS):
            e = slice(s, s + INSERT_ROWS)
            codes = self.token_codec.encode(tok[e]) if self.token_codec is not None else tok[e]
            packed = pack_tokens(codes, mask[e], layout.token_fields)
            rows = []
            for j, parts in enumerate(packed):
                row = {**metadata[s + j], "id": ids[s + j], "ret": emb[s + j].tolist(), "path": paths[s + j] or ""}
                row.update(zip(layout.token_field_names, parts))
                rows.append(row)
            with _unchecked_strings():
                self._call("upsert" if replace else "insert", op, self.address.collection, rows)
            written += len(rows)
            if insert_hook is not None:
                insert_hook(written)
        return len(ids)
