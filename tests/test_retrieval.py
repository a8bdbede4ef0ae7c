"""faiss retrieval helper: exact recall, re-rank order, persistence, atomic save, shards, CLI."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from zse_hf import ZseModel, ZseProcessor, retrieval
from zse_hf.configuration_zse import default_rerank_k
from zse_hf.retrieval import Hit, ZseIndex, auto_factory

from conftest import fake_saliency, random_photo, tiny_config, write_photo_dir, write_sketches

pytestmark = [pytest.mark.filterwarnings("ignore:skipped .* unreadable"), pytest.mark.usefixtures("one_thread")]
N_PHOTOS = 24






@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ZseModel(tiny_config(initializer_range=0.5)).eval()  # larger init: relation scores spread out


@pytest.fixture(scope="module")
def processor(model):
    return ZseProcessor.from_config(model.config)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    return write_photo_dir(tmp_path_factory.mktemp("photos"), N_PHOTOS)


@pytest.fixture(scope="module")
def sketches(tmp_path_factory):
    return write_sketches(tmp_path_factory.mktemp("sketches"))


@pytest.fixture(scope="module")
def index(model, processor, photo_dir):
    return ZseIndex.build(model, processor, photo_dir, index_factory="Flat", batch_size=5, progress=False,
                          token_codec="fp16")  # the exact store (the default, sq6, is tested in test_token_codecs)


@pytest.fixture(scope="module")
def saved(index, tmp_path_factory):
    return index.save(tmp_path_factory.mktemp("saved") / "idx")


def _direct_features(model, processor, paths):
    with torch.no_grad():
        pixels = processor(photos=[str(p) for p in paths], return_tensors="pt")["photo_pixel_values"]
        return model.get_image_features(pixels)


def test_flat_search_equals_brute_force(index, model, processor, photo_dir, sketches):
    assert len(index) == N_PHOTOS and index.factory == "Flat" and not index.skipped
    assert index.ids == sorted(index.ids) and index.ids[0] == "a/p01.png"
    photos = _direct_features(model, processor, index.paths)
    np.testing.assert_allclose(index.embeddings(), photos.ret_embeds.numpy(), atol=1e-6)
    stored = index.local_tokens(index.ids[:3])
    assert stored.local_tokens.dtype == torch.float16 and stored.grid_size == (4, 4)
    torch.testing.assert_close(stored.local_tokens.float(), photos.local_tokens[:3], atol=2e-2, rtol=1e-3)
    query = index.encode_sketches(sketches)
    scores = query.ret_embeds @ photos.ret_embeds.T  # [Q, N]
    results = index.search(sketches, k=7)
    assert len(results) == 3
    for q, hits in enumerate(results):
        expected = torch.argsort(scores[q], descending=True)[:7].tolist()
        assert [h.id for h in hits] == [index.ids[j] for j in expected]
        assert [h.rank for h in hits] == list(range(1, 8))
        np.testing.assert_allclose([h.ret_score for h in hits], scores[q, expected].numpy(), atol=1e-5)
        assert all(isinstance(h, Hit) and h.relation_score is None and h.path.endswith(h.id) for h in hits)
    assert index.search(sketches[0], k=2)[0] == results[0][:2]  # single sketch, batched = unbatched


def test_rerank_order_equals_relation_scores(index, model, processor, sketches):
    query = index.encode_sketches(sketches)
    ann = index.search(query, k=10)
    reranked = index.search(query, k=10, rerank_k=10)
    for q in range(len(sketches)):
        cands = [h.id for h in ann[q]]
        one = retrieval.ZseImageFeatures(local_tokens=query.local_tokens[q:q + 1], token_mask=query.token_mask[q:q + 1],
                                         grid_size=query.grid_size)
        stored = index.local_tokens(cands)
        stored.local_tokens = stored.local_tokens.float()
        with torch.no_grad():
            expected = model.relation_scores(one, stored)[0]
            fresh = model.relation_scores(one, _direct_features(model, processor, [h.path for h in ann[q]]))[0]
        order = torch.argsort(expected, descending=True, stable=True).tolist()
        got = reranked[q]
        assert [h.id for h in got] == [cands[j] for j in order]
        np.testing.assert_allclose([h.relation_score for h in got], expected[order].numpy(), atol=1e-6)
        np.testing.assert_allclose(expected.numpy(), fresh.numpy(), atol=5e-3)  # fp16 store is close to fp32
        assert {h.id: h.ret_score for h in got} == {h.id: h.ret_score for h in ann[q]}
        assert expected.std() > 1e-3  # the order is meaningful
    # re-rank the head only: the tail keeps the [Ret] order without relation scores
    part = index.search(query, k=10, rerank_k=4)[0]
    assert {h.id for h in part[:4]} == {h.id for h in ann[0][:4]}
    assert [h.relation_score is None for h in part] == [False] * 4 + [True] * 6
    assert [h.id for h in part[4:]] == [h.id for h in ann[0][4:]]


def test_rerank_ret_weight_orders_by_relation_plus_weighted_cosine(index, model, sketches):
    """`rerank_ret_weight` w orders the head by relation score + w * cosine; the config's value is the default."""
    query = index.encode_sketches(sketches)
    ann = index.search(query, k=10)
    pure = index.search(query, k=10, rerank_k=10)
    for w in (0.5, 4.0):
        fused = index.search(query, k=10, rerank_k=10, rerank_ret_weight=w)
        for q in range(len(sketches)):
            key = {h.id: h.relation_score + w * h.ret_score for h in pure[q]}
            expected = sorted(key, key=lambda i: -key[i])
            assert [h.id for h in fused[q]] == expected
            assert {h.id: h.relation_score for h in fused[q]} == {h.id: h.relation_score for h in pure[q]}
    huge = index.search(query, k=10, rerank_k=10, rerank_ret_weight=1e6)
    assert [[h.id for h in hits] for hits in huge] == [[h.id for h in hits] for hits in ann]  # [Ret] order
    assert any([h.id for h in p] != [h.id for h in a] for p, a in zip(pure, ann))  # the weight matters here
    model.config.rerank_ret_weight = 1e6
    try:
        assert [[h.id for h in hits] for hits in index.search(query, k=10, rerank_k=10)] == \
            [[h.id for h in hits] for hits in ann]
    finally:
        model.config.rerank_ret_weight = 0.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ret_weight"):
            index.search(query, k=10, rerank_k=10, rerank_ret_weight=bad)


