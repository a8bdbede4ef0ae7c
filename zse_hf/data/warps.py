"""Warped pseudo-sketch pairs with a known cell-to-cell correspondence.

A pseudo-sketch of a photo, drawn through a known geometric warp (crop/scale, shift, flip),
tells where every sketch cell lies in the photo. The relation network's `G x G` cells split
the (square) input into equal windows, row-major (cell index `i * G + j`, row `i` from the top,
column `j` from the left), so the true photo cell of each sketch cell follows from the warp:
kernel locality (:func:`zse_hf.evaluation.metrics.kernel_locality`) and the correspondence training term
(:func:`zse_hf.modeling_zse.correspondence_loss`) both use it.

Coordinates are normalised to `[0, 1)` with pixel `k` of a side `S` covering `[k/S, (k+1)/S)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .images import composite_on_white, crop_to_alpha, pad_to_square
from .pseudo_sketch import photo_to_pseudo_sketch


@dataclass(frozen=True)
class Warp:
    """A warp from sketch coordinates `u` to photo coordinates `p` (both normalised `(x, y)`):
    `p = 0.5 + scale * (u' - 0.5) + (shift_x, shift_y)` with `u' = (1 - u_x, u_y)` when `flip`.

    `scale < 1` shows a crop of the photo enlarged in the sketch; `scale > 1` shows the whole
    photo smaller. The identity is `Warp()`.
    """

    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    flip: bool = False

    def __post_init__(self):
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"warp scale must be a positive number, got {self.scale!r}")

    def to_photo(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Photo coordinates `(p_x, p_y)` of sketch coordinates `(x, y)` (arrays of any shape)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if self.flip:
            x = 1.0 - x
        return 0.5 + self.scale * (x - 0.5) + self.shift_x, 0.5 + self.scale * (y - 0.5) + self.shift_y


def sample_warp(rng: np.random.Generator, scale_range: tuple[float, float] = (0.75, 1.25), max_shift: float = 0.15,
                flip_prob: float = 0.5) -> Warp:
    """A random :class:`Warp`: scale uniform in `scale_range`, shifts uniform in `[-max_shift, max_shift]`,
    a horizontal flip with probability `flip_prob`."""
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    return Warp(scale=float(rng.uniform(lo, hi)), shift_x=float(rng.uniform(-max_shift, max_shift)),
                shift_y=float(rng.uniform(-max_shift, max_shift)), flip=bool(rng.random() < flip_prob))


def cell_targets(warp: Warp, grid: int) -> np.ndarray:
    """True photo cell of every sketch cell of a `grid x grid` layout.

    Returns:
        int64 `[grid * grid]`: the row-major photo cell index holding the warped centre of each
        sketch cell, or `-1` where that centre falls outside the photo.
    """
    if int(grid) < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    g = int(grid)
    centres = (np.arange(g) + 0.5) / g
    cx, cy = np.meshgrid(centres, centres)  # [g, g]: row i, column j
    px, py = warp.to_photo(cx, cy)
    inside = (px >= 0) & (px < 1) & (py >= 0) & (py < 1)
    # floor with a tiny tolerance: a centre exactly on a boundary (identity) stays in its cell
    col = np.clip(np.floor(px * g + 1e-9), 0, g - 1).astype(np.int64)
    row = np.clip(np.floor(py * g + 1e-9), 0, g - 1).astype(np.int64)
    return np.where(inside, row * g + col, -1).reshape(-1)


def warp_sketch(image: Image.Image, warp: Warp, size: int) -> Image.Image:
    """Draw a sketch (dark ink on white) through `warp`: output pixel `u` shows the input at
    `warp.to_photo(u)`; outside the input is white. Bilinear sampling.

    Returns: RGB `size x size` PIL image.
    """
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    ink = torch.from_numpy(1.0 - grey)[None, None]  # [1, 1, H, W]
    u = (np.arange(size) + 0.5) / size
    ux, uy = np.meshgrid(u, u)
    px, py = warp.to_photo(ux, uy)
    grid = torch.from_numpy(np.stack([2 * px - 1, 2 * py - 1], axis=-1)).float()[None]  # [1, S, S, 2]
    out = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
    return Image.fromarray(np.round(255 * (1 - out.clamp(0, 1).numpy())).astype(np.uint8), mode="L").convert("RGB")


def inked_cells(image: Image.Image, grid: int, min_ink: float = 0.02) -> np.ndarray:
    """Which cells of a `grid x grid` layout hold ink: bool `[grid * grid]`, mean ink
    (1 - grey) of the cell at least `min_ink`."""
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    ink = torch.from_numpy(1.0 - grey)[None, None]
    cells = F.adaptive_avg_pool2d(ink, int(grid))[0, 0]
    return (cells >= min_ink).reshape(-1).numpy()


def square_pair(photo_rgba: Image.Image, size: int, **pseudo_sketch_kwargs) -> tuple[Image.Image, Image.Image]:
    """The unwarped pair of :func:`warped_pair`: a photo's pseudo-sketch and the photo on white,
    both cropped to the alpha box on the same square (margin 0 unless given), RGB `size x size`.

    Deterministic in its inputs, so it can be pre-rendered
    (:class:`~zse_hf.data.render_cache.RenderCache`).
    """
    rgba = photo_rgba.convert("RGBA")
    side = max(rgba.size)
    if rgba.width != rgba.height:  # pad to a square the way the processor pads photos
        rgba = ImageOps.pad(rgba, (side, side), color=(255, 255, 255, 0))
    kw = {"margin": 0.0, **pseudo_sketch_kwargs, "size": size}
    pseudo = photo_to_pseudo_sketch(rgba, **kw)
    # the pseudo-sketch crops to the alpha box: crop the photo the same way so both agree
    photo = composite_on_white(pad_to_square(crop_to_alpha(rgba), margin=kw["margin"]))
    return pseudo, photo.resize((size, size), Image.Resampling.BICUBIC)


def warped_pair(photo_rgba: Image.Image | None, warp: Warp, size: int, grid: int, min_ink: float = 0.02,
                base: tuple[Image.Image, Image.Image] | None = None, **pseudo_sketch_kwargs) -> dict:
    """A (warped pseudo-sketch, photo) pair with its true cell correspondence.

    Args:
        photo_rgba: a square cut-out (e.g. ``OfflinePhotoDataset.load(i, rgba=True)``); its
            pseudo-sketch is drawn on the same square (margin 0), so photo and sketch share
            coordinates before the warp. Unused (may be ``None``) when ``base`` is given.
        warp: sketch -> photo coordinates.
        size: side of both output images (the model's input side: feed them to
            ``ZseImageProcessor.normalize_prepared``, not through the ink crop).
        grid: relation-network grid G.
        min_ink: see :func:`inked_cells`.
        base: the photo's :func:`square_pair` at ``size``, if already rendered.
        pseudo_sketch_kwargs: passed to :func:`photo_to_pseudo_sketch`.

    Returns:
        ``{"sketch": RGB size x size, "photo": RGB size x size, "targets": int64 [G*G]}`` where
        ``targets`` is the true photo cell of each sketch cell, ``-1`` for cells without ink or
        whose centre falls outside the photo.
    """
    if base is None:
        if photo_rgba is None:
            raise ValueError("warped_pair needs photo_rgba or base")
        base = square_pair(photo_rgba, size, **pseudo_sketch_kwargs)
    pseudo, photo = base
    sketch = warp_sketch(pseudo, warp, size)
    targets = cell_targets(warp, grid)
    targets = np.where(inked_cells(sketch, grid, min_ink), targets, -1)
    return {"sketch": sketch, "photo": photo, "targets": targets}


__all__ = ["Warp", "cell_targets", "inked_cells", "sample_warp", "square_pair", "warp_sketch", "warped_pair"]
