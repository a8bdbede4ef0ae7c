"""Warped pseudo-sketch pairs, kernel locality and the `zse-sbir eval --gallery all` report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from zse_hf import ZseModel
from zse_hf.data import RetrievalDataset
from zse_hf.data.warps import Warp, cell_targets, inked_cells, sample_warp, warp_sketch, warped_pair
from zse_hf.evaluation.metrics import kernel_locality

from conftest import asset_root, save_tiny_model, tiny_config

# --------------------------------------------------------------------------- warp -> correspondence


@pytest.mark.parametrize("g", [1, 2, 4, 7])
def test_identity_maps_every_cell_to_itself(g):
    assert cell_targets(Warp(), g).tolist() == list(range(g * g))


@pytest.mark.parametrize("g", [2, 4, 7])
def test_flip_maps_to_mirrored_cells(g):
    t = cell_targets(Warp(flip=True), g).reshape(g, g)
    expected = np.arange(g * g).reshape(g, g)[:, ::-1]
    assert (t == expected).all()


def test_shift_by_one_cell_and_out_of_photo():
    # p = u + 0.25 in x: sketch column j shows photo column j + 1; the last column leaves the photo
    t = cell_targets(Warp(shift_x=0.25), 4).reshape(4, 4)
    assert t[:, :3].tolist() == [[4 * i + j + 1 for j in range(3)] for i in range(4)]
    assert (t[:, 3] == -1).all()
    t = cell_targets(Warp(shift_y=-0.25), 4).reshape(4, 4)  # row i shows photo row i - 1
    assert (t[0] == -1).all() and t[1:].tolist() == [[4 * (i - 1) + j for j in range(4)] for i in range(1, 4)]


def test_zoomed_crop_maps_to_the_centre():
    # scale 0.5: the sketch shows the photo's middle quarter, enlarged; 4x4 sketch cells -> photo cells 1..2
    t = cell_targets(Warp(scale=0.5), 4).reshape(4, 4)
    assert t.tolist() == [[5, 5, 6, 6], [5, 5, 6, 6], [9, 9, 10, 10], [9, 9, 10, 10]]
    # scale 2: the whole photo in the middle half of the sketch; centres 0.375 / 0.625 -> photo 0.25 / 0.75
    t = cell_targets(Warp(scale=2.0), 4).reshape(4, 4)
    assert (t[[0, 3]] == -1).all() and (t[:, [0, 3]] == -1).all()
    assert t[1:3, 1:3].tolist() == [[5, 7], [13, 15]]


def test_warp_rejects_bad_scale():
    with pytest.raises(ValueError, match="scale"):
        Warp(scale=0)
    with pytest.raises(ValueError, match="grid"):
        cell_targets(Warp(), 0)


def _drawing(size=64):
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    d.line([(4, 6), (30, 6)], fill="black", width=3)
    d.line([(40, 20), (40, 60)], fill="black", width=3)
    return im


def test_warp_sketch_identity_and_flip_images():
    im = _drawing()
    same = np.asarray(warp_sketch(im, Warp(), 64).convert("L"), np.int16)
    assert np.abs(same - np.asarray(im.convert("L"), np.int16)).max() <= 1
    flipped = np.asarray(warp_sketch(im, Warp(flip=True), 64).convert("L"), np.int16)
    assert np.abs(flipped - np.asarray(ImageOps.mirror(im).convert("L"), np.int16)).max() <= 1
    # a shift of a quarter moves the ink a quarter to the left (p = u + 0.25)
    shifted = 255 - np.asarray(warp_sketch(im, Warp(shift_x=0.25), 64).convert("L"), np.int16)
    assert shifted[:, 40 - 16].sum() > 0 and shifted[:, 40].sum() == 0


def test_inked_cells():
    im = _drawing()
    cells = inked_cells(im, 2)
    assert cells.tolist() == [True, True, False, True]  # top-left line, right line in both right cells
    assert not inked_cells(Image.new("RGB", (64, 64), "white"), 4).any()


def _cutout(size=80, seed=0):
    """An RGBA cut-out: an opaque asymmetric shape on transparency."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.rectangle([4, 4, size - 5, size - 5], fill=(200, 60, 40, 255))
    d.ellipse([10, 10, 40, 40], fill=tuple(int(x) for x in rng.integers(0, 255, 3)) + (255,))
    d.rectangle([50, 45, 70, 72], fill=(20, 20, 160, 255))
    return im


