"""Training augmentation with PIL/numpy only (no torchvision).

Every function takes the random source explicitly (``numpy.random.Generator``,
``random.Random`` or an int seed), so a triplet's augmentation is reproducible from its
seed. Photos are augmented as RGBA cut-outs *before* compositing, so the background can
be varied behind the object's alpha; sketches are RGB black-on-white.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

__all__ = [
    "PhotoAugment",
    "SketchAugment",
    "as_generator",
    "augment_photo",
    "augment_sketch",
    "color_jitter",
    "random_affine",
    "random_background",
    "random_hflip",
    "random_resized_crop",
    "stroke_jitter",
]

RngLike = np.random.Generator | random.Random | int | None


def as_generator(rng: RngLike) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator (returned as is), a ``random.Random``
    (one 64-bit draw seeds a new Generator), an int seed, or ``None`` (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(64))
    return np.random.default_rng(rng)


def random_resized_crop(image: Image.Image, rng: RngLike, scale: tuple[float, float] = (0.6, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), size: int | tuple[int, int] | None = None
                        ) -> Image.Image:
    """Crop a random box of area ``scale`` x image area and aspect in ``ratio`` (log-uniform),
    then resize it (bicubic) to ``size`` (default: the input size). Mode is kept."""
    g = as_generator(rng)
    w, h = image.size
    out = image.size if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    area = w * h
    box = (0, 0, w, h)
    for _ in range(10):
        a = area * g.uniform(*scale)
        r = math.exp(g.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(g.integers(0, w - cw + 1)), int(g.integers(0, h - ch + 1))
            box = (x, y, x + cw, y + ch)
            break
    return image.resize(out, Image.Resampling.BICUBIC, box=box)


def random_hflip(image: Image.Image, rng: RngLike, p: float = 0.5) -> Image.Image:
    """Mirror left-right with probability ``p``."""
    g = as_generator(rng)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if g.random() < p else image


def color_jitter(image: Image.Image, rng: RngLike, brightness: float = 0.3, contrast: float = 0.3,
                 saturation: float = 0.3, hue: float = 0.03) -> Image.Image:
    """Random brightness/contrast/saturation factors in ``[1 - x, 1 + x]`` and a hue shift
    in ``[-hue, hue]`` turns; alpha (if any) is left untouched. RGB/RGBA in, same mode out."""
    g = as_generator(rng)
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    rgb = image.convert("RGB")
    for enh, amt in ((ImageEnhance.Brightness, brightness), (ImageEnhance.Contrast, contrast),
                     (ImageEnhance.Color, saturation)):
        f = g.uniform(max(0.0, 1 - amt), 1 + amt)
        if amt > 0:
            rgb = enh(rgb).enhance(f)
    if hue > 0:
        shift = int(round(g.uniform(-hue, hue) * 255))
        if shift:
            hsv = np.asarray(rgb.convert("HSV")).copy()
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift).astype(np.uint8)  # wraps mod 256
            rgb = Image.fromarray(hsv, mode="HSV").convert("RGB")
    if alpha is not None:
        rgb = rgb.convert("RGBA")
        rgb.putalpha(alpha)
    return rgb


def random_background(size: tuple[int, int], rng: RngLike, white_prob: float = 0.4) -> Image.Image:
    """A random RGB background: white (probability ``white_prob``), else a solid colour,
    a linear gradient, or smooth noise texture.

    Returns:
        RGB ``PIL.Image`` of ``size`` ``(w, h)``.
    """
    g = as_generator(rng)
    w, h = size
    if g.random() < white_prob:
        return Image.new("RGB", (w, h), (255, 255, 255))
    kind = int(g.integers(3))
    c1 = g.integers(0, 256, size=3).astype(np.float32)
    if kind == 0:
        return Image.new("RGB", (w, h), tuple(int(v) for v in c1))
    if kind == 1:
        c2 = g.integers(0, 256, size=3).astype(np.float32)
        t = g.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        proj = xx * math.cos(t) + yy * math.sin(t)
        proj = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
        arr = c1 * (1 - proj[..., None]) + c2 * proj[..., None]
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8), mode="RGB")
    cells = int(g.integers(4, 17))
    noise = g.uniform(-60, 60, size=(cells, cells, 3)).astype(np.float32) + c1
    small = Image.fromarray(noise.clip(0, 255).astype(np.uint8), mode="RGB")
    tex = small.resize((w, h), Image.Resampling.BICUBIC)
    grain = g.normal(0, 8, size=(h, w, 1)).astype(np.float32)
    return Image.fromarray((np.asarray(tex, np.float32) + grain).clip(0, 255).astype(np.uint8), mode="RGB")


def augment_photo(image: Image.Image, rng: RngLike, *, size: int | None = None,
                  crop_scale: tuple[float, float] = (0.7, 1.0), hflip_p: float = 0.5,
                  brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3, hue: float = 0.03,
                  white_prob: float = 0.4) -> Image.Image:
    """Augment a photo cut-out, then composite it over a random background.

    Order: random resized crop (to ``size`` or the input size), horizontal flip, colour
    jitter (RGB only, alpha kept), composite over :func:`random_background`. An image
    without alpha is treated as fully opaque, so the background never shows.

    Returns:
        RGB ``PIL.Image``.
    """
    g = as_generator(rng)
    rgba = image.convert("RGBA")
    rgba = random_resized_crop(rgba, g, scale=crop_scale, size=size)
    rgba = random_hflip(rgba, g, p=hflip_p)
    rgba = color_jitter(rgba, g, brightness, contrast, saturation, hue)
    bg = random_background(rgba.size, g, white_prob=white_prob).convert("RGBA")
    return Image.alpha_composite(bg, rgba).convert("RGB")


def random_affine(image: Image.Image, rng: RngLike, max_rotate: float = 10.0, max_scale: float = 0.1,
                  max_translate: float = 0.06, max_shear: float = 5.0,
                  fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Small random affine warp about the centre (bicubic), uncovered area filled white.

    Args:
        max_rotate, max_shear: degrees; max_scale: relative zoom; max_translate: fraction
        of the side. Size and mode (RGB or L) are kept.
    """
    g = as_generator(rng)
    w, h = image.size
    ang = math.radians(g.uniform(-max_rotate, max_rotate))
    sh = math.radians(g.uniform(-max_shear, max_shear))
    s = g.uniform(1 - max_scale, 1 + max_scale)
    tx, ty = g.uniform(-max_translate, max_translate) * w, g.uniform(-max_translate, max_translate) * h
    # forward map M = R(ang) @ Shear(sh) * s; PIL wants the inverse (output -> input)
    m = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]]) @ \
        np.array([[1.0, math.tan(sh)], [0.0, 1.0]]) * s
    inv = np.linalg.inv(m)
    cx, cy = w / 2, h / 2
    # input = inv @ (out - c - t) + c
    off = np.array([cx, cy]) - inv @ np.array([cx + tx, cy + ty])
    coeffs = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    fc = fill if image.mode in ("RGB", "RGBA") else 255
    return image.transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC, fillcolor=fc)


