"""The demo's index-integrity and input cases, checked on the demo's functions (no server): a
malformed cached bundled index is rebuilt, an EXIF-rotated photo embeds the same through the API
and the demo, and the sketch inputs get the library's pixel limit and friendly messages.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio")
pytest.importorskip("faiss")
pytestmark = pytest.mark.filterwarnings("ignore:::gradio", "ignore::UserWarning")

from zse_hf import ZseModel, ZseProcessor  # noqa: E402
from zse_hf.serving import launcher as demo_launcher  # noqa: E402

from conftest import tiny_config  # noqa: E402
from test_image_limits import big_png  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(app module, DemoApp on a tiny model and 3 bundled photos, tmp dir, upload area)."""
    app = demo_launcher.load_app()
    tmp = tmp_path_factory.mktemp("demo_integrity")
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    model.save_pretrained(tmp / "model")
    ZseProcessor.from_config(model.config).save_pretrained(tmp / "model")
    gallery = tmp / "gallery"
    gallery.mkdir()
    for photo in sorted((REPO / "demo" / "gallery").glob("*.jpg"))[:3]:
        shutil.copy(photo, gallery / photo.name)
    zse = app.DemoApp(str(tmp / "model"), gallery_dir=gallery, cache_root=tmp / "cache")
    uploads = tmp / "gradio"
    uploads.mkdir()
    return app, zse, tmp, uploads


@pytest.fixture
def upload_area(demo, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(demo[3]))
    return demo[3]


def _cached_index_dir(zse, tmp) -> Path:
    app = demo_launcher.load_app()
    key = app.cache_key(zse.dm.fingerprint, app.gallery_fingerprint(app.gallery_files(zse.gallery_dir)))
    return tmp / "cache" / key / "index"


@pytest.mark.parametrize("damage", ["no files key", "garbage rows with checksum", "not json", "traversal"])
def test_malformed_cached_bundled_index_is_rebuilt(demo, damage):
    app, zse, tmp, _ = demo
    folder = _cached_index_dir(zse, tmp)
    assert app.bundled_index(zse.dm, zse.gallery_dir, tmp / "cache")[1]  # cached and valid
    manifest = json.loads((folder / "manifest.json").read_text())
    if damage == "no files key":
        del manifest["files"]
    elif damage == "garbage rows with checksum":
        import hashlib

        data = b'{"ids": 3}'
        (folder / "rows.json").write_bytes(data)
        manifest["files"]["rows.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    elif damage == "traversal":
        manifest["files"]["../../gallery.json"] = {"bytes": 1, "sha256": "0" * 64}
    (folder / "manifest.json").write_text("{oops" if damage == "not json" else json.dumps(manifest))
    index, from_cache = app.bundled_index(zse.dm, zse.gallery_dir, tmp / "cache")
    assert not from_cache and len(index) == 3
    assert app.bundled_index(zse.dm, zse.gallery_dir, tmp / "cache")[1]  # the rebuilt cache loads again


def test_exif_rotated_photo_embeds_the_same_through_api_and_demo(demo, upload_area):
    app, zse, _, _ = demo
    upright = Image.new("RGB", (60, 90), (230, 230, 230))
    upright.paste((200, 20, 20), (0, 0, 60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = upload_area / "phone.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())
    model, processor = zse.dm.model, zse.dm.processor
    ip = getattr(processor, "image_processor", processor)
    with torch.no_grad():
        api = model.get_image_features(ip(str(path), modality="photo")["pixel_values"]).ret_embeds
        shown = app.read_upload(path, "photo")  # what the demo indexes and shows
        via_demo = model.get_image_features(ip(shown, modality="photo")["pixel_values"]).ret_embeds
    assert shown.size == (60, 90)
    torch.testing.assert_close(api, via_demo, atol=1e-5, rtol=1e-4)
    index = app.ZseIndex(model, processor)
    index.add([str(path)], ids=["api"], progress=False)
    index.add([shown], ids=["demo"], progress=False)
    np.testing.assert_allclose(index.embeddings(["api"]), index.embeddings(["demo"]), atol=1e-5)


def test_sketchpad_composite_gets_the_pixel_limit(demo, upload_area):
    app, zse, _, _ = demo
    huge = big_png(upload_area / "composite.png", 8000, 8000, ink=True)  # 64 MP with a stroke
    with pytest.raises(app.UserError, match="huge|too large"):
        zse._query({"composite": str(huge)}, None, "draw")


def test_sketchpad_composite_that_is_not_an_image(demo, upload_area):
    app, zse, _, _ = demo
    fake = upload_area / "composite.png"
    fake.write_bytes(b"\x89PNG but not really" * 10)
    with pytest.raises(app.UserError, match="not an image"):
        zse._query({"composite": str(fake)}, None, "draw")


def test_blank_uploaded_sketch_gets_a_friendly_message(demo, upload_area):
    app, zse, _, _ = demo
    white = upload_area / "white.png"
    Image.new("RGB", (300, 300), "white").save(white)
    items, scores, status, _, _ = zse.search(None, str(white), app.BUNDLED, 3, "ret", 5, "upload", None)
    assert items == [] and status.startswith("⚠️") and "blank" in status
    assert "Search failed" not in status and "ink_threshold" not in status and "Error" not in status


def test_upload_sketch_and_canvas_limits_come_from_the_processor(demo):
    """The library side of the sketchpad limit: the processor refuses the huge composite."""
    _, zse, tmp, _ = demo
    huge = big_png(tmp / "composite.png", 8000, 8000, ink=True)
    ip = getattr(zse.dm.processor, "image_processor", zse.dm.processor)
    with pytest.raises(ValueError, match="too large: 8000x8000 px, 64 MP"):
        ip.load_image(huge)
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), "white").save(buf, "PNG")
    from zse_hf.image_processing_zse import BlankSketchError

    with pytest.raises(BlankSketchError):
        ip(buf.getvalue(), modality="sketch")
