"""Pseudo-sketches: sketch-like line drawings made from cut-out photos (numpy/PIL only), used as
extra training anchors."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .images import composite_on_white, crop_to_alpha, pad_to_square
from .quickdraw import QUICKDRAW_SIDE, render_sketch


def _shift_or(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation with numpy shifts."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy:dy + h, dx:dx + w]
    return out


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").filter(ImageFilter.MinFilter(k))
    return np.asarray(im) > 127


def photo_to_pseudo_sketch(image: Image.Image, size: int = 224, *, work_size: int = 256, margin: float = 0.06,
                           edge_quantile: float = 0.9, blur: float = 1.5, line_width: int = 3,
                           quickdraw_style: bool = False) -> Image.Image:
    """Make a sketch-like line drawing from a cut-out photo (numpy/PIL only).

    Lines = the alpha silhouette's contour plus strong internal edges (Sobel magnitude on a
    blurred grey image, non-maximum suppressed, hysteresis-thresholded, 1 px thin), drawn
    black on white. Use it for *training* classes only; it never sees test photos unless
    a caller passes them.

    Args:
        image: RGBA cut-out (RGB/L accepted: then there is no silhouette, edges only).
        size: output side.
        work_size: side of the square working canvas.
        margin: white border per side, fraction of the side.
        edge_quantile: keep interior edges above this quantile of the interior gradient.
        blur: Gaussian radius before the gradient (suppresses texture).
        line_width: stroke width in working pixels (rounded up to odd; 1 = thinnest).
        quickdraw_style: degrade to a 28x28 QuickDraw-like bitmap and re-render it with
            :func:`render_sketch` (thick soft strokes, no fine detail).

    Returns:
        RGB ``PIL.Image`` ``size x size``: mostly white with dark lines.
    """
    rgba = image.convert("RGBA")
    rgba = pad_to_square(crop_to_alpha(rgba), margin=margin)
    rgba = rgba.resize((work_size, work_size), Image.Resampling.LANCZOS)
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    mask = alpha > 0.5
    ink = np.zeros(mask.shape, dtype=bool)
    # the padded margin is transparent, so require real transparency inside the object box too
    has_silhouette = mask.any() and (alpha[mask.any(1)][:, mask.any(0)] < 0.5).mean() > 0.01
    if has_silhouette:
        ink |= mask & ~_erode(mask, 3)
        inside = _erode(mask, 7)
    else:
        inside = mask.copy()
        inside[:3, :] = inside[-3:, :] = False
        inside[:, :3] = inside[:, -3:] = False
    grey = composite_on_white(rgba).convert("L").filter(ImageFilter.GaussianBlur(blur))
    g = np.asarray(grey, dtype=np.float32) / 255.0
    p = np.pad(g, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    mag = np.hypot(gx, gy)
    # non-maximum suppression along the gradient, 4 direction bins
    ang = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    m = np.pad(mag, 1)
    h, w = mag.shape
    nb = {0: ((0, 1), (0, -1)), 45: ((1, 1), (-1, -1)), 90: ((1, 0), (-1, 0)), 135: ((1, -1), (-1, 1))}
    bins = (np.round(ang / 45.0).astype(int) % 4) * 45
    keep = np.zeros_like(mask)
    for b, ((ay, ax), (by, bx)) in nb.items():
        n1 = m[1 + ay:1 + ay + h, 1 + ax:1 + ax + w]
        n2 = m[1 + by:1 + by + h, 1 + bx:1 + bx + w]
        keep |= (bins == b) & (mag >= n1) & (mag >= n2)
    cand = np.where(keep & inside, mag, 0.0)
    if inside.any() and mag[inside].max() > 1e-3:
        hi = max(float(np.quantile(mag[inside], edge_quantile)), 0.15)
        strong, weak = cand > hi, cand > 0.5 * hi
        for _ in range(8):  # hysteresis: grow strong edges along weak ones
            grown = _shift_or(strong) & weak
            if (grown == strong).all():
                break
            strong = grown | strong
        # drop isolated specks
        nbrs = np.pad(strong, 1)
        cnt = sum(nbrs[dy:dy + h, dx:dx + w].astype(np.int32) for dy in range(3) for dx in range(3))
        ink |= strong & (cnt >= 3)
    ink_img = Image.fromarray(ink.astype(np.uint8) * 255, mode="L")
    if quickdraw_style:
        k = max(3, (work_size // (2 * QUICKDRAW_SIDE)) | 1)  # about half a 28-grid cell
        thick = ink_img.filter(ImageFilter.MaxFilter(k))
        small = np.asarray(thick.resize((QUICKDRAW_SIDE, QUICKDRAW_SIDE), Image.Resampling.BOX), np.float32) / 255.0
        return render_sketch(np.clip(small * 1.3, 0.0, 1.0), size=size)
    if line_width > 1:
        ink_img = ink_img.filter(ImageFilter.MaxFilter(line_width | 1))
    out = Image.eval(ink_img.resize((size, size), Image.Resampling.BILINEAR), lambda v: 255 - v)
    return out.convert("RGB")


__all__ = ["photo_to_pseudo_sketch"]
