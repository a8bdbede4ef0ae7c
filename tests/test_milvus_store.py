"""The Milvus store (`ZseMilvusStore`): the search of `ZseIndex` from a Milvus collection, on the embedded engine
(Milvus Lite, a `.db` file) and on a real Milvus standalone server process that these tests start from the
`milvus` package; an ingest resumed after an interruption and after the server is SIGKILLed mid-ingest; the CLI,
the retrieval pipeline and explanations on a store.

Everything runs against the real engines (no stand-in for the database). The tests skip, saying why, only when
the `milvus` extra is not installed."""

import json
import threading
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from zse_hf import ZseModel, ZseProcessor, retrieval
from zse_hf.retrieval import ZseIndex, milvus_ingest, open_store
from zse_hf.retrieval import milvus_schema as ms
from zse_hf.retrieval.milvus_store import StoreAddress, ZseMilvusStore, is_store_uri, parse_store_uri

from conftest import fake_saliency, random_photo, tiny_config, write_photo_dir, write_sketches

pytestmark = [pytest.mark.filterwarnings("ignore:skipped .* unreadable"), pytest.mark.usefixtures("one_thread")]
EXTRA = "the milvus extra is not installed (pip install 'zse-sbir[milvus]')"
N_PHOTOS = 24






@pytest.fixture(scope="module")
def lite():
    pytest.importorskip("pymilvus", reason=EXTRA)
    pytest.importorskip("milvus_lite", reason=EXTRA)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Milvus 2.3 standalone server process from the `milvus` package (embedded etcd and RocksMQ), on a
    temporary data folder; killed after the module (its data is thrown away)."""
    pytest.importorskip("pymilvus", reason=EXTRA)
    pytest.importorskip("milvus", reason=f"{EXTRA}: the `milvus` package bundles the server")
    from zse_hf.retrieval.milvus_local import LocalMilvusServer

    srv = LocalMilvusServer(tmp_path_factory.mktemp("milvus-server"), start_timeout=240).start()
    yield srv
    srv.kill()


@pytest.fixture(params=["embedded", "server"])
def uri_of(request, tmp_path):
    """`name -> store URI` on the embedded engine (a .db file) or the module's server (a collection per name)."""
    if request.param == "embedded":
        request.getfixturevalue("lite")
        return lambda name: str(tmp_path / f"{name}.db")
    srv = request.getfixturevalue("server")
    suffix = request.node.name.split("[")[0].removeprefix("test_")[:20]
    return lambda name: f"{srv.uri}?collection={name}_{suffix}"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ZseModel(tiny_config(initializer_range=0.5)).eval()


@pytest.fixture(scope="module")
def processor(model):
    return ZseProcessor.from_config(model.config)


@pytest.fixture(scope="module")
def other_model():
    torch.manual_seed(7)
    return ZseModel(tiny_config(initializer_range=0.5)).eval()


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    return write_photo_dir(tmp_path_factory.mktemp("photos"), N_PHOTOS)


@pytest.fixture(scope="module")
def sketches(tmp_path_factory):
    return write_sketches(tmp_path_factory.mktemp("sketches"))


@pytest.fixture(scope="module")
def index(model, processor, photo_dir):
    """The faiss index of the same photos, with the default (sq6) token codec: trained on the same tokens as the
    store's, so both hold the same codes."""
    with ZseIndex.build(model, processor, photo_dir, index_factory="Flat", batch_size=5, progress=False) as idx:
        yield idx


def _metadata(photo_dir):
    return [{"folder": p.parent.name, "n": i} for i, p in enumerate(retrieval.list_images(photo_dir))]


def _same_hits(got, want, atol=1e-5):
    for g, w in zip(got, want, strict=True):
        assert [h.id for h in g] == [h.id for h in w]
        assert [h.path for h in g] == [h.path for h in w]
        np.testing.assert_allclose([h.ret_score for h in g], [h.ret_score for h in w], atol=atol)
        assert [h.relation_score is None for h in g] == [h.relation_score is None for h in w]
        np.testing.assert_allclose([h.relation_score or 0.0 for h in g], [h.relation_score or 0.0 for h in w],
                                   atol=atol)


# ----------------------------------------------------------------------------- URIs (no database needed)