def test_evaluation_rerank_scores_use_the_fused_key(model, processor, photo_dir, sketches):
    """`evaluation.rerank_scores`: the top-K by cosine come first, in key order; the rest keep cosines."""
    from zse_hf.evaluation import rerank_scores

    photos = _direct_features(model, processor, sorted(photo_dir.rglob("*.png")))
    with torch.no_grad():
        pixels = processor(sketches=sketches, return_tensors="pt")["sketch_pixel_values"]
        query = model.get_image_features(pixels)
    cos = (query.ret_embeds @ photos.ret_embeds.T).numpy()
    rel = model.relation_scores(query, photos).detach().numpy()  # [Q, G]
    k = 5
    for w in (0.0, 2.0):
        out = rerank_scores(model, query, photos, cos, rerank_k=k, ret_weight=w)
        for q in range(len(sketches)):
            top = np.argsort(-cos[q], kind="stable")[:k]
            order = np.argsort(-out[q], kind="stable")
            assert set(order[:k]) == set(top)
            key = rel[q, top] + w * cos[q, top]
            assert list(order[:k]) == list(top[np.argsort(-key, kind="stable")])
            rest = np.setdiff1d(np.arange(cos.shape[1]), top)
            np.testing.assert_array_equal(out[q, rest], cos[q, rest])
            assert out[q, top].min() > 1.0  # above every cosine, whatever w


def test_config_rerank_ret_weight_is_checked():
    assert tiny_config().rerank_ret_weight == 0.0 and tiny_config(rerank_ret_weight=2).rerank_ret_weight == 2.0
    for bad in (-0.1, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="rerank_ret_weight"):
            tiny_config(rerank_ret_weight=bad)


def test_config_default_ranking_is_checked():
    assert tiny_config().default_ranking == "ret"
    assert tiny_config(default_ranking="rn@10").default_ranking == "rn@10"
    assert [default_rerank_k(r) for r in ("ret", "rn@1", "rn@25")] == [0, 1, 25]
    for bad in ("rn", "rn@0", "rn@-3", "rn@ten", "rn@01", "RET", None, 10, "rn@10 "):
        with pytest.raises(ValueError, match="default_ranking"):
            tiny_config(default_ranking=bad)