def test_warped_pair_targets_follow_the_warp():
    warp = Warp(flip=True, shift_x=0.1)
    pair = warped_pair(_cutout(), warp, size=56, grid=4)
    assert pair["sketch"].size == pair["photo"].size == (56, 56)
    expected = np.where(inked_cells(pair["sketch"], 4), cell_targets(warp, 4), -1)
    assert (pair["targets"] == expected).all() and (pair["targets"] >= 0).any()
    w = sample_warp(np.random.default_rng(0))
    assert 0.75 <= w.scale <= 1.25 and abs(w.shift_x) <= 0.15 and w == sample_warp(np.random.default_rng(0))


# --------------------------------------------------------------------------- locality metric


def _one_hot_kernels(best, n):
    k = np.zeros((len(best), n, n))
    for p, row in enumerate(best):
        k[p, np.arange(n), row] = 1.0
    return k


def test_kernel_locality_hand():
    g, n = 3, 9
    targets = np.array([[0, 4, 8, -1, -1, -1, -1, -1, -1]])
    # cell 0 -> best 4 (diagonal neighbour: hit), cell 1 -> 8 (target 4: neighbour: hit), cell 2 -> 0 (target 8: miss)
    best = np.array([[4, 8, 0, 0, 0, 0, 0, 0, 0]])
    res = kernel_locality(_one_hot_kernels(best, n), targets, g, n_bootstrap=0)
    assert res["locality"] == pytest.approx(2 / 3)
    # chance: target 0 (corner) has 4 neighbours-or-self, 4 (centre) 9, 8 (corner) 4 -> (4 + 9 + 4) / (3 * 9)
    assert res["chance"] == pytest.approx(17 / 27) and res["chance_9_over_G2"] == 1.0
    # same position: sketch cell 0 -> 0 hit, 1 -> target 4: hit, 2 -> target 8: distance 2: miss
    assert res["identity_baseline"] == pytest.approx(2 / 3)
    # exact: no best cell is the target itself; same position: only cell 0 -> 0
    assert res["exact"] == 0.0 and res["exact_identity_baseline"] == pytest.approx(1 / 3)
    assert res["exact_chance"] == pytest.approx(1 / 9)
    assert res["distinct_best_cells"] == 1.0  # best cells 4, 8, 0 for the three counted cells: all distinct
    same = kernel_locality(_one_hot_kernels(np.zeros((1, n), int), n), targets, g, n_bootstrap=0)
    assert same["distinct_best_cells"] == pytest.approx(1 / 3)
    assert res["n_cells"] == 3 and res["n_pairs"] == 1 and "locality_CI" not in res


def test_kernel_locality_perfect_and_ci():
    g, n = 4, 16
    rng = np.random.default_rng(0)
    targets = np.stack([cell_targets(sample_warp(rng), g) for _ in range(6)])
    best = np.where(targets >= 0, targets, 0)
    res = kernel_locality(_one_hot_kernels(best, n), targets, g, groups=[0, 0, 1, 1, 2, 2])
    assert res["locality"] == 1.0 and res["locality_CI"] == [1.0, 1.0] and res["exact"] == 1.0
    assert res["chance"] < 9 / 16
    nothing = kernel_locality(np.zeros((1, n, n)), -np.ones((1, n), np.int64), g)
    assert np.isnan(nothing["locality"]) and nothing["n_cells"] == 0
    with pytest.raises(ValueError, match="kernels"):
        kernel_locality(np.zeros((1, 4, 4)), np.zeros((1, 4), np.int64), 4)
    with pytest.raises(ValueError, match="targets"):
        kernel_locality(np.zeros((1, n, n)), np.full((1, n), n), g)


