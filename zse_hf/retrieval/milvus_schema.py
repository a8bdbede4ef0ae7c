"""How a photo store looks in Milvus, and the plumbing under [`ZseMilvusStore`]: store URIs
([`parse_store_uri`] -> [`StoreAddress`]), the record a store keeps beside its collection
([`StoreLayout`]), the token codes packed as base64 text ([`pack_tokens`] / [`unpack_tokens`]),
and pymilvus calls made quiet (a one-line error instead of logged tracebacks)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import parse_qs, urlparse

import numpy as np

FORMAT_NAME = "zse-sbir-milvus-store"
FORMAT_VERSION = 1
DEFAULT_COLLECTION = "zse_photos"
META_SUFFIX = "_zse_meta"
DEFAULT_PORT = 19530
VARCHAR_MAX = 65_535  # Milvus' longest VARCHAR
CHUNK = 65_532  # base64 characters per VARCHAR field (a multiple of 4)
QUERY_IDS = 1_000  # ids per `id in [...]` lookup
MAX_LIMIT = 16_384  # Milvus' largest search limit (topk)
# searches read this process's own writes without waiting for the server's next time tick
# ("Strong" costs ~200 ms a search on a server); counts and the id checks of an ingest are "Strong"
READ_CONSISTENCY = "Session"
RESERVED_FIELDS = ("id", "ret", "path", "tokens")
VECTOR_INDEXES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "DISKANN", "SCANN", "AUTOINDEX")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")

class _QuietCalls(logging.Filter):
    """Drops pymilvus' log records (an error with its traceback per failed call, reconnection
    warnings) emitted on a thread while it runs one of this module's calls: the store raises a
    one-line error instead."""

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "depth", 0)


_QUIET = _QuietCalls()


@contextlib.contextmanager
def _unchecked_strings():
    """pymilvus' row insert checks a VARCHAR value by iterating over it (a Python loop over each of the
    ~25k characters of a photo's tokens: ~3 ms a row); the store checks its lengths itself, so the check
    is skipped while it inserts (the server checks them again)."""
    try:
        from pymilvus.client import entity_helper
    except ImportError:  # another pymilvus layout: keep its check
        yield
        return
    before = getattr(entity_helper, "CHECK_STR_ARRAY", None)
    if before is None:
        yield
        return
    entity_helper.CHECK_STR_ARRAY = False
    try:
        yield
    finally:
        entity_helper.CHECK_STR_ARRAY = before


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
        model: `{"name_or_path", "sha256", "photo_crop"}`: the model the rows were encoded with, and
            the image processor's `photo_crop` for their photos (absent in older records: None).
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
