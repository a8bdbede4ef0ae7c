"""Hugging Face `datasets` interop: `ZseIndex.build` on a `Dataset` or its image column, and the
HF-native route (`Dataset.map` [Ret] embeddings, `add_faiss_index`, `get_nearest_examples`)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from zse_hf import ZseModel, ZseProcessor
from zse_hf.retrieval import ZseIndex
from zse_hf.retrieval.inputs import DatasetImages, resolve_items

from conftest import tiny_config

datasets = pytest.importorskip("datasets", reason="the datasets interop needs `pip install datasets` (dev extra)")

N_PHOTOS = 10
pytestmark = pytest.mark.usefixtures("one_thread")


def _photo(rng) -> Image.Image:
    img = Image.new("RGB", (int(rng.integers(48, 90)), int(rng.integers(48, 90))),
                    tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    x0, y0 = (int(v) for v in rng.integers(0, 30, 2))
    draw.ellipse([x0, y0, x0 + 25, y0 + 20], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ZseModel(tiny_config(initializer_range=0.5)).eval()


@pytest.fixture(scope="module")
def processor(model):
    return ZseProcessor.from_config(model.config)


@pytest.fixture(scope="module")
def photos():
    rng = np.random.default_rng(0)
    return [_photo(rng) for _ in range(N_PHOTOS)]


@pytest.fixture(scope="module")
def ds(photos):
    """A dataset like `load_dataset("imagefolder", ...)` gives: an `Image()` column, a label, an id."""
    return datasets.Dataset.from_dict({
        "image": [{"bytes": _png(p), "path": None} for p in photos],
        "label": [i % 3 for i in range(N_PHOTOS)],
        "id": [f"photo-{i}" for i in range(N_PHOTOS)],
    }, features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64"),
                                   "id": datasets.Value("string")}))


@pytest.fixture(scope="module")
def sketch():
    img = Image.new("L", (80, 80), 255)
    ImageDraw.Draw(img).line([(10, 10), (70, 20), (40, 70), (15, 60)], fill=0, width=3)
    return img


@pytest.fixture(scope="module")
def reference(model, processor, photos):
    """The index of the same photos given as a list of PIL images."""
    return ZseIndex.build(model, processor, photos, index_factory="Flat", batch_size=4, progress=False)


def _same_index(a, b):
    """Same number of rows and the same [Ret] search results (ids and scores) for a few probes."""
    assert len(a) == len(b)
    probes = torch.nn.functional.normalize(torch.randn(4, a.dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    sa, ra = a.ann_search(probes, len(a))
    sb, rb = b.ann_search(probes, len(b))
    np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-6)
    assert [[a.ids[r] for r in row] for row in ra] == [[b.ids[r] for r in row] for row in rb]


def test_image_column_is_lazy_with_row_ids(ds):
    """`ds["image"]` resolves to a lazy view (nothing decoded up front) with row-index ids."""
    items, ids, paths = resolve_items(ds["image"], None)
    assert isinstance(items, DatasetImages) and len(items) == N_PHOTOS
    assert ids == list(range(N_PHOTOS)) and paths == [None] * N_PHOTOS
    assert isinstance(items[3], Image.Image) and items[-1].size == items[N_PHOTOS - 1].size
    with pytest.raises(IndexError):
        items[N_PHOTOS]


def test_build_from_image_column_equals_list_of_images(model, processor, ds, reference, sketch):
    index = ZseIndex.build(model, processor, ds["image"], index_factory="Flat", batch_size=4, progress=False)
    assert index.ids == list(range(N_PHOTOS)) and index.paths == [None] * N_PHOTOS and not index.skipped
    _same_index(index, reference)
    hits, expected = index.search(sketch, k=5, rerank_k=0)[0], reference.search(sketch, k=5, rerank_k=0)[0]
    assert [h.id for h in hits] == [h.id for h in expected]
    assert [h.ret_score for h in hits] == pytest.approx([h.ret_score for h in expected])


def test_build_from_dataset_takes_ids_from_its_id_column(model, processor, ds, reference, sketch):
    index = ZseIndex.build(model, processor, ds, index_factory="Flat", batch_size=4, num_workers=2, progress=False)
    assert index.ids == [f"photo-{i}" for i in range(N_PHOTOS)]
    hits, expected = index.search(sketch, k=3, rerank_k=0)[0], reference.search(sketch, k=3, rerank_k=0)[0]
    assert [h.id for h in hits] == [f"photo-{h.id}" for h in expected]
    no_id = ZseIndex.build(model, processor, ds.remove_columns("id"), index_factory="Flat", progress=False)
    assert no_id.ids == list(range(N_PHOTOS))
    _same_index(no_id, reference)


def test_column_with_id_column_and_more_rows_added(model, processor, ds):
    index = ZseIndex.build(model, processor, ds["image"], ids=ds["id"], index_factory="Flat", progress=False)
    assert index.ids == list(ds["id"])
    more = ds.select(range(2)).map(lambda row: {"id": "extra-" + row["id"]})
    index.add(more, progress=False)
    assert len(index) == N_PHOTOS + 2 and index.ids[-2:] == ["extra-photo-0", "extra-photo-1"]
    with pytest.raises(ValueError, match="already in the index"):
        index.add(ds.select([0]), progress=False)


def test_undecoded_column_bytes_and_paths(model, processor, ds, reference, photos, tmp_path):
    """`Image(decode=False)` rows (`{"bytes", "path"}`) are opened by the image processor."""
    raw = ds.cast_column("image", datasets.Image(decode=False))
    assert isinstance(DatasetImages(raw["image"])[0], bytes)
    _same_index(ZseIndex.build(model, processor, raw["image"], index_factory="Flat", progress=False), reference)
    files = []
    for i, p in enumerate(photos):
        files.append(str(tmp_path / f"p{i}.png"))
        p.save(files[-1])
    by_path = datasets.Dataset.from_dict({"file": files})
    index = ZseIndex.build(model, processor, by_path["file"], index_factory="Flat", progress=False)
    assert index.ids == list(range(N_PHOTOS)) and index.paths == files
    _same_index(index, reference)


def test_unreadable_row_is_skipped(model, processor, ds):
    rows = [{"bytes": b"not an image", "path": None}] + [{"bytes": _png(p), "path": None} for p in ds["image"][:3]]
    broken = datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()}))
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        index = ZseIndex.build(model, processor, broken["image"], index_factory="Flat", progress=False)
    assert index.ids == [1, 2, 3] and [s.id for s in index.skipped] == [0]


def test_dataset_inputs_that_cannot_be_indexed(model, processor, ds):
    with pytest.raises(TypeError, match="pass one, e.g. ds\\['train'\\]"):
        resolve_items(datasets.DatasetDict({"train": ds}), None)
    with pytest.raises(TypeError, match="streaming"):
        resolve_items(ds.to_iterable_dataset(), None)
    rows = [{"bytes": _png(p), "path": None} for p in ds["image"][:2]]
    features = datasets.Features({"image": datasets.Image(), "sketch": datasets.Image()})
    two = datasets.Dataset.from_dict({"image": rows, "sketch": rows}, features=features)
    with pytest.raises(ValueError, match="image columns \\['image', 'sketch'\\]"):
        resolve_items(two, None)
    with pytest.raises(ValueError, match="no Image\\(\\) column"):
        resolve_items(ds.remove_columns("image"), None)
    with pytest.raises(ValueError, match="ids must be unique"):
        resolve_items(ds.map(lambda row: {"id": "same"}), None)


def test_hf_native_route_map_then_faiss(model, processor, ds, reference, sketch):
    """docs/datasets.md: [Ret] embeddings through `Dataset.map`, then `add_faiss_index` and
    `get_nearest_examples` for a sketch: the same photos and cosines as `ZseIndex.search` ("ret")."""
    faiss = pytest.importorskip("faiss")

    def embed(batch):
        pixels = processor(photos=batch["image"], return_tensors="pt")["photo_pixel_values"]
        with torch.inference_mode():
            return {"embeddings": model.get_image_features(pixels).ret_embeds.numpy()}

    with_embeds = ds.map(embed, batched=True, batch_size=4)
    with_embeds.add_faiss_index(column="embeddings", metric_type=faiss.METRIC_INNER_PRODUCT)
    with torch.inference_mode():
        pixels = processor(sketches=sketch, return_tensors="pt")["sketch_pixel_values"]
        query = model.get_image_features(pixels).ret_embeds[0].numpy()
    scores, examples = with_embeds.get_nearest_examples("embeddings", query, k=5)
    hits = reference.search(sketch, k=5, rerank_k=0)[0]
    assert [int(i.removeprefix("photo-")) for i in examples["id"]] == [h.id for h in hits]
    np.testing.assert_allclose(scores, [h.ret_score for h in hits], rtol=1e-4, atol=1e-5)
    assert examples["label"] == [h.id % 3 for h in hits]
