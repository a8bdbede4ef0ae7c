"""transformers pipelines on the shipped card `hub_card/`: `"image-feature-extraction"` (the encoder's tokens
or [Ret] embedding) and `"sketch-based-image-retrieval"` (zse_hf/pipeline_zse.py), with the package installed,
with the repo's code alone (`zse_hf` hidden) and from a Hub id offline."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from zse_hf import ZseModel, ZseSketchRetrievalPipeline
from zse_hf.hub.repo_files import CUSTOM_PIPELINES, REMOTE_CODE_FILES, check_in_sync
from zse_hf.pipeline_zse import TASK

from conftest import assert_close_to_scale, tiny_config
from hf_cache import make_hf_cache

HUB = Path(__file__).resolve().parents[1] / "hub_card"
REPO_ID = "zse-sbir/zse-sbir-dinov2-small"

pytestmark = pytest.mark.skipif(not (HUB / "model.safetensors").is_file(), reason="hub_card/ has no weights")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A drawn sketch (PNG path) and four photos: two PNG paths, then two PIL images (`files`: all four as PNGs)."""
    root = tmp_path_factory.mktemp("pipeline_images")
    sketch = Image.new("RGB", (200, 160), "white")
    d = ImageDraw.Draw(sketch)
    d.rectangle([50, 70, 150, 140], outline="black", width=4)
    d.polygon([(45, 72), (100, 20), (155, 72)], outline="black", width=4)
    sketch_path = root / "sketch.png"
    sketch.save(sketch_path)
    photos, files = [], []
    for i, (fg, bg) in enumerate([((170, 60, 30), (235, 230, 220)), ((40, 80, 200), (250, 250, 250)),
                                  ((30, 140, 60), (200, 220, 240)), ((200, 190, 40), (60, 60, 60))]):
        photo = Image.new("RGB", (160 + 20 * i, 140), bg)
        d = ImageDraw.Draw(photo)
        if i % 2:
            d.ellipse([20 + 5 * i, 25, 140, 120 - 5 * i], fill=fg)
        else:
            d.rectangle([30, 50, 130 + 10 * i, 125], fill=fg)
            d.polygon([(25, 52), (80 + 5 * i, 10), (140, 52)], fill=fg)
        path = root / f"photo{i}.png"
        photo.save(path)
        files.append(str(path))
        photos.append(str(path) if i < 2 else photo)
    return SimpleNamespace(sketch=str(sketch_path), photos=photos, files=files)


@pytest.fixture(scope="module")
def reference(package, images) -> SimpleNamespace:
    """What the pipelines should give, computed with the card's model and processor directly: [Ret] cosines
    `cosine [P]` and relation scores `relation [P]` of the sketch against each photo, the photos' names as the
    pipeline gives them (`ids`, `by_ret`: in [Ret] order), and photo 0's tokens `[1, 1 + N, D]` and [Ret]
    embedding `[1, D]`."""
    proc, model = package.features.image_processor, package.features.model
    with torch.no_grad():
        s = model.get_image_features(proc(images.sketch, modality="sketch", return_tensors="pt")["pixel_values"])
        p = model.get_image_features(proc(images.photos, modality="photo", return_tensors="pt")["pixel_values"])
        relation = model.score_all_pairs(s, p)[0]
    ids = [x if isinstance(x, str) else i for i, x in enumerate(images.photos)]
    cosine = (s.ret_embeds @ p.ret_embeds.T)[0]
    return SimpleNamespace(cosine=cosine, relation=relation, ids=ids,
                           by_ret=[ids[i] for i in cosine.argsort(descending=True).tolist()],
                           tokens=p.last_hidden_state[:1], pooled=p.pooler_output[:1])


@pytest.fixture(scope="module")
def remote():
    """The retrieval pipeline on `hub_card/` with `trust_remote_code=True`: the repo's pipeline class (named by
    its config's `custom_pipelines`); the model and processor are the package's, which transformers prefers
    once `zse_hf` is imported (the repo's code alone is tested in a process without the package, below)."""
    sbir = pipeline(TASK, model=str(HUB), trust_remote_code=True)
    assert type(sbir).__module__.startswith("transformers_modules"), type(sbir).__module__
    assert type(sbir) is not ZseSketchRetrievalPipeline and type(sbir.model) is ZseModel
    return SimpleNamespace(sbir=sbir)