def test_store_uris(tmp_path):
    assert parse_store_uri("photos.db") == StoreAddress(str((tmp_path.cwd() / "photos.db").absolute()),
                                                        "zse_photos", True)
    assert parse_store_uri("milvus:///data/photos.db?collection=cats") == StoreAddress("/data/photos.db", "cats", True)
    assert parse_store_uri("milvus://db.example:1234") == StoreAddress("http://db.example:1234", "zse_photos", False)
    assert parse_store_uri("milvus://db.example").uri == "http://db.example:19530"
    assert parse_store_uri("https://h:443/prod?collection=x").uri == "https://h:443/prod"
    assert str(parse_store_uri("http://h:1?collection=x")) == "http://h:1?collection=x"
    assert parse_store_uri("http://h:1", collection="y").collection == "y"
    for target in ("photos.db", "milvus://h", "http://h:1", "https://h", "a/b.db?collection=x"):
        assert is_store_uri(target)
    for target in ("photos.index", "folder", tmp_path, 3):
        assert not is_store_uri(target)
    for bad, message in (("milvus:///data/photos", "ending in .db"), ("http://h:1?collection=9x", "invalid collection"),
                         ("http://h:1?colection=x", "unknown store URI parameter"), ("ftp://h/x.db", "not a store")):
        with pytest.raises(ValueError, match=message):
            parse_store_uri(bad)


def test_tokens_pack_into_several_varchar_fields():
    """float16 tokens of the shipped model's shape (64 x 384) need two 65,535-character fields as base64."""
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((3, 64, 384)).astype(np.float16)
    mask = rng.random((3, 64)) < 0.7
    layout = ms.StoreLayout(model={}, dim=384, token_shape=(64, 384), grid_size=(8, 8), id_type="str", codec=None,
                            token_fields=0, vector_index={})
    layout.token_fields = ms.token_field_count(layout.token_bytes)
    assert layout.token_fields == 2 and layout.token_field_names == ["tokens", "tokens_1"]
    packed = ms.pack_tokens(tokens, mask, layout.token_fields)
    assert all(len(p) <= ms.VARCHAR_MAX for row in packed for p in row)
    got_tokens, got_mask = ms.unpack_tokens(["".join(row) for row in packed], layout)
    np.testing.assert_array_equal(got_tokens, tokens)
    np.testing.assert_array_equal(got_mask, mask)


# ----------------------------------------------------------------------------- embedded and server


def test_search_matches_zse_index(uri_of, model, processor, photo_dir, sketches, index):
    with ZseMilvusStore.build(model, processor, photo_dir, uri=uri_of("same"), batch_size=5, progress=False,
                              metadata=_metadata(photo_dir)) as store:
        assert len(store) == N_PHOTOS and sorted(store.ids) == sorted(index.ids)
        assert store.token_codec == index.token_codec and store.token_codec_name == "sq6"
        for kwargs in ({"rerank_k": 0}, {"rerank_k": 6}, {}, {"rerank_k": 4, "rerank_ret_weight": 3.0},
                       {"k": 30, "rerank_k": 8}):
            k = kwargs.pop("k", 5)
            _same_hits(store.search(sketches, k=k, **kwargs), index.search(sketches, k=k, **kwargs))
        # the default ranking follows the model's config, as ZseIndex does
        model.config.default_ranking = "rn@6"
        try:
            _same_hits(store.search(sketches, k=5), index.search(sketches, k=5, rerank_k=6))
            assert store.search(sketches[:1], k=5)[0][0].relation_score is not None
        finally:
            model.config.default_ranking = "ret"
        # a filter: the database's own expression over the metadata
        got = store.search(sketches, k=4, rerank_k=3, filter='folder == "a"')
        for hits in got:
            assert len(hits) == 4 and all(h.id.startswith("a/") for h in hits)
        ids = [i for i in index.ids if i.startswith("a/")]
        cos = store.encode_sketches(sketches).ret_embeds.numpy() @ index.embeddings(ids).T
        assert [[h.id for h in hits] for hits in store.search(sketches, k=4, rerank_k=0, filter="n < 100 and "
                                                               'folder == "a"')] == \
               [[ids[j] for j in np.argsort(-row, kind="stable")[:4]] for row in cos]
        # what an explanation or a re-rank elsewhere reads: the same tokens and embeddings as the faiss index
        some = index.ids[:5]
        got, want = store.local_tokens(some), index.local_tokens(some)
        torch.testing.assert_close(got.local_tokens, want.local_tokens, rtol=0, atol=0)
        torch.testing.assert_close(got.token_mask, want.token_mask)
        np.testing.assert_allclose(store.embeddings(some), index.embeddings(some), atol=1e-7)
        assert store.metadata(some[:1]) == [{"path": index.paths[0], "folder": "a", "n": 0}]
        with pytest.raises(KeyError, match="unknown ids"):
            store.embeddings(["nope.png"])