def stroke_jitter(image: Image.Image, rng: RngLike, p: float = 0.5, thicken_prob: float = 0.5,
                  kernel: int = 3) -> Image.Image:
    """With probability ``p``, thicken dark strokes (``MinFilter``) or thin them
    (``MaxFilter``), each with odd ``kernel``; size and mode kept. Thinning that would remove
    more than half of the ink (strokes already thin, as crisp sketches are) is skipped."""
    g = as_generator(rng)
    if g.random() >= p:
        return image
    if g.random() < thicken_prob:
        return image.filter(ImageFilter.MinFilter(kernel))
    thin = image.filter(ImageFilter.MaxFilter(kernel))

    def ink(im: Image.Image) -> int:
        return int((np.asarray(im.convert("L")) < 128).sum())

    return thin if 2 * ink(thin) >= ink(image) else image


def augment_sketch(image: Image.Image, rng: RngLike, *, hflip_p: float = 0.5, max_rotate: float = 10.0,
                   max_scale: float = 0.1, max_translate: float = 0.06, max_shear: float = 5.0,
                   stroke_p: float = 0.5) -> Image.Image:
    """Augment a black-on-white sketch: flip, small affine, stroke-width jitter.

    Returns:
        RGB ``PIL.Image`` of the input size.
    """
    g = as_generator(rng)
    im = image.convert("RGB")
    im = random_hflip(im, g, p=hflip_p)
    im = random_affine(im, g, max_rotate, max_scale, max_translate, max_shear)
    return stroke_jitter(im, g, p=stroke_p)


@dataclass
class PhotoAugment:
    """Callable ``(rgba_image, rng) -> RGB image`` wrapping :func:`augment_photo`."""

    size: int | None = None
    crop_scale: tuple[float, float] = (0.7, 1.0)
    hflip_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03
    white_prob: float = 0.4

    def __call__(self, image: Image.Image, rng: RngLike) -> Image.Image:
        return augment_photo(image, rng, **asdict(self))


@dataclass
class SketchAugment:
    """Callable ``(sketch_image, rng) -> RGB image`` wrapping :func:`augment_sketch`."""

    hflip_p: float = 0.5
    max_rotate: float = 10.0
    max_scale: float = 0.1
    max_translate: float = 0.06
    max_shear: float = 5.0
    stroke_p: float = 0.5

    def __call__(self, image: Image.Image, rng: RngLike) -> Image.Image:
        return augment_sketch(image, rng, **asdict(self))
