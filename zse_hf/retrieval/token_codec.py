"""Compressed local tokens: a faiss standalone codec (`sa_encode` / `sa_decode`) over the token
width D, one codec vector per token (each row of a photo's `[N, D]` grid).

Codec names (`ZseIndex.build(..., token_codec=NAME)`, `zse-sbir index --token-codec NAME`):

    fp16      no codec: the exact float16 store (2*D bytes per token)
    sq8       LOSSY  faiss "SQ8": 8-bit scalar quantizer, D bytes per token
    sq6       LOSSY  faiss "SQ6": 3*D/4 bytes per token (the default of new indexes)
    sq4       LOSSY  faiss "SQ4": D/2 bytes per token
    pqM       LOSSY  faiss "PQMx8": product quantizer, M bytes per token (D divisible by M)
    opqM      LOSSY  faiss "OPQM,PQMx8": the same after a learned rotation
    rqM       LOSSY  faiss "RQMx8": residual quantizer, M bytes per token

Any other string is used as a faiss factory string (it must give an index with a standalone
codec); "Flat" (float32) and "SQfp16" reproduce the fp16 tokens exactly and are not lossy.

A codec is trained once, when an index first stores tokens, on a seeded sample of that
segment's kept tokens (at most `TRAIN_PHOTOS` photos, `TRAIN_VECTORS` vectors). Every token
is rounded to float16 before it is encoded (as the fp16 store does), so a build that trains
its codec and one given the trained codec store the same codes. The codec is kept as the
bytes of `faiss.serialize_index` (never pickle); its identity is their sha256.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from .faiss_index import faiss

FP16 = "fp16"
# the default of new indexes, picked by the codec rule in docs/retrieval.md: the smallest codec
# within 0.005 rn@10 of fp16 on validation and test with >= 0.95 of the top-10 positions unchanged
DEFAULT_TOKEN_CODEC = "sq6"
CODEC_FILE = "token_codec.faiss"
TRAIN_PHOTOS = 256  # a codec is trained on the kept tokens of at most this many photos ...
TRAIN_VECTORS = 65_536  # ... and at most this many token vectors
NAMED_CODECS = {"sq8": "SQ8", "sq6": "SQ6", "sq4": "SQ4"}
_PATTERNS = ((re.compile(r"pq([1-9][0-9]*)"), "PQ{m}x8"), (re.compile(r"opq([1-9][0-9]*)"), "OPQ{m},PQ{m}x8"),
             (re.compile(r"rq([1-9][0-9]*)"), "RQ{m}x8"))
CODEC_HELP = (f"{DEFAULT_TOKEN_CODEC} (the default; LOSSY), fp16 (exact float16 tokens, 2*D bytes per token), or "
              "another LOSSY faiss codec trained on the gallery: sq8 (D bytes per token), sq6 (3D/4), sq4 (D/2), pqM "
              "(M bytes; D divisible by M), opqM (M bytes, rotated first), rqM (M bytes), or a faiss factory string "
              "with a standalone codec")


def default_token_codec(token_codec=None, store_local_tokens: bool = True, store_projections: bool = False,
                        sharded: bool = False):
    """`token_codec` for a new index: as given, or when None the default codec
    (`DEFAULT_TOKEN_CODEC`, LOSSY), except `"fp16"` with stored projections (float16 only) and for
    one shard of a sharded build (shards that each trained a codec could not be merged; share one
    with `token_codec=<a shard's directory>`), and None when no tokens are stored."""
    if token_codec is not None:
        return token_codec
    if not store_local_tokens:
        return None
    return FP16 if store_projections or sharded else DEFAULT_TOKEN_CODEC


def codec_factory(name: str) -> tuple[str, str | None]:
    """`(name, faiss factory)` of a codec name (`"sq8"` -> `("sq8", "SQ8")`) or a raw faiss factory
    string (`("PQ16x8", "PQ16x8")`); `fp16` gives `("fp16", None)`."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"token_codec must be a codec name or a faiss factory string, got {name!r}")
    key = name.strip()
    if key.lower() == FP16:
        return FP16, None
    if key.lower() in NAMED_CODECS:
        return key.lower(), NAMED_CODECS[key.lower()]
    for pattern, factory in _PATTERNS:
        match = pattern.fullmatch(key.lower())
        if match:
            return key.lower(), factory.format(m=match.group(1))
    return key, key


def new_codec(factory: str, dim: int):
    """An untrained faiss index for `factory` over width `dim` that has a standalone codec;
    ValueError for an invalid factory string or an index without `sa_encode`."""
    try:
        codec = faiss.index_factory(int(dim), factory)
    except RuntimeError as err:
        raise ValueError(f"invalid token codec {factory!r} for tokens of width {dim}: {faiss_reason(err)}") from None
    _code_size(codec, factory)
    return codec