def test_deletes_upserts_and_ids(uri_of, model, processor, photo_dir, sketches):
    rng = np.random.default_rng(5)
    photos = [random_photo(rng) for _ in range(10)]
    with ZseMilvusStore.build(model, processor, photos, uri=uri_of("edit"), progress=False,
                              metadata=[{"even": i % 2 == 0} for i in range(10)], token_codec="fp16") as store:
        assert len(store) == 10 and sorted(store.ids) == list(range(10)) and store.token_codec is None
        assert store.remove([3, 3, 4]) == 2 and len(store) == 8
        with pytest.raises(KeyError, match="unknown ids"):
            store.remove([3])
        assert store.delete(ids=[3, 5, 99]) == 1 and len(store) == 7
        assert store.delete(filter="even == true") == 4 and sorted(store.ids) == [1, 7, 9]
        with pytest.raises(ValueError, match=r"ids already in the store: \[1\]"):
            store.add(photos[:2], ids=[0, 1], progress=False)
        store.add(photos[:2], ids=[0, 1], progress=False, existing="skip")
        assert store.added == 1 and sorted(store.ids) == [0, 1, 7, 9]
        # an upsert replaces the photo under an id: its embedding is now the other photo's
        before = store.embeddings([7])
        store.upsert([photos[0]], ids=[7], metadata=[{"even": True}], progress=False)
        assert len(store) == 4
        np.testing.assert_allclose(store.embeddings([7]), store.embeddings([0]), atol=1e-6)
        assert not np.allclose(before, store.embeddings([7]))
        assert store.metadata([7]) == [{"path": None, "even": True}]
        scores, rows, records = store.ann_search(store.embeddings([0]), k=2)
        assert {records[r]["id"] for r in rows[0]} == {0, 7} and scores[0] == pytest.approx([1.0, 1.0], abs=1e-5)
        with pytest.raises(TypeError, match="ids are ints"):
            store.add(photos[:1], ids=["x"], progress=False)


def test_refuses_another_models_collection(uri_of, model, processor, other_model, sketches):
    uri = uri_of("bound")
    rng = np.random.default_rng(3)
    ZseMilvusStore.build(model, processor, [random_photo(rng) for _ in range(4)], uri=uri, progress=False).close()
    for attempt in (lambda: ZseMilvusStore.open(uri, other_model),
                    lambda: ZseMilvusStore.build(other_model, None, [random_photo(rng)], ids=[9], uri=uri,
                                                 progress=False),
                    lambda: ZseMilvusStore.open(uri).attach_model(other_model)):
        with pytest.raises(ValueError) as info:
            attempt()
        text = str(info.value)
        assert text.startswith("model mismatch: the collection was built with") and "\n" not in text
    with ZseMilvusStore.open(uri) as store:
        assert store.model is None and len(store) == 4
        assert store.attach_model(model).search(sketches[0], k=2)[0]
    with pytest.raises(ValueError, match="no zse-sbir collection 'elsewhere'"):
        ZseMilvusStore.open(parse_store_uri(uri, "elsewhere"))
    with pytest.raises(ValueError, match="stores sq6 tokens; it cannot take token_codec='sq8'"):
        ZseMilvusStore.build(model, None, [random_photo(rng)], ids=[8], uri=uri, progress=False, token_codec="sq8")


