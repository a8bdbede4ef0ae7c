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

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..loading import image_processor_of
from ..modeling_zse import ZseModel, masked_grid_pool

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


