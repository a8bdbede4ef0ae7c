"""Tampered and malformed index directories: each gives one `ValueError` line naming the file,
never a traceback from deeper down, and nothing outside the index directory is read."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from zse_hf.retrieval import Skipped, ZseIndex, load_token_codec, search_main
from zse_hf.retrieval.faiss_index import faiss

N, DIM, TOK = 12, 8, (4, 8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((N, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tokens = rng.standard_normal((N, *TOK)).astype(np.float32)
    root = tmp_path_factory.mktemp("tamper")
    index = ZseIndex.from_features(emb, tokens, grid_size=(2, 2), ids=[f"p{i}" for i in range(N)], work_dir=root,
                                   token_codec="fp16")  # the fp16 format; `coded` below has a codec
    index.skipped.append(Skipped(N, "bad", "bad.png", "unreadable"))
    return index.save(root / "idx")


def _copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "idx"))


def _edit_manifest(folder: Path, edit) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _replace_file(folder: Path, name: str, data: bytes) -> None:
    """Put `data` in `name` and update the manifest's size and sha256, as a careful forger would."""
    (folder / name).write_bytes(data)

    def edit(m):
        m["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    _edit_manifest(folder, edit)


def _one_line_error(folder: Path, match: str, verify: bool = True) -> str:
    with pytest.raises(ValueError, match=match) as info:
        ZseIndex.load(folder, verify=verify)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_untampered_copy_loads(saved, tmp_path):
    index = ZseIndex.load(_copy(saved, tmp_path))
    assert len(index) == N and index.skipped[0].reason == "unreadable"


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "sub/x.npy", ".hidden", "", "manifest.json"])
def test_files_outside_the_directory_are_refused(saved, tmp_path, name):
    folder = _copy(saved, tmp_path)
    _edit_manifest(folder, lambda m: m["files"].update({name: {"bytes": 1, "sha256": "0" * 64}}))
    message = _one_line_error(folder, "not a file name inside the index directory")
    assert "manifest.json" in message and "root:" not in message


@pytest.mark.parametrize("path", ["/etc/passwd", "../idx/tokens-0000.npy"])
def test_segment_paths_outside_the_directory_are_refused_even_unverified(saved, tmp_path, path):
    folder = _copy(saved, tmp_path)

    def edit(m):
        m["segments"][0]["tokens"] = path
        m["files"][path] = m["files"].pop("tokens-0000.npy")

    _edit_manifest(folder, edit)
    _one_line_error(folder, "not a file name inside", verify=False)