def faiss_reason(err: Exception) -> str:
    """The last line of a faiss error without its `Error in <function> at <file>:<line>:` prefix."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[-1]
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", line)


def _code_size(codec, what) -> int:
    try:
        return int(codec.sa_code_size())
    except RuntimeError:
        raise ValueError(f"faiss {type(faiss.downcast_index(codec)).__name__} ({what}) has no standalone codec "
                         "(sa_encode); use SQ, PQ, RQ or Flat") from None


def is_lossless(codec) -> bool:
    """True when decoding gives back float16-rounded tokens exactly (Flat, SQfp16)."""
    core = faiss.downcast_index(codec)
    if isinstance(core, faiss.IndexFlat):
        return True
    return isinstance(core, faiss.IndexScalarQuantizer) and core.sq.qtype == faiss.ScalarQuantizer.QT_fp16


def training_sample(tokens: np.ndarray, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Token vectors `[V, D]` float32 to train a codec on: the kept tokens (mask True; all tokens
    when none is kept) of a seeded sample of at most `TRAIN_PHOTOS` photos of `tokens [n, N, D]`
    (masks `[n, N]`), at most `TRAIN_VECTORS` of them (a seeded subsample)."""
    rng = np.random.default_rng(seed)
    n = len(tokens)
    rows = np.sort(rng.choice(n, min(n, TRAIN_PHOTOS), replace=False))
    x = np.asarray(tokens[rows], dtype=np.float16).astype(np.float32)
    kept = np.asarray(mask[rows], dtype=bool)
    vectors = x[kept] if kept.any() else x.reshape(-1, x.shape[-1])
    if len(vectors) > TRAIN_VECTORS:
        vectors = vectors[np.sort(rng.choice(len(vectors), TRAIN_VECTORS, replace=False))]
    return np.ascontiguousarray(vectors)