def test_search_without_rerank_k_follows_the_default_ranking(index, model, sketches):
    """No `rerank_k`: the config's `default_ranking` decides; an explicit value, 0 included, wins."""
    query = index.encode_sketches(sketches)
    ann = [[h.id for h in hits] for hits in index.search(query, k=10, rerank_k=0)]
    rn4 = index.search(query, k=10, rerank_k=4)
    assert [[h.id for h in hits] for hits in index.search(query, k=10)] == ann  # "ret", the default
    model.config.default_ranking = "rn@4"
    try:
        assert index.default_rerank_k() == 4
        got = index.search(query, k=10)
        assert [[h.id for h in hits] for hits in got] == [[h.id for h in hits] for hits in rn4]
        assert [h.relation_score is None for h in got[0]] == [False] * 4 + [True] * 6
        assert [[h.id for h in hits] for hits in index.search(query, k=10, rerank_k=0)] == ann
        assert any(a != [h.id for h in r] for a, r in zip(ann, rn4))  # the default changed the order
    finally:
        model.config.default_ranking = "ret"


def test_default_ranking_survives_save_and_load(tmp_path):
    model = ZseModel(tiny_config(default_ranking="rn@7"))
    model.save_pretrained(tmp_path)
    assert ZseModel.from_pretrained(tmp_path).config.default_ranking == "rn@7"
    config = json.loads((tmp_path / "config.json").read_text())
    del config["default_ranking"]  # a folder saved before the field: [Ret]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert ZseModel.from_pretrained(tmp_path).config.default_ranking == "ret"


def test_k_larger_than_gallery_returns_all(index, sketches):
    hits = index.search(sketches[0], k=1000)[0]
    assert sorted(h.id for h in hits) == sorted(index.ids)
    hits = index.search(sketches[0], k=1000, rerank_k=500)[0]
    assert len(hits) == N_PHOTOS and all(h.relation_score is not None for h in hits)
    with pytest.raises(ValueError, match="k must be"):
        index.search(sketches[0], k=0)


def test_empty_index_errors(model, processor, tmp_path, sketches):
    empty = ZseIndex.build(model, processor, [], progress=False)
    with pytest.raises(ValueError, match="index is empty"):
        empty.search(sketches[0])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipped 1"):
        bad = ZseIndex.build(model, processor, [tmp_path / "bad.png"], progress=False)
    assert len(bad) == 0 and len(bad.skipped) == 1
    with pytest.raises(ValueError, match="index is empty"):
        bad.search(sketches, k=3)
    with pytest.raises(ValueError, match="nothing to save"):
        bad.save(tmp_path / "idx")


def test_unreadable_files_are_skipped_and_reported(model, processor, photo_dir, tmp_path):
    good = sorted(photo_dir.rglob("*.png"))[:5]
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "cut.png").write_bytes(good[0].read_bytes()[:60])
    bad = [tmp_path / "missing.png", tmp_path / "empty.png", tmp_path / "text.png", tmp_path / "cut.png"]
    items = [good[0], bad[0], good[1], bad[1], bad[2], good[2], good[3], bad[3], good[4]]
    with pytest.warns(UserWarning, match="skipped 4 unreadable item"):
        idx = ZseIndex.build(model, processor, items, batch_size=3, num_workers=2, progress=False)
    assert idx.ids == [str(p) for p in good]
    assert [s.path for s in idx.skipped] == [str(p) for p in bad]
    assert [s.position for s in idx.skipped] == [1, 3, 4, 7]
    reasons = [s.reason for s in idx.skipped]
    assert "not found" in reasons[0] and "empty" in reasons[1]
    assert "cannot read" in reasons[2] and "cannot read" in reasons[3]