def test_every_file_must_be_listed_and_every_listed_file_used(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_manifest(folder, lambda m: m["files"].pop("mask-0000.npy"))
    _one_line_error(folder, "mask-0000.npy not listed in files", verify=False)
    shutil.rmtree(folder)
    folder = _copy(saved, tmp_path)
    (folder / "extra.bin").write_bytes(b"x")
    _edit_manifest(folder, lambda m: m["files"].update({"extra.bin": {"bytes": 1, "sha256": "a" * 64}}))
    _one_line_error(folder, "extra.bin, which no part of the index uses")


@pytest.mark.parametrize("key", ["files", "tokens", "segments", "model", "embedding_dim", "search_params", "shard"])
def test_missing_manifest_keys(saved, tmp_path, key):
    folder = _copy(saved, tmp_path)
    _edit_manifest(folder, lambda m: m.pop(key))
    assert key in _one_line_error(folder, "manifest.json is malformed: missing")


@pytest.mark.parametrize("key,value,match", [
    ("tokens", "yes", "tokens must be an object"),
    ("files", [], "files must be an object"),
    ("segments", {"rows": 1}, "segments must be a list"),
    ("embedding_dim", -3, "embedding_dim must be an integer"),
    ("search_params", {"nprobe": 0}, "search_params.nprobe must be an integer >= 1"),
    ("search_params", {"bogus": 1}, "search_params must be an object with keys among"),
    ("model", {"sha256": 3}, "model must be null or"),
])
def test_malformed_manifest_fields(saved, tmp_path, key, value, match):
    folder = _copy(saved, tmp_path)
    _edit_manifest(folder, lambda m: m.update({key: value}))
    _one_line_error(folder, match)


def test_projection_fields_are_checked(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_manifest(folder, lambda m: m["tokens"].update(projections="yes"))
    _one_line_error(folder, "tokens.projections must be a boolean")
    _edit_manifest(folder, lambda m: m["tokens"].update(projections=True))  # claimed, but no segment has them
    _one_line_error(folder, r"segments\[0\] has no projections file")
    _edit_manifest(folder, lambda m: (m["tokens"].update(projections=False),
                                      m["segments"][0].update(projections="tokens-0000.npy")))
    _one_line_error(folder, "names a projections file but the index stores no projections")


def test_manifest_not_json_and_not_a_directory(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "manifest.json").write_text("{not json")
    _one_line_error(folder, "manifest.json is not valid JSON")
    (tmp_path / "file").write_text("x")
    _one_line_error(tmp_path / "file", "not a ZseIndex directory")
    _one_line_error(tmp_path / "nowhere", "not a ZseIndex directory")


@pytest.mark.parametrize("data,match", [
    (b"\x00\xffgarbage", "rows.json is not valid JSON"),
    (b'{"ids": [], "paths": [], "positions": [], "skipped": []}', "ids has 0 entries, the segments hold 12"),
    (json.dumps({"ids": [f"p{i}" for i in range(N)], "paths": [None] * N, "positions": list(range(N)),
                 "skipped": [{"position": "x"}]}).encode(), r"skipped\[0\] must be"),
    (json.dumps({"ids": ["p0"] * N, "paths": [None] * N, "positions": list(range(N)), "skipped": []}).encode(),
     "ids are not unique"),
    (json.dumps({"ids": [[1]] * N, "paths": [None] * N, "positions": list(range(N)), "skipped": []}).encode(),
     "ids must be strings"),
    (b"[1, 2]", "must be an object with the lists"),
])
def test_garbage_rows_with_a_matching_checksum(saved, tmp_path, data, match):
    folder = _copy(saved, tmp_path)
    _replace_file(folder, "rows.json", data)
    assert "rows.json" in _one_line_error(folder, match)


def test_garbage_faiss_with_a_matching_checksum(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _replace_file(folder, "index.faiss", b"IxF2" + os.urandom(200))
    assert "index.faiss" in _one_line_error(folder, "not a faiss index this faiss can read")
    other = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM + 1))
    other.add_with_ids(np.zeros((N, DIM + 1), np.float32), np.arange(N))
    _replace_file(folder, "index.faiss", faiss.serialize_index(other).tobytes())
    _one_line_error(folder, "does not match its manifest")
    wrong_ids = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    wrong_ids.add_with_ids(np.zeros((N, DIM), np.float32), np.arange(N) + 1000)
    _replace_file(folder, "index.faiss", faiss.serialize_index(wrong_ids).tobytes())
    _one_line_error(folder, "does not match rows.json")


def test_segment_files_with_a_matching_checksum_but_wrong_content(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    buf = io.BytesIO()
    np.save(buf, np.zeros((N, DIM), np.float64))
    _replace_file(folder, "embeddings-0000.npy", buf.getvalue())
    _one_line_error(folder, r"embeddings-0000.npy holds float64 \[12, 8\], expected float32 \[12, 8\]")
    _replace_file(folder, "embeddings-0000.npy", b"not an npy file at all")
    _one_line_error(folder, "embeddings-0000.npy is not a valid .npy file")
    pickled = io.BytesIO()  # an object array would need pickle to read: refused by its header
    np.lib.format.write_array_header_1_0(pickled, {"descr": "|O", "fortran_order": False, "shape": (N, DIM)})
    _replace_file(folder, "embeddings-0000.npy", pickled.getvalue() + b"\x00" * 64)
    _one_line_error(folder, "embeddings-0000.npy holds object")


def test_a_symlink_to_an_outside_file_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    outside = tmp_path / "outside.npy"
    shutil.copy(folder / "tokens-0000.npy", outside)
    (folder / "tokens-0000.npy").unlink()
    (folder / "tokens-0000.npy").symlink_to(outside)
    _one_line_error(folder, "tokens-0000.npy is a symbolic link", verify=False)


def test_cli_search_prints_one_line(saved, tmp_path, capsys):
    folder = _copy(saved, tmp_path)
    _edit_manifest(folder, lambda m: m["files"].update({"../../../../etc/passwd": {"bytes": 1, "sha256": "0" * 64}}))
    assert search_main([str(folder), "sketch.png", "--model", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a file name inside the index directory" in err


# ----------------------------------------------------------------------------- token codec file


@pytest.fixture(scope="module")
def coded(tmp_path_factory) -> Path:
    """An index whose tokens are stored as SQ8 codes (token_codec.faiss + uint8 token codes)."""
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((N, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    root = tmp_path_factory.mktemp("coded")
    index = ZseIndex.from_features(emb, rng.standard_normal((N, *TOK)).astype(np.float32), grid_size=(2, 2),
                                   ids=[f"p{i}" for i in range(N)], work_dir=root, token_codec="sq8")
    return index.save(root / "idx")


def _codec_bytes(factory: str, dim: int, vectors: int = 0) -> bytes:
    codec = faiss.index_factory(dim, factory)
    x = np.random.default_rng(0).standard_normal((64, dim)).astype(np.float32)
    if not codec.is_trained or factory == "SQ8":
        codec.train(x)
    if vectors:
        codec.add(x[:vectors])
    return faiss.serialize_index(codec).tobytes()


def test_untampered_codec_index_loads(coded, tmp_path):
    index = ZseIndex.load(_copy(coded, tmp_path))
    assert len(index) == N and index.token_codec.name == "sq8"
    assert index.local_tokens(["p0"]).local_tokens.shape == (1, *TOK)


def test_codec_file_changed_truncated_missing_or_linked(coded, tmp_path):
    folder = _copy(coded, tmp_path)
    data = bytearray((folder / "token_codec.faiss").read_bytes())
    data[-1] ^= 0xFF
    (folder / "token_codec.faiss").write_bytes(bytes(data))
    _one_line_error(folder, "token_codec.faiss is corrupt: its sha256 does not match")
    with pytest.raises(ValueError, match="token_codec.faiss is corrupt"):
        load_token_codec(folder)  # reusing a tampered index's codec is refused the same way
    (folder / "token_codec.faiss").write_bytes(bytes(data[:-5]))
    _one_line_error(folder, "token_codec.faiss is truncated or changed", verify=False)
    (folder / "token_codec.faiss").unlink()
    _one_line_error(folder, "token_codec.faiss is missing", verify=False)
    outside = tmp_path / "outside.faiss"
    shutil.copy(coded / "token_codec.faiss", outside)
    (folder / "token_codec.faiss").symlink_to(outside)
    _one_line_error(folder, "token_codec.faiss is a symbolic link", verify=False)


@pytest.mark.parametrize("data,match", [
    (b"IxSQ" + bytes(range(200)), "token_codec.faiss is not a faiss index this faiss can read"),
    (_codec_bytes("SQ4", TOK[1]), r"does not match its manifest: a codec of 4 bytes per token"),
    (_codec_bytes("SQ4", 2 * TOK[1]), "does not match its manifest: a codec for width 16, the tokens are 8 wide"),
    (_codec_bytes("HNSW8", TOK[1]), "not a token codec: its faiss index has no standalone codec"),
    (_codec_bytes("Flat", TOK[1], vectors=3), r"not a token codec: a trained, empty faiss index is expected"),
    (faiss.serialize_index(faiss.index_factory(TOK[1], "SQ8")).tobytes(), "not a token codec"),  # untrained
])
def test_codec_file_with_a_matching_checksum_but_wrong_content(coded, tmp_path, data, match):
    folder = _copy(coded, tmp_path)
    _replace_file(folder, "token_codec.faiss", data)
    assert "token_codec.faiss" in _one_line_error(folder, match)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.update(codec="yes"), "tokens.codec must be null or"),
    (lambda t: t["codec"].update(code_size=0), "tokens.codec.code_size must be an integer >= 1"),
    (lambda t: t["codec"].update(lossy="no"), "tokens.codec must be null or"),
    (lambda t: t["codec"].update(file="../../etc/passwd"), "not a file name inside the index directory"),
    (lambda t: t["codec"].update(file="other.faiss"), "other.faiss not listed in files"),
    (lambda t: t.update(projections=True), "tokens.codec needs stored tokens and no stored projections"),
    (lambda t: t.pop("codec"), "files lists token_codec.faiss, which no part of the index uses"),
])
def test_codec_manifest_fields_are_checked(coded, tmp_path, edit, match):
    folder = _copy(coded, tmp_path)
    _edit_manifest(folder, lambda m: edit(m["tokens"]))
    _one_line_error(folder, match, verify=False)


def test_codec_index_tokens_must_be_codes(coded, tmp_path):
    folder = _copy(coded, tmp_path)
    buf = io.BytesIO()
    np.save(buf, np.zeros((N, *TOK), np.float16))  # float16 tokens under a codec manifest
    _replace_file(folder, "tokens-0000.npy", buf.getvalue())
    _one_line_error(folder, r"tokens-0000.npy holds float16 \[12, 4, 8\], expected uint8 \[12, 4, 8\]")
