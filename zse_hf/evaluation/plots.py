"""Plots for retrieval results: precision-recall curves and result grids.

matplotlib is optional and imported lazily inside :func:`plot_pr_curves`; it draws
on an Agg canvas without touching pyplot's global state. Grids use PIL only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image, ImageOps

__all__ = ["plot_pr_curves", "plot_protocol", "results_grid", "grid_size"]

HIT_COLOR = (0, 170, 0)
MISS_COLOR = (220, 0, 0)
QUERY_COLOR = (90, 90, 90)
BACKGROUND = (255, 255, 255)


def plot_pr_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str | None = None,
    figsize: tuple[float, float] = (5.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Save precision-recall curves of several methods as one PNG.

    Args:
        curves: ``{name: (recall [S], precision [S])}``, e.g. from
            :func:`zse_hf.evaluation.metrics.precision_recall_curve`.
        path: output PNG path (parent folders are created).
        title: optional plot title.
        figsize, dpi: the image is ``figsize * dpi`` pixels (default 500 x 400).

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (recall, precision) in curves.items():
        ax.plot(list(recall), list(precision), marker=".", label=str(name))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=dpi)
    return path


def plot_protocol(decision: Mapping[str, Any], path: str | Path, min_difference: float = 0.01,
                  dpi: int = 100) -> Path:
    """Save the ranking protocol's rows as a forest plot PNG: for each candidate ranking, its pooled
    difference to [Ret] with its interval (bar) and each fold's own difference (dots), on the
    fold's gallery (left, with the rule's +`min_difference` line) and the `--gallery all` one (right).

    Args:
        decision: :func:`zse_hf.evaluation.ranking_protocol.decide`'s result.
        path: output PNG path (parent folders are created).

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(decision["rows"])
    fig = Figure(figsize=(9.0, 1.2 + 0.6 * len(rows)), dpi=dpi)
    FigureCanvasAgg(fig)
    for n, (gallery, name) in enumerate((("standard", "fold galleries"), ("all", "--gallery all"))):
        ax = fig.add_subplot(1, 2, n + 1)
        for y, row in enumerate(reversed(rows)):
            c = row[gallery]
            lo, hi = c["difference_CI"]
            color = "tab:green" if row["passes"] else "tab:gray"
            ax.errorbar([c["difference"]], [y], xerr=[[c["difference"] - lo], [hi - c["difference"]]], fmt="o",
                        color=color, capsize=3)
            folds = [f["difference"] for f in c["folds"]]
            ax.scatter(folds, [y + 0.18] * len(folds), s=10, color="black", alpha=0.6, zorder=3)
        ax.axvline(0.0, color="black", lw=0.8)
        if gallery == "standard":
            ax.axvline(min_difference, color="tab:red", lw=0.8, ls="--")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{r['mode']} ({100 * r['level']:g}%)" for r in reversed(rows)] if n == 0 else [])
        ax.set_xlabel(f"mAP@all minus [Ret], {name}")
        ax.grid(True, axis="x", alpha=0.3)
    verdict = (f"default_ranking: {decision['default_ranking']}" if decision["default_ranking"] is not None
               else "no decision yet")
    fig.suptitle(f"ranking protocol, folds {', '.join(map(str, decision['folds']))} of {decision['k']}: {verdict}\n"
                 "bars: pooled interval (green: passes the rule); dots: each fold", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=dpi)
    return path


def grid_size(n_rows: int, top: int = 10, thumb: int = 96, pad: int = 4) -> tuple[int, int]:
    """(width, height) in pixels of a :func:`results_grid` image.

    Cells are ``thumb`` square with ``pad`` pixels between and around them; an extra
    ``thumb // 4`` gap separates the query column from the results.
    """
    width = pad + (top + 1) * (thumb + pad) + thumb // 4
    height = pad + max(n_rows, 0) * (thumb + pad)
    return width, height


def _cell(img: Image.Image, thumb: int, frame: tuple[int, int, int], border: int) -> Image.Image:
    """Fit ``img`` into a ``thumb`` square cell inside a coloured frame."""
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        flat = Image.new("RGB", img.size, BACKGROUND)
        flat.paste(img, mask=img.getchannel("A"))
        img = flat
    else:
        img = img.convert("RGB")
    inner = max(thumb - 2 * border, 1)
    img = ImageOps.contain(img, (inner, inner))
    cell = Image.new("RGB", (thumb, thumb), frame)
    box = Image.new("RGB", (inner, inner), BACKGROUND)
    box.paste(img, ((inner - img.width) // 2, (inner - img.height) // 2))
    cell.paste(box, (border, border))
    return cell


def results_grid(
    query_images: Sequence[Image.Image],
    ranked_gallery_images: Sequence[Sequence[Image.Image]],
    hits: Sequence[Sequence[Any]],
    path: str | Path | None = None,
    thumb: int = 96,
    top: int = 10,
    pad: int = 4,
    border: int | None = None,
) -> Image.Image:
    """Draw one row per query: the query, then its top-``top`` results.

    Hits are framed green, misses red, the query grey; images keep their aspect
    ratio on white. Rows with fewer than ``top`` results leave blank cells.

    Args:
        query_images: ``[N]`` query images (any PIL mode).
        ranked_gallery_images: ``[N][>= 0]`` ranked result images per query; only the
            first ``top`` are drawn.
        hits: ``[N][same length]`` truthy where the result is relevant.
        path: if given, the grid is also saved there as PNG.
        thumb: cell side in pixels.
        top: results per row.
        pad: pixels between and around cells.
        border: frame width (default ``max(2, thumb // 24)``).

    Returns:
        RGB image of size :func:`grid_size` ``(N, top, thumb, pad)``.
    """
    n = len(query_images)
    if len(ranked_gallery_images) != n or len(hits) != n:
        raise ValueError("query_images, ranked_gallery_images and hits must have the same length")
    if thumb < 1 or top < 0 or pad < 0:
        raise ValueError("thumb must be >= 1, top >= 0, pad >= 0")
    border = max(2, thumb // 24) if border is None else int(border)
    width, height = grid_size(n, top, thumb, pad)
    grid = Image.new("RGB", (width, height), BACKGROUND)
    x0 = pad + (thumb + pad) + thumb // 4  # first result column
    for r, (q, gal, hit) in enumerate(zip(query_images, ranked_gallery_images, hits)):
        if len(gal) != len(hit):
            raise ValueError(f"row {r}: {len(gal)} images but {len(hit)} hit flags")
        y = pad + r * (thumb + pad)
        grid.paste(_cell(q, thumb, QUERY_COLOR, border), (pad, y))
        for c, (img, h) in enumerate(zip(list(gal)[:top], list(hit)[:top])):
            frame = HIT_COLOR if bool(h) else MISS_COLOR
            grid.paste(_cell(img, thumb, frame, border), (x0 + c * (thumb + pad), y))
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path, format="PNG")
    return grid
