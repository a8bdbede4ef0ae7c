"""Tests of the data layer: split hygiene, offline readers, datasets, augmentation, layouts.

Tests that need the real QuickDraw/Tux Paint assets are marked ``slow`` (project marker:
"needs real assets") and skip when the assets cannot be had.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from zse_hf import assets
from zse_hf import data as D

from conftest import asset_root

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def qd_root():
    return asset_root(assets.quickdraw_root)


@pytest.fixture(scope="session")
def tux_root():
    return asset_root(assets.tuxpaint_root)


def _photo_thumb(rec, tux_root, side=64):
    return D.load_photo(rec, root=tux_root, max_side=side)


@pytest.fixture(scope="session")
def research_root(tmp_path_factory, qd_root, tux_root):
    """Small trees in the ZSE-SBIR layouts, built from QuickDraw renders and Tux photos.

    ROOT/Sketchy/256x256/{sketch,photo}/tx_000000000000_ready/<cls>/, ROOT/Sketchy/EXTEND_image_sketchy_ready,
    ROOT/TUBerlin/{png_ready,ImageResized_ready}/<cls>/, ROOT/QuickDraw/{sketches,images}/<cls>/.
    """
    root = tmp_path_factory.mktemp("datasets")
    by_class = D.photos_by_class()

    def sk(qd_class, k):
        return D.render_sketch(D.read_quickdraw(qd_class, qd_root)[k], size=64)

    def ph(qd_class, k):
        recs = by_class[qd_class]
        im = _photo_thumb(recs[k % len(recs)], tux_root)
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k >= len(recs) else im

    # Sketchy: folder name -> QuickDraw/Tux class
    sketchy = {"airplane": "airplane", "teddy_bear": "teddy-bear", "scissors": "scissors", "cow": "cow",
               "pickup_truck": "pickup truck"}
    base = root / "Sketchy"
    for ci, (folder, src) in enumerate(sketchy.items()):
        for k in range(2):
            pid = f"n0{ci}000000_{k + 1}"
            d = base / "256x256/photo/tx_000000000000_ready" / folder
            d.mkdir(parents=True, exist_ok=True)
            ph(src, k).save(d / f"{pid}.jpg", quality=90)
            d = base / "256x256/sketch/tx_000000000000_ready" / folder
            d.mkdir(parents=True, exist_ok=True)
            for n in (1, 2):
                sk(src, 2 * k + n).save(d / f"{pid}-{n}.png")
        ext = base / "EXTEND_image_sketchy_ready" / folder
        ext.mkdir(parents=True)
        shutil.copy(base / "256x256/photo/tx_000000000000_ready" / folder / f"n0{ci}000000_1.jpg", ext)  # duplicate
        ph(src, 2).save(ext / f"n9{ci}000000_7.jpg", quality=90)

    tub = {"hot air balloon": "hot air balloon", "banana": "banana", "horse": "horse", "teddy-bear": "teddy-bear"}
    for ci, (folder, src) in enumerate(tub.items()):
        (root / "TUBerlin/png_ready" / folder).mkdir(parents=True)
        (root / "TUBerlin/ImageResized_ready" / folder).mkdir(parents=True)
        for k in range(3):
            sk(src, k).convert("L").save(root / "TUBerlin/png_ready" / folder / f"{100 * ci + k}.png")
        for k in range(2):
            ph(src, k).save(root / "TUBerlin/ImageResized_ready" / folder / f"n0{ci}_{k}.JPEG", format="JPEG")

    qdx = {"palm tree": "palm tree", "cow": "cow", "zebra": "zebra"}
    for folder, src in qdx.items():
        (root / "QuickDraw/sketches" / folder).mkdir(parents=True)
        (root / "QuickDraw/images" / folder).mkdir(parents=True)
        for k in range(4):
            sk(src, k).save(root / "QuickDraw/sketches" / folder / f"{5000 + k}.png")
        ph(src, 0).save(root / "QuickDraw/images" / folder / "image_00001.jpg")
    return root


# --------------------------------------------------------------------------- split hygiene


def test_split_disjoint_and_no_unseen_in_train():
    s = D.load_split()
    assert (len(s["test"]), len(s["train"]), len(s["unseen_all"])) == (22, 57, 63)
    canon = {k: {D.canonical_class(c) for c in v} for k, v in s.items()}
    assert not canon["train"] & canon["test"]
    assert not canon["train"] & canon["unseen_all"]
    assert canon["test"] <= canon["unseen_all"]
    # every photo is in exactly one of train/test
    classes = {r.class_name for r in D.load_photo_table()}
    assert classes == set(s["train"]) | set(s["test"])
    bad = dict(s, train=s["train"] + ["cow"])
    with pytest.raises(ValueError, match="overlap"):
        D.check_split(bad)
    with pytest.raises(ValueError, match="unseen"):
        D.check_split(dict(s, train=s["train"] + ["harp"]))


def test_check_classes_allowed_refuses_unseen():
    D.check_classes_allowed(D.load_split()["train"])
    with pytest.raises(ValueError) as e:
        D.check_classes_allowed(["apple", "teddy_bear", "Hot-Air_Balloon", "dog"])
    assert "teddy_bear" in str(e.value) and "Hot-Air_Balloon" in str(e.value) and "'apple'" not in str(e.value)
    with pytest.raises(ValueError, match="rollerblades"):
        D.check_classes_allowed(["rollerblades"])  # same concept as QuickDraw's rollerskates
    with pytest.raises(ValueError):
        D.check_classes_allowed("cow")


@pytest.mark.slow
def test_zero_shot_lists_match_unseen_all(qd_root):
    qd = {D.canonical_class(c): c for c in D.quickdraw_classes(qd_root)}
    assert len(qd) == 345
    concepts = {D.canonical_class(c) for k in ("sketchy25", "sketchy21", "tuberlin30", "quickdraw25")
                for c in D.ZERO_SHOT_SPLITS[k]}
    assert {qd[c] for c in concepts if c in qd} == set(D.load_split()["unseen_all"])
    assert [len(D.ZERO_SHOT_SPLITS[k]) for k in ("sketchy25", "sketchy21", "tuberlin30", "quickdraw25")] == \
        [25, 21, 30, 25]


def test_k_fold_validation_partitions_the_candidates():
    """`fold="I/K"`: K runs validate on disjoint classes that together cover every candidate."""
    folds = [D.train_val_split(seed=0, fold=f"{i}/5") for i in range(5)]
    vals = [set(v) for _, v in folds]
    union = set().union(*vals)
    assert sum(len(v) for v in vals) == len(union) == 51  # the training classes with 1-3 photos
    assert all(10 <= len(v) <= 11 for v in vals)
    for fit, val in folds:
        assert not set(fit) & set(val) and len(fit) + len(val) == 57
    assert D.train_val_split(seed=0, fold=(2, 5)) == folds[2]  # "I/K" or a pair
    assert D.train_val_split(seed=1, fold="2/5") != folds[2]  # the seed shuffles the partition
    for bad in ("5/5", "-1/5", "0/1", "a/b", "3", (1, 2, 3)):
        with pytest.raises(ValueError, match="fold"):
            D.train_val_split(fold=bad)
    with pytest.raises(ValueError, match="folds"):
        D.train_val_split(fold="0/52")


def test_train_val_split_deterministic_and_disjoint():
    fit, val = D.train_val_split(seed=0, num_val_classes=10)
    assert D.train_val_split(seed=0, num_val_classes=10) == (fit, val)
    assert len(val) == 10 and len(fit) == 47 and not set(fit) & set(val)
    s = D.load_split()
    assert set(fit) | set(val) == set(s["train"]) and not set(val) & set(s["test"])
    counts = {c: len(v) for c, v in D.photos_by_class(val).items()}
    assert all(1 <= counts[c] <= 3 for c in val)
    assert D.train_val_split(seed=1)[1] != val


# --------------------------------------------------------------------------- readers


def test_read_quickdraw_crlf_format(tmp_path):
    rows = [np.linspace(0, 1, 784).round(3).tolist(), [0] * 784]
    text = "".join(json.dumps(r, separators=(",", ":")) + "\r\n" for r in rows)
    with gzip.open(tmp_path / "palm tree.ndjson.gz", "wb") as f:
        f.write(text.encode())
    arr = D.read_quickdraw("palm_tree", root=tmp_path)
    assert arr.shape == (2, 28, 28) and arr.dtype == np.float32
    assert arr[0, 0, 1] == pytest.approx(0.001) and arr[0, 27, 27] == 1.0  # row-major
    with pytest.raises(KeyError, match="palm tree"):
        D.read_quickdraw("palm trees", root=tmp_path)


@pytest.mark.slow
def test_read_quickdraw_real(qd_root):
    a = D.read_quickdraw("hot air balloon", qd_root)
    assert a.shape == (100, 28, 28) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0 and 0.05 < a.mean() < 0.3
    assert np.array_equal(D.read_quickdraw("teddy_bear", qd_root), D.read_quickdraw("teddy-bear", qd_root))


def test_render_sketch_is_ink_on_white():
    bm = np.zeros((28, 28), np.float32)
    bm[5:23, 10] = 1.0
    bm[14, 4:24] = 0.6
    im = D.render_sketch(bm, size=224)
    assert im.mode == "RGB" and im.size == (224, 224)
    a = np.asarray(im)
    assert (a > 200).mean() > 0.8 and (a < 80).mean() > 0.01
    assert np.asarray(D.render_sketch(np.zeros((28, 28)), 32)).min() == 255
    assert np.asarray(D.render_sketch(bm, 100, margin=0.1))[:9].min() == 255  # white margin


@pytest.mark.slow
def test_offline_sketch_dataset_items(qd_root):
    ds = D.OfflineSketchDataset(["apple", "cat"], size=96, max_per_class=3, root=qd_root)
    assert len(ds) == 6 and ds.bitmaps.shape == (6, 28, 28) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    item = ds[4]
    assert set(item) == {"image", "label", "class_name", "id", "instance"}
    assert (item["label"], item["class_name"], item["id"]) == (1, "cat", "quickdraw/cat/001")
    a = np.asarray(item["image"])
    assert a.shape == (96, 96, 3) and (a > 200).mean() > 0.5 and (a < 100).mean() > 0.02
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=D.collate_retrieval)))
    assert batch["label"].tolist() == [0, 0, 0, 1] and len(batch["image"]) == 4


@pytest.mark.slow
def test_photo_compositing_white_where_transparent(tux_root):
    recs = D.photos_by_class(["apple", "flower"])
    rec = recs["apple"][0]
    rgba = D.load_photo_rgba(rec, crop=False, square=False, root=tux_root)
    rgb = D.load_photo(rec, crop=False, square=False, root=tux_root)
    alpha = np.asarray(rgba)[..., 3]
    assert rgb.mode == "RGB" and rgb.size == rgba.size and (alpha == 0).any() and (alpha == 255).any()
    assert (np.asarray(rgb)[alpha == 0] == 255).all()
    sq = D.load_photo(rec, root=tux_root, max_side=128)
    assert sq.size[0] == sq.size[1] <= 128
    # palette stamps with a transparent index composite to white as well
    pal = next(r for r in recs["flower"] if Image.open(r.path(tux_root)).mode == "P")
    corner = np.asarray(D.load_photo(pal, crop=False, square=False, root=tux_root))[0, 0]
    assert (corner == 255).all()
    ds = D.OfflinePhotoDataset(["apple", "banana"], root=tux_root, max_side=64)
    assert len(ds) == 6 and ds.labels.tolist() == [0] * 5 + [1]
    assert ds[5]["id"] == D.photos_by_class(["banana"])["banana"][0].stamp_path
    assert ds.load(0, rgba=True).mode == "RGBA"


@pytest.mark.slow
def test_sha256_verification_on_tampered_copy(tmp_path, tux_root):
    rec = D.photos_by_class(["banana"])["banana"][0]
    dst = tmp_path / rec.stamp_path
    dst.parent.mkdir(parents=True)
    shutil.copy(rec.path(tux_root), dst)
    assert D.load_photo(rec, root=tmp_path).size[0] > 0  # intact copy passes
    with open(dst, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(D.PhotoVerificationError, match="sha256"):
        D.load_photo(rec, root=tmp_path)
    with pytest.raises(D.PhotoVerificationError):
        D.load_photo(dst)  # a path that names a photos.csv stamp is verified too
    assert D.load_photo(rec, root=tmp_path, verify=False).mode == "RGB"


@pytest.mark.slow
def test_evaluation_set_sizes(qd_root, tux_root):
    q, g = D.evaluation_set("test", quickdraw_root=qd_root, photo_root=tux_root)
    assert (len(q), len(g)) == (2200, 32)
    assert q.classes == g.classes == D.load_split()["test"]
    assert np.bincount(q.labels).tolist() == [100] * 22 and set(g.labels.tolist()) == set(range(22))
    q2, g2 = D.open_dataset("offline", "test", quickdraw_root=qd_root, photo_root=tux_root)
    assert q2.ids == q.ids and g2.ids == g.ids  # deterministic
    vq, vg = D.open_dataset("offline", "val", quickdraw_root=qd_root, photo_root=tux_root)
    assert vq.classes == D.train_val_split()[1] and len(vq) == 1000
    assert not set(vq.classes) & set(D.load_split()["test"])


@pytest.mark.slow
def test_evaluation_set_gallery_all(qd_root, tux_root):
    kw = dict(quickdraw_root=qd_root, photo_root=tux_root, max_per_class=2)
    q, g = D.evaluation_set("test", gallery="all", **kw)
    test = D.load_split()["test"]
    assert len(g) == 166 and q.classes == g.classes and q.classes[:22] == test
    assert len(q) == 44 and q.labels.max() < 22  # queries: test classes only, labels unchanged
    assert sorted(g.ids) == sorted(r.id for r in D.load_photo_table())
    vq, vg = D.evaluation_set("val", gallery="all", **kw)
    assert not {vg.class_names[i] for i in range(len(vg))} & set(test)  # selection never sees test photos
    assert len(vg) == 166 - 32 and vq.classes[:len(D.train_val_split()[1])] == D.train_val_split()[1]
    with pytest.raises(ValueError, match="gallery"):
        D.evaluation_set("test", gallery="every", **kw)


# --------------------------------------------------------------------------- triplets


@pytest.mark.slow
def test_triplets_deterministic_and_labelled(qd_root, tux_root):
    classes = ["apple", "bird", "dog", "flower", "guitar", "zebra"]
    kw = dict(quickdraw_root=qd_root, photo_root=tux_root, sketch_size=64, photo_max_side=64)
    t1 = D.TripletDataset.offline(classes, seed=7, **kw)
    t2 = D.TripletDataset.offline(classes, seed=7, **kw)
    t3 = D.TripletDataset.offline(classes, seed=8, **kw)
    idx = list(range(300))
    s1 = [t1.sample(i) for i in idx]
    assert s1 == [t2.sample(i) for i in reversed(idx)][::-1]  # order-independent
    assert s1 != [t3.sample(i) for i in idx]
    ph, sk = t1.photos, t1.sketches
    for s in s1:
        assert sk.labels[s["sketch_index"]] == ph.labels[s["positive_index"]] == s["label"]
        assert ph.labels[s["negative_index"]] == s["negative_label"] != s["label"]
    assert len({s["label"] for s in s1}) == len(classes)
    it = t1[11]
    stamps = {c: {r.stamp_path for r in recs} for c, recs in D.photos_by_class(classes).items()}
    assert it["label"] == classes.index(it["sketch_id"].split("/")[1])
    assert it["positive_id"] in stamps[classes[it["label"]]]
    assert it["negative_id"] in stamps[classes[it["negative_label"]]]
    assert it["sketch"].size == (64, 64) and it["positive"].mode == "RGB"
    sampler = D.TripletSampler(5, start=20)
    assert list(sampler) == [20, 21, 22, 23, 24] and len(sampler) == 5
    batch = D.collate_triplets([t1[i] for i in sampler])
    assert batch["label"].shape == (5,) and len(batch["sketch"]) == 5


@pytest.mark.slow
def test_triplets_augmented_and_pseudo_are_reproducible(qd_root, tux_root):
    kw = dict(quickdraw_root=qd_root, photo_root=tux_root, sketch_size=64, photo_max_side=64)
    a = D.TripletDataset.offline(["apple", "fish"], seed=1, augment=True, pseudo_sketch_prob=0.5, **kw)
    b = D.TripletDataset.offline(["apple", "fish"], seed=1, augment=True, pseudo_sketch_prob=0.5, **kw)
    items = [a[i] for i in range(6)]
    assert any(x["pseudo"] for x in items) and not all(x["pseudo"] for x in items)
    for i, x in enumerate(items):
        y = b[i]
        for k in ("sketch", "positive", "negative"):
            assert np.array_equal(np.asarray(x[k]), np.asarray(y[k]))
        if x["pseudo"]:  # source photo differs from the positive (both classes have > 1 photo)
            assert x["sketch_id"].startswith("pseudo:") and x["sketch_id"][7:] != x["positive_id"]


@pytest.mark.slow
def test_triplets_refuse_unseen_classes(qd_root, tux_root):
    with pytest.raises(ValueError, match="cow"):
        D.TripletDataset.offline(["apple", "cow"], quickdraw_root=qd_root, photo_root=tux_root)


# --------------------------------------------------------------------------- augmentation / pseudo-sketches


def _cutout(side=120):
    im = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((15, 20, 105, 100), fill=(200, 60, 40, 255))
    d.rectangle((50, 30, 60, 90), fill=(30, 30, 160, 255))
    return im


def test_augmentation_seed_deterministic_and_keeps_size():
    im = _cutout()
    p1 = D.augment_photo(im, np.random.default_rng(3))
    p2 = D.augment_photo(im, np.random.default_rng(3))
    assert p1.mode == "RGB" and p1.size == im.size and np.array_equal(np.asarray(p1), np.asarray(p2))
    outs = {np.asarray(D.augment_photo(im, random.Random(s))).tobytes() for s in range(4)}
    assert len(outs) > 1
    assert np.array_equal(np.asarray(D.augment_photo(im, random.Random(9))),
                          np.asarray(D.augment_photo(im, random.Random(9))))
    assert D.augment_photo(im, 0, size=64).size == (64, 64)
    white = np.asarray(D.PhotoAugment(white_prob=1.0, crop_scale=(1.0, 1.0), hflip_p=0.0)(im, 1))
    assert (white[0, 0] == 255).all()  # transparent corner over white
    sk = D.render_sketch(np.eye(28, dtype=np.float32), 96)
    s1, s2 = D.augment_sketch(sk, np.random.default_rng(5)), D.augment_sketch(sk, np.random.default_rng(5))
    assert s1.size == (96, 96) and np.array_equal(np.asarray(s1), np.asarray(s2))
    assert (np.asarray(s1) > 200).mean() > 0.7
    jit = D.color_jitter(im, np.random.default_rng(0), hue=0.1)
    assert np.array_equal(np.asarray(jit)[..., 3], np.asarray(im)[..., 3])
    assert D.random_background((50, 30), np.random.default_rng(2), white_prob=0.0).size == (50, 30)


def test_pseudo_sketch_is_dark_lines_on_white():
    ps = D.photo_to_pseudo_sketch(_cutout(), size=128)
    a = np.asarray(ps)
    assert ps.mode == "RGB" and ps.size == (128, 128)
    assert (a > 200).mean() > 0.8 and (a < 100).mean() > 0.01
    qd = np.asarray(D.photo_to_pseudo_sketch(_cutout(), size=112, quickdraw_style=True))
    assert qd.shape == (112, 112, 3) and (qd > 200).mean() > 0.6 and (qd < 100).mean() > 0.01


@pytest.mark.slow
def test_pseudo_sketch_real_photo(tux_root):
    rec = D.photos_by_class(["guitar"])["guitar"][0]
    a = np.asarray(D.photo_to_pseudo_sketch(D.load_photo_rgba(rec, root=tux_root, max_side=256)))
    assert (a > 200).mean() > 0.75 and (a < 100).mean() > 0.01


# --------------------------------------------------------------------------- research layouts


@pytest.mark.slow
def test_sketchy_layout_category_and_fine_grained(research_root):
    q, g = D.open_dataset(f"sketchy:{research_root}", "test", strict=False)
    assert q.classes == g.classes == ["scissors", "teddy_bear", "airplane"]  # Sketchy-25 order
    assert len(q) == 12 and len(g) == 9  # 2 originals + 1 new extended per class (duplicate dropped)
    assert q.ids[0].startswith("256x256/sketch/tx_000000000000_ready/scissors/")
    assert sum(i is None for i in g.instances) == 3  # extended photos have no instance
    item = q[0]
    assert item["image"].mode == "RGB" and item["label"] == 0 and item["instance"] == "n02000000_1"
    with pytest.raises(ValueError, match="cup"):
        D.open_dataset(f"sketchy:{research_root}", "test")  # strict: missing zero-shot class folders
    qt, gt = D.read_sketchy(research_root / "Sketchy", "train")
    assert qt.classes == ["cow", "pickup_truck"] and len(gt) == 6
    q21, _ = D.open_dataset(f"sketchy21:{research_root}", "test", strict=False)
    assert q21.classes == ["cow", "scissors"]
    fq, fg = D.open_dataset(f"sketchy:{research_root}", "test_fg", strict=False)
    assert len(fg) == 6 and all(i is not None for i in fg.instances) and len(fq) == 12
    gallery_of = {inst: j for j, inst in enumerate(fg.instances)}
    for j, inst in enumerate(fq.instances):
        assert fg.labels[gallery_of[inst]] == fq.labels[j]
        assert fq.paths[j].stem.rsplit("-", 1)[0] == fg.paths[gallery_of[inst]].stem
    pairs = D.sketchy_instance_pairs(research_root, classes=["teddy-bear"])
    assert len(pairs) == 4 and all(s.stem.startswith(pid + "-") and p.stem == pid for s, p, pid in pairs)
    assert len(D.sketchy_instance_pairs(research_root)) == 20


@pytest.mark.slow
def test_tuberlin_and_quickdraw_layouts(research_root):
    q, g = D.open_dataset(f"tuberlin:{research_root}", "test", strict=False)
    assert q.classes == ["banana", "hot air balloon", "horse"]  # TU-Berlin-30 order, folder spelling
    assert len(q) == 9 and len(g) == 6 and all(i is None for i in q.instances)
    assert q[0]["image"].mode == "RGB" and g[0]["image"].mode == "RGB"
    qt, _ = D.read_tuberlin(research_root / "TUBerlin", "train")
    assert qt.classes == ["teddy-bear"]
    with pytest.raises(ValueError, match="Sketchy-only"):
        D.open_dataset(f"tuberlin:{research_root}", "test_fg", strict=False)
    q, g = D.open_dataset(f"quickdraw:{research_root}", "test", strict=False)
    assert q.classes == ["cow", "palm tree"] and len(q) == 8 and len(g) == 2
    q30, _ = D.open_dataset(f"quickdraw30:{research_root}", "test", strict=False)
    assert "zebra" in q30.classes
    assert D.read_quickdraw_ext(research_root, "train").queries.classes == ["zebra"]


@pytest.mark.slow
def test_official_filelists(research_root, tmp_path):
    base = research_root / "Sketchy"
    (tmp_path / "cname_cid_zero.txt").write_text("scissors 0\nteddy_bear 1\n")
    rel = "256x256/sketch/tx_000000000000_ready"
    sk = sorted((base / rel / "teddy_bear").iterdir())[:2]
    (tmp_path / "sk.txt").write_text("".join(f"{p.relative_to(base).as_posix()} 1\n" for p in sk))
    (tmp_path / "ph.txt").write_text("256x256/photo/tx_000000000000_ready/teddy_bear/n01000000_1.jpg 1\n"
                                     "EXTEND_image_sketchy_ready/scissors/n92000000_7.jpg 0\n")
    q, g = D.from_filelists(base, tmp_path / "sk.txt", tmp_path / "ph.txt", tmp_path / "cname_cid_zero.txt")
    assert q.classes == ["scissors", "teddy_bear"] and q.labels.tolist() == [1, 1]
    assert q.instances == ["n01000000_1", "n01000000_1"] and g.instances == ["n01000000_1", None]
    assert g[1]["class_name"] == "scissors"


def test_missing_root_errors(tmp_path):
    with pytest.raises(D.DatasetNotFoundError) as e:
        D.open_dataset(f"sketchy:{tmp_path / 'nope'}", "test")
    msg = str(e.value)
    assert "does not exist" in msg and "sketchy.eye.gatech.edu" in msg and "tx_000000000000" in msg
    with pytest.raises(D.DatasetNotFoundError, match="png_ready"):
        D.open_dataset(f"tuberlin:{tmp_path}", "test")  # exists but holds no layout
    with pytest.raises(D.DatasetNotFoundError, match="doodle2search"):
        D.open_dataset("quickdraw", "test")
    with pytest.raises(ValueError, match="unknown dataset spec"):
        D.open_dataset("imagenet:/x")
    assert isinstance(D.DatasetNotFoundError("x"), FileNotFoundError)
