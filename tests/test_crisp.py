"""Crisp sketch rendering (zse_hf.data.crisp): thin uniform strokes where the bitmap's ink is.

Synthetic bitmaps are drawn like QuickDraw's: a ~1.5 px wide stroke drawn at 16x and
area-averaged down to 28x28 (anti-aliased). Tests on real drawings are marked ``slow``.
"""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw

from zse_hf import assets
from zse_hf.data.crisp import (
    SKETCH_STYLES,
    _polylines,
    centre_lines,
    render_crisp_sketch,
    render_sketch_style,
    solid_areas,
    thin,
)
from zse_hf.data.quickdraw import read_quickdraw, render_sketch

from conftest import asset_root

SS = 16  # supersampling of the synthetic drawings


def synth(draw_fn, width: float = 1.5) -> np.ndarray:
    """A QuickDraw-like ``[28, 28]`` float32 bitmap: ``draw_fn(draw, scale, width_px)`` draws at 16x."""
    im = Image.new("L", (28 * SS, 28 * SS), 0)
    draw_fn(ImageDraw.Draw(im), SS, int(round(width * SS)))
    return np.asarray(im.resize((28, 28), Image.Resampling.BOX), dtype=np.float32) / 255.0


def circle_bitmap(cx: float = 14.0, cy: float = 14.0, radius: float = 8.0) -> np.ndarray:
    """A ring whose centre line has the given radius (bitmap pixels)."""
    def draw(d, s, w):
        r = radius * s + w / 2  # PIL's outline grows inwards from the box
        d.ellipse([cx * s - r, cy * s - r, cx * s + r, cy * s + r], outline=255, width=w)
    return synth(draw)


def line_bitmap(a, b) -> np.ndarray:
    """A pen line from ``a`` to ``b`` (bitmap pixels, x then y) with round caps."""
    def draw(d, s, w):
        d.line([(a[0] * s, a[1] * s), (b[0] * s, b[1] * s)], fill=255, width=w)
        for x, y in (a, b):
            d.ellipse([x * s - w / 2, y * s - w / 2, x * s + w / 2, y * s + w / 2], fill=255)
    return synth(draw)


def darkness(im: Image.Image) -> np.ndarray:
    """``[H, W]`` float64: 0 = white, 1 = black."""
    return 1.0 - np.asarray(im.convert("L"), dtype=np.float64) / 255.0


def dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary dilation by a ``k x k`` square (k odd), separable."""
    r = k // 2
    m = np.pad(mask, r)
    m = sliding_window_view(m, k, axis=0).any(-1)
    return sliding_window_view(m, k, axis=1).any(-1)


def line_length(lines, size: int, margin: float = 0.0) -> float:
    """Total length of ``centre_lines`` polylines in output pixels (28 px bitmap, given framing)."""
    scale = round(size * (1 - 2 * margin)) / 28
    return float(sum(np.hypot(*np.diff(pts, axis=0).T).sum() for pts in lines)) * scale


def dense(lines) -> np.ndarray:
    """Points every ~0.01 px along polylines: ``[M, 2]``."""
    return np.concatenate([np.linspace(p[i], p[i + 1], 20) for p in lines for i in range(len(p) - 1)])


def check_like_bitmap(bitmap: np.ndarray, size: int, stroke: float, margin: float = 0.0, canvas: int = 512) -> None:
    """The crisp rendering's strokes are ``stroke * size / canvas`` px wide (ink per length of centre
    line, solid areas left out); with its solid areas it lies on the bitmap rendering's ink, covers
    its strong ink, and is much lighter than it."""
    lines = darkness(render_crisp_sketch(bitmap, size, canvas=canvas, stroke=stroke, margin=margin, fill=False))
    width = lines.sum() / line_length(centre_lines(bitmap), size, margin)
    expected = stroke * size / canvas
    assert 0.8 * expected <= width <= 1.2 * expected, (width, expected)
    crisp = darkness(render_crisp_sketch(bitmap, size, canvas=canvas, stroke=stroke, margin=margin))
    assert (crisp >= lines - 1e-9).all()  # filling only adds ink
    soft = darkness(render_sketch(bitmap, size, margin=margin))
    px = size / 28  # one bitmap pixel in output pixels
    ink_c, ink_s = crisp > 0.2, soft > 0.3
    k = 2 * int(round(px)) + 1
    iou = (dilate(ink_c, k) & dilate(ink_s, k)).sum() / (dilate(ink_c, k) | dilate(ink_s, k)).sum()
    assert iou > 0.5, iou
    on_ink = (ink_c & dilate(ink_s, 5)).sum() / ink_c.sum()  # crisp ink within 2 px of the bitmap's
    assert on_ink > 0.97, on_ink
    covered = (dilate(ink_c, 2 * k + 1) & (soft > 0.7)).sum() / (soft > 0.7).sum()
    assert covered > 0.9, covered
    assert soft.sum() > 2 * crisp.sum()


# -- thinning ---------------------------------------------------------------------------------------------------


def test_thin_bar_to_centre_line():
    mask = np.zeros((40, 60), dtype=bool)
    mask[15:24, 5:55] = True  # 9 cells thick
    skel = thin(mask)
    rows = np.nonzero(skel[:, 10:50].any(1))[0]
    assert rows.tolist() == [19], rows  # the middle row, one cell thick
    assert skel[19, 10:50].all()
    assert not thin(np.zeros((5, 5), dtype=bool)).any()


def test_thin_keeps_small_blobs():
    """Plain Zhang-Suen erases a 2x2 block; a dot must stay a dot."""
    for n in (1, 2, 3, 8):
        mask = np.zeros((12, 12), dtype=bool)
        mask[2:2 + n, 3:3 + n] = True
        assert thin(mask).sum() >= 1, n


def test_trace_survives_a_knot_of_junction_cells():
    """Thinning can leave a knot where a junction cell has only junction cells around it; such a
    cell starts no path and must not be walked as a loop (real case: QuickDraw bus #97)."""
    knot = np.array([
        [0, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 1, 1],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 0, 1, 1, 1, 0, 0],
        [1, 1, 1, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 0, 0],
    ], dtype=bool)
    skel = np.pad(knot, 3)
    lines = _polylines(skel, sigma=2.8, bridge=4)
    assert lines and all(np.isfinite(p).all() for p in lines)
    # every line end of the knot is reached by a line
    for y, x in [(3, 5), (9, 7), (4, 9)]:
        assert min(np.hypot(*(p - (y, x)).T).min() for p in lines) < 1.5, (y, x)


