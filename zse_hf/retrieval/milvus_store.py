"""[`ZseMilvusStore`]: a photo gallery in a Milvus collection, searchable by sketches.

Each photo is one row: its [Ret] embedding (a `FLOAT_VECTOR` the database searches), its local
tokens compressed with the token codec (base64 `VARCHAR`, so the collection alone serves the
re-rank), its path, and any metadata (dynamic fields, filterable with Milvus expressions). A
second collection `<name>_zse_meta` records the model's weights fingerprint, the photos' crop
(`photo_crop`), the shapes and the trained codec. The same code runs on an embedded file (Milvus
Lite, `photos.db`) and on a Milvus server or cluster (`http://host:19530`).

```python
>>> from zse_hf.retrieval import ZseMilvusStore
>>> store = ZseMilvusStore.build(model, processor, "photos/", uri="photos.db")     # or a server URI
>>> store.search("sketch.png", k=10, rerank_k=50, filter='folder == "animals"')[0]  # list[Hit]
```

URIs ([`parse_store_uri`]): a path ending in `.db` or `milvus:///abs/path.db` (embedded file);
`milvus://host[:port]`, `http://host:port`, `https://host:port` (a server); any of them with
`?collection=NAME` (default `zse_photos`).

Writing (build, add, upsert, the resumable ingest) lives in `milvus_ingest`, the URIs, the
record and the token packing in `milvus_schema`.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..configuration_zse import default_rerank_k
from ..modeling_zse import ZseImageFeatures
from .encoding import encode_sketches
from .inputs import json_id
from .milvus_ingest import MilvusIngest
from .milvus_schema import (  # noqa: F401 (re-exported: the store's URIs, record and token packing)
    DEFAULT_COLLECTION,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_LIMIT,
    META_SUFFIX,
    QUERY_IDS,
    VECTOR_INDEXES,
    StoreAddress,
    StoreLayout,
    _pymilvus,
    _quiet,
    _quote,
    _reason,
    is_store_uri,
    pack_tokens,
    parse_store_uri,
    token_field_count,
    unpack_tokens,
)
from .model_binding import check_model, default_processor
from .quantization import int8_pair_model
from .ranking import check_k, check_rerank_k, ranked_hits, relation_scores
from .records import Hit, Skipped
from .token_codec import FP16, TokenCodec

_LITE_USERS: dict[str, int] = {}  # embedded file -> open stores in this process
_LITE_LOCK = threading.RLock()


class ZseMilvusStore(MilvusIngest):
    """A gallery of photos in a Milvus collection, searchable by sketches: the database searches
    the [Ret] embeddings (with its own index types and filter expressions), and the top K are
    re-ranked with the relation network from the compressed tokens the same search returns,
    exactly as [`ZseIndex.search`] orders them.

    Make one with [`ZseMilvusStore.build`] (photos), [`ZseMilvusStore.from_features`]
    (precomputed features) or open one with [`ZseMilvusStore.open`]; grow it with [`add`] /
    [`upsert`], shrink it with [`remove`] / [`delete`], query it with [`search`].

    Attributes:
        address: the [`StoreAddress`]; client: the `pymilvus.MilvusClient`.
        model, processor: used to encode photos and sketches and to re-rank (None: `attach_model` first).
        layout: the [`StoreLayout`] (None until the first photo is stored).
        token_codec: the trained [`TokenCodec`] (None: float16 tokens).
        skipped: [`Skipped`] items that could not be read, over this object's `add` calls.
        added: photos written by the last `add` / `add_features` call.
    """

    store_local_tokens = True  # every row holds its tokens (the pipeline re-ranks by default)

    def __init__(self, address: StoreAddress, model=None, processor=None, *, token: str | None = None,
                 timeout: float | None = 60.0):
        """Connect to `address` and read the store's record when the collection exists (its model
        fingerprint is checked against `model`). Usually made by `open`, `build` or `from_features`."""
        pymilvus = _pymilvus()
        self.address, self.timeout = address, timeout
        self.model, self.processor = model, processor  # default processor: once the record is read
        self.layout: StoreLayout | None = None
        self.token_codec: TokenCodec | None = None
        self.skipped: list[Skipped] = []
        self.added = 0
        self.vector_index = {"index_type": "FLAT", "metric_type": "IP", "params": {}}
        self._codec_request = None
        self._int8 = None
        self._embedded_key = None
        self.client = None
        if address.embedded and not Path(address.uri).parent.is_dir():
            raise ValueError(f"cannot create {address.uri}: folder {Path(address.uri).parent} does not exist")
        # the embedded engine of a file is started once per process, under a lock (milvus-lite's own start
        # races when two threads open one file), and stopped with the last store using it (`close`)
        with _LITE_LOCK if address.embedded else contextlib.nullcontext():
            try:
                with warnings.catch_warnings(), _quiet():
                    warnings.simplefilter("ignore")
                    # the embedded engine's gRPC server refuses pymilvus' 10 s keepalive pings on idle
                    # connections ("too_many_pings"); in one process they have nothing to detect
                    extra = {"grpc_options": {"grpc.keepalive_time_ms": 300_000}} if address.embedded else {}
                    self.client = pymilvus.MilvusClient(uri=address.uri, token=token or "", timeout=timeout, **extra)
            except Exception as err:  # noqa: BLE001 (pymilvus raises its own and grpc errors)
                hint = " (an embedded file is opened by one process at a time)" if address.embedded else ""
                raise ValueError(f"cannot connect to the Milvus store {address}: {_reason(err)}{hint}") from None
            if address.embedded:
                self._embedded_key = address.uri
                _LITE_USERS[address.uri] = _LITE_USERS.get(address.uri, 0) + 1
        try:
            self._read_record()
        except BaseException:
            self.close()
            raise
        if model is not None and self.layout is not None:
            try:
                check_model(self.layout.model, model, "collection")
            except ValueError:
                self.close()
                raise
        if processor is None and model is not None:  # photos are cropped as the record says
            self.processor = default_processor(model, self.layout.model if self.layout else None)

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(cls, uri, model=None, processor=None, *, collection: str | None = None, token: str | None = None,
             timeout: float | None = 60.0, load_timeout: float = 600.0) -> ZseMilvusStore:
        """Open an existing store.

        Args:
            uri: the store URI (see [`parse_store_uri`]) or a [`StoreAddress`].
            model: the model it was built with (checked by weights fingerprint; needed to search
                with sketches); None opens it without one (see [`attach_model`]).
            processor: default: derived from `model.config`, cropping photos as the store's record
                says (`model_info["photo_crop"]`; absent in older stores: no crop).
            collection: overrides the URI's `?collection=`.
            token: a Milvus server's token (`"user:password"` or an API key).
            timeout: seconds per database call; load_timeout: seconds to wait for the collection
                to be loaded for search (a restarted server replays its log first).

        Raises:
            ValueError: no such collection, not a zse-sbir store, another model's store, or
                the database cannot be reached (one line).
        """
        address = uri if isinstance(uri, StoreAddress) else parse_store_uri(uri, collection)
        if address.embedded and not Path(address.uri).exists():  # Milvus Lite would create it
            raise ValueError(f"no zse-sbir collection {address.collection!r}: {address.uri} does not exist")
        store = cls(address, model, processor, token=token, timeout=timeout)
        if store.layout is None:
            store.close()
            raise ValueError(f"no zse-sbir collection {address.collection!r} in {address}")
        store._ensure_loaded(load_timeout)
        return store

    def close(self) -> None:
        """Close the connection (and stop the embedded engine when no other store of this
        process uses its file)."""
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        key, self._embedded_key = getattr(self, "_embedded_key", None), None
        if key is not None:
            with _LITE_LOCK:
                left = _LITE_USERS.get(key, 1) - 1
                if left > 0:
                    _LITE_USERS[key] = left
                    return
                _LITE_USERS.pop(key, None)
                with contextlib.suppress(Exception):
                    from milvus_lite.server_manager import server_manager_instance

                    server_manager_instance.release_server(key)

    def __enter__(self) -> ZseMilvusStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (at interpreter exit modules may be gone)
            pass

    def drop(self) -> None:
        """Delete the collection and its record from the database."""
        c = self._client()
        for name in (self.address.collection, self._meta_name):
            if self._call("describe", c.has_collection, name):
                self._call("drop", c.drop_collection, name)
        self.layout, self.token_codec = None, None

    def _client(self):
        if self.client is None:
            raise ValueError("the store is closed")
        return self.client

    @property
    def _meta_name(self) -> str:
        return self.address.collection + META_SUFFIX

    def _call(self, what: str, fn, *args, **kwargs):
        """`fn(*args, **kwargs)` with database errors as one-line ValueErrors naming `what`."""
        pymilvus = _pymilvus()
        if getattr(fn, "__self__", None) is self.client and self.timeout is not None:
            kwargs.setdefault("timeout", self.timeout)  # every call of the client is bounded
        try:
            with _quiet():
                return fn(*args, **kwargs)
        except pymilvus.MilvusException as err:
            raise ValueError(f"Milvus {what} on {self.address}: {_reason(err)}") from None

    # ------------------------------------------------------------------ the record

    def _read_record(self) -> None:
        c = self._client()
        has_data = self._call("describe", c.has_collection, self.address.collection)
        has_meta = self._call("describe", c.has_collection, self._meta_name)
        if not has_meta:
            if has_data:
                raise ValueError(f"collection {self.address.collection!r} in {self.address} is not a zse-sbir store "
                                 f"(it has no {self._meta_name!r} record); use another ?collection=")
            return
        self._ensure_loaded(60.0, self._meta_name)
        entries = self._call("query", c.query, self._meta_name, filter='key != ""', output_fields=["key", "value"],
                             limit=MAX_LIMIT)
        meta = {e["key"]: e["value"] for e in entries}
        where = f"{self.address} ({self._meta_name})"
        if "store" not in meta:
            raise ValueError(f"{where} holds no store record")
        layout = StoreLayout.from_json(meta["store"], where)
        codec = None
        if layout.codec is not None:
            parts = sorted((k for k in meta if k.startswith("codec.")), key=lambda k: int(k.split(".")[1]))
            data = base64.b64decode("".join(meta[k] for k in parts))
            codec = TokenCodec.from_bytes(data, where, layout.codec["name"], layout.codec["factory"], layout.codec)
            if codec.sha256 != layout.codec.get("sha256"):
                raise ValueError(f"{where}: the stored token codec does not match its sha256")
        if not has_data:  # a build killed between the record and the collection: make the collection now
            self.layout, self.token_codec = layout, codec
            self._create_data_collection()
        self.layout, self.token_codec, self.vector_index = layout, codec, layout.vector_index

    def _ensure_loaded(self, timeout: float, name: str | None = None) -> None:
        name = name or self.address.collection
        c = self._client()
        state = self._call("load state", c.get_load_state, name).get("state")
        if "Loaded" not in str(state):
            self._call("load", c.load_collection, name, timeout=timeout)

    # ------------------------------------------------------------------ basic views

    def __len__(self) -> int:
        """Number of photos stored (a `count(*)` query)."""
        if self.layout is None:
            return 0
        out = self._call("count", self._client().query, self.address.collection, filter="",
                         output_fields=["count(*)"], consistency_level="Strong")
        return int(out[0]["count(*)"])

    def __repr__(self) -> str:
        if self.layout is None:
            return f"ZseMilvusStore({self.address}, empty)"
        return (f"ZseMilvusStore({self.address}, {len(self)} photos, index={self.vector_index['index_type']}, "
                f"dim={self.dim}, tokens={self.token_codec_name})")

    @property
    def dim(self) -> int | None:
        """Width D of the [Ret] embeddings (None while empty)."""
        return self.layout.dim if self.layout else None

    @property
    def token_shape(self) -> tuple[int, int] | None:
        """`(N, D)` local tokens per photo (None while empty)."""
        return self.layout.token_shape if self.layout else None

    @property
    def grid_size(self) -> tuple[int, int] | None:
        """`(h, w)` of the token grid (None while empty)."""
        return self.layout.grid_size if self.layout else None

    @property
    def model_info(self) -> dict | None:
        """`{"name_or_path", "sha256", "photo_crop"}` of the model the store was built with and the
        processor's `photo_crop` its photos were encoded with (no `"photo_crop"` in older stores: None)."""
        return self.layout.model if self.layout else None

    @property
    def token_codec_name(self) -> str:
        """`"fp16"` (exact float16 tokens) or the token codec's name."""
        if self.token_codec is not None:
            return self.token_codec.name
        if self.layout is None and isinstance(self._codec_request, tuple):
            return self._codec_request[0]
        return FP16

    @property
    def ids(self) -> list[str | int]:
        """Ids of all stored photos (database order; read with a query iterator, 4,096 at a time)."""
        if self.layout is None:
            return []
        c = self._client()
        out = []
        it = self._call("query", c.query_iterator, self.address.collection, batch_size=4096, filter="",
                        output_fields=["id"])
        try:
            while True:
                page = self._call("query", it.next)
                if not page:
                    break
                out += [row["id"] for row in page]
        finally:
            it.close()
        return out

    def _ids_filter(self, ids: Sequence) -> str:
        if self.layout.id_type == "str":
            return f"id in [{','.join(_quote(i) for i in ids)}]"
        return f"id in [{','.join(str(int(i)) for i in ids)}]"

    def _check_ids(self, ids: Sequence) -> list:
        ids = [json_id(i) for i in ids]
        if self.layout is not None:
            want = str if self.layout.id_type == "str" else int
            bad = [i for i in ids if not isinstance(i, want)]
            if bad:
                raise TypeError(f"this store's ids are {self.layout.id_type}s, got {bad[0]!r}")
        return ids

    def _fetch(self, ids: Sequence, fields: list[str]) -> dict:
        """`{id: row}` of the stored `ids` that exist (rows hold `fields`)."""
        c = self._client()
        found = {}
        for s in range(0, len(ids), QUERY_IDS):
            part = ids[s:s + QUERY_IDS]
            rows = self._call("query", c.query, self.address.collection, filter=self._ids_filter(part),
                              output_fields=["id", *fields], limit=len(part), consistency_level="Strong")
            found.update((row["id"], row) for row in rows)
        return found

    def existing_ids(self, ids: Iterable[str | int]) -> set:
        """The subset of `ids` that is stored."""
        if self.layout is None:
            return set()
        ids = list(dict.fromkeys(self._check_ids(ids)))
        return set(self._fetch(ids, []))

    def _rows_of(self, ids: Iterable[str | int], fields: list[str]) -> list[dict]:
        ids = self._check_ids(ids)
        if self.layout is None:
            raise KeyError("the store is empty")
        found = self._fetch(list(dict.fromkeys(ids)), fields)
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"unknown ids: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return [found[i] for i in ids]

    def embeddings(self, ids: Iterable[str | int]) -> np.ndarray:
        """[Ret] embeddings `[M, D]` float32 of `ids` (KeyError for unknown ids)."""
        rows = self._rows_of(ids, ["ret"])
        return np.asarray([r["ret"] for r in rows], dtype=np.float32).reshape(len(rows), self.dim)

    def local_tokens(self, ids: Iterable[str | int]) -> ZseImageFeatures:
        """Stored features of `ids`: `local_tokens [M, N, D]` (float16, or float32 decoded from the
        codes with a token codec), `token_mask [M, N]`, `grid_size` (KeyError for unknown ids)."""
        rows = self._rows_of(ids, self.layout.token_field_names if self.layout else [])
        return self._features(rows)

    def metadata(self, ids: Iterable[str | int]) -> list[dict]:
        """Each photo's path and metadata fields (KeyError for unknown ids)."""
        rows = self._rows_of(ids, ["path", "$meta"])
        out = []
        for row in rows:
            meta = {k: v for k, v in row.items() if k not in ("id", "$meta")}
            meta.update(row.get("$meta") or {})
            meta["path"] = meta.get("path") or None
            out.append(meta)
        return out

    def _features(self, rows: list[dict]) -> ZseImageFeatures:
        """Decoded tokens of stored rows (each holding the token fields)."""
        names = self.layout.token_field_names
        tokens, mask = unpack_tokens(["".join(r[f] for f in names) for r in rows], self.layout)
        if self.token_codec is not None:
            tokens = self.token_codec.decode(tokens)
        return ZseImageFeatures(local_tokens=torch.from_numpy(np.ascontiguousarray(tokens)),
                                token_mask=torch.from_numpy(mask), grid_size=self.layout.grid_size)

    def attach_model(self, model, processor=None) -> ZseMilvusStore:
        """Use `model` (and `processor`, default derived from its config and the recorded `photo_crop`)
        to encode and re-rank; ValueError (one line) when its weights differ from the ones the store
        was built with."""
        if self.layout is not None:
            check_model(self.layout.model, model, "collection")
        self.model = model
        self.processor = processor if processor is not None else default_processor(
            model, self.layout.model if self.layout else None)
        return self

    def _int8_model(self):
        if self._int8 is None or self._int8[0] is not self.model:
            self._int8 = (self.model, int8_pair_model(self.model))
        return self._int8[1]

    # ------------------------------------------------------------------ removing

    def remove(self, ids: Iterable[str | int]) -> int:
        """Remove photos by id (KeyError for unknown ids, as [`ZseIndex.remove`]); returns how
        many were removed. Repeated ids count once."""
        ids = list(dict.fromkeys(self._check_ids(ids)))
        if not ids:
            return 0
        self._rows_of(ids, [])  # KeyError for unknown ids
        return self.delete(ids)

    def delete(self, ids: Iterable[str | int] | None = None, filter: str | None = None) -> int:
        """Delete photos by id (unknown ids are ignored) or by a Milvus filter expression (e.g.
        `'folder == "old"'`); returns how many were deleted."""
        if (ids is None) == (filter is None):
            raise ValueError("give ids or filter (one of them)")
        if self.layout is None:
            return 0
        c = self._client()
        if filter is not None:
            before = len(self)
            self._call("delete", c.delete, self.address.collection, filter=filter)
            return before - len(self)
        stored = sorted(self.existing_ids(ids), key=str)
        for s in range(0, len(stored), QUERY_IDS):
            self._call("delete", c.delete, self.address.collection, filter=self._ids_filter(stored[s:s + QUERY_IDS]))
        return len(stored)

    # ------------------------------------------------------------------ searching

    def encode_sketches(self, sketches, batch_size: int = 32) -> ZseImageFeatures:
        """Features of one sketch or a list: `ret_embeds [Q, D]`, `local_tokens [Q, N, D]`,
        `token_mask [Q, N]`, `grid_size`."""
        if self.model is None:
            raise ValueError("no model attached: pass model= to ZseMilvusStore.open or call attach_model() first")
        return encode_sketches(self.model, self.processor, sketches, batch_size)

    def default_rerank_k(self) -> int:
        """The re-rank depth `search` uses when no `rerank_k` is given: K of the model's
        `config.default_ranking` `"rn@K"`, or 0 for `"ret"` and without a model (as `ZseIndex`)."""
        if self.model is None:
            return 0
        return default_rerank_k(getattr(self.model.config, "default_ranking", "ret"))

    def ann_search(self, query_embeds, k: int, filter: str | None = None, search_params: dict | None = None,
                   with_tokens: bool = False, consistency_level: str | None = None):
        """The database's nearest neighbours of `query_embeds [Q, D]` (L2-normalised) by inner product.

        Returns: `scores [Q, k]` float32 cosines, `rows [Q, k]` int64 positions in `records`
        (`-1`, score `-inf`, pads a query with fewer matches), best first, and `records`: one
        dict per distinct photo found (`id`, `path`, and the token fields with `with_tokens`).
        """
        check_k(k)
        if self.layout is None:
            raise ValueError("the store is empty: build it or add photos before searching")
        q = query_embeds.detach().float().cpu().numpy() if isinstance(query_embeds, torch.Tensor) else query_embeds
        q = np.ascontiguousarray(q, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query embeddings must have shape [Q, {self.dim}], got {list(q.shape)}")
        if k > MAX_LIMIT:
            raise ValueError(f"Milvus returns at most {MAX_LIMIT} hits a query, asked for {k}")
        params = {"metric_type": "IP", "params": dict((search_params or {}).get("params", search_params or {}))}
        fields = ["path", *(self.layout.token_field_names if with_tokens else [])]
        extra = {"consistency_level": consistency_level} if consistency_level else {}
        found = self._call("search", self._client().search, self.address.collection, data=q.tolist(),
                           anns_field="ret", limit=int(k), filter=filter or "", output_fields=fields,
                           search_params=params, **extra)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        records: list[dict] = []
        position: dict = {}
        for qi, hits in enumerate(found):
            for j, hit in enumerate(hits):
                entity = hit["entity"]
                photo_id = hit.get("id")
                if photo_id is None:
                    photo_id = entity.get("id")
                if photo_id not in position:
                    position[photo_id] = len(records)
                    records.append({"id": photo_id, **entity})
                rows[qi, j], scores[qi, j] = position[photo_id], hit["distance"]
        return scores, rows, records

    def search(self, sketches, k: int = 10, rerank_k: int | None = None, batch_size: int = 32,
               filter: str | None = None, search_params: dict | None = None,
               autocast_dtype: torch.dtype | None = None, int8: bool = False,
               rerank_ret_weight: float | None = None, consistency_level: str | None = None) -> list[list[Hit]]:
        """Find the photos that match each sketch: the database's top `max(k, rerank_k)` by [Ret]
        cosine (with their tokens when re-ranking), then the relation re-rank of the top
        `rerank_k`, ordered exactly as [`ZseIndex.search`] orders them.

        Args:
            sketches: one sketch or a list (paths, PIL images, arrays, tensors), or precomputed
                `ZseImageFeatures` of Q sketches.
            k: hits per sketch.
            rerank_k: candidates re-ranked with the relation network (0: none; None: the model's
                `config.default_ranking`, see [`default_rerank_k`]).
            batch_size: sketches encoded per forward pass.
            filter: a Milvus boolean expression over `path` and the metadata fields, e.g.
                `'folder in ["cats", "dogs"]'` or `'path like "zoo/%"'`.
            search_params: the vector index's search parameters, e.g. `{"nprobe": 32}`, `{"ef": 128}`.
            autocast_dtype, int8, rerank_ret_weight: as for [`ZseIndex.search`].
            consistency_level: Milvus' read consistency (default: the collection's, `"Session"`: this
                client's own writes are seen; `"Strong"` waits for every client's, ~200 ms on a server).

        Returns: one list of [`Hit`] per sketch, best first.
        """
        check_k(k)
        check_rerank_k(rerank_k)
        if self.layout is None:
            raise ValueError("the store is empty: build it or add photos before searching")
        feats = sketches if isinstance(sketches, ZseImageFeatures) else self.encode_sketches(sketches, batch_size)
        rerank = self.default_rerank_k() if rerank_k is None else int(rerank_k)
        if rerank and self.model is None:
            raise ValueError("re-ranking needs the model: pass model= to ZseMilvusStore.open or call attach_model()")
        scores, rows, records = self.ann_search(feats.ret_embeds, max(k, rerank), filter, search_params,
                                                with_tokens=bool(rerank), consistency_level=consistency_level)
        rel = None
        if rerank:
            head = rows[:, :rerank]
            uniq, inverse = np.unique(head[head >= 0], return_inverse=True)
            candidate_index = np.full(head.shape, -1, dtype=np.int64)
            candidate_index[head >= 0] = inverse
            model = self._int8_model() if int8 else self.model
            candidates = self._features([records[r] for r in uniq])
            rel = relation_scores(model, feats, candidates, candidate_index, autocast_dtype=autocast_dtype).numpy()
        record = lambda r: (records[r]["id"], records[r].get("path") or None)
        return ranked_hits(self.model, scores, rows, rel, k, rerank_ret_weight, record)

    # ------------------------------------------------------------------ explanations

    def explain(self, sketch, photo: Hit | str | int, image=None, **kwargs):
        """Explain why `sketch` matched a stored photo: [`zse_hf.explain.explain_pair`] on the
        sketch and the photo (its stored path, or `image` for photos stored from memory).

        Args:
            sketch: a path or image.
            photo: a [`Hit`] of `search`, or a photo id.
            image: the photo itself (default: read from its stored path).
            kwargs: passed to `explain_pair` (`source=`, `grid=`, `image_size=`, ...).

        Returns: a `ZseExplanation` (draw it with `zse_hf.explain.explanation_pictures`).
        """
        from ..explain import explain_pair

        if self.model is None:
            raise ValueError("explaining needs the model: pass model= to ZseMilvusStore.open or call attach_model()")
        photo_id = photo.id if isinstance(photo, Hit) else photo
        if image is None:
            path = self.metadata([photo_id])[0]["path"]
            if not path:
                raise ValueError(f"photo {photo_id!r} was stored from memory (no path): pass image=")
            image = path
        return explain_pair(self.model, self.processor, sketch, image, **kwargs)


def open_store(uri_or_path, model=None, processor=None, **kwargs) -> Any:
    """A saved photo store: a [`ZseMilvusStore`] for a database URI (a `.db` file, `milvus://`,
    `http(s)://`), else the [`ZseIndex`] in the folder `uri_or_path`; `kwargs` go to its
    `open` / `load`. Both have the same `search` / `add` / `remove` / `len` shape."""
    if is_store_uri(uri_or_path):
        return ZseMilvusStore.open(uri_or_path, model, processor, **kwargs)
    from .index import ZseIndex

    return ZseIndex.load(uri_or_path, model, processor, **kwargs)