# --------------------------------------------------------------------------- evaluation


class _Cutouts:
    """A tiny photo set: `load(i, rgba=True)` like OfflinePhotoDataset."""

    def __init__(self, n=3):
        self.images = [_cutout(seed=i) for i in range(n)]

    def __len__(self):
        return len(self.images)

    def load(self, i, rgba=False):
        return self.images[i].copy()


def test_evaluate_locality_tiny_model():
    from zse_hf import ZseImageProcessor
    from zse_hf.evaluation import evaluate_locality, pair_kernels, warped_pairs

    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    proc = ZseImageProcessor.from_model_config(model.config)
    res = evaluate_locality(model, proc, _Cutouts(), n_warps=2, batch_size=4, n_bootstrap=50)
    assert res["n_pairs"] == 6 and res["grid"] == 2 and 0 <= res["locality"] <= 1
    assert res["chance"] == 1.0  # on a 2x2 grid every cell is within one cell of every other
    pairs = warped_pairs(_Cutouts(1), 56, 2, n_warps=1)
    k = pair_kernels(model, proc, pairs)
    assert k.shape == (1, 4, 4) and np.isfinite(k).all()


def _eval_tiny(tmp_path, *args: str) -> dict:
    """`zse-sbir eval ARGS` on a saved tiny model (real offline assets); the JSON it wrote."""
    from zse_hf import assets
    from zse_hf.evaluation import main

    asset_root(assets.quickdraw_root), asset_root(assets.tuxpaint_root)
    if not (tmp_path / "m").is_dir():
        save_tiny_model(tmp_path / "m")
    out = tmp_path / "r.json"
    assert main(["--model", str(tmp_path / "m"), *args, "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_eval_cli_gallery_all_and_locality(tmp_path):
    """`zse-sbir eval --gallery all` on a tiny model: both galleries, same layout, locality in the JSON."""
    payload = _eval_tiny(tmp_path, "--split", "test", "--mode", "ret", "--mode", "rn", "--max-per-class", "1",
                         "--gallery", "all", "--locality-warps", "1", "--rerank-ret-weight", "0.5")
    std, every = payload["results"], payload["results_gallery_all"]
    assert payload["rerank_ret_weight"] == 0.5  # the re-rank the rn numbers describe
    assert set(std) == set(every) == {"ret", "rn@10"}
    assert payload["n_gallery"] == 32 and payload["gallery_all"]["n_gallery"] == 166
    assert payload["gallery_all"]["n_classes"] == 79 and payload["gallery_all"]["distractor_classes"] == 57
    for r in (std, every):
        assert r["ret"]["n_queries"] == 22 and r["ret"]["n_classes"] == 22
        lo, hi = r["ret"]["mAP@all_CI"]
        assert lo <= r["ret"]["mAP@all"] <= hi
    assert every["ret"]["n_gallery"] == 166 and std["ret"]["n_gallery"] == 32
    kl = payload["kernel_locality"]
    assert kl["n_pairs"] == 32 and kl["split"] == "test" and 0 <= kl["locality"] <= 1 and kl["grid"] == 2
    assert payload["sketch_size"] == 224  # the default rendering


@pytest.mark.slow
def test_eval_cli_sketch_size(tmp_path):
    """`--sketch-size` renders the offline sketches at that side (the training's validation: 112)."""
    payload = _eval_tiny(tmp_path, "--split", "val", "--max-per-class", "1", "--sketch-size", "112")
    assert payload["sketch_size"] == 112 and payload["n_queries"] == 10
    assert "rerank_ret_weight" not in payload  # no rn mode
    with pytest.raises(SystemExit):
        _eval_tiny(tmp_path, "--split", "val", "--mode", "rn", "--rerank-ret-weight", "-1")
    with pytest.raises(SystemExit):  # research layouts are image files: nothing to render
        _eval_tiny(tmp_path, "--data", f"sketchy:{tmp_path}", "--sketch-size", "112")


class _NamedCutouts(RetrievalDataset):
    """`_Cutouts` as a photo set with classes and ids (class c0, c1, ... one photo each)."""

    def __init__(self, n=3, extra_classes=()):
        self.images = _Cutouts(n).images
        names = [f"c{i}" for i in range(n)]
        super().__init__([*names, *extra_classes], names, [f"p{i}" for i in range(n)])

    def load(self, i, rgba=False):
        return self.images[i].copy() if rgba else self.images[i].convert("RGB")


def test_pseudo_sketch_queries_point_at_their_own_photo():
    from zse_hf.data import PseudoSketchQueries, with_instance_ids
    from zse_hf.evaluation import fine_grained_targets

    photos = _NamedCutouts(3)
    queries = PseudoSketchQueries(photos, variants=2, size=64, seed=3, classes=["x", *photos.classes])
    assert len(queries) == 6 and queries.ids[:2] == ["pseudo:p0#0", "pseudo:p0#1"]
    assert queries.labels.tolist() == [1, 1, 2, 2, 3, 3]  # indexes the given class list
    assert fine_grained_targets(queries, photos) is None  # the gallery names no instances
    assert fine_grained_targets(queries, with_instance_ids(photos)).tolist() == [0, 0, 1, 1, 2, 2]
    straight, warped = np.asarray(queries.load(2)), np.asarray(queries.load(3))
    assert straight.shape == (64, 64, 3) and (straight < 128).any() and not np.array_equal(straight, warped)
    np.testing.assert_array_equal(warped, np.asarray(PseudoSketchQueries(photos, 2, 64, seed=3).load(3)))
    with pytest.raises(ValueError, match="variants"):
        PseudoSketchQueries(photos, variants=0)


def test_evaluate_instances_scores_each_query_against_its_own_photo():
    from zse_hf import ZseImageProcessor
    from zse_hf.data import PseudoSketchQueries, with_instance_ids
    from zse_hf.evaluation import encode_dataset, evaluate_instances

    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    proc = ZseImageProcessor.from_model_config(model.config)
    photos, bigger = _NamedCutouts(3), _NamedCutouts(4)
    res = evaluate_instances(model, proc, photos, {"split": photos, "all": bigger}, ("ret",), variants=2)
    assert res["n_queries"] == 6 and set(res) >= {"split", "all"}
    queries = PseudoSketchQueries(photos, 2, size=112)
    q = encode_dataset(model, proc, queries, "sketch")
    for name, gallery in (("split", photos), ("all", bigger)):
        g = encode_dataset(model, proc, with_instance_ids(gallery), "photo")
        best = (q.ret_embeds @ g.ret_embeds.T).argmax(dim=1).numpy()
        assert res[name]["ret"]["acc@1"] == pytest.approx(np.mean(best == np.repeat(np.arange(3), 2)))
        assert res[name]["ret"]["acc@5"] == 1.0  # at most 4 photos
        per_photo = res[name]["ret"]["per_photo_acc@1"]  # what `zse-sbir compare --gallery instance` pairs
        assert len(per_photo) == 3 and set(res[name]["ret"]["per_photo_queries"].values()) == {2}
        assert np.mean(list(per_photo.values())) == pytest.approx(res[name]["ret"]["acc@1"])
    with pytest.raises(ValueError, match="lacks"):
        evaluate_instances(model, proc, bigger, {"split": photos})


@pytest.mark.slow
def test_eval_cli_instance_level(tmp_path):
    payload = _eval_tiny(tmp_path, "--split", "test", "--mode", "ret", "--max-per-class", "1", "--gallery", "all",
                         "--instance", "--instance-variants", "1")
    inst = payload["instance_level"]
    assert inst["n_queries"] == 32 and inst["variants"] == 1
    assert inst["split"]["ret"]["n_gallery"] == 32 and inst["all"]["ret"]["n_gallery"] == 166
    for name in ("split", "all"):
        assert 0 <= inst[name]["ret"]["acc@1"] <= inst[name]["ret"]["acc@5"] <= 1
    assert inst["all"]["ret"]["acc@5"] <= inst["split"]["ret"]["acc@5"]  # more photos: never easier


# --------------------------------------------------------------------------- correspondence training term


def test_correspondence_loss_hand():
    import math

    from zse_hf.modeling_zse import correspondence_loss

    kernel = torch.tensor([[[0.9, 0.1, -0.2, 0.0],
                            [0.3, 0.3, 0.3, 0.3],
                            [0.0, 0.5, 0.2, -1.0],
                            [1.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    targets = torch.tensor([[0, -1, 1, 3]])
    tau = 0.5
    expected = 0.0
    for row, t in ((0, 0), (2, 1), (3, 3)):  # row 1 is not counted
        z = [v / tau for v in kernel[0, row].tolist()]
        expected += -(z[t] - math.log(sum(math.exp(v) for v in z)))
    loss = correspondence_loss(kernel, targets, tau)
    assert loss.item() == pytest.approx(expected / 3, rel=1e-6)
    loss.backward()
    assert kernel.grad[0, 1].abs().sum() == 0 and kernel.grad[0, 0].abs().sum() > 0
    none = correspondence_loss(kernel, torch.full((1, 4), -1), tau)
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="targets"):
        correspondence_loss(kernel, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        correspondence_loss(kernel, targets, 0.0)


def _tiny_pairs(n=4, size=56, grid=2, seed=0):
    rng = np.random.default_rng(seed)
    return [warped_pair(_cutout(seed=i), sample_warp(rng), size, grid) for i in range(n)]


def test_forward_adds_the_weighted_correspondence_term():
    from zse_hf import ZseImageProcessor

    torch.manual_seed(0)
    model = ZseModel(tiny_config(correspondence_weight=0.5, correspondence_temperature=0.2)).eval()
    proc = ZseImageProcessor.from_model_config(model.config)
    pairs = _tiny_pairs(2)
    corr = {
        "correspondence_sketch_pixel_values": proc.normalize_prepared([p["sketch"] for p in pairs])["pixel_values"],
        "correspondence_photo_pixel_values": proc.normalize_prepared([p["photo"] for p in pairs])["pixel_values"],
        "correspondence_targets": torch.as_tensor(np.stack([p["targets"] for p in pairs])),
    }
    torch.manual_seed(1)
    x = torch.randn(3, 3, 3, 56, 56)
    batch = dict(sketch_pixel_values=x[0], photo_pixel_values=x[1], negative_pixel_values=x[2],
                 labels=torch.tensor([0, 1, 2]))
    with torch.no_grad():
        plain = model(**batch)
        both = model(**batch, **corr)
    assert plain.correspondence_loss is None and both.correspondence_loss.item() > 0
    assert both.loss.item() == pytest.approx(plain.loss.item() + 0.5 * both.correspondence_loss.item(), rel=1e-5)
    with pytest.raises(ValueError, match="correspondence"):
        model(**batch, correspondence_targets=corr["correspondence_targets"])


def test_a_few_steps_reduce_the_correspondence_loss():
    from zse_hf import ZseImageProcessor

    torch.manual_seed(0)
    model = ZseModel(tiny_config()).train()
    proc = ZseImageProcessor.from_model_config(model.config)
    pairs = _tiny_pairs(4)
    sk = proc.normalize_prepared([p["sketch"] for p in pairs])["pixel_values"]
    ph = proc.normalize_prepared([p["photo"] for p in pairs])["pixel_values"]
    targets = torch.as_tensor(np.stack([p["targets"] for p in pairs]))
    assert (targets >= 0).sum() >= 4
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model._correspondence_loss(sk, ph, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
