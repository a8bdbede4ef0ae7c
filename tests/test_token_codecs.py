"""Compressed local tokens through faiss standalone codecs: names, training, save / load, `add`,
shards sharing one codec, re-rank agreement with the float16 store, CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from zse_hf import ZseModel, ZseProcessor, retrieval
from zse_hf.retrieval import TokenCodec, ZseIndex, load_token_codec
from zse_hf.retrieval.faiss_index import faiss
from zse_hf.retrieval.token_codec import (
    CODEC_FILE,
    DEFAULT_TOKEN_CODEC,
    TRAIN_PHOTOS,
    TRAIN_VECTORS,
    codec_factory,
    default_token_codec,
    resolve_token_codec,
    training_sample,
)

from conftest import tiny_config

pytestmark = [pytest.mark.filterwarnings("ignore:skipped .* unreadable"), pytest.mark.usefixtures("one_thread")]
N_PHOTOS, N_SKETCHES = 24, 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ZseModel(tiny_config(initializer_range=0.5)).eval()  # larger init: relation scores spread out


@pytest.fixture(scope="module")
def processor(model):
    return ZseProcessor.from_config(model.config)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(N_PHOTOS):
        img = Image.new("RGB", (64, 64), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(2):
            x0, y0 = (int(v) for v in rng.integers(0, 30, 2))
            box = [x0, y0, x0 + int(rng.integers(10, 34)), y0 + int(rng.integers(10, 34))]
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(int(c) for c in
                                                                                      rng.integers(0, 256, 3)))
        img.save(folder / f"p{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def sketches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sketches")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(N_SKETCHES):
        img = Image.new("L", (80, 80), 255)
        ImageDraw.Draw(img).line([tuple(int(v) for v in rng.integers(0, 80, 2)) for _ in range(4)], fill=0, width=3)
        paths.append(str(folder / f"s{i}.png"))
        img.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def fp16(model, processor, photo_dir):
    return ZseIndex.build(model, processor, photo_dir, index_factory="Flat", batch_size=8, progress=False,
                          token_codec="fp16")


@pytest.fixture(scope="module")
def sq8(model, processor, photo_dir):
    return ZseIndex.build(model, processor, photo_dir, index_factory="Flat", batch_size=8, progress=False,
                          token_codec="sq8")


def test_codec_names_and_refusals(model, processor, photo_dir):
    assert codec_factory("sq8") == ("sq8", "SQ8") and codec_factory("SQ4") == ("sq4", "SQ4")
    assert codec_factory("pq48") == ("pq48", "PQ48x8") and codec_factory("opq48") == ("opq48", "OPQ48,PQ48x8")
    assert codec_factory("rq16") == ("rq16", "RQ16x8") and codec_factory("fp16") == ("fp16", None)
    assert codec_factory("PCA16,SQ8") == ("PCA16,SQ8", "PCA16,SQ8")  # a raw factory string
    assert resolve_token_codec("fp16") is None and resolve_token_codec(None) is None
    paths = sorted(photo_dir.glob("*.png"))[:2]
    for codec, match in (("pq48", "invalid token codec 'PQ48x8' for tokens of width 32"),  # 32 % 48 != 0
                         ("HNSW32", "has no standalone codec"), ("Nonsense7", "invalid token codec")):
        with pytest.raises(ValueError, match=match):
            ZseIndex.build(model, processor, paths, token_codec=codec, progress=False)
    with pytest.raises(ValueError, match="cannot train token codec 'PQ4x8' on 32 token vectors"):
        ZseIndex.build(model, processor, paths, token_codec="PQ4x8", progress=False)  # 2 photos: 32 vectors < 256
    with pytest.raises(ValueError, match="store_projections is not supported with a token codec"):
        ZseIndex(model, token_codec="sq8", store_projections=True)
    with pytest.raises(ValueError, match="needs store_local_tokens=True"):
        ZseIndex(model, token_codec="sq8", store_local_tokens=False)
    with pytest.raises(ValueError, match="does not exist"):
        ZseIndex(model, token_codec=Path("/nonexistent/codec"))


def test_training_sample_is_seeded_and_bounded():
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((TRAIN_PHOTOS + 44, 300, 4)).astype(np.float16)
    mask = rng.random((TRAIN_PHOTOS + 44, 300)) < 0.9
    a, b = training_sample(tokens, mask), training_sample(tokens, mask)
    assert a.dtype == np.float32 and a.shape == (TRAIN_VECTORS, 4) and np.array_equal(a, b)
    few = training_sample(tokens[:3], mask[:3])
    assert len(few) == mask[:3].sum()  # kept tokens only
    assert len(training_sample(tokens[:2], np.zeros((2, 300), bool))) == 600  # none kept: all of them


def test_default_codec_of_new_indexes_is_lossy_sq6(fp16, model, processor, photo_dir, tmp_path):
    default = ZseIndex.build(model, processor, photo_dir, index_factory="Flat", batch_size=8, progress=False)
    assert DEFAULT_TOKEN_CODEC == "sq6" and default.token_codec_name == "sq6" and default.token_codec.lossy
    manifest = json.loads((default.save(tmp_path / "idx") / "manifest.json").read_text())
    assert manifest["tokens"]["codec"]["name"] == "sq6" and manifest["tokens"]["codec"]["lossy"] is True
    exact = fp16.local_tokens(fp16.ids).local_tokens.float()
    got = default.local_tokens(fp16.ids).local_tokens
    assert not torch.equal(got, exact) and float((got - exact).abs().max()) <= 0.05 * float(exact.abs().max())
    feats = fp16.local_tokens(fp16.ids)
    from_feats = ZseIndex.from_features(torch.randn(len(fp16), 32), feats.local_tokens, feats.token_mask,
                                        grid_size=feats.grid_size)
    assert from_feats.token_codec_name == "sq6"
    # projections are float16 only, and an index without tokens has no codec
    paths = sorted(photo_dir.glob("*.png"))[:2]
    with_proj = ZseIndex.build(model, processor, paths, store_projections=True, progress=False)
    assert with_proj.token_codec is None and with_proj.token_codec_name == "fp16"
    no_tokens = ZseIndex.build(model, processor, paths, store_local_tokens=False, progress=False)
    assert no_tokens.token_codec is None and not no_tokens.store_local_tokens
    sharded = ZseIndex.build(model, processor, paths, shard=(0, 2), progress=False)  # shards must share a codec
    assert sharded.token_codec is None and sharded.token_codec_name == "fp16"
    assert default_token_codec("sq8") == "sq8" and default_token_codec(None, False) is None


def test_fp16_keeps_the_exact_tokens_and_format(fp16, model, processor, photo_dir, tmp_path):
    explicit = ZseIndex.build(model, processor, photo_dir, index_factory="Flat", batch_size=8, progress=False,
                              token_codec="fp16")
    assert fp16.token_codec is None and fp16.token_codec_name == explicit.token_codec_name == "fp16"
    a, b = fp16.local_tokens(fp16.ids).local_tokens, explicit.local_tokens(fp16.ids).local_tokens
    assert a.dtype == torch.float16 and torch.equal(a, b)
    saved = explicit.save(tmp_path / "idx")
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and "codec" not in manifest["tokens"]
    assert manifest["tokens"]["dtype"] == "float16" and not (saved / CODEC_FILE).exists()
    loaded = ZseIndex.load(saved)
    assert loaded.token_codec is None and torch.equal(loaded.local_tokens(fp16.ids).local_tokens, a)


def test_sq8_tokens_close_to_fp16_and_round_trip(fp16, sq8, model, processor, tmp_path):
    codec = sq8.token_codec
    assert isinstance(codec, TokenCodec) and codec.name == "sq8" and codec.factory == "SQ8" and codec.lossy
    assert codec.code_size == 32 and codec.dim == 32 and "sq8" in repr(sq8)
    exact = fp16.local_tokens(fp16.ids).local_tokens.float()
    got = sq8.local_tokens(fp16.ids)
    assert got.local_tokens.dtype == torch.float32 and got.local_tokens.shape == exact.shape
    scale = float(exact.abs().max())
    assert float((got.local_tokens - exact).abs().max()) <= 1e-2 * scale
    assert torch.equal(got.token_mask, fp16.local_tokens(fp16.ids).token_mask)
    np.testing.assert_array_equal(sq8.embeddings(), fp16.embeddings())  # only the tokens are compressed
    saved = sq8.save(tmp_path / "idx")
    manifest = json.loads((saved / "manifest.json").read_text())
    record = manifest["tokens"]["codec"]
    assert manifest["format_version"] == retrieval.FORMAT_VERSION == 3 and manifest["tokens"]["dtype"] == "uint8"
    assert record["lossy"] is True and record["description"].startswith("LOSSY") and record["file"] == CODEC_FILE
    assert manifest["files"][CODEC_FILE]["sha256"] == codec.sha256
    assert (saved / CODEC_FILE).read_bytes() == faiss.serialize_index(codec.codec).tobytes()  # faiss, not pickle
    stored = np.load(saved / "tokens-0000.npy", mmap_mode="r", allow_pickle=False)
    assert stored.dtype == np.uint8 and stored.shape == (N_PHOTOS, 16, 32)
    loaded = ZseIndex.load(saved, model=model, processor=processor)
    assert loaded.token_codec == codec and loaded.token_codec.name == "sq8"
    assert torch.equal(loaded.local_tokens(fp16.ids).local_tokens, got.local_tokens)
    assert load_token_codec(saved) == codec and load_token_codec(saved / CODEC_FILE) == codec
    assert load_token_codec(codec.save(tmp_path / "codec.faiss")).factory == "SQ8"  # a bare file: factory from faiss


def test_add_encodes_with_the_stored_codec(sq8, fp16, model, processor, photo_dir, tmp_path):
    paths = sorted(str(p) for p in photo_dir.glob("*.png"))
    # batches of 8 as in the fixtures: the same float features, so the same codes
    part = ZseIndex.build(model, processor, paths[:16], batch_size=8, progress=False, token_codec=sq8.token_codec)
    first = part.token_codec
    loaded = ZseIndex.load(part.save(tmp_path / "part"), model=model)
    loaded.add(paths[16:], batch_size=8, progress=False)
    assert loaded.token_codec == first and len(loaded._segments) == 2
    codes = loaded._gather("tokens", loaded.rows_of(paths), decode=False)
    want = first.encode(fp16.local_tokens([f"p{i:02d}.png" for i in range(N_PHOTOS)]).local_tokens.numpy())
    np.testing.assert_array_equal(codes, want)  # the same codes as encoding the float16 tokens directly
    again = ZseIndex.load(loaded.save(tmp_path / "part"))
    assert (tmp_path / "part" / CODEC_FILE).read_bytes() == first.data and again.token_codec == first
    assert len(again) == N_PHOTOS and again.local_tokens(paths).local_tokens.shape == (N_PHOTOS, 16, 32)


def test_sq8_rerank_order_close_to_fp16(fp16, sq8, sketches):
    query = fp16.encode_sketches(sketches)
    exact = fp16.search(query, k=10, rerank_k=10)
    lossy = sq8.search(query, k=10, rerank_k=10)
    assert sum(a[0].id == b[0].id for a, b in zip(exact, lossy)) >= 0.75 * N_SKETCHES
    for a, b in zip(exact, lossy):
        assert {h.id for h in a} == {h.id for h in b}  # the same [Ret] candidates
        rel_a = {h.id: h.relation_score for h in a}
        assert max(abs(rel_a[h.id] - h.relation_score) for h in b) < 2e-2
    spread = np.std([h.relation_score for h in exact[0]])
    assert spread > 1e-3  # the order is meaningful


def test_shards_with_one_codec_merge_to_the_unsharded_build(model, processor, photo_dir, sketches, tmp_path):
    first = ZseIndex.build(model, processor, photo_dir, batch_size=1, shard=(0, 3), progress=False, token_codec="sq8")
    dirs = [first.save(tmp_path / "s0")]
    for i in (1, 2):
        shard = ZseIndex.build(model, processor, photo_dir, batch_size=1, shard=(i, 3), progress=False,
                               token_codec=dirs[0])
        assert shard.token_codec == first.token_codec
        dirs.append(shard.save(tmp_path / f"s{i}"))
    full = ZseIndex.build(model, processor, photo_dir, batch_size=1, progress=False, token_codec=dirs[0])
    merged = ZseIndex.merge(dirs, model=model)
    assert merged.ids == full.ids and merged.token_codec == full.token_codec == first.token_codec
    rows = merged.rows_of(full.ids)
    np.testing.assert_array_equal(merged._gather("tokens", rows, decode=False),
                                  full._gather("tokens", full.rows_of(full.ids), decode=False))
    assert torch.equal(merged.local_tokens(full.ids).local_tokens, full.local_tokens(full.ids).local_tokens)
    assert merged.search(sketches, k=6, rerank_k=10) == full.search(sketches, k=6, rerank_k=10)
    reloaded = ZseIndex.load(merged.save(tmp_path / "merged"))
    assert (tmp_path / "merged" / CODEC_FILE).read_bytes() == (dirs[0] / CODEC_FILE).read_bytes()
    assert reloaded.token_codec == first.token_codec
    # a shard trained on its own sample has another codec (by sha256): refused, as is fp16 with sq8
    other = ZseIndex.build(model, processor, photo_dir, batch_size=1, shard=(1, 3), progress=False, token_codec="sq8")
    assert other.token_codec != first.token_codec
    other.save(tmp_path / "other")
    with pytest.raises(ValueError, match="another token codec"):
        ZseIndex.merge([dirs[0], tmp_path / "other", dirs[2]])
    plain = ZseIndex.build(model, processor, photo_dir, batch_size=1, shard=(1, 3), progress=False, token_codec="fp16")
    plain.save(tmp_path / "plain")
    with pytest.raises(ValueError, match=r"another token codec \(fp16\)"):
        ZseIndex.merge([dirs[0], tmp_path / "plain", dirs[2]])


@pytest.mark.parametrize("codec,code_size", [("sq4", 16), ("PQ4x4", 2), ("PQ8x4", 4), ("RQ2x4", 1)])
def test_other_codecs_round_trip(codec, code_size, tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tokens = rng.standard_normal((40, 16, 32)).astype(np.float32)
    with ZseIndex.from_features(emb, tokens, grid_size=(4, 4), token_codec=codec, work_dir=tmp_path) as idx:
        assert idx.token_codec.code_size == code_size and idx.token_codec.lossy
        dec = idx.local_tokens(range(40)).local_tokens.numpy()
        err = np.abs(dec - tokens).mean() / np.abs(tokens).mean()
        assert err < (0.2 if codec == "sq4" else 1.0), err  # lossy, but not noise
        loaded = ZseIndex.load(idx.save(tmp_path / "idx"))
        np.testing.assert_array_equal(loaded.local_tokens(range(40)).local_tokens.numpy(), dec)


@pytest.mark.parametrize("codec", ["Flat", "SQfp16"])
def test_float16_exact_codecs_are_not_lossy(codec, tmp_path):
    rng = np.random.default_rng(0)
    emb = np.eye(8, dtype=np.float32)
    tokens = rng.standard_normal((8, 4, 16)).astype(np.float32)
    with ZseIndex.from_features(emb, tokens, token_codec=codec, work_dir=tmp_path) as idx:
        assert not idx.token_codec.lossy and idx.token_codec.record()["description"].startswith("lossless")
        np.testing.assert_array_equal(idx.local_tokens(range(8)).local_tokens.numpy(),
                                      tokens.astype(np.float16).astype(np.float32))


def test_cli_token_codec(model, processor, photo_dir, sketches, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    with pytest.raises(SystemExit):
        retrieval.index_main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--token-codec NAME" in help_text and "--token-codec-from DIR_OR_FILE" in help_text
    assert "LOSSY faiss codec" in help_text and "sq8" in help_text
    base = [str(photo_dir), "--model", str(model_dir), "--quiet", "--batch-size", "8"]
    assert retrieval.index_main(base + ["--out", str(tmp_path / "s0"), "--shard", "0/2", "--token-codec", "sq8"]) == 0
    assert "tokens: sq8 (LOSSY: faiss SQ8 codes, 32 bytes per token)" in capsys.readouterr().out
    assert retrieval.index_main(base + ["--out", str(tmp_path / "s1"), "--shard", "1/2",
                                        "--token-codec-from", str(tmp_path / "s0")]) == 0
    capsys.readouterr()
    assert retrieval.merge_main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]) == 0
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["tokens"]["codec"]["name"] == "sq8" and manifest["tokens"]["codec"]["lossy"] is True
    capsys.readouterr()
    assert retrieval.search_main([str(tmp_path / "m"), sketches[0], "-k", "3", "--rerank-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["hits"]
    assert len(hits) == 3 and all(h["relation_score"] is not None for h in hits)
    # a shard with its own codec cannot be merged; bad codecs and combinations are one-line errors
    assert retrieval.index_main(base + ["--out", str(tmp_path / "t1"), "--shard", "1/2", "--token-codec", "sq8"]) == 0
    capsys.readouterr()
    cases = [(retrieval.merge_main, [str(tmp_path / "s0"), str(tmp_path / "t1"), "--out", str(tmp_path / "x")],
              "another token codec"),
             (retrieval.index_main, base + ["--out", str(tmp_path / "x"), "--token-codec", "pq48"],
              "invalid token codec 'PQ48x8'"),
             (retrieval.index_main, base + ["--out", str(tmp_path / "x"), "--token-codec", "sq8", "--no-tokens"],
              "--no-tokens"),
             (retrieval.index_main, base + ["--out", str(tmp_path / "x"), "--token-codec-from", str(tmp_path / "no")],
              "does not exist")]
    for main, argv, expected in cases:
        assert main(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "x").exists()
    shutil.rmtree(tmp_path / "t1")