# -- centre lines -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 7.0, 22.0, 33.0, 45.0, 71.0])
def test_centre_line_of_straight_line_is_straight(angle):
    """No stair-steps: the traced line stays within 1/8 bitmap px of the true segment (0.25 px
    at the very ends, where thinning bends a little), and ends within 0.6 px of its ends."""
    t = np.deg2rad(angle)
    a = np.array([14 - 9 * np.cos(t), 14 - 9 * np.sin(t)])
    b = np.array([14 + 9 * np.cos(t), 14 + 9 * np.sin(t)])
    lines = centre_lines(line_bitmap(a, b))
    assert len(lines) == 1
    pts = dense(lines)
    d = (b - a) / np.hypot(*(b - a))
    along = (pts - a) @ d
    perp = np.abs(d[0] * (pts[:, 1] - a[1]) - d[1] * (pts[:, 0] - a[0]))
    inside = (along > 1.5) & (along < 18 - 1.5)
    assert perp.max() < 0.25 and perp[inside].max() < 0.125, (perp.max(), perp[inside].max())
    assert along.min() < 0.6 and along.max() > 18 - 0.6, (along.min(), along.max())
    assert perp[np.argmin(along)] < 0.25 and perp[np.argmax(along)] < 0.25


@pytest.mark.parametrize("radius", [4.0, 7.5, 11.0])
def test_centre_line_of_circle_is_a_round_loop(radius):
    lines = centre_lines(circle_bitmap(radius=radius))
    assert len(lines) == 1 and np.allclose(lines[0][0], lines[0][-1])  # one closed loop
    r = np.hypot(*(dense(lines) - 14.0).T)
    assert abs(r.mean() - radius) < 0.15 and r.std() < 0.1, (r.mean(), r.std())
    # smooth, not a staircase: the path turns by little more than the circle's 2 pi in all
    # (the unsmoothed skeleton turns by ~50 x 2 pi, zig-zagging from cell to cell)
    steps = np.diff(lines[0], axis=0)
    heading = np.arctan2(steps[:, 1], steps[:, 0])
    turns = (np.diff(np.append(heading, heading[0])) + np.pi) % (2 * np.pi) - np.pi
    assert np.abs(turns).sum() < 3 * 2 * np.pi, np.abs(turns).sum()


