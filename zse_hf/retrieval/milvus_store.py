"""[`ZseMilvusStore`]: a photo gallery in a Milvus collection, searchable by sketches.

Each photo is one row: its [Ret] embedding (a `FLOAT_VECTOR` the database searches), its local
tokens compressed with the token codec (base64 `VARCHAR`, so the collection alone serves the
re-rank), its path, and any metadata (dynamic fields, filterable with Milvus expressions). A
second collection `<name>_zse_meta` records the model's weights fingerprint, the shapes and the
trained codec. The same code runs on an embedded file (Milvus Lite, `photos.db`) and on a Milvus
server or cluster (`http://host:19530`).

```python
>>> from zse_hf.retrieval import ZseMilvusStore
>>> store = ZseMilvusStore.build(model, processor, "photos/", uri="photos.db")     # or a server URI
>>> store.search("sketch.png", k=10, rerank_k=50, filter='folder == "animals"')[0]  # list[Hit]
```

URIs ([`parse_store_uri`]): a path ending in `.db` or `milvus:///abs/path.db` (embedded file);
`milvus://host[:port]`, `http://host:port`, `https://host:port` (a server); any of them with
`?collection=NAME` (default `zse_photos`).

Ingest is resumable: rows are written in batches as photos are encoded (an acknowledged insert is
durable: a server logs it before it answers), and
`add(..., existing="skip")` (what `zse-sbir index` does on an existing collection) encodes only
the photos whose ids are not stored yet. A batch is one insert, so a server killed mid-ingest
loses at most the batches it had not acknowledged, and the resumed ingest neither loses nor
duplicates a photo. One writer per collection at a time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch

from ..configuration_zse import default_rerank_k
from ..modeling_zse import ZseImageFeatures
from .encoding import encode_photos, encode_sketches
from .inputs import json_id, resolve_items
from .model_binding import check_model, default_processor, model_fingerprint, model_name
from .quantization import int8_pair_model
from .ranking import check_k, check_rerank_k, ranked_hits, relation_scores
from .records import Hit, Skipped
from .token_codec import FP16, TRAIN_PHOTOS, TokenCodec, default_token_codec, resolve_token_codec, training_sample

FORMAT_NAME = "zse-sbir-milvus-store"
FORMAT_VERSION = 1
DEFAULT_COLLECTION = "zse_photos"
META_SUFFIX = "_zse_meta"
DEFAULT_PORT = 19530
VARCHAR_MAX = 65_535  # Milvus' longest VARCHAR
CHUNK = 65_532  # base64 characters per VARCHAR field (a multiple of 4)
INSERT_ROWS = 256  # rows per insert request (a batch of the resumable ingest)
QUERY_IDS = 1_000  # ids per `id in [...]` lookup
MAX_LIMIT = 16_384  # Milvus' largest search limit (topk)
# searches read this process's own writes without waiting for the server's next time tick
# ("Strong" costs ~200 ms a search on a server); counts and the id checks of an ingest are "Strong"
READ_CONSISTENCY = "Session"
RESERVED_FIELDS = ("id", "ret", "path", "tokens")
VECTOR_INDEXES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "DISKANN", "SCANN", "AUTOINDEX")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")

# Test seam: called with the number of rows written so far after each insert of an ingest
# (tests kill the server there).
insert_hook: Callable[[int], None] | None = None

_LITE_USERS: dict[str, int] = {}  # embedded file -> open stores in this process
_LITE_LOCK = threading.Lock()


class _QuietCalls(logging.Filter):
    """Drops pymilvus' log records (an error with its traceback per failed call, reconnection
    warnings) emitted on a thread while it runs one of this module's calls: the store raises a
    one-line error instead."""

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "depth", 0)


_QUIET = _QuietCalls()


@contextlib.contextmanager
def _quiet():
    _QuietCalls.local.depth = getattr(_QuietCalls.local, "depth", 0) + 1
    try:
        yield
    finally:
        _QuietCalls.local.depth -= 1


def _pymilvus():
    try:
        import pymilvus
    except ImportError as err:
        raise ModuleNotFoundError("the Milvus store needs pymilvus (and milvus-lite for .db files): "
                                  "pip install 'zse-sbir[milvus]'", name="pymilvus") from err
    for name in ("pymilvus", "pymilvus.milvus_client"):  # pymilvus' own handlers (children propagate to them)
        for handler in logging.getLogger(name).handlers:
            if _QUIET not in handler.filters:
                handler.addFilter(_QUIET)
    lite = logging.getLogger("milvus_lite.server_manager")  # a locked .db file: a traceback, then None
    if _QUIET not in lite.filters:
        lite.addFilter(_QUIET)
    return pymilvus


def _reason(err: Exception) -> str:
    """The first line of a pymilvus error without its `<MilvusException: (code=..., message=` wrapper."""
    text = str(err).strip()
    match = re.search(r"message=(.*?)\)>?$", text, re.S)
    text = match.group(1) if match else text
    return (text.strip().splitlines() or [type(err).__name__])[0]


# ----------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class StoreAddress:
    """Where a store lives.

    Args:
        uri: what `pymilvus.MilvusClient` connects to: an embedded `.db` file path (absolute)
            or a server's `http(s)://host:port[/db_name]`.
        collection: the collection's name (its metadata lives in `collection + "_zse_meta"`).
        embedded: True for a Milvus Lite file.
    """

    uri: str
    collection: str
    embedded: bool

    def __str__(self) -> str:
        base = f"milvus://{self.uri}" if self.embedded else self.uri
        return base if self.collection == DEFAULT_COLLECTION else f"{base}?collection={self.collection}"


def is_store_uri(target) -> bool:
    """True when `target` names a database store rather than a faiss index folder: a URL
    (`milvus://`, `http://`, `https://`) or a path ending in `.db`."""
    if not isinstance(target, (str, os.PathLike)):
        return False
    text = os.fspath(target)
    scheme = urlparse(text).scheme.lower()
    return scheme in ("milvus", "http", "https") or text.split("?", 1)[0].endswith(".db")


def parse_store_uri(target, collection: str | None = None) -> StoreAddress:
    """The [`StoreAddress`] of a store URI (see the module docstring); ValueError for anything else.
    `collection` overrides the URI's `?collection=`."""
    text = os.fspath(target)
    base, _, query = text.partition("?")
    params = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(params) - {"collection"})
    if unknown:
        raise ValueError(f"unknown store URI parameter(s) {unknown} in {text!r}; only ?collection=NAME is understood")
    name = collection or (params.get("collection") or [DEFAULT_COLLECTION])[-1]
    if not _NAME.fullmatch(name) or len(name) + len(META_SUFFIX) > 255:
        raise ValueError(f"invalid collection name {name!r}: letters, digits and underscores, not starting with "
                         "a digit")
    parsed = urlparse(base)
    scheme = parsed.scheme.lower()
    if scheme == "milvus" and not parsed.netloc:  # milvus:///path/photos.db
        base, scheme = parsed.path, ""
    if not scheme:
        if not base.endswith(".db"):
            raise ValueError(f"an embedded Milvus store is a file ending in .db, got {base!r}")
        return StoreAddress(str(Path(base).expanduser().absolute()), name, True)
    if scheme not in ("milvus", "http", "https"):
        raise ValueError(f"not a store URI: {text!r} (use a .db file, milvus://host:port or http://host:port)")
    if not parsed.hostname:
        raise ValueError(f"store URI {text!r} names no host")
    port = parsed.port or DEFAULT_PORT
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    http = "https" if scheme == "https" else "http"
    return StoreAddress(f"{http}://{host}:{port}{parsed.path.rstrip('/')}", name, False)


