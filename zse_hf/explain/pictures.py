"""The explanation pictures of a [`ZseExplanation`]: correspondence lines, attention heat map,
patch synthesis and cell kernel (matplotlib / PIL images)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .core import (
    _SOURCE_TEXT,
    ZseExplanation,
    _cell_bounds,
    _cell_index,
    cell_heatmap,
    correspondence_pairs,
    synthesize,
)

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


