"""Explanations: why a sketch matched a photo (the paper's explainability pictures).

`explain_pair` runs the model once on a (sketch, photo) pair and collects everything the
pictures need in a [`ZseExplanation`]; four functions turn it into PIL images:

- `correspondence_image`: lines between the centres of the strongest matching cells;
- `attention_heatmap`: where in the photo one sketch cell looks;
- `patch_synthesis`: the sketch rebuilt from its best-matching photo patches;
- `kernel_image`: the `G^2 x G^2` cell kernel as a heat map.

Two sources for the cell kernel (and hence the correspondences and the heat map):

- `source="relation"` (default): the model's own relation kernel, i.e. the cosine between the
  relation network's pooled cells of the *cross-attended* tokens, and the head-averaged
  cross-attention for the heat map. This is what the relation score is computed from, but it
  only means something once the pairwise head is trained.
- `source="encoder"`: the cosine between the encoder's local tokens (no cross-attention, no
  relation conv), each image's mean token subtracted, average-pooled to the same `G x G`
  cells, and the encoder's patch-token cosine for the heat map. Pretrained backbone features
  are meaningful even with an untrained head.

The patch synthesis always matches the encoder's (mean-centred) patch tokens at full patch
resolution.

Command line: `zse-sbir explain --model DIR SKETCH.png PHOTO.png --out DIR`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .cli_args import at_least
from .loading import image_processor_of, load_model
from .modeling_zse import ZseModel, masked_grid_pool

SOURCES = ("relation", "encoder")
# the CLI's and the demo's default for encoder-source pictures: 7x7 cells at 224 px
READABLE_GRID = 7
READABLE_IMAGE_SIZE = 224
PICTURES = {
    "correspondence": "explain_correspondence.png",
    "attention": "explain_attention.png",
    "synthesis": "explain_synthesis.png",
    "kernel": "explain_kernel.png",
}
SCORES_FILE = "explain_scores.json"
_SOURCE_TEXT = {
    "relation": "relation head: cross-attended tokens, pooled cells",
    "encoder": "encoder tokens pooled to cells",
}


# ----------------------------------------------------------------------------- data


@dataclass
class ZseExplanation:
    """Everything needed to explain one (sketch, photo) pair.

    Cells are the relation network's `G x G` grid over each image (row-major index
    `r * G + c`); patches are the backbone's `h x w` patch grid.

    Args:
        source: `"relation"` or `"encoder"`, where `kernel` (and the heat map) come from.
        relation_score: `sigmoid` of the model's relation logit (always from the relation head).
        cosine: cosine of the two [Ret] embeddings.
        kernel: `[G*G, G*G]` cosine between sketch cells (rows) and photo cells (columns).
        best_photo_cell: `[G*G]` int, the best photo cell of each sketch cell (row argmax).
        strength: `[G*G]` the kernel value of that best match.
        sketch_to_photo_attention: `[hs, ws, hp, wp]` head-averaged cross-attention of each
            sketch patch over the photo's patch grid (each map sums to 1).
        photo_to_sketch_attention: `[hp, wp, hs, ws]` the same from the photo side.
        sketch_ink: `[G, G]` fraction of ink (non-white) pixels of each sketch cell.
        patch_similarity: `[hs*ws, hp*wp]` cosine between encoder patch tokens of both sides
            (mean-centred per image when `centered`).
        sketch_patch_ink: `[hs, ws]` fraction of ink pixels of each sketch patch.
        photo_patch_ink: `[hp, wp]` fraction of non-white pixels of each photo patch.
        sketch_image, photo_image: the processed RGB `size x size` images the model saw.
        grid: G.
        patch_size: backbone patch side in pixels.
        centered: whether encoder tokens were mean-centred per image (encoder kernel, patches).
        note: free text shown under the pictures (e.g. that the head is untrained).
    """

    source: str
    relation_score: float
    cosine: float
    kernel: np.ndarray
    best_photo_cell: np.ndarray
    strength: np.ndarray
    sketch_to_photo_attention: np.ndarray
    photo_to_sketch_attention: np.ndarray
    sketch_ink: np.ndarray
    patch_similarity: np.ndarray
    sketch_patch_ink: np.ndarray
    photo_patch_ink: np.ndarray
    sketch_image: Image.Image
    photo_image: Image.Image
    grid: int
    patch_size: int
    centered: bool = True
    note: str = ""

    @property
    def sketch_grid_size(self) -> tuple[int, int]:
        """`(hs, ws)` patch grid of the sketch."""
        return tuple(self.sketch_patch_ink.shape)

    @property
    def photo_grid_size(self) -> tuple[int, int]:
        """`(hp, wp)` patch grid of the photo."""
        return tuple(self.photo_patch_ink.shape)

    def scores(self) -> dict:
        """JSON-ready summary: scores, source and the per-cell best matches."""
        g = self.grid
        inked = [int(i) for i in np.flatnonzero(self.sketch_ink.reshape(-1) > 0)]
        return {
            "source": self.source,
            "relation_score": round(float(self.relation_score), 6),
            "ret_cosine": round(float(self.cosine), 6),
            "grid": g,
            "patch_size": self.patch_size,
            "image_size": self.sketch_image.size[0],
            "kernel_diagonal_mean": round(float(np.diag(self.kernel).mean()), 6),
            "mean_strength_inked_cells": round(float(self.strength[inked].mean()), 6) if inked else None,
            "cells": [
                {
                    "sketch_cell": [i // g, i % g],
                    "photo_cell": [int(self.best_photo_cell[i]) // g, int(self.best_photo_cell[i]) % g],
                    "strength": round(float(self.strength[i]), 6),
                    "sketch_ink": round(float(self.sketch_ink.reshape(-1)[i]), 6),
                }
                for i in inked
            ],
            "note": self.note,
        }


# ----------------------------------------------------------------------------- computing


def ink_map(image: Image.Image, threshold: int = 40) -> np.ndarray:
    """`[H, W]` bool: pixels darker or more coloured than white by more than `threshold` (0-255)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return (255 - rgb.min(axis=-1)) > threshold