def test_save_load_round_trip(index, saved, model, processor, sketches):
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["embedding_dim"] == 32  # 2 only with stored projections
    assert manifest["model"]["sha256"] == retrieval.model_fingerprint(model)
    assert manifest["counts"] == {"rows": N_PHOTOS, "photos": N_PHOTOS, "removed": 0, "skipped": 0}
    on_disk = {p.name for p in saved.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk and {"index.faiss", "rows.json", "tokens-0000.npy"} <= on_disk
    tokens = np.load(saved / "tokens-0000.npy", mmap_mode="r", allow_pickle=False)
    assert tokens.shape == (N_PHOTOS, 16, 32) and tokens.dtype == np.float16
    loaded = ZseIndex.load(saved, model=model, processor=processor)
    assert loaded.ids == index.ids and loaded.paths == index.paths and loaded.factory == "Flat"
    np.testing.assert_array_equal(loaded.embeddings(), index.embeddings())
    assert loaded.search(sketches, k=5, rerank_k=8) == index.search(sketches, k=5, rerank_k=8)
    bare = ZseIndex.load(saved)  # no model: [Ret] search on embeddings still works
    scores, rows = bare.ann_search(index.embeddings()[:2], k=1)
    assert rows[:, 0].tolist() == [0, 1] and np.allclose(scores[:, 0], 1, atol=1e-5)
    with pytest.raises(ValueError, match="no model attached"):
        bare.search(sketches[0])
    assert bare.attach_model(model).search(sketches[0], k=3) == index.search(sketches[0], k=3)


def test_load_errors(saved, model, tmp_path):
    def copy(name):
        return Path(shutil.copytree(saved, tmp_path / name))

    other = ZseModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="model mismatch"):
        ZseIndex.load(saved, model=other)
    cut = copy("cut")
    with open(cut / "tokens-0000.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match="tokens-0000.npy is truncated"):
        ZseIndex.load(cut)
    flipped = copy("flipped")
    data = bytearray((flipped / "embeddings-0000.npy").read_bytes())
    data[-1] ^= 0xFF
    (flipped / "embeddings-0000.npy").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="embeddings-0000.npy is corrupt"):
        ZseIndex.load(flipped)
    ZseIndex.load(flipped, verify=False)  # sizes only
    newer = copy("newer")
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["format_version"] = retrieval.FORMAT_VERSION + 1
    (newer / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="newer than this zse_hf supports"):
        ZseIndex.load(newer)
    with pytest.raises(ValueError, match="not a ZseIndex directory"):
        ZseIndex.load(tmp_path)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="refusing to replace"):
        ZseIndex.load(saved).save(tmp_path / "junk")


