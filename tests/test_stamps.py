"""The reviewed extra stamps as training data: instance-level pairs and extra negatives, never a
test or unseen concept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zse_hf import assets
from zse_hf.data import load_photo_table, load_split
from zse_hf.data.stamps import StampPhotoDataset, StampPseudoSketchDataset, load_stamp_review, usable_stamp_records

from conftest import asset_root


def test_usable_stamps_are_the_reviewed_photos_only():
    review = load_stamp_review()
    usable = usable_stamp_records()
    assert len(usable) == 170
    kinds = {r["stamp_path"]: r["kind"] for r in review}
    assert all(kinds[r.stamp_path] == "photo" for r in usable)
    banned = {r["stamp_path"] for r in review if r["kind"] != "photo"}
    assert len([p for p in banned if kinds[p] == "unseen-concept"]) == 32
    assert not banned & {r.stamp_path for r in usable}
    assert not {r.stamp_path for r in load_photo_table()} & {r.stamp_path for r in usable}


def _train_data(tmp_path_factory, **kw):
    from transformers import Dinov2Config, Dinov2Model

    from zse_hf.training import TrainConfig, build_datasets

    folder = tmp_path_factory.mktemp("bb")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                             image_size=56, mlp_ratio=2)).save_pretrained(folder)
    cfg = TrainConfig(backbone=str(folder), image_size=56, relation_grid=2, batch_size=3, max_steps=2, val_classes=3,
                      val_sketches_per_class=2, pseudo_sketch_prob=0.5, **kw)
    return cfg, build_datasets(cfg, num_triplets=4000)


@pytest.mark.slow
def test_no_training_sample_is_a_test_or_unseen_concept(tmp_path_factory):
    asset_root(assets.quickdraw_root), asset_root(assets.tuxpaint_root)
    cfg, (triplets, val_q, val_g) = _train_data(tmp_path_factory, stamp_pair_prob=0.3, stamp_negative_prob=0.2)
    split = load_split()
    banned = set(split["unseen_all"]) | set(split["test"])
    usable = {r.stamp_path for r in usable_stamp_records()}
    not_usable = {r["stamp_path"] for r in load_stamp_review() if r["kind"] != "photo"}
    photo_class = {r.stamp_path: r.class_name for r in load_photo_table()}
    assert not set(triplets.classes) & banned
    kinds = {"pair": 0, "negative": 0, None: 0}
    n = len(triplets.classes)
    for i in range(len(triplets)):
        s, e = triplets.sample(i), triplets.extra_sample(i)
        kinds[e["kind"]] += 1
        if e["kind"] is not None:
            assert triplets.extra_photos.ids[e["extra_index"]] in usable
        if e["kind"] == "negative":  # never a stamp that resembles the anchor's class
            assert triplets.classes[s["label"]] not in triplets.extra_photos.lookalikes[e["extra_index"]]
        if e["kind"] != "pair":
            assert triplets.classes[s["label"]] not in banned
        if e["kind"] != "negative":
            assert triplets.classes[s["negative_label"]] not in banned
    assert kinds["pair"] > 0.25 * len(triplets) and kinds["negative"] > 0.15 * len(triplets)
    for i in range(30):  # the loaded items: ids, labels and images
        item = triplets[i]
        for key in ("sketch_id", "positive_id", "negative_id"):
            ident = item[key].removeprefix("pseudo:")
            if ident.startswith("extra:"):
                path = ident.removeprefix("extra:")
                assert path in usable and path not in not_usable, item[key]
            elif ident.startswith("quickdraw/"):
                assert ident.split("/")[1] not in banned, ident
            else:
                assert photo_class[ident] not in banned, ident
        assert item["label"] != item["negative_label"]
        assert item["label"] < n or item["positive_id"].startswith("extra:")
        assert item["negative_label"] < n or item["negative_id"].startswith("extra:")
        assert item["sketch"].mode == item["positive"].mode == item["negative"].mode == "RGB"
    # validation stays on held-out training classes, and zero-shot: their look-alike stamps are withheld
    assert not set(val_q.classes) & banned
    val_looks = {r.stamp_path for r, look in zip(usable_stamp_records(), _all_lookalikes())
                 if look & set(val_q.classes)}
    assert set(triplets.extra_photos.withheld) == val_looks
    assert not val_looks & set(triplets.extra_photos.ids)
    assert len(triplets.extra_photos) == 170 - len(val_looks)


def _all_lookalikes():
    from zse_hf.data.stamps import stamp_training_lookalikes

    look = stamp_training_lookalikes()
    return [look[r.stamp_path] for r in usable_stamp_records()]


def test_stamp_dataset_withholds_the_lookalikes_of_validation_classes():
    from zse_hf.data import train_val_split

    _, val_classes = train_val_split(seed=0, num_val_classes=10)  # the default run's validation classes
    ds = StampPhotoDataset(withhold_lookalikes_of=val_classes)
    assert sorted(ds.withheld) == ["household/rubberduck.png", "medical/mercurythermometer.png",
                                   "space/planets/1_mercury.png", "space/planets/9_pluto.png",
                                   "sports/tennis_ball.png"]  # duck, syringe, moon, moon, basketball
    assert len(ds) == 165 == len(ds.lookalikes) and not set(ds.withheld) & set(ds.ids)
    assert all(not look & set(val_classes) for look in ds.lookalikes)
    assert StampPhotoDataset().withheld == [] and len(StampPhotoDataset()) == 170


@pytest.mark.slow
def test_stamp_dataset_loads_and_verifies():
    asset_root(assets.tuxpaint_root)
    ds = StampPhotoDataset(max_side=64)
    assert len(ds) == 170 and len(set(ds.labels.tolist())) == 170
    im = ds.load(0, rgba=True)
    assert im.mode == "RGBA" and im.width == im.height <= 64
    assert np.asarray(ds.load(0)).shape[-1] == 3


@pytest.mark.slow
def test_stamp_pseudo_sketches_are_instance_queries_of_their_own_stamp():
    from zse_hf.data import photo_to_pseudo_sketch

    asset_root(assets.tuxpaint_root)
    stamps = StampPhotoDataset(max_side=96)
    q = StampPseudoSketchDataset(stamps, variants=3, size=64, seed=5)
    assert len(q) == 3 * len(stamps) and q.classes == stamps.classes and q.modality == "sketch"
    assert q.labels.tolist() == np.repeat(stamps.labels, 3).tolist()
    assert q[4]["id"] == f"pseudo:{stamps.ids[1]}#1" and q[4]["instance"] == stamps.ids[1]
    straight = np.asarray(q.load(3))
    assert straight.shape == (64, 64, 3)
    np.testing.assert_array_equal(straight, np.asarray(photo_to_pseudo_sketch(stamps.load(1, rgba=True), size=64)))
    warped = [np.asarray(q.load(i)) for i in (4, 5)]
    assert not np.array_equal(warped[0], straight) and not np.array_equal(warped[0], warped[1])
    # deterministic in (seed, stamp, variant), another seed draws other warps
    np.testing.assert_array_equal(warped[0], np.asarray(StampPseudoSketchDataset(stamps, 3, 64, seed=5).load(4)))
    assert not np.array_equal(warped[0], np.asarray(StampPseudoSketchDataset(stamps, 3, 64, seed=6).load(4)))
    with pytest.raises(ValueError, match="variants"):
        StampPseudoSketchDataset(stamps, variants=0)


def test_extra_negatives_skip_lookalikes_of_the_anchor_class():
    from zse_hf.data.triplets import TripletDataset

    class _Set:
        def __init__(self, classes, labels, lookalikes=None):
            self.classes, self.labels = classes, np.asarray(labels)
            if lookalikes is not None:
                self.lookalikes = [frozenset(x) for x in lookalikes]

        def indices_by_label(self):
            return {lab: np.flatnonzero(self.labels == lab) for lab in np.unique(self.labels).tolist()}

        def __len__(self):
            return len(self.labels)

    sk, ph = _Set(["a", "b"], [0, 0, 1, 1]), _Set(["a", "b"], [0, 1])
    extra = _Set(["x", "y", "z"], [0, 1, 2], lookalikes=[{"a"}, {"a", "b"}, set()])
    t = TripletDataset(sk, ph, seed=1, length=400, extra_photos=extra, extra_negative_prob=1.0)
    seen = {"a": set(), "b": set()}
    for i in range(400):
        e = t.extra_sample(i)
        assert e["kind"] == "negative"
        seen[t.classes[t.sample(i)["label"]]].add(e["extra_index"])
    assert seen == {"a": {2}, "b": {0, 2}}  # 0 and 1 resemble "a", 1 resembles "b"
    assert t._unlike(1, "b") == 2 and t._unlike(2, "a") == 2 and t._unlike(0, "b") == 0
    every = _Set(["x"], [0], lookalikes=[{"a"}])
    with pytest.raises(ValueError, match="resembles 'a'"):
        TripletDataset(sk, ph, length=10, extra_photos=every, extra_negative_prob=1.0)._unlike(0, "a")


def test_extra_probabilities_are_checked():
    from zse_hf.data.triplets import TripletDataset

    class _Stub:
        classes = ["a", "b"]
        labels = np.array([0, 1])

        def indices_by_label(self):
            return {0: np.array([0]), 1: np.array([1])}

        def __len__(self):
            return 2

    with pytest.raises(ValueError, match="extra_photos"):
        TripletDataset(_Stub(), _Stub(), extra_pair_prob=0.5)
    with pytest.raises(ValueError, match="at most 1"):
        TripletDataset(_Stub(), _Stub(), extra_photos=_Stub(), extra_pair_prob=0.6, extra_negative_prob=0.6)