class TokenCodec:
    """A trained faiss codec for local tokens of width `dim`.

    Attributes:
        name: the codec's name (`"sq8"`, a factory string, or `"custom"` for a codec file of
            unknown factory); `factory`: its faiss factory string (None when unknown).
        data: the `faiss.serialize_index` bytes (what is saved); `sha256`: their digest.
        code_size: bytes per token; `dim`: D; `lossy`: False only for Flat / SQfp16.
    """

    def __init__(self, codec, data: bytes, name: str, factory: str | None):
        """Wrap a trained faiss `codec` whose serialization is `data`."""
        self.codec, self.data, self.name, self.factory = codec, bytes(data), name, factory
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.dim, self.code_size = int(codec.d), _code_size(codec, factory or name)
        self.lossy = not is_lossless(codec)

    def __repr__(self) -> str:
        return (f"TokenCodec({self.name!r}, factory={self.factory!r}, {self.code_size} B/token, "
                f"{'LOSSY' if self.lossy else 'lossless'}, sha256={self.sha256[:12]})")

    def __eq__(self, other) -> bool:
        return isinstance(other, TokenCodec) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    @classmethod
    def train(cls, name: str, factory: str, vectors: np.ndarray) -> TokenCodec:
        """Train `factory` on token vectors `[V, D]` (see [`training_sample`])."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        codec = new_codec(factory, vectors.shape[1])
        try:
            codec.train(vectors)
        except RuntimeError as err:
            raise ValueError(f"cannot train token codec {factory!r} on {len(vectors)} token vectors: "
                             f"{faiss_reason(err)}. An 8-bit PQ/RQ needs at least 256 vectors; use sq8 for small "
                             "galleries") from None
        return cls(codec, faiss.serialize_index(codec).tobytes(), name, factory)

    @classmethod
    def from_bytes(cls, data: bytes, where, name: str | None = None, factory: str | None = None,
                   record: dict | None = None) -> TokenCodec:
        """The codec serialized in `data` (read from `where`), checked to be a trained, empty
        index with a standalone codec and, with `record` (a manifest's `tokens.codec`), to
        match it; ValueError naming `where` otherwise. Without `name`: its factory when faiss
        can tell it, else `"custom"`."""
        try:
            codec = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (RuntimeError, ValueError, TypeError, MemoryError) as err:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise ValueError(f"index file {where} is not a faiss index this faiss can read: {reason}") from None
        if not codec.is_trained or codec.ntotal != 0:
            raise ValueError(f"index file {where} is not a token codec: a trained, empty faiss index is expected "
                             f"(trained {codec.is_trained}, {codec.ntotal} vectors)")
        try:
            codec.sa_code_size()
        except RuntimeError:
            raise ValueError(f"index file {where} is not a token codec: its faiss index has no standalone "
                             "codec") from None
        if name is None:
            factory = _factory_of(codec)
            name = factory or "custom"
        out = cls(codec, data, name, factory)
        if record is not None:
            want = (record["code_size"], record["lossy"])
            if (out.code_size, out.lossy) != want:
                raise ValueError(f"index file {where} does not match its manifest: a codec of "
                                 f"{out.code_size} bytes per token (lossy {out.lossy}), expected {want[0]} "
                                 f"(lossy {want[1]})")
        return out

    def encode(self, tokens) -> np.ndarray:
        """Codes `[m, N, code_size]` uint8 of tokens `[m, N, D]` (rounded to float16 first)."""
        x = np.asarray(tokens, dtype=np.float16)
        m, n, d = x.shape
        if d != self.dim:
            raise ValueError(f"tokens of width {d} do not fit the token codec (width {self.dim})")
        if m * n == 0:
            return np.empty((m, n, self.code_size), dtype=np.uint8)
        codes = self.codec.sa_encode(np.ascontiguousarray(x.reshape(-1, d), dtype=np.float32))
        return codes.reshape(m, n, self.code_size)

    def decode(self, codes) -> np.ndarray:
        """Tokens `[m, N, D]` float32 decoded from codes `[m, N, code_size]` uint8."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        m, n, c = codes.shape
        if m * n == 0:
            return np.empty((m, n, self.dim), dtype=np.float32)
        return self.codec.sa_decode(codes.reshape(-1, c)).reshape(m, n, self.dim)

    def description(self) -> str:
        """One line for manifests and logs, e.g. `LOSSY: faiss SQ8 codes, 384 bytes per token`."""
        kind = "LOSSY" if self.lossy else "lossless (float16-exact)"
        return f"{kind}: faiss {self.factory or self.name} codes, {self.code_size} bytes per token"

    def record(self) -> dict:
        """The manifest's `tokens.codec` entry."""
        return {"name": self.name, "factory": self.factory, "lossy": self.lossy, "code_size": self.code_size,
                "description": self.description(), "file": CODEC_FILE}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the codec's bytes to the file `path` (reusable with `token_codec=path`)."""
        path = Path(path)
        path.write_bytes(self.data)
        return path


def _factory_of(codec) -> str | None:
    try:
        from faiss.contrib.factory_tools import reverse_index_factory

        return reverse_index_factory(codec)
    except Exception:  # noqa: BLE001 (faiss raises several kinds for factories it cannot reverse)
        return None


def load_token_codec(path: str | os.PathLike) -> TokenCodec:
    """The trained codec of a saved index directory (checked against its manifest: size and
    sha256) or of a codec file (an index's `token_codec.faiss`, or one written by
    [`TokenCodec.save`]); ValueError otherwise."""
    from .manifest import read_manifest

    p = Path(path)
    if p.is_dir():
        manifest = read_manifest(p)
        record = manifest["tokens"].get("codec")
        if record is None:
            raise ValueError(f"{p} stores float16 tokens (no token codec) and has no codec to reuse")
        file = p / record["file"]
        if file.is_symlink() or not file.is_file():
            raise ValueError(f"index file {file} is missing or not a regular file")
        data = file.read_bytes()
        meta = manifest["files"][record["file"]]
        if len(data) != meta["bytes"]:
            raise ValueError(f"index file {file} is truncated or changed: {len(data)} bytes, expected {meta['bytes']}")
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise ValueError(f"index file {file} is corrupt: its sha256 does not match the manifest")
        return TokenCodec.from_bytes(data, file, record["name"], record["factory"], record)
    if p.is_file():
        return TokenCodec.from_bytes(p.read_bytes(), p)
    raise ValueError(f"token codec {p} does not exist (give an index directory or a codec file)")


def resolve_token_codec(token_codec) -> TokenCodec | tuple[str, str] | None:
    """What `token_codec=` asks for: None (fp16), a trained [`TokenCodec`] (given, or loaded from
    a path: an index directory or a codec file), or `(name, factory)` to train. A string is a
    codec name first, then an existing path, then a faiss factory string; pass a `Path` to
    mean a path."""
    if token_codec is None or isinstance(token_codec, TokenCodec):
        return token_codec
    if isinstance(token_codec, os.PathLike):
        return load_token_codec(token_codec)
    if not isinstance(token_codec, str):
        raise ValueError(f"token_codec must be a name, a faiss factory string, a path or a TokenCodec, "
                         f"got {type(token_codec).__name__}")
    name, factory = codec_factory(token_codec)
    if factory is None:
        return None
    if factory == name and name not in NAMED_CODECS.values() and os.path.exists(token_codec):
        return load_token_codec(token_codec)
    return name, factory