@pytest.fixture(scope="module")
def package():
    """Both pipelines on `hub_card/` with the installed package's classes (no remote code)."""
    features = pipeline("image-feature-extraction", model=str(HUB))
    # the card's config names the repo's pipeline file, which transformers runs only with trust_remote_code;
    # pipeline_class= picks the package's class instead
    sbir = pipeline(TASK, model=str(HUB), pipeline_class=ZseSketchRetrievalPipeline)
    assert type(features.model) is ZseModel and type(sbir.model) is ZseModel
    return SimpleNamespace(sbir=sbir, features=features)


@pytest.fixture(scope="module", params=["remote", "package"])
def sbir_pipe(request):
    """The retrieval pipeline, the repo's class or the package's."""
    return request.getfixturevalue(request.param).sbir


def _check_ranked(results, n: int, reranked: int) -> None:
    """`n` results ranked 1..n: the first `reranked` by relation score, the rest by [Ret] cosine,
    each part sorted by `score` (the re-rank key = the relation score at the default weight 0)."""
    assert [r["rank"] for r in results] == list(range(1, n + 1))
    head, tail = results[:reranked], results[reranked:]
    for part in (head, tail):
        assert [r["score"] for r in part] == sorted((r["score"] for r in part), reverse=True)
    assert all(r["score"] == r["relation_score"] for r in head)
    assert all("relation_score" not in r and r["score"] == r["ret_score"] for r in tail)


# ----------------------------------------------------------------------------- image-feature-extraction


def test_feature_extraction_tokens_by_default_ret_embedding_with_pool(package, images):
    fe = package.features
    photo = images.photos[0]  # an RGB PNG: transformers' load_image and the processor read the same pixels
    tokens = fe(photo)  # nested lists by default
    pooled = fe(photo, pool=True, return_tensors=True)
    sketch = fe(images.sketch, pool=True, return_tensors=True, image_processor_kwargs={"modality": "sketch"})
    with torch.no_grad():
        ref = fe.model.get_image_features(fe.image_processor(photo, return_tensors="pt")["pixel_values"])
        ref_sketch = fe.model.get_image_features(
            fe.image_processor(images.sketch, modality="sketch", return_tensors="pt")["pixel_values"])
    n = (fe.model.config.image_size // 14) ** 2
    assert torch.tensor(tokens).shape == (1, 1 + n, 384)
    assert torch.equal(torch.tensor(tokens), ref.last_hidden_state)
    assert pooled.shape == (1, 384) and torch.equal(pooled, ref.pooler_output) and torch.equal(pooled, ref.ret_embeds)
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(1))  # the L2-normalised [Ret] embedding
    assert torch.equal(sketch, ref_sketch.ret_embeds)


def test_forward_with_pixel_values_is_get_image_features(package):
    model = package.features.model
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        out = model(pixel_values=x)
        ref = model.get_image_features(x)
        as_tuple = model(pixel_values=x, return_dict=False)
    assert type(out).__name__ == "ZseImageFeatures"
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state) and torch.equal(out.pooler_output, ref.ret_embeds)
    assert torch.equal(as_tuple[0], ref.last_hidden_state)
    with pytest.raises(ValueError, match="not both"):
        model(pixel_values=x, sketch_pixel_values=x, photo_pixel_values=x)
    with pytest.raises(ValueError, match="pixel_values alone"):
        model(sketch_pixel_values=x)


# ----------------------------------------------------------------------------- sketch-based-image-retrieval