def _quote(value: str) -> str:
    """A Milvus expression string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


# ----------------------------------------------------------------------------- layout


@dataclass
class StoreLayout:
    """What the `<name>_zse_meta` collection records about a store (its `"store"` entry).

    Args:
        format, version: `"zse-sbir-milvus-store"`, 1.
        model: `{"name_or_path", "sha256"}` of the model the rows were encoded with.
        dim: D of the [Ret] embeddings; token_shape: `(N, D)` local tokens per photo; grid_size: `(h, w)`.
        id_type: `"str"` (VARCHAR primary key) or `"int"` (INT64).
        codec: the token codec's record (`TokenCodec.record()` plus its `sha256`), None for float16 tokens.
        token_fields: how many VARCHAR fields (`tokens`, `tokens_1`, ...) hold a photo's base64 tokens.
        vector_index: `{"index_type", "metric_type", "params"}` of the [Ret] field's index.
    """

    model: dict
    dim: int
    token_shape: tuple[int, int]
    grid_size: tuple[int, int]
    id_type: str
    codec: dict | None
    token_fields: int
    vector_index: dict
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    @property
    def token_bytes(self) -> int:
        """Bytes of one photo's packed tokens: the mask's bits, then codes (or float16 tokens)."""
        n, d = self.token_shape
        per_token = self.codec["code_size"] if self.codec else 2 * d
        return math.ceil(n / 8) + n * per_token

    @property
    def token_field_names(self) -> list[str]:
        return ["tokens"] + [f"tokens_{i}" for i in range(1, self.token_fields)]

    @classmethod
    def from_json(cls, text: str, where: str) -> StoreLayout:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT_NAME:
                raise ValueError(f"format {raw.get('format')!r}")
            if int(raw["version"]) > FORMAT_VERSION:
                raise ValueError(f"format version {raw['version']} is newer than this zse-sbir reads "
                                 f"({FORMAT_VERSION}); upgrade zse-sbir")
            raw["token_shape"], raw["grid_size"] = tuple(raw["token_shape"]), tuple(raw["grid_size"])
            return cls(**raw)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{where} is not a zse-sbir store record: {err}") from None


def token_field_count(token_bytes: int) -> int:
    """VARCHAR fields needed for `token_bytes` bytes as base64."""
    return max(1, math.ceil(4 * math.ceil(token_bytes / 3) / CHUNK))


def pack_tokens(tokens: np.ndarray, mask: np.ndarray, fields: int) -> list[list[str]]:
    """Per photo, `fields` base64 strings of its mask bits `[N]` and tokens `[N, C]` (uint8
    codes, or float16 tokens `[N, D]`), from `tokens [m, N, C]` and `mask [m, N]`."""
    bits = np.packbits(np.asarray(mask, dtype=bool), axis=1)
    body = np.ascontiguousarray(tokens).reshape(len(tokens), -1).view(np.uint8)
    rows = np.concatenate([bits, body], axis=1)
    out = []
    for row in rows:
        text = base64.b64encode(row.tobytes()).decode("ascii")
        out.append([text[i * CHUNK:(i + 1) * CHUNK] for i in range(fields)])
    return out


def unpack_tokens(texts: Sequence[str], layout: StoreLayout) -> tuple[np.ndarray, np.ndarray]:
    """`(tokens [m, N, C] uint8 codes or [m, N, D] float16, mask [m, N] bool)` from each photo's
    joined base64 text; ValueError when a row does not have the layout's size."""
    n, d = layout.token_shape
    nbits = math.ceil(n / 8)
    raw = b"".join(base64.b64decode(t) for t in texts)
    m = len(texts)
    if len(raw) != m * layout.token_bytes:
        raise ValueError(f"stored tokens are {len(raw)} bytes for {m} photos, expected {layout.token_bytes} each: "
                         "the collection does not match its record")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(m, layout.token_bytes)
    mask = np.unpackbits(rows[:, :nbits], axis=1, count=n).astype(bool)
    body = np.ascontiguousarray(rows[:, nbits:])
    if layout.codec:
        return body.reshape(m, n, layout.codec["code_size"]), mask
    return body.view(np.float16).reshape(m, n, d), mask


