"""Natural photos with backgrounds in validation and training: the natural validation classes of
each fold, the natural gallery of `evaluation_set` and `zse-sbir eval`, the `natural` rows of
`zse-sbir compare`, triplets that mix cut-outs and natural photos, and the recipe's selection."""

from __future__ import annotations

import numpy as np
import pytest

from zse_hf import assets
from zse_hf.data.datasets import CombinedPhotos, NaturalPhotoDataset, evaluation_set
from zse_hf.data.natural_photos import natural_photo_classes
from zse_hf.data.split import load_split, natural_only_classes, natural_val_split, train_val_split
from zse_hf.evaluation.compare import CompareError, compare_results
from zse_hf.training import PRESETS, TrainConfig, load_train_config, selection_score

from conftest import asset_root

K = 5


def test_natural_only_classes_are_new_and_allowed():
    split = load_split()
    extra = natural_only_classes()
    assert extra and set(extra) <= set(natural_photo_classes())
    assert not set(extra) & set(split["train"] + split["test"] + split["unseen_all"])


def test_natural_folds_partition_the_natural_only_classes_and_follow_the_cutout_folds():
    natural, extra = set(natural_photo_classes()), set(natural_only_classes())
    held = []
    for i in range(K):
        fit, val = natural_val_split(fold=f"{i}/{K}")
        cut_fit, cut_val = train_val_split(fold=f"{i}/{K}")
        assert not set(fit) & set(val) and set(val) <= natural
        assert natural & set(cut_val) <= set(val)  # the fold's cut-out validation classes with natural photos
        assert not set(fit) & set(cut_val)  # training never sees a validation class in either gallery
        assert set(fit) <= (natural & set(cut_fit)) | extra
        assert not set(val) & set(load_split()["unseen_all"])
        held += sorted(set(val) & extra)
    assert sorted(held) == sorted(extra)  # every natural-only class is validated on exactly once
    fit, val = natural_val_split()  # the default validation: some natural-only classes held out too
    assert set(val) & extra and not set(fit) & set(val)
    assert natural_val_split(fold="2/5") == natural_val_split(fold="2/5")


def test_there_is_no_natural_test_set():
    with pytest.raises(ValueError, match="no natural test set"):
        evaluation_set("test", gallery="natural")
    from zse_hf.evaluation import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "unused", "--split", "test", "--natural"])
    assert exit_info.value.code == 2


def _payload(ap: dict, natural_ap: dict, natural_hash: str = "n1") -> dict:
    rows = {"ret": {"per_class_AP": ap, "mAP@all": float(np.mean(list(ap.values())))}}
    nat = {"ret": {"per_class_AP": natural_ap, "mAP@all": float(np.mean(list(natural_ap.values())))}}
    return {"data_hash": "h", "results": rows, "results_natural": nat, "natural": {"data_hash": natural_hash}}


def test_compare_reads_the_natural_rows():
    a = _payload({"0": 0.5, "1": 0.5}, {"0": 0.2, "1": 0.4, "2": 0.3})
    b = _payload({"0": 0.5, "1": 0.5}, {"0": 0.4, "1": 0.6, "2": 0.5})
    c = compare_results(a, b, "ret", "ret", gallery="natural", n_bootstrap=200)
    assert c["difference"] == pytest.approx(0.2) and c["n_classes"] == 3 and c["classes_b_better"] == 3
    assert compare_results(a, b, "ret", "ret", n_bootstrap=200)["difference"] == pytest.approx(0.0)
    with pytest.raises(CompareError, match="different data"):
        compare_results(a, _payload({"0": 0.5, "1": 0.5}, {"0": 0.4}, natural_hash="n2"), "ret", "ret",
                        gallery="natural")
    with pytest.raises(CompareError, match="--natural"):
        compare_results({"data_hash": "h", "results": {}, "natural": {"data_hash": "n1"}}, b, "ret", "ret",
                        gallery="natural")


def test_compare_crisp_rows_against_the_bitmap_rows_of_one_evaluation():
    payload = _payload({"0": 0.5, "1": 0.7}, {"0": 0.2})
    payload["results_crisp"] = {"ret": {"per_class_AP": {"0": 0.4, "1": 0.7}, "mAP@all": 0.55}}
    payload["crisp"] = {"data_hash": "c1"}
    c = compare_results(payload, payload, "ret", "ret", gallery="standard", gallery_b="crisp", n_bootstrap=200)
    assert c["difference"] == pytest.approx(-0.05) and c["classes_a_better"] == 1 and c["n_classes"] == 2
    with pytest.raises(CompareError, match="different classes"):
        compare_results(payload, payload, "ret", "ret", gallery="standard", gallery_b="natural")