def test_sbir_follows_the_default_ranking_and_rerank_k(sbir_pipe, reference, images, monkeypatch):
    sbir, ref = sbir_pipe, reference
    full = type(sbir) is ZseSketchRetrievalPipeline  # the package's class; the repo's runs the same file's code
    assert sbir.model.config.default_ranking == "ret"  # the shipped card's

    plain = sbir(images.sketch, photos=images.photos, top_k=3)
    _check_ranked(plain, 3, reranked=0)
    assert [r["photo"] for r in plain] == ref.by_ret[:3]  # paths for files, positions for PIL images
    assert_close_to_scale([r["ret_score"] for r in plain], ref.cosine.sort(descending=True).values[:3], rel=1e-4)

    # the model's default_ranking is followed
    monkeypatch.setattr(sbir.model.config, "default_ranking", "rn@2")
    reranked = sbir(images.sketch, photos=images.photos, top_k=3)
    _check_ranked(reranked, 3, reranked=2)
    assert {r["photo"] for r in reranked[:2]} == set(ref.by_ret[:2]) and reranked[2]["photo"] == ref.by_ret[2]
    rel = dict(zip(ref.ids, ref.relation.tolist()))
    assert_close_to_scale([r["relation_score"] for r in reranked[:2]], [rel[r["photo"]] for r in reranked[:2]],
                          rel=1e-4)
    if full:  # rerank_k overrides it, either way
        assert sbir(images.sketch, photos=images.photos, top_k=3, rerank_k=0) == plain
        monkeypatch.setattr(sbir.model.config, "default_ranking", "ret")
        everything = sbir([images.sketch], photos=images.photos, top_k=10, rerank_k=2)  # a list of sketches
        assert len(everything) == 1 and everything[0][:3] == reranked
        _check_ranked(everything[0], 4, reranked=2)  # top_k beyond the gallery: every photo
        with pytest.raises(ValueError, match="top_k"):
            sbir(images.sketch, photos=images.photos, top_k=0)


def test_sbir_searches_a_zse_index_like_a_list(remote, package, reference, images, tmp_path):
    pytest.importorskip("faiss")
    from zse_hf.retrieval import ZseIndex

    index = ZseIndex.build(package.sbir.model, None, images.photos, progress=False, work_dir=tmp_path)
    sbir = remote.sbir  # the repo's pipeline class duck-types the package's index
    try:
        listed = sbir(images.sketch, photos=images.photos, top_k=3, rerank_k=2)
        searched = sbir(images.sketch, photos=index, top_k=3, rerank_k=2)
        # the re-ranked top 2 hold the same photos; their order may swap only on a near tie, since the
        # index's fp16 tokens round the relation scores (the two house photos score ~0.995 each)
        assert {r["photo"] for r in searched[:2]} == {r["photo"] for r in listed[:2]}
        assert searched[2]["photo"] == listed[2]["photo"]
        if abs(listed[0]["score"] - listed[1]["score"]) > 1e-2 * abs(listed[0]["score"]):
            assert [r["photo"] for r in searched] == [r["photo"] for r in listed]
        assert [r["rank"] for r in searched] == [1, 2, 3]
        assert [("relation_score" in r) for r in searched] == [True, True, False]
        by_photo = {r["photo"]: r["ret_score"] for r in listed}
        assert_close_to_scale([r["ret_score"] for r in searched], [by_photo[r["photo"]] for r in searched],
                              rel=1e-4)
        # the index stores local tokens in fp16: relation scores agree up to that rounding
        assert_close_to_scale(sorted(r["score"] for r in searched), sorted(r["score"] for r in listed), rel=1e-2)
        plain = sbir(images.sketch, photos=index, top_k=3)  # the default ranking of the card: [Ret]
        assert [r["photo"] for r in plain] == reference.by_ret[:3]
        _check_ranked(plain, 3, reranked=0)
        # an index loaded without a model searches with the pipeline's (same weights, checked by the index)
        loaded = ZseIndex.load(index.save(tmp_path / "saved"))
        assert loaded.model is None
        assert sbir(images.sketch, photos=loaded, top_k=3) == plain and loaded.model is sbir.model
        loaded.close()
    finally:
        index.close()


def test_custom_pipeline_is_registered_and_exported(package):
    config = json.loads((HUB / "config.json").read_text())
    assert config["custom_pipelines"] == CUSTOM_PIPELINES
    assert "pipeline_zse.py" in REMOTE_CODE_FILES and check_in_sync(HUB) == []
    # the entry is the one transformers' Pipeline.save_pretrained writes for the registered class
    impl = PIPELINE_REGISTRY.supported_tasks[TASK]
    assert impl["impl"] is ZseSketchRetrievalPipeline
    written = {"impl": f"{impl['impl'].__module__.split('.')[-1]}.{impl['impl'].__name__}",
               "pt": [c.__name__ for c in impl["pt"]], "type": impl["type"]}
    assert CUSTOM_PIPELINES == {TASK: written}
    # with the package imported, the task resolves to the package's class for a model without the entry
    assert type(pipeline(TASK, model=package.features.model)) is ZseSketchRetrievalPipeline
    # the card's config names the repo's pipeline: transformers asks for trust_remote_code (or pipeline_class=)
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline(TASK, model=str(HUB))