# ----------------------------------------------------------------------------- the store


class ZseMilvusStore:
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
        self.model = model
        self.processor = processor if processor is not None or model is None else default_processor(model)
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
        try:
            with warnings.catch_warnings(), _quiet():
                warnings.simplefilter("ignore")
                self.client = pymilvus.MilvusClient(uri=address.uri, token=token or "", timeout=timeout)
        except Exception as err:  # noqa: BLE001 (pymilvus raises its own and grpc errors)
            hint = " (an embedded file is opened by one process at a time)" if address.embedded else ""
            raise ValueError(f"cannot connect to the Milvus store {address}: {_reason(err)}{hint}") from None
        if address.embedded:
            self._embedded_key = address.uri
            with _LITE_LOCK:
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

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(cls, uri, model=None, processor=None, *, collection: str | None = None, token: str | None = None,
             timeout: float | None = 60.0, load_timeout: float = 600.0) -> ZseMilvusStore:
        """Open an existing store.

        Args:
            uri: the store URI (see [`parse_store_uri`]) or a [`StoreAddress`].
            model: the model it was built with (checked by weights fingerprint; needed to search
                with sketches); None opens it without one (see [`attach_model`]).
            processor: default: derived from `model.config`.
            collection: overrides the URI's `?collection=`.
            token: a Milvus server's token (`"user:password"` or an API key).
            timeout: seconds per database call; load_timeout: seconds to wait for the collection
                to be loaded for search (a restarted server replays its log first).

        Raises:
            ValueError: no such collection, not a zse-sbir store, another model's store, or
                the database cannot be reached (one line).
        """
        address = uri if isinstance(uri, StoreAddress) else parse_store_uri(uri, collection)
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

    def _write_record(self, layout: StoreLayout, codec: TokenCodec | None) -> None:
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
        self._call("flush", c.flush, self._meta_name)

    def _create_data_collection(self) -> None:
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

    def _ensure_loaded(self, timeout: float, name: str | None = None) -> None:
        name = name or self.address.collection
        c = self._client()
        state = self._call("load state", c.get_load_state, name).get("state")
        if "Loaded" not in str(state):
            self._call("load", c.load_collection, name, timeout=timeout)

    def _create(self, dim: int, token_shape, grid_size, id_type: str, codec: TokenCodec | None) -> None:
        """Write the record and create the collection for the first photos' shapes."""
        if self.model is None:
            raise ValueError("creating a store needs the model it is built with: pass model=")
        record = None
        if codec is not None:
            record = {**codec.record(), "sha256": codec.sha256}
            record.pop("file", None)
        n_bytes = math.ceil(token_shape[0] / 8) + token_shape[0] * (codec.code_size if codec else 2 * token_shape[1])
        layout = StoreLayout(model={"name_or_path": model_name(self.model), "sha256": model_fingerprint(self.model)},
                             dim=int(dim), token_shape=tuple(int(x) for x in token_shape),
                             grid_size=tuple(int(x) for x in grid_size), id_type=id_type, codec=record,
                             token_fields=token_field_count(n_bytes), vector_index=self.vector_index)
        self._write_record(layout, codec)
        self.layout, self.token_codec = layout, codec
        self._create_data_collection()

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
        return self.layout.grid_size if self.layout else None

    @property
    def model_info(self) -> dict | None:
        """`{"name_or_path", "sha256"}` of the model the store was built with."""
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
        """Ids of all stored photos (database order)."""
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

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, model, processor, images_or_paths, ids: Sequence | None = None, *, uri,
              collection: str | None = None, metadata: Sequence[dict] | None = None, token_codec=None,
              vector_index: str | None = None,
              index_params: dict | None = None, batch_size: int = 32, device: str | torch.device | None = None,
              num_workers: int = 0, progress: bool = True, existing: str = "error", recreate: bool = False,
              token: str | None = None, timeout: float | None = 60.0) -> ZseMilvusStore:
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
            token, timeout: see [`open`].

        Raises:
            ValueError: a collection built with other weights (one line), bad arguments.
        """
        store = cls._for_writing(uri, model, processor, collection, token_codec, vector_index, index_params, recreate,
                                 token, timeout)
        try:
            store.add(images_or_paths, ids=ids, metadata=metadata, batch_size=batch_size, device=device,
                      num_workers=num_workers, progress=progress, existing=existing)
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

    def attach_model(self, model, processor=None) -> ZseMilvusStore:
        """Use `model` (and `processor`, default derived from its config) to encode and re-rank;
        ValueError (one line) when its weights differ from the ones the store was built with."""
        if self.layout is not None:
            check_model(self.layout.model, model, "collection")
        self.model = model
        self.processor = processor if processor is not None else default_processor(model)
        return self

    def _int8_model(self):
        if self._int8 is None or self._int8[0] is not self.model:
            self._int8 = (self.model, int8_pair_model(self.model))
        return self._int8[1]

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
            progress: bool = True, existing: str = "error") -> list[Skipped]:
        """Encode photos and store them (arguments as [`build`]); returns the items skipped as
        unreadable by this call (also appended to `self.skipped`). Rows are written in batches
        of `INSERT_ROWS` as they are encoded; rerun with `existing="skip"` to resume an ingest
        that stopped."""
        if self.model is None:
            raise ValueError("no model attached: pass model= or call attach_model() first")
        items, item_ids, item_paths = resolve_items(images_or_paths, ids)
        metadata = self._check_metadata(metadata, len(items))
        skip = self._plan(item_ids, existing)
        selected = [p for p in range(len(items)) if item_ids[p] not in skip]
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

    def upsert(self, images_or_paths, ids: Sequence | None = None, metadata: Sequence[dict] | None = None,
               **kwargs) -> list[Skipped]:
        """Encode photos and store them, replacing stored photos of the same ids (`add(...,
        existing="replace")`)."""
        return self.add(images_or_paths, ids=ids, metadata=metadata, existing="replace", **kwargs)

    def add_features(self, ret_embeds, local_tokens, token_mask=None, grid_size=None, ids: Sequence | None = None,
                     paths: Sequence | None = None, metadata: Sequence[dict] | None = None, existing: str = "error",
                     progress: bool = True, chunk: int = 4096) -> int:
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
            self._call("upsert" if replace else "insert", op, self.address.collection, rows)
            written += len(rows)
            if insert_hook is not None:
                insert_hook(written)
        return len(ids)

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