def test_an_interrupted_ingest_resumes(uri_of, model, processor, monkeypatch):
    rng = np.random.default_rng(4)
    photos = [random_photo(rng) for _ in range(30)]
    uri = uri_of("resume")
    monkeypatch.setattr(milvus_ingest, "INSERT_ROWS", 4)

    def interrupt(written):
        if written >= 12:
            raise KeyboardInterrupt

    monkeypatch.setattr(milvus_ingest, "insert_hook", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ZseMilvusStore.build(model, processor, photos, uri=uri, progress=False, batch_size=8, token_codec="sq8")
    monkeypatch.setattr(milvus_ingest, "insert_hook", None)
    with ZseMilvusStore.open(uri, model) as store:
        assert len(store) == 12 and sorted(store.ids) == list(range(12))
        assert store.token_codec_name == "sq8"  # trained on the first photos and recorded before any row
        with pytest.raises(ValueError, match="existing='skip' resumes an ingest"):
            store.add(photos, progress=False)
        store.add(photos, progress=False, existing="skip")
        assert store.added == 18 and len(store) == 30 and sorted(store.ids) == list(range(30))
    with ZseIndex.build(model, processor, photos, progress=False, token_codec=store.token_codec) as idx, \
            ZseMilvusStore.open(uri, model) as store:
        _same_hits(store.search(photos[:3], k=6, rerank_k=5), idx.search(photos[:3], k=6, rerank_k=5))


def test_shards_fill_one_collection(uri_of, model, processor, photo_dir, index):
    """Two processes' worth of shards (threads here) write one collection; shard 1 waits for shard 0 to create it."""
    uri = uri_of("shards")
    errors = []

    def shard_one():
        try:
            ZseMilvusStore.build(model, processor, photo_dir, uri=uri, shard=(1, 2), progress=False).close()
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    worker = threading.Thread(target=shard_one)
    worker.start()
    ZseMilvusStore.build(model, processor, photo_dir, uri=uri, shard=(0, 2), progress=False, batch_size=5).close()
    worker.join(timeout=300)
    assert not errors and not worker.is_alive()
    with ZseMilvusStore.open(uri, model) as store:
        assert len(store) == N_PHOTOS and sorted(store.ids) == sorted(index.ids)
        assert store.token_codec_name == "sq6"  # trained by shard 0 on its photos
        assert [h.id for h in store.search(index.paths[0], k=5, rerank_k=0)[0]] == \
               [h.id for h in index.search(index.paths[0], k=5, rerank_k=0)[0]]


def test_server_killed_mid_ingest_loses_and_duplicates_nothing(server, model, processor, monkeypatch):
    """SIGKILL the server while rows are being inserted, restart it on its data folder, resume: every photo is
    stored exactly once (a primary key inserted twice would be counted twice by `count(*)`)."""
    rng = np.random.default_rng(6)
    photos = [random_photo(rng) for _ in range(60)]
    monkeypatch.setattr(milvus_ingest, "INSERT_ROWS", 5)
    killer = threading.Thread(target=server.kill)

    def kill_while_inserting(written):
        if written == 15:
            killer.start()  # races the next inserts
        if written >= 30:
            killer.join()  # ... and has landed before the seventh

    monkeypatch.setattr(milvus_ingest, "insert_hook", kill_while_inserting)
    uri = f"{server.uri}?collection=killed"
    with pytest.raises(ValueError, match="Milvus (insert|flush) on http"):
        ZseMilvusStore.build(model, processor, photos, uri=uri, progress=False, batch_size=5, timeout=20)
    killer.join()
    assert not server.running
    monkeypatch.setattr(milvus_ingest, "insert_hook", None)
    server.restart()
    uri = f"{server.uri}?collection=killed"
    with ZseMilvusStore.open(uri, model) as store:
        stored = store.ids
        assert 15 <= len(store) == len(stored) == len(set(stored)) < 60
    with ZseMilvusStore.build(model, processor, photos, uri=uri, progress=False, batch_size=5,
                              existing="skip") as store:
        assert store.added == 60 - len(stored)
        ids = store.ids
        assert len(store) == len(ids) == 60 and sorted(ids) == list(range(60))
        with ZseIndex.build(model, processor, photos, progress=False, token_codec=store.token_codec) as idx:
            _same_hits(store.search(photos[:2], k=8, rerank_k=6), idx.search(photos[:2], k=8, rerank_k=6))


# ----------------------------------------------------------------------------- embedded only


def test_cli_index_and_search_a_store(lite, model, processor, photo_dir, sketches, other_model, tmp_path, capsys):
    model_dir, other_dir = tmp_path / "model", tmp_path / "other"
    for m, d in ((model, model_dir), (other_model, other_dir)):
        m.save_pretrained(d)
        processor.save_pretrained(d)
    uri = str(tmp_path / "photos.db")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"a/p01.png": {"colour": "red"}}))
    argv = [str(photo_dir), "--model", str(model_dir), "--out", uri, "--quiet", "--batch-size", "5"]
    assert retrieval.index_main([*argv, "--metadata", str(meta)]) == 0
    out = capsys.readouterr().out
    assert f"holds {N_PHOTOS} photos ({N_PHOTOS} added now, 0 unreadable skipped; [Ret] index FLAT)" in out
    assert "tokens: sq6" in out
    assert retrieval.index_main(argv) == 0  # a rerun resumes: nothing left to add
    assert f"holds {N_PHOTOS} photos (0 added now" in capsys.readouterr().out
    assert retrieval.search_main([uri, *sketches[:2], "-k", "4", "--rerank-k", "6", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    with ZseMilvusStore.open(uri, model) as store:
        api = store.search(sketches[:2], k=4, rerank_k=6)
        assert store.metadata(["a/p01.png"])[0]["colour"] == "red"
        assert store.metadata(["b/p00.png"])[0]["folder"] == "b"
    assert [r["hits"] for r in printed] == [[asdict(h) for h in hits] for hits in api]
    assert retrieval.search_main([uri, sketches[0], "-k", "3", "--filter", 'folder == "b"', "--json"]) == 0
    assert all(h["id"].startswith("b/") for h in json.loads(capsys.readouterr().out)[0]["hits"])
    assert retrieval.search_main([f"milvus://{uri}", sketches[0], "-k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    cases = [
        (retrieval.search_main, [uri, sketches[0], "--model", str(other_dir)], "model mismatch: the collection"),
        (retrieval.search_main, [f"{uri}?collection=none", sketches[0]], "no zse-sbir collection 'none'"),
        (retrieval.search_main, [str(tmp_path), sketches[0], "--filter", "x > 1"], "--filter is for a database"),
        (retrieval.index_main, [*argv, "--factory", "HNSW32"], "--factory is for a faiss index folder"),
        (retrieval.index_main, [*argv, "--model", str(other_dir)], "model mismatch: the collection"),
        (retrieval.index_main, [*argv[:4], str(tmp_path / "folder"), "--recreate"], "--recreate is for a database"),
        (retrieval.index_main, [*argv[:4], str(tmp_path / "nowhere" / "x.db")], "does not exist"),
    ]
    for main, args, expected in cases:
        assert main(args) == 2, args
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
        assert len(err) == 1 and err[0].startswith("zse-sbir ") and expected in err[0], err


def test_pipeline_and_open_store_take_a_store(lite, model, processor, photo_dir, sketches, index, tmp_path):
    from transformers import pipeline

    from zse_hf.pipeline_zse import TASK, ZseSketchRetrievalPipeline

    uri = str(tmp_path / "p.db")
    ZseMilvusStore.build(model, processor, photo_dir, uri=uri, progress=False).close()
    saved = index.save(tmp_path / "idx")
    sbir = pipeline(TASK, model=model, pipeline_class=ZseSketchRetrievalPipeline)
    store, loaded = open_store(uri), open_store(saved)
    assert isinstance(store, ZseMilvusStore) and isinstance(loaded, ZseIndex)
    try:
        for kwargs in ({"top_k": 5}, {"top_k": 5, "rerank_k": 4}):
            got = sbir(sketches[0], photos=store, **kwargs)
            assert store.model is sbir.model  # opened without a model: the pipeline's is attached (weights checked)
            want = sbir(sketches[0], photos=loaded, **kwargs)
            assert [r["photo"] for r in got] == [r["photo"] for r in want]
            np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-5)
    finally:
        store.close()
        loaded.close()


def test_explain_a_hit(lite, model, processor, photo_dir, sketches, tmp_path):
    from zse_hf.explain import explain_pair

    with ZseMilvusStore.build(model, processor, photo_dir, uri=str(tmp_path / "e.db"), progress=False) as store:
        hit = store.search(sketches[0], k=1, rerank_k=3)[0][0]
        got = store.explain(sketches[0], hit, source="encoder")
        want = explain_pair(model, processor, sketches[0], hit.path, source="encoder")
        assert got.relation_score == pytest.approx(want.relation_score)
        assert got.photo_image.size == want.photo_image.size
        np.testing.assert_allclose(got.kernel, want.kernel)
    photo = Image.open(hit.path).convert("RGB")
    with ZseMilvusStore.build(model, processor, [photo], uri=str(tmp_path / "m.db"), progress=False) as store:
        with pytest.raises(ValueError, match="stored from memory"):
            store.explain(sketches[0], 0)
        assert store.explain(sketches[0], 0, image=photo).relation_score == pytest.approx(want.relation_score)


def test_store_records_and_checks_photo_crop(lite, model, processor, tmp_path, monkeypatch):
    monkeypatch.setattr("zse_hf.image_processing_zse.saliency_map", fake_saliency)
    cropping = ZseProcessor.from_config(model.config, photo_crop="saliency")
    rng = np.random.default_rng(11)
    photos = [random_photo(rng) for _ in range(6)]
    uri = str(tmp_path / "crop.db")
    ZseMilvusStore.build(model, cropping, photos[:3], uri=uri, token_codec="fp16", progress=False).close()
    with ZseMilvusStore.open(uri, model) as store:  # no processor: the recorded crop
        assert store.model_info["photo_crop"] == "saliency"
        assert store.processor.image_processor.photo_crop == "saliency"
        store.upsert(photos[3:4], ids=[3], progress=False)
        with ZseIndex.build(model, cropping, photos[3:4], progress=False, token_codec="fp16") as idx:
            np.testing.assert_allclose(store.embeddings([3]), idx.embeddings(), atol=1e-5)
        store.attach_model(model, processor)  # an explicit processor is kept, and refused on add / upsert
        for write in (store.add, store.upsert):
            with pytest.raises(ValueError) as info:
                write(photos[4:5], ids=[4], progress=False)
            text = str(info.value)
            assert text.startswith("photo_crop mismatch: the collection's photos") and "\n" not in text
            assert "photo_crop='saliency'" in text and "photo_crop=None" in text
        assert len(store) == 4
    with ZseMilvusStore.open(uri) as store:
        assert store.attach_model(model).processor.image_processor.photo_crop == "saliency"
    with pytest.raises(ValueError, match="photo_crop mismatch"):
        ZseMilvusStore.build(model, processor, photos[5:], ids=[5], uri=uri, progress=False)


def test_cli_index_photo_crop_into_a_store(lite, model, processor, sketches, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("zse_hf.image_processing_zse.saliency_map", fake_saliency)
    model_dir, photos = tmp_path / "model", tmp_path / "photos"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    photos.mkdir()
    write_photo_dir(photos, 4)
    uri = str(tmp_path / "cli.db")
    argv = [str(photos), "--model", str(model_dir), "--out", uri, "--quiet", "--token-codec", "fp16"]
    assert retrieval.index_main([*argv, "--photo-crop", "saliency"]) == 0
    with ZseMilvusStore.open(uri) as store:
        assert store.model_info["photo_crop"] == "saliency" and len(store) == 4
    capsys.readouterr()
    (photos / "more").mkdir()
    write_photo_dir(photos / "more", 2)
    assert retrieval.index_main(argv) == 0  # continued without the flag: crops as the store recorded
    with ZseMilvusStore.open(uri) as store:
        assert store.model_info["photo_crop"] == "saliency" and len(store) == 6
    capsys.readouterr()
    assert retrieval.index_main([*argv, "--photo-crop", "none"]) == 2  # an explicit other setting is refused
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(err) == 1 and err[0].startswith("zse-sbir index: error: photo_crop mismatch"), err
    assert retrieval.search_main([uri, sketches[0], "-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["hits"]) == 2


def test_store_without_a_recorded_photo_crop_opens_as_none(lite, model, processor, tmp_path):
    rng = np.random.default_rng(12)
    uri = str(tmp_path / "old.db")
    with ZseMilvusStore.build(model, processor, [random_photo(rng) for _ in range(3)], uri=uri, token_codec="fp16",
                              progress=False) as store:
        assert store.model_info["photo_crop"] is None
        c, meta = store.client, store._meta_name
        raw = json.loads(c.query(meta, filter='key == "store"', output_fields=["value"])[0]["value"])
        raw["model"].pop("photo_crop")  # a record written before the key existed
        c.upsert(meta, [{"key": "store", "value": json.dumps(raw), "v": [0.0, 0.0]}])
    with ZseMilvusStore.open(uri, model) as store:
        assert "photo_crop" not in store.model_info and store.processor.image_processor.photo_crop is None
        # refused before any photo is encoded (the saliency model does not exist)
        cropping = ZseProcessor.from_config(model.config, photo_crop="saliency",
                                            saliency_model=str(tmp_path / "none"))
        with pytest.raises(ValueError, match=r"encoded with photo_crop=None, but the processor has "
                                             r"photo_crop='saliency'"):
            store.attach_model(model, cropping).add([random_photo(rng)], ids=[3], progress=False)
        store.attach_model(model).add([random_photo(rng)], ids=[3], progress=False)
        assert len(store) == 4