def _cell_bounds(size: int, n: int) -> list[tuple[int, int]]:
    return [(round(i * size / n), round((i + 1) * size / n)) for i in range(n)]


def _cell_fractions(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Mean of `mask [H, W]` over a `rows x cols` split of the image."""
    out = np.zeros((rows, cols), dtype=np.float32)
    for r, (y0, y1) in enumerate(_cell_bounds(mask.shape[0], rows)):
        for c, (x0, x1) in enumerate(_cell_bounds(mask.shape[1], cols)):
            out[r, c] = mask[y0:y1, x0:x1].mean() if y1 > y0 and x1 > x0 else 0.0
    return out


def _patch_fractions(mask: np.ndarray, grid: tuple[int, int], patch: int) -> np.ndarray:
    h, w = grid
    m = mask[: h * patch, : w * patch].astype(np.float32)
    return m.reshape(h, patch, w, patch).mean(axis=(1, 3))


def encoder_cells(tokens: torch.Tensor, grid_size: tuple[int, int], grid: int, mask=None) -> torch.Tensor:
    """Average-pool local tokens `[B, h*w, D]` to cells `[B, G*G, D]` like the relation network.

    Same layout as `ZseRelationNetwork.pool` (adaptive pool to `2G`, then 2x2 cells) but without
    its learned conv; cells with no kept token are zero.
    """
    mean, weight = masked_grid_pool(tokens, grid_size, 2 * grid, mask)  # the relation network's windows
    summed = F.avg_pool2d(mean * weight, 2)
    weight = F.avg_pool2d(weight, 2)
    cells = summed / weight.clamp_min(1e-6) * (weight > 0)
    return cells.flatten(2).transpose(1, 2)


def _masked_mean(tokens: torch.Tensor, mask) -> torch.Tensor:
    """Mean token `[B, 1, D]` of `[B, N, D]` over kept positions."""
    if mask is None:
        return tokens.mean(1, keepdim=True)
    m = mask[..., None].to(tokens.dtype)
    return (tokens * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)


def _encode_pair(model: ZseModel, ip, sketch, photo, sketch_modality: str):
    """Prepare a pair at `ip.size` and encode it.

    Returns: `(sketch_image, photo_image, sketch_features, photo_features)`, features of batch 1.
    """
    prep = ip.prepare_sketch if sketch_modality == "sketch" else ip.prepare_photo
    s_img, p_img = prep(sketch), ip.prepare_photo(photo)
    param = next(model.parameters())
    pixels = ip.normalize_prepared([s_img, p_img], return_tensors="pt")["pixel_values"]
    feats = model.get_image_features(pixels.to(device=param.device, dtype=param.dtype), return_dict=True)
    return s_img, p_img, feats.select(slice(0, 1)), feats.select(slice(1, 2))


def _grid_attention(attn: torch.Tensor, q_grid, k_grid) -> np.ndarray:
    """`[1, heads, Nq, Nk]` -> head-averaged `[hq, wq, hk, wk]`."""
    a = attn[0].float().mean(0).cpu()
    return a.reshape(*q_grid, *k_grid).numpy().astype(np.float32)


@torch.inference_mode()
def explain_pair(
    model: ZseModel,
    processor,
    sketch,
    photo,
    source: str = "relation",
    sketch_modality: str = "sketch",
    center: bool = True,
    note: str = "",
    grid: int | None = None,
    image_size: int | None = None,
) -> ZseExplanation:
    """Explain one (sketch, photo) pair.

    Args:
        model: a [`ZseModel`] (trained, or built with `ZseModel.from_backbone`).
        processor: a `ZseProcessor` or `ZseImageProcessor` matching the model.
        sketch, photo: anything the processor reads (path, PIL image, array).
        source: `"relation"` (default): the model's relation kernel between cross-attended,
            pooled cells, and the cross-attention for heat maps (meaningful once the head is
            trained). `"encoder"`: cosine between the encoder's local tokens pooled to the
            same `G x G` cells, and encoder patch-token cosine for heat maps (meaningful with
            any pretrained backbone).
        sketch_modality: `"sketch"` (ink crop) or `"photo"` to prepare the sketch side as a
            photo (e.g. to explain a photo against itself).
        center: for the encoder kernel and the patch matching, subtract each image's mean
            local token before the cosine (removes the shared sketch-vs-photo offset; cells
            land closer to their counterparts). The relation kernel is never changed.
        note: text shown under the pictures.
        grid: cells per side `G` of the kernel for `source="encoder"` (default: the model's
            `relation_grid`; the relation kernel always has the model's own `G`).
        image_size: side in pixels the pair is prepared at (default: the processor's). The
            backbone interpolates its position embeddings, so a larger side than the training
            one gives finer patch and cell maps. The relation score and [Ret] cosine are always
            those at the processor's own size, i.e. what search ranks by.

    Returns:
        [`ZseExplanation`] with a `[G*G, G*G]` kernel, per-cell best matches, `[h, w, h', w']`
        attention maps and the processed images.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    ip = image_processor_of(processor)
    g = model.config.relation_grid if grid is None else int(grid)
    if g < 1 or (source == "relation" and g != model.config.relation_grid):
        raise ValueError(f"grid must be >= 1 and, for source='relation', the model's relation_grid "
                         f"{model.config.relation_grid}; got {grid}")
    native = ip
    if image_size is not None:
        patch = model.config.patch_size
        if image_size < patch or image_size % patch:
            raise ValueError(f"image_size must be a positive multiple of the patch size {patch}, got {image_size}")
        ip = copy.copy(ip)
        ip.size = {"height": int(image_size), "width": int(image_size)}
    if sketch_modality not in ("sketch", "photo"):
        raise ValueError(f"sketch_modality must be 'sketch' or 'photo', got {sketch_modality!r}")

    was_training = model.training
    model.eval()
    try:
        s_img, p_img, s, p = _encode_pair(model, ip, sketch, photo, sketch_modality)
        pair = model.score_pairs(s, p, output_attentions=True, output_kernel=True)
        logits, rel_kernel = pair.relation_logits, pair.kernel
        s_attn, p_attn = pair.sketch_cross_attentions, pair.photo_cross_attentions
        scored = (s, p)
        if native.size != ip.size:  # scores as search ranks them: at the processor's own size
            scored = _encode_pair(model, native, sketch, photo, sketch_modality)[2:]
            logits = model.score_pairs(*scored).relation_logits
        cosine = (scored[0].ret_embeds[0].float() * scored[1].ret_embeds[0].float()).sum()
    finally:
        model.train(was_training)

    grid = s.grid_size
    other = model.config.cross_attention_query_side == "other"
    if other:  # the sketch branch's queries came from the photo: swap roles back
        s_attn, p_attn = p_attn, s_attn
        rel_kernel = rel_kernel.transpose(1, 2)
    s2p = _grid_attention(s_attn, grid, grid)
    p2s = _grid_attention(p_attn, grid, grid)

    s_tok = s.local_tokens.float()
    p_tok = p.local_tokens.float()
    if center:  # remove each image's mean token (the sketch/photo domain offset)
        s_tok = s_tok - _masked_mean(s_tok, s.token_mask)
        p_tok = p_tok - _masked_mean(p_tok, p.token_mask)
    if source == "relation":
        kernel = rel_kernel[0].float()
    else:
        sc = encoder_cells(s_tok, grid, g, s.token_mask)
        pc = encoder_cells(p_tok, grid, g, p.token_mask)
        kernel = (F.normalize(sc, dim=-1) @ F.normalize(pc, dim=-1).transpose(1, 2))[0]
    kernel = kernel.clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)
    patch_sim = (F.normalize(s_tok[0], dim=-1) @ F.normalize(p_tok[0], dim=-1).T).clamp(-1, 1)

    threshold = getattr(ip, "ink_threshold", 40)
    s_ink = ink_map(s_img, threshold)
    p_ink = ink_map(p_img, threshold)
    patch = model.config.patch_size
    return ZseExplanation(
        source=source,
        relation_score=float(torch.sigmoid(logits[0].float())),
        cosine=float(cosine),
        kernel=kernel,
        best_photo_cell=kernel.argmax(axis=1).astype(np.int64),
        strength=kernel.max(axis=1).astype(np.float32),
        sketch_to_photo_attention=s2p,
        photo_to_sketch_attention=p2s,
        sketch_ink=_cell_fractions(s_ink, g, g),
        patch_similarity=patch_sim.cpu().numpy().astype(np.float32),
        sketch_patch_ink=_patch_fractions(s_ink, grid, patch),
        photo_patch_ink=_patch_fractions(p_ink, grid, patch),
        sketch_image=s_img,
        photo_image=p_img,
        grid=g,
        patch_size=patch,
        centered=center,
        note=note,
    )


# ----------------------------------------------------------------------------- selections


def correspondence_pairs(expl: ZseExplanation, top_n: int = 12, min_ink: float = 0.05) -> list[tuple[int, int, float]]:
    """The matches `correspondence_image` draws: `(sketch_cell, photo_cell, strength)`, strongest first.

    Only sketch cells whose ink fraction exceeds `min_ink` are candidates; at most `top_n`.
    """
    ink = expl.sketch_ink.reshape(-1)
    cells = [i for i in np.argsort(-expl.strength, kind="stable") if ink[i] > min_ink]
    return [(int(i), int(expl.best_photo_cell[i]), float(expl.strength[i])) for i in cells[:top_n]]


def _cell_index(expl: ZseExplanation, cell) -> int:
    g = expl.grid
    if cell is None:
        return int(np.argmax(expl.sketch_ink.reshape(-1)))
    if isinstance(cell, (tuple, list)):
        r, c = (int(v) for v in cell)
        if not (0 <= r < g and 0 <= c < g):
            raise ValueError(f"cell {cell} is outside the {g}x{g} grid")
        return r * g + c
    i = int(cell)
    if not 0 <= i < g * g:
        raise ValueError(f"cell {i} is outside 0..{g * g - 1}")
    return i


def _cell_patches(expl: ZseExplanation, cell: int) -> np.ndarray:
    """Flat indices of the sketch patches whose centres lie in `cell` (inked ones if any)."""
    g = expl.grid
    size = expl.sketch_image.size[0]
    h, w = expl.sketch_grid_size
    r, c = divmod(cell, g)
    (y0, y1), (x0, x1) = _cell_bounds(size, g)[r], _cell_bounds(size, g)[c]
    ps = expl.patch_size
    centres_y = (np.arange(h) + 0.5) * ps
    centres_x = (np.arange(w) + 0.5) * ps
    rows = np.flatnonzero((centres_y >= y0) & (centres_y < y1))
    cols = np.flatnonzero((centres_x >= x0) & (centres_x < x1))
    if len(rows) == 0:
        rows = [min(h - 1, int((y0 + y1) / 2 // ps))]
    if len(cols) == 0:
        cols = [min(w - 1, int((x0 + x1) / 2 // ps))]
    idx = np.array([i * w + j for i in rows for j in cols])
    inked = idx[expl.sketch_patch_ink.reshape(-1)[idx] > 0]
    return inked if len(inked) else idx


def cell_heatmap(expl: ZseExplanation, sketch_cell=None, kind: str | None = None) -> np.ndarray:
    """`[hp, wp]` map over the photo's patches for one sketch cell.

    Args:
        sketch_cell: flat index, `(row, col)`, or None for the inkiest cell.
        kind: `"attention"` (head-averaged cross-attention, averaged over the cell's inked
            patches; sums to 1) or `"similarity"` (encoder patch-token cosine, averaged the same
            way). Default: attention for `source="relation"`, similarity for `"encoder"`.
    """
    kind = kind or ("attention" if expl.source == "relation" else "similarity")
    cell = _cell_index(expl, sketch_cell)
    idx = _cell_patches(expl, cell)
    hp, wp = expl.photo_grid_size
    if kind == "attention":
        a = expl.sketch_to_photo_attention.reshape(-1, hp * wp)
    elif kind == "similarity":
        a = expl.patch_similarity
    else:
        raise ValueError(f"kind must be 'attention' or 'similarity', got {kind!r}")
    return a[idx].mean(0).reshape(hp, wp).astype(np.float32)


def synthesize(expl: ZseExplanation, min_ink: float = 0.0, content_only: bool = True) -> tuple[Image.Image, np.ndarray]:
    """Rebuild the sketch from photo patches: each inked sketch patch becomes its best photo patch.

    Patch matching is the cosine between encoder patch tokens (`expl.patch_similarity`).
    Sketch patches with ink fraction `<= min_ink` stay white. With `content_only`, only photo
    patches with some non-white pixel are candidates (a white patch would erase the stroke).

    Returns:
        the rebuilt RGB image (size of the sketch image) and `[hs, ws]` int index of the chosen
        photo patch (-1 where white).
    """
    ps = expl.patch_size
    hs, ws = expl.sketch_grid_size
    hp, wp = expl.photo_grid_size
    sim = expl.patch_similarity.copy()
    if content_only:
        content = expl.photo_patch_ink.reshape(-1) > 0
        if content.any():
            sim[:, ~content] = -np.inf
    best = sim.argmax(axis=1)
    inked = expl.sketch_patch_ink.reshape(-1) > min_ink
    choice = np.where(inked, best, -1).reshape(hs, ws)
    photo = np.asarray(expl.photo_image.convert("RGB"))
    out = np.full(np.asarray(expl.sketch_image).shape[:2] + (3,), 255, dtype=np.uint8)
    for i in range(hs):
        for j in range(ws):
            k = choice[i, j]
            if k >= 0:
                pi, pj = divmod(int(k), wp)
                out[i * ps:(i + 1) * ps, j * ps:(j + 1) * ps] = photo[pi * ps:(pi + 1) * ps, pj * ps:(pj + 1) * ps]
    return Image.fromarray(out), choice


# ----------------------------------------------------------------------------- pictures


def _mpl():
    try:
        from matplotlib import colormaps, colors
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover
        raise ImportError("the explanation pictures need matplotlib: pip install matplotlib") from err
    return Figure, FigureCanvasAgg, colormaps, colors


def _figure(width: float, height: float, dpi: int = 110):
    Figure, FigureCanvasAgg, _, _ = _mpl()
    fig = Figure(figsize=(width, height), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _to_pil(fig) -> Image.Image:
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return Image.fromarray(rgba[..., :3].copy())


def _scores_line(expl: ZseExplanation) -> str:
    return f"relation score {expl.relation_score:.3f}   ·   [Ret] cosine {expl.cosine:.3f}"


def _caption(fig, text: str, expl: ZseExplanation) -> None:
    lines = [text] + ([expl.note] if expl.note else [])
    fig.text(0.5, 0.015, "\n".join(lines), ha="center", va="bottom", fontsize=8.5, color="#444444")


def _draw_grid(ax, x0: float, size: float, g: int, color="#9a9a9a") -> None:
    for k in range(1, g):
        v = k * size / g
        ax.plot([x0 + v, x0 + v], [0, size], color=color, lw=0.5, ls=":", alpha=0.8)
        ax.plot([x0, x0 + size], [v, v], color=color, lw=0.5, ls=":", alpha=0.8)


def _centre(cell: int, g: int, size: float, x0: float = 0.0) -> tuple[float, float]:
    r, c = divmod(cell, g)
    return x0 + (c + 0.5) * size / g, (r + 0.5) * size / g


def correspondence_image(
    expl: ZseExplanation, top_n: int = 12, min_ink: float = 0.05, cmap: str = "plasma"
) -> Image.Image:
    """Sketch and photo side by side with lines between the strongest matching cells.

    Draws `correspondence_pairs(expl, top_n, min_ink)` (only sketch cells with ink), each line
    from a sketch cell centre to its best photo cell centre, coloured by the kernel value.

    Returns:
        RGB PIL image (about 1000 x 560 px).
    """
    _, _, colormaps, colors = _mpl()
    g = expl.grid
    size = expl.sketch_image.size[0]
    gap = size // 8
    canvas = Image.new("RGB", (2 * size + gap, size), "white")
    canvas.paste(expl.sketch_image, (0, 0))
    canvas.paste(expl.photo_image, (size + gap, 0))
    pairs = correspondence_pairs(expl, top_n, min_ink)

    fig = _figure(9.2, 5.2)
    ax = fig.add_axes([0.03, 0.13, 0.84, 0.72])
    ax.imshow(np.asarray(canvas), interpolation="lanczos")
    ax.set_axis_off()
    for x0 in (0, size + gap):
        _draw_grid(ax, x0, size, g)
        ax.add_patch(_rect(x0, 0, size, size, "#bbbbbb", 0.8))
    strengths = [p[2] for p in pairs] or [0.0, 1.0]
    lo, hi = min(strengths), max(strengths)
    if hi - lo < 1e-3:
        lo, hi = lo - 0.05, hi + 0.05
    norm = colors.Normalize(vmin=lo, vmax=hi)
    cm = colormaps[cmap]
    for s_cell, p_cell, w in reversed(pairs):  # strongest drawn last, on top
        (xa, ya), (xb, yb) = _centre(s_cell, g, size), _centre(p_cell, g, size, size + gap)
        col = cm(norm(w))
        xs, ys = _arc(xa, ya, xb, yb, bend=0.12)
        ax.plot(xs, ys, color="white", lw=3.8, alpha=0.75, solid_capstyle="round")
        ax.plot(xs, ys, color=col, lw=2.0, solid_capstyle="round")
        for x, y in ((xa, ya), (xb, yb)):
            ax.plot(x, y, "o", ms=6, mfc=col, mec="white", mew=1.2)
    ax.set_xlim(-0.5, 2 * size + gap - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.text(size / 2, -6, "sketch", ha="center", va="bottom", fontsize=10)
    ax.text(size + gap + size / 2, -6, "photo", ha="center", va="bottom", fontsize=10)
    cax = fig.add_axes([0.885, 0.18, 0.018, 0.62])
    sm = _scalar_mappable(cm, norm)
    cb = fig.colorbar(sm, cax=cax)
    cb.set_label("cell match (cosine)", fontsize=9)
    cb.ax.tick_params(labelsize=8)
    n_inked = int((expl.sketch_ink.reshape(-1) > min_ink).sum())
    fig.suptitle(f"Which photo cell each sketch cell matches  —  {_scores_line(expl)}", fontsize=11.5, y=0.975)
    _caption(
        fig,
        f"{len(pairs)} strongest of {n_inked} inked {g}x{g} cells; kernel: {_SOURCE_TEXT[expl.source]}",
        expl,
    )
    return _to_pil(fig)


def _arc(xa, ya, xb, yb, bend: float, n: int = 40):
    """Points of a quadratic Bezier from a to b bulging upwards by `bend` x its length."""
    dx, dy = xb - xa, yb - ya
    length = math.hypot(dx, dy) or 1.0
    nx, ny = dy / length, -dx / length  # left normal of a->b; points up for a left-to-right line
    cx, cy = (xa + xb) / 2 + 2 * bend * length * nx, (ya + yb) / 2 + 2 * bend * length * ny
    t = np.linspace(0.0, 1.0, n)
    xs = (1 - t) ** 2 * xa + 2 * (1 - t) * t * cx + t**2 * xb
    ys = (1 - t) ** 2 * ya + 2 * (1 - t) * t * cy + t**2 * yb
    return xs, ys


def _rect(x, y, w, h, color, lw, ls="-"):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=color, lw=lw, ls=ls)


def _scalar_mappable(cm, norm):
    from matplotlib.cm import ScalarMappable

    sm = ScalarMappable(norm=norm, cmap=cm)
    sm.set_array([])
    return sm


def _upsample(grid_map: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(grid_map, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def attention_heatmap(
    expl: ZseExplanation, sketch_cell=None, kind: str | None = None, cmap: str = "inferno"
) -> Image.Image:
    """Where one sketch cell looks in the photo: a heat map overlaid on the photo.

    Args:
        sketch_cell: flat index, `(row, col)` or None (default: the cell with the most ink).
        kind: see [`cell_heatmap`]; default attention for `source="relation"`, encoder patch
            cosine for `source="encoder"`.

    Returns:
        RGB PIL image (about 900 x 500 px): the sketch with the cell framed, the photo with the map.
    """
    _, _, colormaps, colors = _mpl()
    kind = kind or ("attention" if expl.source == "relation" else "similarity")
    cell = _cell_index(expl, sketch_cell)
    heat = cell_heatmap(expl, cell, kind)
    g = expl.grid
    size = expl.sketch_image.size[0]
    r, c = divmod(cell, g)
    (y0, y1), (x0, x1) = _cell_bounds(size, g)[r], _cell_bounds(size, g)[c]

    fig = _figure(8.4, 4.9)
    ax_s = fig.add_axes([0.02, 0.14, 0.43, 0.70])
    ax_p = fig.add_axes([0.47, 0.14, 0.43, 0.70])
    cax = fig.add_axes([0.91, 0.18, 0.017, 0.62])
    ax_s.imshow(np.asarray(expl.sketch_image), interpolation="lanczos")
    _draw_grid(ax_s, 0, size, g)
    ax_s.add_patch(_rect(x0, y0, x1 - x0, y1 - y0, "#e8193c", 2.5))
    ax_s.set_title(f"sketch, cell (row {r}, col {c})", fontsize=10)

    gray = np.asarray(expl.photo_image.convert("L").convert("RGB"), dtype=np.float32) / 255.0
    ax_p.imshow(0.35 + 0.65 * gray, interpolation="lanczos")
    up = _upsample(heat, size)
    lo, hi = float(heat.min()), float(heat.max())
    if kind == "similarity":  # colour the upper half of the object's cosines
        content = expl.photo_patch_ink > 0
        lo = max(float(np.median(heat[content] if content.any() else heat)), 0.0)
    if hi - lo < 1e-6:
        hi = lo + 1e-6
    norm = colors.Normalize(vmin=lo, vmax=hi, clip=True)
    level = np.asarray(norm(up), dtype=np.float32)
    overlay = colormaps[cmap](level)
    overlay[..., 3] = 0.85 * level**0.7  # low values stay transparent
    ax_p.imshow(overlay, interpolation="bilinear")
    hp, wp = heat.shape
    py, px = np.unravel_index(int(heat.argmax()), heat.shape)
    ps_y, ps_x = size / hp, size / wp
    ax_p.plot((px + 0.5) * ps_x, (py + 0.5) * ps_y, marker="+", ms=16, mew=2.5, color="#19e8c5")
    what = "cross-attention (head-averaged)" if kind == "attention" else "encoder patch-token cosine"
    ax_p.set_title(f"photo: {what}", fontsize=10)
    for ax in (ax_s, ax_p):
        ax.set_axis_off()
        ax.add_patch(_rect(0, 0, size, size, "#bbbbbb", 0.8))
    cb = fig.colorbar(_scalar_mappable(colormaps[cmap], norm), cax=cax)
    cb.set_label("attention weight" if kind == "attention" else "cosine", fontsize=9)
    cb.ax.tick_params(labelsize=8)
    fig.suptitle(f"Where the framed sketch cell looks in the photo  —  {_scores_line(expl)}", fontsize=11, y=0.975)
    _caption(
        fig,
        f"averaged over the cell's inked {expl.patch_size}px patches; + = peak; "
        f"cell's best match by the kernel: {divmod(int(expl.best_photo_cell[cell]), g)} "
        f"(cosine {expl.strength[cell]:.3f})",
        expl,
    )
    return _to_pil(fig)


def patch_synthesis(expl: ZseExplanation, min_ink: float = 0.0, raw: bool = False) -> Image.Image:
    """The sketch rebuilt from its best-matching photo patches (the paper's "sketch from photo").

    Each sketch patch of the backbone's patch size with ink is replaced by the photo patch whose
    encoder patch token is most cosine-similar (see [`synthesize`]); ink-free patches stay white.

    Args:
        raw: return only the rebuilt `size x size` image instead of the labelled figure.

    Returns:
        RGB PIL image: the labelled figure (sketch | rebuilt | photo), or the raw rebuild.
    """
    rebuilt, choice = synthesize(expl, min_ink=min_ink)
    if raw:
        return rebuilt
    size = expl.sketch_image.size[0]
    used = choice[choice >= 0]
    sims = expl.patch_similarity[np.flatnonzero(choice.reshape(-1) >= 0), used] if used.size else np.zeros(0)
    fig = _figure(10.5, 4.3)
    titles = ("sketch", f"rebuilt from photo patches ({expl.patch_size} px)", "photo")
    for k, (img, title) in enumerate(zip((expl.sketch_image, rebuilt, expl.photo_image), titles)):
        ax = fig.add_axes([0.01 + k * 0.33, 0.14, 0.31, 0.70])
        ax.imshow(np.asarray(img), interpolation="nearest" if k == 1 else "lanczos")
        ax.add_patch(_rect(0, 0, size, size, "#bbbbbb", 0.8))
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.suptitle(f"Sketch synthesised from photo patches  —  {_scores_line(expl)}", fontsize=11, y=0.975)
    mean = f"{sims.mean():.3f}" if sims.size else "n/a"
    _caption(
        fig,
        f"{used.size} inked patches, {len(np.unique(used))} distinct photo patches used; "
        f"matching: encoder patch-token cosine (mean {mean})",
        expl,
    )
    return _to_pil(fig)


def kernel_image(expl: ZseExplanation, cmap: str = "viridis") -> Image.Image:
    """The `G^2 x G^2` cell kernel as a heat map with a colour bar.

    Rows are sketch cells, columns photo cells (row-major); white dots mark each row's best
    match, rows of ink-free sketch cells are shaded. Small copies of both images with the cell
    grid sit beside it.

    Returns:
        RGB PIL image (about 1050 x 560 px).
    """
    _, _, colormaps, colors = _mpl()
    g = expl.grid
    n = g * g
    k = expl.kernel
    size = expl.sketch_image.size[0]
    fig = _figure(10.5, 5.6)
    ax_s = fig.add_axes([0.025, 0.30, 0.20, 0.40])
    ax_k = fig.add_axes([0.27, 0.17, 0.40, 0.70])
    cax = fig.add_axes([0.665, 0.20, 0.012, 0.64])
    ax_p = fig.add_axes([0.785, 0.30, 0.20, 0.40])
    lo, hi = float(k.min()), float(k.max())
    if hi - lo < 1e-6:
        hi = lo + 1e-6
    norm = colors.Normalize(vmin=lo, vmax=hi)
    ax_k.imshow(k, cmap=cmap, norm=norm, interpolation="nearest")
    ink = expl.sketch_ink.reshape(-1)
    shade = np.zeros((n, n, 4), dtype=np.float32)
    shade[ink <= 0] = (1.0, 1.0, 1.0, 0.55)
    ax_k.imshow(shade, interpolation="nearest")
    ax_k.scatter(expl.best_photo_cell, np.arange(n), s=7, c="white", edgecolors="black", linewidths=0.4)
    for b in range(1, g):
        ax_k.axhline(b * g - 0.5, color="white", lw=0.4, alpha=0.6)
        ax_k.axvline(b * g - 0.5, color="white", lw=0.4, alpha=0.6)
    ticks = [b * g + (g - 1) / 2 for b in range(g)]
    ax_k.set_xticks(ticks, [f"r{b}" for b in range(g)], fontsize=7)
    ax_k.set_yticks(ticks, [f"r{b}" for b in range(g)], fontsize=7)
    ax_k.tick_params(length=0)
    ax_k.set_xlabel("photo cells, grouped by grid row", fontsize=9)
    ax_k.set_ylabel("sketch cells, grouped by grid row", fontsize=9)
    cb = fig.colorbar(_scalar_mappable(colormaps[cmap], norm), cax=cax)
    cb.set_label("cosine", fontsize=9)
    cb.ax.tick_params(labelsize=8)
    for ax, img, name in ((ax_s, expl.sketch_image, "sketch cells"), (ax_p, expl.photo_image, "photo cells")):
        ax.imshow(np.asarray(img), interpolation="lanczos")
        _draw_grid(ax, 0, size, g, color="#555555")
        ax.add_patch(_rect(0, 0, size, size, "#bbbbbb", 0.8))
        ax.set_title(name, fontsize=9.5)
        ax.set_axis_off()
        if g <= 8:
            for r in range(g):
                ax.text(-4, (r + 0.5) * size / g, f"r{r}", ha="right", va="center", fontsize=6.5, color="#555555")
    fig.suptitle(f"{n}x{n} cell kernel  —  {_scores_line(expl)}", fontsize=11, y=0.975)
    diag = float(np.diag(k).mean())
    _caption(
        fig,
        f"kernel: {_SOURCE_TEXT[expl.source]}; dots: best photo cell per sketch cell; "
        f"shaded rows: sketch cells without ink; mean diagonal {diag:.3f}",
        expl,
    )
    return _to_pil(fig)


def explanation_pictures(expl: ZseExplanation, top_n: int = 12, sketch_cell=None) -> dict[str, Image.Image]:
    """The four pictures, keyed `correspondence`, `attention`, `synthesis`, `kernel`."""
    return {
        "correspondence": correspondence_image(expl, top_n=top_n),
        "attention": attention_heatmap(expl, sketch_cell),
        "synthesis": patch_synthesis(expl),
        "kernel": kernel_image(expl),
    }


# ----------------------------------------------------------------------------- command line


def recorded_locality(model_path: str | os.PathLike) -> dict | None:
    """The `kernel_locality` block of the `eval_results.json` beside a model folder (written by
    `zse-sbir eval --locality` and carried by `zse-sbir export`), or None when there is none."""
    path = Path(model_path) / "eval_results.json"
    try:
        return json.loads(path.read_text()).get("kernel_locality") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def default_source(model_path: str | os.PathLike | None, trained: bool = True) -> str:
    """`"relation"` for a trained model whose recorded kernel locality beats the content-free
    same-position prior both within one cell and on the exact cell (the kernel localizes, so the
    paper's module explains its own score); `"encoder"` otherwise (untrained heads, or no record)."""
    loc = recorded_locality(model_path) if trained and model_path is not None else None
    if not loc:
        return "encoder"
    try:
        beats = (loc["locality"] > loc["identity_baseline"]
                 and loc["exact"] > loc["exact_identity_baseline"])
    except (KeyError, TypeError):
        return "encoder"
    return "relation" if beats else "encoder"


def _parse_cell(text: str | None):
    if text is None:
        return None
    if "," in text:
        return tuple(int(v) for v in text.split(","))
    return int(text)


def _dump_scores(scores: dict) -> str:
    """Indented JSON with one line per cell."""
    cells = scores.pop("cells")
    text = json.dumps(scores, indent=2)
    rows = ",\n".join("    " + json.dumps(c) for c in cells)
    return text[:-2] + ',\n  "cells": [\n' + rows + "\n  ]\n}\n"


def main(argv: list[str] | None = None) -> int:
    """`zse-sbir explain --model DIR SKETCH PHOTO --out DIR [--source relation|encoder] [--grid G]
    [--image-size S] [--top-n 12] [--cell R,C]`.

    Writes `explain_correspondence.png`, `explain_attention.png`, `explain_synthesis.png`,
    `explain_kernel.png` and `explain_scores.json` into `--out`; returns the exit code.
    """
    parser = argparse.ArgumentParser(
        prog="zse-sbir explain", description="Explain why a sketch matched a photo (four PNG pictures + scores JSON)."
    )
    parser.add_argument("sketch", help="sketch image file")
    parser.add_argument("photo", help="photo image file")
    parser.add_argument("--model", required=True, help="ZSE model folder, or a backbone folder (head untrained)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--source", choices=SOURCES, default=None,
                        help="cell kernel: the model's own relation kernel (default when the model's recorded kernel "
                             "locality beats the same-position prior) or encoder tokens pooled to cells (default "
                             "otherwise; readable with any checkpoint)")
    parser.add_argument("--grid", type=at_least(1), default=None,
                        help=f"cells per side for --source encoder (default {READABLE_GRID}; relation: the model's)")
    parser.add_argument("--image-size", type=at_least(1), default=None,
                        help=f"prepare the pair at this side in pixels (default for --source encoder: "
                             f"{READABLE_IMAGE_SIZE} or the processor's size if larger; relation: the processor's)")
    parser.add_argument("--top-n", type=at_least(1), default=12, help="correspondence lines to draw (default 12)")
    parser.add_argument("--cell", default=None, help="sketch cell for the heat map: 'row,col' or flat index "
                                                     "(default: the inkiest cell)")
    args = parser.parse_args(argv)
    for image in (args.sketch, args.photo):  # before the model loads
        if not Path(image).is_file():
            print(f"zse-sbir explain: image file not found: {image}", file=sys.stderr)
            return 1
    out = Path(args.out)
    try:  # check the output folder before any work
        existing = out
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"--out {out}: {existing} is a file, not a folder")
        probe = existing / f".zse-explain-write-test-{os.getpid()}"
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except ValueError as err:
        print(f"zse-sbir explain: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"zse-sbir explain: cannot write to {out}: {err.strerror or err}", file=sys.stderr)
        return 1
    try:
        model, processor, built = load_model(args.model)
        note = "relation head untrained (model built from a backbone folder)" if built else ""
        args.source = args.source or default_source(args.model, trained=not built)
        grid, size = args.grid, args.image_size
        if args.source == "encoder":
            grid = grid or READABLE_GRID
            size = size or max(READABLE_IMAGE_SIZE, image_processor_of(processor).side)
        expl = explain_pair(model, processor, args.sketch, args.photo, source=args.source, note=note,
                            grid=grid, image_size=size)
        pictures = explanation_pictures(expl, top_n=args.top_n, sketch_cell=_parse_cell(args.cell))
    except (FileNotFoundError, ValueError, TypeError, OSError) as err:
        print(f"zse-sbir explain: {err}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for key, image in pictures.items():
        image.save(out / PICTURES[key])
        print(out / PICTURES[key])
    scores = expl.scores()
    scores.update(sketch=str(args.sketch), photo=str(args.photo), model=str(args.model))
    (out / SCORES_FILE).write_text(_dump_scores(scores))
    print(out / SCORES_FILE)
    print(f"relation score {expl.relation_score:.4f}  [Ret] cosine {expl.cosine:.4f}  source {expl.source}")
    return 0


__all__ = [
    "ZseExplanation",
    "attention_heatmap",
    "cell_heatmap",
    "correspondence_image",
    "correspondence_pairs",
    "encoder_cells",
    "explain_pair",
    "explanation_pictures",
    "ink_map",
    "default_source",
    "kernel_image",
    "main",
    "patch_synthesis",
    "recorded_locality",
    "synthesize",
]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