def test_recipe_selection():
    assert PRESETS["offline-natural-224"].selection == "cutout+natural"
    cfg = load_train_config("offline-natural-224")
    assert cfg.image_size == 224 and cfg.natural_photos and cfg.crisp_sketch_prob > 0
    with pytest.raises(ValueError, match="needs natural_photos"):
        TrainConfig(selection="cutout+natural")
    with pytest.raises(ValueError, match="selection must be one of"):
        TrainConfig(selection="natural")
    metrics = {"eval_mAP@all": 0.6, "eval_natural_mAP@all": 0.3}
    assert selection_score(metrics, "cutout") == 0.6
    assert selection_score(metrics, "cutout+natural") == pytest.approx(0.45)


@pytest.mark.slow
def test_natural_gallery_and_mixed_triplets():
    from zse_hf.data.triplets import TripletDataset

    asset_root(assets.gcompris_rcc_root)
    asset_root(assets.quickdraw_root)
    asset_root(assets.tuxpaint_root)
    queries, gallery = evaluation_set("val", gallery="natural", val_fold="0/5", max_per_class=2, sketch_size=56)
    assert isinstance(gallery, NaturalPhotoDataset) and not gallery.has_cutouts
    assert queries.classes == gallery.classes == natural_val_split(fold="0/5")[1]
    assert gallery.load(0).mode == "RGB" and len(queries) == 2 * len(gallery.classes)

    fit, _ = train_val_split(fold="0/5")
    natural_fit, _ = natural_val_split(fold="0/5")
    triplets = TripletDataset.offline(fit, length=64, sketch_size=56, photo_max_side=96, augment=True,
                                      pseudo_sketch_prob=0.5, natural_classes=natural_fit, crisp_sketch_prob=0.5)
    assert isinstance(triplets.photos, CombinedPhotos)
    assert set(natural_fit) - set(fit) <= set(triplets.classes)  # natural-only classes train on natural photos
    natural_ids = {triplets.photos.ids[i] for i in np.flatnonzero(~triplets.photos.cutout)}
    assert natural_ids
    seen_natural = seen_crisp = False
    for i in range(64):
        s = triplets.sample(i)
        if s["pseudo_photo_index"] is not None:  # pseudo-sketches only from cut-outs
            assert triplets.photos.cutout[s["pseudo_photo_index"]]
        item = triplets[i]
        seen_natural |= item["positive_id"] in natural_ids
        seen_crisp |= item["sketch_id"].endswith("#crisp")
        assert item["positive"].mode == "RGB"
    assert seen_natural and seen_crisp
    assert triplets[5]["sketch_id"] == triplets[5]["sketch_id"]
    assert np.array_equal(np.asarray(triplets[7]["positive"]), np.asarray(triplets[7]["positive"]))


@pytest.mark.slow
def test_a_natural_run_validates_on_both_galleries_and_selects_by_their_mean(tiny_backbone, tmp_path):
    import json

    from zse_hf.training import train

    asset_root(assets.gcompris_rcc_root)
    cfg = TrainConfig(backbone=tiny_backbone, image_size=56, relation_grid=2, freeze_blocks=1, batch_size=3,
                      max_steps=4, eval_steps=2, save_steps=2, val_classes=3, val_sketches_per_class=2,
                      pseudo_sketch_prob=0.5, natural_photos=True, crisp_sketch_prob=0.5, selection="cutout+natural")
    best = train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_select" in r]
    assert len(evals) == 2
    for r in evals:
        assert r["eval_select"] == pytest.approx(0.5 * (r["eval_mAP@all"] + r["eval_natural_mAP@all"]))
    summary = json.loads((best / "training_summary.json").read_text())
    assert summary["best_val_mAP@all"] == pytest.approx(max(r["eval_select"] for r in evals))
    assert summary["config"]["natural_photos"] and summary["config"]["selection"] == "cutout+natural"
    # the natural photos it trained on are recorded, none of a natural validation class or unseen concept
    fit, val = natural_val_split(0, 3)
    recorded = summary["natural_photos"]
    assert recorded and {r["class"] for r in recorded} == set(fit) and summary["natural_validation_classes"] == val
    assert not {r["class"] for r in recorded} & (set(val) | set(load_split()["unseen_all"]))
    assert all(len(r["sha256"]) == 64 and r["resource_path"] for r in recorded)
