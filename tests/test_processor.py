"""Image processor and processor: real-looking inputs and every bad input."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from zse_hf import ZseImageProcessor, ZseProcessor
from zse_hf.image_processing_zse import sketch_ink

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture
def proc() -> ZseImageProcessor:
    return ZseImageProcessor(size=64)


def _pixels(proc, batch) -> np.ndarray:
    return proc.unnormalize(batch["pixel_values"])


def _ink_box(img: np.ndarray):
    dark = img.mean(-1) < 128
    rows, cols = np.flatnonzero(dark.any(1)), np.flatnonzero(dark.any(0))
    return rows[0], rows[-1], cols[0], cols[-1]


def _small_drawing(size=(400, 300), box=(20, 30, 80, 70), fg="black", bg="white", mode="RGB"):
    img = Image.new(mode, size, bg)
    ImageDraw.Draw(img).rectangle(box, outline=fg, width=3)
    return img


def test_sketch_ink_crop_fills_the_square(proc):
    out = _pixels(proc, proc(_small_drawing(), modality="sketch"))[0]
    top, bottom, left, right = _ink_box(out)
    # a 60x40 box in the corner of a 400x300 canvas becomes centred and nearly full-width
    assert left <= 6 and right >= 57
    assert abs((top + bottom) / 2 - 31.5) <= 2 and abs((left + right) / 2 - 31.5) <= 2
    assert out[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("variant", ["white_on_black", "transparent", "gray", "rgba_opaque"])
def test_sketch_polarities_agree(proc, variant):
    ref = _pixels(proc, proc(_small_drawing(), modality="sketch"))[0].astype(int)
    if variant == "white_on_black":
        img = _small_drawing(fg="white", bg="black")
    elif variant == "transparent":
        img = _small_drawing(fg=(0, 0, 255, 255), bg=(0, 0, 0, 0), mode="RGBA")
    elif variant == "gray":
        img = _small_drawing(fg=0, bg=255, mode="L")
    else:
        img = _small_drawing(fg=(0, 0, 0, 255), bg=(255, 255, 255, 255), mode="RGBA")
    out = _pixels(proc, proc(img, modality="sketch"))[0].astype(int)
    assert np.abs(out - ref).max() <= 2


def test_photo_alpha_composited_on_white(proc):
    img = Image.new("RGBA", (100, 50), (255, 0, 0, 0))  # transparent red
    ImageDraw.Draw(img).rectangle((40, 10, 60, 40), fill=(0, 128, 0, 255))
    out = _pixels(proc, proc(img, modality="photo"))[0]
    assert out.shape == (64, 64, 3)
    assert out[0, 0].tolist() == [255, 255, 255] and out[32, 5].tolist() == [255, 255, 255]
    green = out[32, 32]
    assert green[1] > 100 and green[0] < 30
    crop = ZseImageProcessor(size=64, photo_resize_mode="crop")
    assert _pixels(crop, crop(img.convert("RGB").convert("RGBA"), modality="photo")).shape == (1, 64, 64, 3)


def test_normalisation_values(proc):
    out = proc(Image.new("RGB", (10, 10), "white"), modality="photo")["pixel_values"]
    assert out.dtype == torch.float32 and out.shape == (1, 3, 64, 64)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor((1 - MEAN) / STD, dtype=torch.float32), atol=1e-5)


@pytest.mark.parametrize("mode", ["P", "CMYK", "I;16", "LA", "RGBA", "1", "I", "F", "L"])
def test_image_modes(proc, mode):
    base = _small_drawing(mode="L", fg=0, bg=255)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base, dtype=np.uint16) * 257)
        assert img.mode == "I;16"
    elif mode == "F":
        img = Image.fromarray(np.asarray(base, dtype=np.float32) / 255.0)
    else:
        img = base.convert(mode)
    for modality in ("sketch", "photo"):
        out = _pixels(proc, proc(img, modality=modality))[0]
        assert out.shape == (64, 64, 3)
        assert (out.mean(-1) < 128).any() and (out.mean(-1) > 200).any()


def test_palette_with_transparency_is_white(proc):
    img = Image.new("P", (20, 20), 0)
    img.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    ImageDraw.Draw(img).line([(2, 2), (17, 17)], fill=1, width=2)
    out = _pixels(proc, proc(img, modality="photo"))[0]
    assert out[0, 63].tolist() == [255, 255, 255]


def test_files_paths_and_bytes(proc, tmp_path):
    path = tmp_path / "s.png"
    _small_drawing().save(path)
    a = proc(str(path), modality="sketch")["pixel_values"]
    b = proc(path.read_bytes(), modality="sketch")["pixel_values"]
    c = proc(_small_drawing(), modality="sketch")["pixel_values"]
    assert torch.equal(a, b) and torch.equal(a, c)


def test_arrays_and_tensors(proc):
    arr = np.array(_small_drawing())
    a = proc(arr, modality="sketch")["pixel_values"]
    b = proc(torch.from_numpy(arr).permute(2, 0, 1).float() / 255, modality="sketch")["pixel_values"]
    assert torch.allclose(a, b, atol=1e-5)
    c = proc(arr.astype(np.uint16) * 257, modality="sketch")["pixel_values"]
    assert torch.allclose(a, c, atol=1e-5)


def test_tiny_and_huge_images(proc, tmp_path):
    one = Image.new("L", (1, 1), 0)
    with pytest.raises(ValueError, match="blank"):  # a single pixel has no background to tell ink from
        proc(one, modality="sketch")
    dot = Image.new("L", (3, 3), 255)
    dot.putpixel((1, 1), 0)
    assert proc(dot, modality="sketch")["pixel_values"].shape == (1, 3, 64, 64)
    assert proc(one, modality="photo")["pixel_values"].shape == (1, 3, 64, 64)
    big = Image.new("RGB", (9000, 7000), "white")
    ImageDraw.Draw(big).ellipse((1000, 1000, 8000, 6000), outline="black", width=40)
    path = tmp_path / "big.jpg"
    big.save(path, quality=70)
    del big
    loaded = proc.load_image(str(path))
    assert max(loaded.size) <= proc.max_input_side
    assert proc(str(path), modality="sketch")["pixel_values"].shape == (1, 3, 64, 64)


def test_bad_files(proc, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        proc(str(empty))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        proc(str(text))
    good = tmp_path / "good.png"
    _small_drawing().save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: 200])
    with pytest.raises(ValueError, match="cannot read image"):
        proc(str(truncated))
    with pytest.raises(ValueError, match="not found"):
        proc(str(tmp_path / "missing.png"))


def test_bad_values_and_types(proc):
    with pytest.raises(ValueError, match="blank"):
        proc(Image.new("RGB", (50, 50), "white"), modality="sketch")
    nan = np.full((8, 8, 3), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        proc(nan)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        proc(np.full((8, 8, 3), 7.0, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        proc(np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="dtype"):
        proc(np.zeros((8, 8, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="unsupported image type"):
        proc(42)
    with pytest.raises(ValueError, match="no images"):
        proc([])
    with pytest.raises(ValueError, match="modality"):
        proc(Image.new("RGB", (8, 8)), modality="video")
    with pytest.raises(ValueError, match="sketch 1"):
        proc([_small_drawing(), Image.new("RGB", (50, 50), "white")], modality="sketch")


def test_processor_pairs_and_errors():
    processor = ZseProcessor(ZseImageProcessor(size=56))
    batch = processor(sketches=[_small_drawing()] * 2, photos=_small_drawing(), return_tensors="pt")
    assert batch["sketch_pixel_values"].shape == (2, 3, 56, 56)
    assert batch["photo_pixel_values"].shape == (1, 3, 56, 56)
    with pytest.raises(ValueError, match="sketches"):
        processor()


def test_sketch_ink_polarity_helper():
    ink = sketch_ink(_small_drawing(fg="white", bg="black"))
    assert ink.max() == 1.0 and ink[0, 0] == 0.0