@pytest.mark.parametrize("kill_at,exchange", [("tokens-0000.npy", True), ("swap", True), ("swap", False)])
def test_save_is_atomic_when_killed(saved, model, tmp_path, kill_at, exchange):
    """kill -9 at a file or at the swap (one atomic exchange, or between the fallback's two
    renames): the old index stays loadable, loads move nothing, the next save cleans up."""
    target = Path(shutil.copytree(saved, tmp_path / "idx"))
    before = ZseIndex.load(target)
    script = textwrap.dedent(f"""
        import sys, time
        from zse_hf import retrieval
        from zse_hf.retrieval import persistence
        persistence.use_rename_exchange = {exchange!r}
        idx = retrieval.ZseIndex.load({str(target)!r})
        idx.remove([idx.ids[0]])
        def hook(name):
            if name == {kill_at!r}:
                print("KILL ME", flush=True)
                time.sleep(120)
        persistence.save_hook = hook
        idx.save({str(target)!r})
        print("SAVED", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "KILL ME"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".idx."))
    assert leftovers  # the killed save left its temporary / moved-aside directory behind
    between_renames = kill_at == "swap" and not exchange
    assert target.exists() != between_renames
    with pytest.warns(UserWarning, match="interrupted save") if between_renames else contextlib.nullcontext():
        after = ZseIndex.load(target, model=model)  # the previous index, intact and verified
    assert after.ids == before.ids and len(after) == N_PHOTOS
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".idx.")) == leftovers  # loads move nothing
    after.remove([after.ids[0]])
    with pytest.warns(UserWarning, match="restored") if between_renames else contextlib.nullcontext():
        after.save(target)  # a later save cleans up and succeeds
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    assert len(ZseIndex.load(target)) == N_PHOTOS - 1


def test_shards_merge_to_the_unsharded_index(model, processor, photo_dir, sketches, tmp_path):
    full = ZseIndex.build(model, processor, photo_dir, batch_size=1, progress=False, token_codec="fp16")
    dirs = []  # shards without a token codec default to fp16, so they merge
    for i in range(3):
        shard = ZseIndex.build(model, processor, photo_dir, batch_size=1, shard=(i, 3), progress=False)
        assert len(shard) == N_PHOTOS // 3 and shard.ids == full.ids[i::3]
        dirs.append(shard.save(tmp_path / f"shard{i}"))
    merged = ZseIndex.merge(dirs, model=model)
    assert merged.ids == full.ids and merged.paths == full.paths and merged.factory == full.factory == "Flat"
    np.testing.assert_array_equal(merged.embeddings(), full.embeddings())
    np.testing.assert_array_equal(merged.local_tokens(full.ids).local_tokens, full.local_tokens(full.ids).local_tokens)
    assert merged.search(sketches, k=6, rerank_k=10) == full.search(sketches, k=6, rerank_k=10)
    with pytest.raises(ValueError, match="missing \\[1\\]"):
        ZseIndex.merge([dirs[0], dirs[2]])


def test_remove_add_and_other_factories(model, processor, photo_dir, sketches, index):
    paths = sorted(str(p) for p in photo_dir.rglob("*.png"))
    idx = ZseIndex.build(model, processor, paths[:20], progress=False)
    assert idx.remove(paths[:2]) == 2 and len(idx) == 18
    assert not {h.id for h in idx.search(sketches[0], k=100)[0]} & set(paths[:2])
    idx.add(paths[20:], progress=False)
    assert len(idx) == 22 and {h.id for h in idx.search(sketches[0], k=100)[0]} == set(paths[2:])
    with pytest.raises(ValueError, match="already in the index"):
        idx.add(paths[20:21], progress=False)
    # IVF with every list probed is exact; ids stay row numbers through removal
    ivf = ZseIndex.build(model, processor, photo_dir, index_factory="IVF4,Flat", progress=False)
    ivf.search_params["nprobe"] = 4
    assert [h.id for h in ivf.search(sketches[0], k=10)[0]] == [h.id for h in index.search(sketches[0], k=10)[0]]
    ivf.remove([index.ids[0]])
    assert index.ids[0] not in {h.id for h in ivf.search(sketches[0], k=100)[0]}
    # lossy PQ: hits are re-scored exactly from the stored embeddings
    pq = ZseIndex.build(model, processor, photo_dir, index_factory="PQ4x4", progress=False)
    exact = {h.id: h.ret_score for h in index.search(sketches[0], k=100)[0]}
    hits = pq.search(sketches[0], k=5)[0]
    assert all(abs(h.ret_score - exact[h.id]) < 1e-5 for h in hits)
    assert [h.ret_score for h in hits] == sorted((h.ret_score for h in hits), reverse=True)
    # HNSW cannot remove in place
    hnsw = ZseIndex.build(model, processor, photo_dir, index_factory="HNSW32", progress=False)
    assert {h.id for h in hnsw.search(sketches[0], k=100)[0]} == set(index.ids)
    with pytest.raises(NotImplementedError, match="rebuild=True"):
        hnsw.remove([index.ids[0]])
    assert hnsw.remove([index.ids[0]], rebuild=True) == 1 and len(hnsw) == N_PHOTOS - 1
    assert index.ids[0] not in {h.id for h in hnsw.search(sketches[0], k=100)[0]}
    with pytest.raises(ValueError, match="cannot train"):
        ZseIndex.build(model, processor, photo_dir, index_factory="IVF64,Flat", progress=False)
    with pytest.raises(ValueError, match="invalid faiss index factory"):
        ZseIndex.build(model, processor, photo_dir, index_factory="Nonsense12", progress=False)


def test_auto_factory():
    assert auto_factory(10, 384) == "Flat" and auto_factory(49_999, 384) == "Flat"
    assert auto_factory(100_000, 384) == "IVF1024,SQ8" and auto_factory(1_000_000, 384) == "IVF4096,SQ8"
    assert auto_factory(10_000_000, 384) == "IVF16384,PQ48"


def test_cli_index_merge_search(model, processor, photo_dir, sketches, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    out = tmp_path / "index"
    assert retrieval.index_main([str(photo_dir), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    assert "indexed 24 photos (0 skipped) with Flat" in capsys.readouterr().out
    assert retrieval.search_main([str(out), *sketches[:2], "-k", "4", "--rerank-k", "6", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    api = ZseIndex.load(out, model=model).search(sketches[:2], k=4, rerank_k=6)
    assert [r["sketch"] for r in printed] == sketches[:2]
    assert [r["hits"] for r in printed] == [[asdict(h) for h in hits] for hits in api]
    assert retrieval.search_main([str(out), *sketches[:2], "-k", "4", "--rerank-k", "6", "--rerank-ret-weight", "3",
                                  "--json"]) == 0
    fused = ZseIndex.load(out, model=model).search(sketches[:2], k=4, rerank_k=6, rerank_ret_weight=3.0)
    assert [r["hits"] for r in json.loads(capsys.readouterr().out)] == [[asdict(h) for h in hits] for hits in fused]
    assert retrieval.search_main([str(out), sketches[0], "-k", "4", "--rerank-k", "6", "--int8", "--json"]) == 0
    lossy = json.loads(capsys.readouterr().out)[0]["hits"]  # int8 head: approximate relation scores
    assert len(lossy) == 4 and all(h["relation_score"] is not None for h in lossy)
    assert [h["relation_score"] for h in lossy] != [h["relation_score"] for h in printed[0]["hits"]]
    assert retrieval.search_main([str(out), sketches[0], "-k", "3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"# {sketches[0]}") and len(text.strip().splitlines()) == 4
    for i in range(2):
        assert retrieval.index_main([str(photo_dir), "--model", str(model_dir), "--out", str(tmp_path / f"s{i}"),
                                     "--shard", f"{i}/2", "--quiet"]) == 0
    merged = tmp_path / "merged"
    assert retrieval.merge_main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(merged)]) == 0
    capsys.readouterr()
    assert retrieval.search_main([str(merged), sketches[0], "-k", "5", "--json", "--model", str(model_dir)]) == 0
    got = json.loads(capsys.readouterr().out)[0]["hits"]
    want = ZseIndex.load(out, model=model).search(sketches[0], k=5)[0]  # other batches: scores equal up to rounding
    assert [h["id"] for h in got] == [h.id for h in want]
    np.testing.assert_allclose([h["ret_score"] for h in got], [h.ret_score for h in want], atol=1e-5)
    assert retrieval.search_main([str(tmp_path / "nowhere"), sketches[0]]) == 2
    assert "not a ZseIndex directory" in capsys.readouterr().err


def test_gpu_move_when_faiss_reports_gpus(saved, model, sketches, monkeypatch):
    """No GPU here: fake faiss-gpu's move (a CPU clone) to check the search path uses it."""
    fresh = ZseIndex.load(saved, model=model)
    cpu = fresh.search(sketches, k=5)
    moved = []

    def to_gpu(res, device, cpu_index):
        moved.append(device)
        return retrieval.faiss.clone_index(cpu_index)

    monkeypatch.setattr(retrieval.faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(retrieval.faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(retrieval.faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    assert fresh.search(sketches, k=5) == cpu and fresh.search(sketches, k=5) == cpu and moved == [0]
    fresh.remove([cpu[0][0].id])  # invalidates the GPU copy
    assert [h.id for h in fresh.search(sketches[0], k=5)[0][:4]] == [h.id for h in cpu[0][1:]]
    assert moved == [0, 0]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_build_leaves_no_work_directory_after_the_next_run(tmp_path, sig):
    """A build killed (kill -9, or SIGTERM without a handler) leaves its zse-index-<pid>-*
    work directory; the next index that makes one in the same place removes it."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()

    def build():
        rng = np.random.default_rng(0)
        idx = ZseIndex.from_features(rng.standard_normal((8, 4)).astype(np.float32), work_dir=tmp_path)
        assert len(idx) == 8
        ready.set()
        time.sleep(120)

    proc = ctx.Process(target=build)
    proc.start()
    try:
        assert ready.wait(60)
        os.kill(proc.pid, sig)
    finally:
        proc.join(60)
    left = [p.name for p in tmp_path.iterdir()]
    assert left == [next(iter(left))] and left[0].startswith(f"zse-index-{proc.pid}-")
    with ZseIndex.from_features(np.eye(4, dtype=np.float32), work_dir=tmp_path) as fresh:
        assert len(fresh) == 4
        assert [p.name for p in tmp_path.iterdir()] == [fresh._work.name]
    assert list(tmp_path.iterdir()) == []  # close() removed the fresh one too


def test_search_argument_errors(index, sketches):
    with pytest.raises(ValueError, match="k must be an integer >= 1, got -5"):
        index.search(sketches[0], k=-5)
    with pytest.raises(ValueError, match="rerank_k must be None or an integer >= 0"):
        index.search(sketches[0], k=3, rerank_k=-2)
    with pytest.raises(ValueError, match="search parameter nprobe must be an integer >= 1, got 0"):
        index.search(sketches[0], k=3, search_params={"nprobe": 0})
    with pytest.raises(ValueError, match="unknown search parameter"):
        index.search(sketches[0], k=3, search_params={"nprob": 4})
    assert index.search(sketches[0], k=3, rerank_k=0) == index.search(sketches[0], k=3)


def test_remove_counts_repeated_ids_once(model, processor, photo_dir):
    paths = sorted(str(p) for p in photo_dir.rglob("*.png"))[:4]
    idx = ZseIndex.build(model, processor, paths, progress=False)
    assert idx.remove([paths[0], paths[0]]) == 1 and len(idx) == 3


def test_saved_index_is_readable_like_a_file_and_mapped_at_load(index, saved, tmp_path, sketches):
    mode = os.stat(saved).st_mode & 0o777
    assert mode == 0o777 & ~_umask(), oct(mode)
    target = index.save(tmp_path / "idx")
    loaded = ZseIndex.load(target)
    before = loaded.embeddings().copy()
    shutil.rmtree(target)  # the loaded index keeps the bytes it verified
    np.testing.assert_array_equal(loaded.embeddings(), before)
    assert loaded.local_tokens(loaded.ids[:2]).local_tokens.shape == (2, 16, 32)
    again = loaded.save(tmp_path / "copy")  # saving writes the mapped bytes, not whatever is at the old path
    np.testing.assert_array_equal(ZseIndex.load(again).embeddings(), before)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_cli_user_errors_are_one_line(model, processor, photo_dir, sketches, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    capsys.readouterr()
    cases = [
        (retrieval.index_main, [str(photo_dir), "--model", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "o")],
         "model folder"),
        (retrieval.index_main, [str(photo_dir), "--model", str(model_dir), "--out", str(a_file)], "is a file"),
        (retrieval.index_main, [str(tmp_path / "no_photos"), "--model", str(model_dir), "--out", str(tmp_path / "o")],
         "not a directory"),
        (retrieval.merge_main, [str(tmp_path / "nowhere"), "--out", str(a_file)], "is a file"),
    ]
    for main, argv, expected in cases:
        assert main(argv + ["--quiet"] if main is retrieval.index_main else argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    assert a_file.read_text() == "x" and not (tmp_path / "o").exists()
    for argv, expected in ((["-k", "-5"], "argument -k: must be >= 1, got -5"),
                           (["--rerank-k", "-1"], "argument --rerank-k: must be >= 0, got -1"),
                           (["--rerank-ret-weight", "nan"], "must be a finite number >= 0, got nan"),
                           (["--rerank-ret-weight", "x"], "expected a number, got 'x'")):
        with pytest.raises(SystemExit) as info:
            retrieval.search_main([str(tmp_path), sketches[0], *argv])
        assert info.value.code == 2 and expected in capsys.readouterr().err


@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW8", "PQ4x4", "IVF2,SQ8"])
def test_other_factories_round_trip(tmp_path, factory):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((300, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    with ZseIndex.from_features(emb, index_factory=factory, work_dir=tmp_path) as idx:
        if "IVF" in factory:
            idx.remove([3, 7])
        loaded = ZseIndex.load(idx.save(tmp_path / "idx"))
        assert loaded.factory == factory and loaded.ids == idx.ids
        np.testing.assert_array_equal(loaded.ann_search(emb[:5], k=4)[1], idx.ann_search(emb[:5], k=4)[1])


def test_saving_through_a_symlink_keeps_the_link(index, tmp_path):
    real = index.save(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    index.save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and len(ZseIndex.load(tmp_path / "link")) == N_PHOTOS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_photo_crop_is_recorded_checked_and_restored(model, processor, tmp_path, monkeypatch):
    monkeypatch.setattr("zse_hf.image_processing_zse.saliency_map", fake_saliency)
    cropping = ZseProcessor.from_config(model.config, photo_crop="saliency")
    rng = np.random.default_rng(5)
    photos = [random_photo(rng) for _ in range(6)]
    with ZseIndex.build(model, cropping, photos[:4], index_factory="Flat", progress=False) as idx:
        assert idx.model_info["photo_crop"] == "saliency"
        plain = ZseIndex.build(model, processor, photos[:4], progress=False)
        assert plain.model_info["photo_crop"] is None
        assert not np.allclose(idx.embeddings(), plain.embeddings(), atol=1e-3)  # the crop changed them
        saved = idx.save(tmp_path / "cropped")
    assert json.loads((saved / "manifest.json").read_text())["model"]["photo_crop"] == "saliency"
    loaded = ZseIndex.load(saved, model=model)  # no processor: the recorded crop
    assert loaded.model_info["photo_crop"] == "saliency"
    assert loaded.processor.image_processor.photo_crop == "saliency"
    loaded.add(photos[4:5], ids=[4], progress=False)
    np.testing.assert_allclose(loaded.embeddings([4]), ZseIndex.build(model, cropping, photos[4:5], progress=False)
                               .embeddings(), atol=1e-5)
    assert ZseIndex.load(saved).attach_model(model).processor.image_processor.photo_crop == "saliency"
    loaded.attach_model(model, processor)  # an explicit processor is kept, and refused on add
    with pytest.raises(ValueError) as info:
        loaded.add(photos[5:], ids=[5], progress=False)
    text = str(info.value)
    assert text.startswith("photo_crop mismatch") and "\n" not in text
    assert "photo_crop='saliency'" in text and "photo_crop=None" in text
    assert len(loaded) == 5
    with plain:
        plain_saved = plain.save(tmp_path / "plain")
    with pytest.raises(ValueError, match="photo_crop mismatch"):  # the other way round
        ZseIndex.load(plain_saved, model=model, processor=cropping).add(photos[4:5], ids=[9], progress=False)


def test_index_without_a_recorded_photo_crop_loads_as_none(saved, model, tmp_path):
    old = Path(shutil.copytree(saved, tmp_path / "old"))
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["model"].pop("photo_crop", None)  # as written before the key existed
    (old / "manifest.json").write_text(json.dumps(manifest, indent=2))
    loaded = ZseIndex.load(old, model=model)
    assert "photo_crop" not in loaded.model_info and loaded.processor.image_processor.photo_crop is None
    # refused before any photo is encoded (the saliency model does not exist)
    cropping = ZseProcessor.from_config(model.config, photo_crop="saliency", saliency_model=str(tmp_path / "none"))
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match=r"encoded with photo_crop=None, but the processor has photo_crop='saliency'"):
        loaded.attach_model(model, cropping).add([random_photo(rng)], ids=["new"], progress=False)
    loaded.attach_model(model).add([random_photo(rng)], ids=["new"], progress=False)
    assert len(loaded) == N_PHOTOS + 1


def test_merge_refuses_indexes_of_other_photo_crops(saved, model, tmp_path):
    parts = [Path(shutil.copytree(saved, tmp_path / name)) for name in ("a", "b")]
    manifest = json.loads((parts[1] / "manifest.json").read_text())
    manifest["model"]["photo_crop"] = "saliency"
    (parts[1] / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(ValueError, match=r"photo_crop='saliency'.*with None"):
        ZseIndex.merge(parts, model=model)


def test_cli_index_photo_crop(model, processor, sketches, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("zse_hf.image_processing_zse.saliency_map", fake_saliency)
    (tmp_path / "photos").mkdir()
    model_dir, photos = tmp_path / "model", write_photo_dir(tmp_path / "photos", 4)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    argv = [str(photos), "--model", str(model_dir), "--quiet"]
    for flag, recorded in ((None, None), ("saliency", "saliency"), ("none", None)):
        out = tmp_path / f"index-{flag}"
        assert retrieval.index_main([*argv, "--out", str(out), *(["--photo-crop", flag] if flag else [])]) == 0
        assert json.loads((out / "manifest.json").read_text())["model"]["photo_crop"] == recorded
    out = tmp_path / "index-saliency"
    assert ZseIndex.load(out, model=model).processor.image_processor.photo_crop == "saliency"
    capsys.readouterr()
    assert retrieval.search_main([str(out), sketches[0], "-k", "2", "--json"]) == 0
    want = ZseIndex.load(out, model=model).search(sketches[0], k=2)
    assert json.loads(capsys.readouterr().out)[0]["hits"] == [asdict(h) for h in want[0]]
    with pytest.raises(SystemExit):
        retrieval.index_main([*argv, "--out", str(tmp_path / "x"), "--photo-crop", "square"])
