"""The one model loader (`zse_hf.loading`): ZSE folders, backbones, Hub ids, errors; the fingerprint."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import Dinov2Model

from zse_hf import ZseImageProcessor, ZseModel
from zse_hf.loading import LoadedModel, ModelLoadError, image_processor_of, load_model, weights_fingerprint

from conftest import assert_same_state, save_tiny_model, tiny_config
from hf_cache import make_hf_cache

REPO_ROOT = Path(__file__).resolve().parents[1]


def _backbone_folder(folder: Path) -> Path:
    torch.manual_seed(3)
    Dinov2Model(tiny_config().backbone_config).save_pretrained(folder)
    return folder


def test_zse_folder_loads_in_fp32_eval_with_its_processor(tmp_path):
    saved = save_tiny_model(tmp_path / "m", open_gate=True)
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, LoadedModel) and not loaded.from_backbone
    model, processor, from_backbone = loaded  # unpacks like the old 3-tuple
    assert isinstance(model, ZseModel) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert isinstance(processor, ZseImageProcessor) and processor.side == saved.config.image_size
    assert_same_state(model.state_dict(), saved.state_dict())
    assert weights_fingerprint(model) == weights_fingerprint(saved)


def test_backbone_is_wrapped_with_the_same_fresh_head_every_time(tmp_path):
    folder = _backbone_folder(tmp_path / "bb")
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = load_model(folder, image_size=56, relation_grid=2)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's random stream is untouched
    b = load_model(folder, image_size=56, relation_grid=2)
    assert a.from_backbone and b.from_backbone
    assert a.model.config.image_size == 56 and a.model.config.relation_grid == 2
    assert weights_fingerprint(a.model) == weights_fingerprint(b.model)
    with pytest.raises(ModelLoadError, match="not a ZSE model"):
        load_model(folder, strict=True)


def test_weights_that_do_not_fit(tmp_path):
    from safetensors.torch import load_file, save_file

    saved = save_tiny_model(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    state = load_file(str(path))
    dropped = sorted(k for k in state if k.startswith("relation_network."))[0]
    del state[dropped]
    state["relation_network.stray"] = torch.zeros(2)
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(tmp_path / "m", strict=True)
    assert not load_model(tmp_path / "m").from_backbone  # lenient: transformers initialises what is missing

    state = {k: v for k, v in saved.state_dict().items()}
    key = next(k for k, v in state.items() if k.startswith("relation_network.") and v.ndim == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="cannot load the weights"):
        load_model(tmp_path / "m")


def test_errors_name_the_source(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json in .*empty"):
        load_model(tmp_path / "empty")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="'nobody/no-such-model'.*offline mode"):
        load_model("nobody/no-such-model")


def test_fingerprint_is_dtype_independent_and_sees_every_weight():
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())  # exactly representable in fp16
    digest = weights_fingerprint(model)
    assert len(digest) == 64 and weights_fingerprint(model, short=True) == digest[:16]
    assert weights_fingerprint(model.half()) == digest
    model.float()
    name, tensor = next((n, t) for n, t in model.state_dict().items() if t.is_floating_point())
    with torch.no_grad():
        tensor.view(-1)[0] += 0.5
    assert weights_fingerprint(model) != digest, name


def test_image_processor_of():
    from zse_hf import ZseProcessor

    proc = ZseProcessor.from_config(tiny_config())
    assert image_processor_of(proc) is proc.image_processor
    assert image_processor_of(proc.image_processor) is proc.image_processor


def test_explain_accepts_a_hub_id_like_eval(tmp_path):
    """`zse-sbir explain --model org/name` loads a Hub repo (here from an offline HF cache)."""
    save_tiny_model(tmp_path / "m", open_gate=True)
    hf_home = tmp_path / "hf"
    make_hf_cache(hf_home, "someone/tiny-zse", tmp_path / "m")
    sketch, photo = tmp_path / "sketch.png", tmp_path / "photo.png"
    im = Image.new("RGB", (120, 120), "white")
    ImageDraw.Draw(im).ellipse([20, 20, 100, 100], outline="black", width=4)
    im.save(sketch)
    Image.new("RGB", (90, 70), (180, 60, 40)).save(photo)
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-m", "zse_hf.cli", "explain", "--model", "someone/tiny-zse", str(sketch),
                           str(photo), "--out", str(tmp_path / "out"), "--grid", "2", "--image-size", "56"],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()).count(".png") >= 4