# -- rendering --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,stroke,canvas", [(224, 2.0, 512), (256, 4.0, 512), (256, 3.0, 256), (512, 1.5, 512)])
def test_crisp_strokes_are_thin_and_on_the_ink(size, stroke, canvas):
    bitmap = np.maximum(circle_bitmap(radius=8.0), line_bitmap((4, 24), (24, 4)))
    check_like_bitmap(bitmap, size, stroke, canvas=canvas)


def test_crisp_stroke_width_is_uniform():
    """Every sector of a ring holds about the same ink: one width all the way round, no blobs."""
    im = darkness(render_crisp_sketch(circle_bitmap(radius=9.0), 256, stroke=6.0))  # 3 px strokes
    ys, xs = np.nonzero(im > 0.0)
    # ink per sector, 16 equal angular sectors
    ang = np.arctan2(ys - 128, xs - 128)
    sectors = np.floor((ang + np.pi) / (2 * np.pi) * 16).astype(int) % 16
    per_sector = np.bincount(sectors, weights=im[ys, xs], minlength=16)
    assert per_sector.min() > 0.8 * np.median(per_sector) and per_sector.max() < 1.2 * np.median(per_sector)


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.2])
def test_crisp_framing_matches_render_sketch(margin):
    """Both renderings put the ring's centre where ``render_sketch``'s framing maps it."""
    bitmap = circle_bitmap(cx=10.0, cy=16.0, radius=5.0)
    check_like_bitmap(bitmap, 224, 3.0, margin=margin)
    inner = round(224 * (1 - 2 * margin))
    offset = (224 - inner) // 2
    expected = np.array([offset + 10.0 * inner / 28, offset + 16.0 * inner / 28]) - 0.5  # pixel-index coordinates
    for im in (render_crisp_sketch(bitmap, 224, margin=margin), render_sketch(bitmap, 224, margin=margin)):
        dark = darkness(im)
        ys, xs = np.nonzero(dark)
        centroid = np.array([xs @ dark[ys, xs], ys @ dark[ys, xs]]) / dark.sum()
        assert np.abs(centroid - expected).max() < 0.5, (centroid, expected)


def test_crisp_is_deterministic():
    bitmap = np.maximum(circle_bitmap(radius=6.0), line_bitmap((3, 3), (25, 20)))
    a = render_crisp_sketch(bitmap, 224)
    b = render_crisp_sketch(bitmap.copy(), 224)
    c = render_crisp_sketch(bitmap.astype(np.float64), 224)
    assert a.tobytes() == b.tobytes() == c.tobytes()


def test_crisp_output_format():
    im = render_crisp_sketch(circle_bitmap(), 100, stroke=6.0)
    assert im.mode == "RGB" and im.size == (100, 100)
    arr = np.asarray(im)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()  # grey: black on white
    assert arr.max() == 255 and arr.min() < 128


def test_crisp_empty_bitmap_is_white():
    for bitmap in (np.zeros((28, 28), np.float32), np.full((28, 28), 0.1, np.float32)):
        im = render_crisp_sketch(bitmap, 224)
        assert im.size == (224, 224) and np.asarray(im).min() == 255
    assert centre_lines(np.zeros((28, 28))) == []


def test_crisp_full_bitmap():
    """An all-ink bitmap is one solid area: filled (inside the margin) with ``fill``, thinned to
    a small mark at its centre without."""
    full = np.ones((28, 28), np.float32)
    dark = darkness(render_crisp_sketch(full, 224, margin=0.1)) > 0.5
    inner = np.zeros_like(dark)
    inner[26:198, 26:198] = True  # 179 px frame at 22, less a few px of rounded corners
    assert dark[inner].all() and not dark[:20].any() and not dark[:, :20].any()
    dark = darkness(render_crisp_sketch(full, 224, fill=False)) > 0.2
    assert 0 < dark.sum() < 0.01 * dark.size
    ys, xs = np.nonzero(dark)
    assert abs(ys.mean() - 112) < 12 and abs(xs.mean() - 112) < 12


def test_crisp_dot_stays_a_dot():
    bitmap = np.zeros((28, 28), np.float32)
    bitmap[7, 20] = 1.0
    dark = darkness(render_crisp_sketch(bitmap, 280, stroke=6.0))  # 10 output px per bitmap px
    ys, xs = np.nonzero(dark > 0.2)
    assert len(ys) > 0 and abs(ys.mean() - 75) < 4 and abs(xs.mean() - 205) < 4