def test_save_pretrained_keeps_custom_pipelines_loadable(tmp_path):
    model = ZseModel(tiny_config())
    model.config.custom_pipelines = CUSTOM_PIPELINES
    model.save_pretrained(tmp_path / "kept")
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["custom_pipelines"] == CUSTOM_PIPELINES
    for name in ("pipeline_zse.py", "image_processing_zse.py", "configuration_zse.py"):  # the pipeline and its imports
        assert (tmp_path / "kept" / name).read_bytes() == (HUB / name).read_bytes()
    model.config.custom_pipelines = {"other-task": {"impl": "not_here.Pipe", "pt": ["AutoModel"]}}
    model.save_pretrained(tmp_path / "dropped")
    assert "custom_pipelines" not in json.loads((tmp_path / "dropped" / "config.json").read_text())


# ----------------------------------------------------------------------------- remote code only, from the Hub


REMOTE_PIPELINES = textwrap.dedent(
    """
    import sys
    sys.modules["zse_hf"] = None  # the package is not importable: only the repo's code can serve
    import torch
    from transformers import pipeline
    repo, out, sketch, *photos = sys.argv[1:]
    sbir = pipeline("sketch-based-image-retrieval", model=repo, trust_remote_code=True)
    features = pipeline("image-feature-extraction", model=repo, trust_remote_code=True)
    for obj in (sbir, sbir.model, features.model, features.image_processor):
        assert type(obj).__module__.startswith("transformers_modules"), type(obj).__module__
    proc, model = features.image_processor, features.model
    with torch.no_grad():
        ref = model.get_image_features(proc(photos[0], return_tensors="pt")["pixel_values"])
        ref_sketch = model.get_image_features(proc(sketch, modality="sketch", return_tensors="pt")["pixel_values"])
    got = {
        "ret": sbir(sketch, photos=photos, top_k=2),
        "rn": sbir(sketch, photos=photos, top_k=2, rerank_k=2),
        "tokens": features(photos[0], return_tensors=True),
        "pooled": features(photos[0], pool=True, return_tensors=True),
        "sketch": features(sketch, pool=True, return_tensors=True, image_processor_kwargs={"modality": "sketch"}),
        "ref_tokens": ref.last_hidden_state, "ref_pooled": ref.pooler_output, "ref_sketch": ref_sketch.pooler_output,
    }
    sbir.model.config.default_ranking = "rn@2"
    got["default_rn"] = sbir(sketch, photos=photos, top_k=2)
    torch.save(got, out)
    """
)


def test_both_pipelines_from_a_hub_id_offline_without_the_package(reference, images, tmp_path):
    hf_home = tmp_path / "hf"
    make_hf_cache(hf_home, REPO_ID, HUB)
    script = tmp_path / "user.py"
    script.write_text(REMOTE_PIPELINES)
    photos = images.files[:3]
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    proc = subprocess.run([sys.executable, str(script), REPO_ID, str(tmp_path / "out.pt"), images.sketch, *photos],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    # the repo's code alone: tokens by default, the [Ret] embedding with pool=True
    side = json.loads((HUB / "config.json").read_text())["image_size"]
    assert got["tokens"].shape == (1, 1 + (side // 14) ** 2, 384) and torch.equal(got["tokens"], got["ref_tokens"])
    assert torch.equal(got["pooled"], got["ref_pooled"]) and torch.equal(got["sketch"], got["ref_sketch"])
    _check_ranked(got["ret"], 2, reranked=0)
    _check_ranked(got["rn"], 2, reranked=2)
    assert got["default_rn"] == got["rn"]  # the model's default_ranking is followed
    assert all(r["photo"] in photos for r in got["ret"] + got["rn"])
    # the package in this process: same photos, same numbers up to summation order
    cosine = dict(zip(images.files, reference.cosine.tolist()))
    relation = dict(zip(images.files, reference.relation.tolist()))
    assert [r["photo"] for r in got["ret"]] == sorted(photos, key=cosine.get, reverse=True)[:2]
    assert_close_to_scale([r["score"] for r in got["ret"]], [cosine[r["photo"]] for r in got["ret"]])
    assert_close_to_scale([r["score"] for r in got["rn"]], [relation[r["photo"]] for r in got["rn"]])
    assert_close_to_scale(got["tokens"], reference.tokens)
    assert_close_to_scale(got["pooled"], reference.pooled)
