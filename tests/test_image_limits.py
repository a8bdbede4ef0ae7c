"""The processor's input limits, shared by the API, the CLI and the demo: one configurable pixel
limit checked before decoding (JPEGs decoded at a reduced scale), and EXIF orientation."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zse_hf import ZseModel, ZseProcessor
from zse_hf.image_processing_zse import BlankSketchError, ZseImageProcessor
from zse_hf.retrieval import ZseIndex

from conftest import tiny_config


def big_png(path: Path, width: int, height: int, ink: bool = False) -> Path:
    """A white grayscale PNG of `width x height` (with a black band across the middle when
    `ink`), written row by row: a few hundred KB, little memory."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp, row = zlib.compressobj(9), b"\x00" + b"\xff" * width
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        black = b"\x00" + b"\x00" * width
        band = range(height * 9 // 20, height * 11 // 20) if ink else range(0)
        parts = [comp.compress(black if y in band else row) for y in range(height)] + [comp.flush()]
        f.write(chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def peak_rss_growth(fn) -> tuple[object, int]:
    """(fn's result or exception, growth of this process's peak RSS in bytes while it ran)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    before = status("VmRSS:")
    try:
        result = fn()
    except Exception as err:  # noqa: BLE001 - returned for the caller to check
        result = err
    return result, status("VmHWM:") - before


def _exif_jpeg(orientation: int) -> tuple[bytes, Image.Image]:
    """A 90x60 JPEG stored sideways with an EXIF orientation tag, and the upright image it shows."""
    upright = Image.new("RGB", (60, 90), (230, 230, 230))
    upright.paste((200, 20, 20), (0, 0, 60, 30))  # red band on top
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue(), upright


def test_exif_orientation_is_applied_to_files_bytes_and_pil_images(tmp_path):
    data, upright = _exif_jpeg(6)
    path = tmp_path / "phone.jpg"
    path.write_bytes(data)
    ip = ZseImageProcessor(size=48)
    for source in (data, path, str(path), Image.open(io.BytesIO(data))):
        image = ip.load_image(source)
        assert image.size == (60, 90), type(source)
        top, bottom = np.asarray(image.convert("RGB"))[5, 30], np.asarray(image.convert("RGB"))[80, 30]
        assert top[0] > 150 and top[1] < 80 and bottom.min() > 180  # the red band is on top
    from_file = ip(path, modality="photo")["pixel_values"]
    turned = Image.fromarray(np.asarray(Image.open(path).transpose(Image.Transpose.ROTATE_270)))  # no EXIF left
    from_upright = ip(turned, modality="photo")["pixel_values"]
    torch.testing.assert_close(from_file, from_upright)


def test_one_configurable_pixel_limit_for_every_input(tmp_path):
    small = ZseImageProcessor(size=32, max_input_pixels=1000)
    image = Image.new("RGB", (50, 30), "white")
    path = tmp_path / "p.png"
    image.save(path)
    for source in (path, path.read_bytes(), image, np.zeros((30, 50, 3), np.uint8), torch.zeros(3, 30, 50)):
        with pytest.raises(ValueError, match=r"too large: 50x30 px, 0.0015 MP; the limit is 0.001 MP \(max_input_"):
            small.load_image(source)
    assert ZseImageProcessor(size=32, max_input_pixels=1500).load_image(path).size == (50, 30)
    saved = ZseImageProcessor(max_input_pixels=123_456)
    saved.save_pretrained(tmp_path / "proc")
    assert ZseImageProcessor.from_pretrained(tmp_path / "proc").max_input_pixels == 123_456
    with pytest.raises(ValueError, match="must be >= 1"):
        ZseImageProcessor(max_input_pixels=0)


def test_a_144_mp_png_is_refused_before_decoding(tmp_path):
    path = big_png(tmp_path / "huge.png", 12_000, 12_000)
    assert path.stat().st_size < 1_000_000
    ip = ZseImageProcessor(size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # PIL's own note above 89 MP
        err, growth = peak_rss_growth(lambda: ip(path, modality="photo"))
    assert isinstance(err, ValueError) and "too large: 12000x12000 px, 144 MP; the limit is 40 MP" in str(err)
    assert growth < 30 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MB"


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("L", (8000, 6000), 200).save(path, quality=80)  # 48 MP, above the 40 MP limit
    ip = ZseImageProcessor(size=32)
    out, growth = peak_rss_growth(lambda: ip.load_image(path))
    assert isinstance(out, Image.Image) and max(out.size) <= ip.max_input_side
    assert growth < 60 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MB"  # 4000x3000 L draft = 12 MB


def test_blank_sketch_has_its_own_error_type():
    with pytest.raises(BlankSketchError, match="blank"):
        ZseImageProcessor(size=32)(Image.new("L", (40, 40), 255), modality="sketch")
    assert issubclass(BlankSketchError, ValueError)


def test_index_build_skips_over_limit_files(tmp_path):
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    processor = ZseProcessor.from_config(model.config)
    processor.image_processor.max_input_pixels = 10_000
    Image.new("RGB", (200, 100), "red").save(tmp_path / "big.png")
    Image.new("RGB", (50, 50), "blue").save(tmp_path / "ok.png")
    with pytest.warns(UserWarning, match="skipped 1"):
        index = ZseIndex.build(model, processor, tmp_path, progress=False, work_dir=tmp_path / "work")
    assert index.ids == ["ok.png"] and "too large" in index.skipped[0].reason