def test_solid_dot_is_filled():
    """A filled eye (solid disc, 4 px across) is drawn as a filled disc, not thinned to a speck."""
    bitmap = synth(lambda d, s, w: d.ellipse([9 * s, 11 * s, 13 * s, 15 * s], fill=255))
    assert solid_areas(bitmap).any()
    filled = darkness(render_crisp_sketch(bitmap, 280)) > 0.5  # 10 output px per bitmap px
    yy, xx = np.mgrid[:280, :280]
    inside = np.hypot(yy + 0.5 - 130, xx + 0.5 - 110) < 14  # the disc's middle (radius 20 px)
    outside = np.hypot(yy + 0.5 - 130, xx + 0.5 - 110) > 26
    assert filled[inside].all() and not filled[outside].any()
    strokes = darkness(render_crisp_sketch(bitmap, 280, fill=False)) > 0.5
    assert strokes.sum() < 0.1 * filled.sum()


def test_strokes_are_not_filled():
    """Strokes, where they cross too, are no solid area."""
    strokes = [circle_bitmap(radius=8.0), line_bitmap((4, 24), (24, 4)), line_bitmap((4, 4), (24, 24))]
    bitmap = np.maximum.reduce(strokes)
    assert not solid_areas(bitmap).any()
    assert render_crisp_sketch(bitmap, 224).tobytes() == render_crisp_sketch(bitmap, 224, fill=False).tobytes()


def test_crisp_thicker_stroke_is_darker():
    bitmap = circle_bitmap()
    inks = [darkness(render_crisp_sketch(bitmap, 224, stroke=s)).sum() for s in (1.0, 2.0, 4.0, 8.0)]
    assert inks == sorted(inks)
    assert 1.6 < inks[2] / inks[1] < 2.4


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(bitmap=np.zeros((28, 28, 3))), "2-D bitmap"),
        (dict(bitmap=np.zeros(784)), "2-D bitmap"),
        (dict(bitmap=np.zeros((1, 28))), "2-D bitmap"),
        (dict(bitmap=np.full((28, 28), np.nan)), "NaN"),
        (dict(size=0), "size"),
        (dict(size=224.0), "size"),
        (dict(size=True), "size"),
        (dict(canvas=8), "canvas"),
        (dict(stroke=0.0), "stroke"),
        (dict(stroke=100.0), "stroke"),
        (dict(margin=0.5), "margin"),
        (dict(margin=-0.1), "margin"),
        (dict(threshold=1.0), "threshold"),
        (dict(smooth=-1.0), "smooth"),
    ],
)
def test_crisp_rejects_bad_arguments(kwargs, message):
    args = dict(bitmap=np.zeros((28, 28), np.float32)) | kwargs
    with pytest.raises(ValueError, match=message):
        render_crisp_sketch(**args)


def test_sketch_styles_dispatch():
    assert SKETCH_STYLES == ("bitmap", "crisp")
    bitmap = circle_bitmap()
    assert render_sketch_style(bitmap, 64, "bitmap", margin=0.1).tobytes() == render_sketch(
        bitmap, 64, margin=0.1).tobytes()
    assert render_sketch_style(bitmap, 64, "crisp", margin=0.1).tobytes() == render_crisp_sketch(
        bitmap, 64, margin=0.1).tobytes()
    with pytest.raises(ValueError, match="unknown sketch style 'pencil'"):
        render_sketch_style(bitmap, 64, "pencil")
    with pytest.raises(ValueError, match="2-D bitmap"):
        render_sketch_style(np.zeros((2, 28, 28)), 64, "bitmap")


# -- real QuickDraw drawings ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qd_root():
    return asset_root(assets.quickdraw_root)


@pytest.mark.slow
def test_crisp_real_drawings_with_junction_knots(qd_root):
    for class_name, index in [("bus", 97), ("calendar", 41), ("aircraft carrier", 24)]:
        bitmap = read_quickdraw(class_name, qd_root)[index]
        assert centre_lines(bitmap)
        check_like_bitmap(bitmap, 224, 2.0)


@pytest.mark.slow
@pytest.mark.parametrize("class_name", ["cat", "bicycle", "house", "clock", "goatee", "calendar"])
def test_crisp_real_drawings(qd_root, class_name):
    for bitmap in read_quickdraw(class_name, qd_root)[:3]:
        check_like_bitmap(bitmap, 224, 2.0)
        check_like_bitmap(bitmap, 256, 4.0, margin=0.05)
        assert render_crisp_sketch(bitmap, 224).tobytes() == render_crisp_sketch(bitmap.copy(), 224).tobytes()
