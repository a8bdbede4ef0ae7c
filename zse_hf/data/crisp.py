"""Crisp sketch queries: a QuickDraw bitmap re-drawn as thin, uniform pen strokes.

QuickDraw stores each drawing as a soft 28x28 bitmap; :func:`~zse_hf.data.quickdraw.render_sketch`
upsamples it into a blurry image. People draw crisp, thin strokes at any resolution, so
:func:`render_crisp_sketch` recovers the centre lines of the bitmap and draws them again:

1. upsample the ink map (bicubic) to a fine grid, ``GRID_FACTOR`` cells per bitmap pixel;
2. threshold it and thin the mask to 1-cell centre lines (Zhang-Suen thinning, numpy);
3. trace the centre lines into polylines, drop short spurs left by thinning, and smooth away
   the stair-steps of the 28 px grid (Gaussian along each line, continued through junctions);
4. draw the polylines with round joints and caps on a supersampled canvas with PIL, fill the
   bitmap's solid areas (filled eyes, scribbled-in parts; :func:`solid_areas`), and
   area-average the canvas down to the output size (anti-aliasing).

The drawing is framed exactly as :func:`render_sketch` frames it (same ``margin``), so the two
renderings of one bitmap line up. Everything is deterministic: same input, same pixels.
With ``fill=False`` only strokes are drawn: a solid area then thins to its medial axis (an
all-ink bitmap becomes a small mark at its centre).

No new dependency: thinning is a small numpy Zhang-Suen (scikit-image's ``skeletonize`` would
pull in scipy, ~50 MB of wheels, for this one step).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .quickdraw import render_sketch

SKETCH_STYLES = ("bitmap", "crisp")
"""Names accepted by :func:`render_sketch_style` (e.g. for a ``--sketch-style`` option):
``"bitmap"`` = :func:`render_sketch` (soft upsampled bitmap), ``"crisp"`` = :func:`render_crisp_sketch`."""

GRID_FACTOR = 8  # fine-grid cells per bitmap pixel (28 px -> 224 cells)
_SUPERSAMPLE = 4  # the canvas is drawn at up to this many times its side, then area-averaged

# Neighbour offsets (dy, dx) in Zhang-Suen order P2..P9: N, NE, E, SE, S, SW, W, NW.
_NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


def _zhang_suen_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of Zhang-Suen thinning, indexed by the 8-bit neighbour code
    ``sum(P[k] << k)`` (bit k = neighbour ``_NEIGHBOURS[k]``): ``[256]`` bool for each sub-pass."""
    first = np.zeros(256, dtype=bool)
    second = np.zeros(256, dtype=bool)
    for code in range(256):
        p = [(code >> k) & 1 for k in range(8)]  # P2..P9
        b = sum(p)  # ink neighbours
        a = sum(p[k] == 0 and p[(k + 1) % 8] == 1 for k in range(8))  # 0 -> 1 transitions around
        if not (2 <= b <= 6 and a == 1):
            continue
        p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
        first[code] = p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0
        second[code] = p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0
    return first, second


_ZS_FIRST, _ZS_SECOND = _zhang_suen_tables()


def _neighbour_code(mask: np.ndarray) -> np.ndarray:
    """8-bit code of each cell's ink neighbours (bit k = ``_NEIGHBOURS[k]``): ``[H, W]`` uint8."""
    h, w = mask.shape
    p = np.pad(mask, 1).astype(np.uint8)
    code = np.zeros((h, w), dtype=np.uint8)
    for k, (dy, dx) in enumerate(_NEIGHBOURS):
        code |= p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] << k
    return code


def thin(mask: np.ndarray, max_iter: int = 1000) -> np.ndarray:
    """Zhang-Suen thinning (Zhang & Suen, CACM 1984) of a binary mask, vectorised with numpy.

    Each pass peels boundary cells whose removal keeps the ink connected (exactly one
    background -> ink transition around them) and does not shorten a line end, alternating
    south-east and north-west boundaries, until nothing changes. Cells outside the mask count
    as background.

    Args:
        mask: ``[H, W]`` bool, True = ink.
        max_iter: upper bound on the number of pass pairs (a 2N-wide stroke needs about N).

    Returns:
        ``[H, W]`` bool: centre lines, mostly 1 cell wide, 8-connected like the input.
    """
    mask = np.asarray(mask, dtype=bool)
    skel = np.zeros_like(mask)
    if not mask.any():
        return skel
    # work on the ink's bounding box, with a background border of one cell
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = mask[y0:y1, x0:x1].copy()
    for _ in range(max_iter):
        changed = False
        for table in (_ZS_FIRST, _ZS_SECOND):
            delete = box & table[_neighbour_code(box)]
            if not delete.any():
                continue
            # Zhang-Suen erases a 2x2 block (the last of a small blob) at once: keep the top-left
            # cell of any group of deleted cells left without a surviving neighbour
            ys, xs = np.nonzero(delete)
            alive = np.pad(box & ~delete, 1)
            lone = ~np.any([alive[ys + 1 + dy, xs + 1 + dx] for dy, dx in _NEIGHBOURS], axis=0)
            if lone.any():
                ys, xs = ys[lone], xs[lone]
                orphan = np.zeros((box.shape[0] + 2, box.shape[1] + 2), dtype=bool)
                orphan[ys + 1, xs + 1] = True
                # the first of each group in reading order: no orphan at NW, N, NE or W
                first = ~(orphan[ys, xs] | orphan[ys, xs + 1] | orphan[ys, xs + 2] | orphan[ys + 1, xs])
                delete[ys[first], xs[first]] = False
            box &= ~delete
            changed = True
        if not changed:
            break
    skel[y0:y1, x0:x1] = box
    return skel


def _offset_table() -> list[list[tuple[int, int]]]:
    """For each 8-bit neighbour code, the offsets ``(dy, dx)`` of its set bits."""
    return [[_NEIGHBOURS[k] for k in range(8) if (code >> k) & 1] for code in range(256)]


_OFFSETS = _offset_table()


def _adjacency(skel: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Graph of skeleton cells: 4-neighbours, plus diagonal neighbours that are not already
    joined through a shared 4-neighbour (so an L-shaped step is a path, not a triangle)."""
    code = _neighbour_code(skel)
    # diagonal bit k (NE=1, SE=3, SW=5, NW=7) is dropped when bit k-1 or k+1 (its 4-neighbours) is set
    for k in (1, 3, 5, 7):
        shared = ((code >> (k - 1)) | (code >> ((k + 1) % 8))) & 1
        code &= ~(shared << k).astype(np.uint8)
    ys, xs = np.nonzero(skel)
    return {
        (y, x): [(y + dy, x + dx) for dy, dx in _OFFSETS[c]]
        for y, x, c in zip(ys.tolist(), xs.tolist(), code[ys, xs].tolist())
    }


def _trace(adj: dict) -> tuple[list[tuple[list[tuple[int, int]], int, int]], dict[tuple[int, int], int]]:
    """Split a skeleton graph into paths of cells ``(y, x)`` between nodes.

    Nodes are line ends (degree 1), lone cells (degree 0) and junctions (degree >= 3);
    touching junction cells form one node. Paths of degree-2 cells run from node to node;
    loops without any node are returned with their first cell repeated at the end.

    Returns:
        ``(paths, node_of)``: each path is ``(cells, start_node, end_node)`` (node ids, -1 for
        a loop without nodes; a lone cell is a one-cell path from its node to itself), and
        ``node_of`` maps each node cell to its node id.
    """
    node_of: dict[tuple[int, int], int] = {}
    nid = -1
    for c in sorted(adj):
        if len(adj[c]) == 2 or c in node_of:
            continue
        nid += 1
        node_of[c] = nid
        if len(adj[c]) >= 3:  # flood the touching junction cells
            stack = [c]
            while stack:
                for q in adj[stack.pop()]:
                    if len(adj[q]) >= 3 and q not in node_of:
                        node_of[q] = nid
                        stack.append(q)
    seen: set[tuple[tuple[int, int], tuple[int, int]]] = set()
    paths = []
    for c in sorted(node_of):
        if not adj[c]:
            paths.append(([c], node_of[c], node_of[c]))
            continue
        for nxt in adj[c]:
            if node_of.get(nxt) == node_of[c] or (c, nxt) in seen:  # inside one junction, or done
                continue
            path = [c]
            prev, cur = c, nxt
            seen.update({(prev, cur), (cur, prev)})
            while True:
                path.append(cur)
                if cur in node_of:
                    break
                a, b = adj[cur]
                prev, cur = cur, (b if a == prev else a)
                seen.update({(prev, cur), (cur, prev)})
            paths.append((path, node_of[c], node_of[cur]))
    visited = {c for p, _, _ in paths for c in p}
    for c in sorted(adj):  # what is left: loops of degree-2 cells
        if c in visited or c in node_of:  # (a junction cell amid other junction cells starts no path)
            continue
        path = [c]
        visited.add(c)
        prev, cur = c, adj[c][0]
        while cur != c:
            path.append(cur)
            visited.add(cur)
            a, b = adj[cur]
            prev, cur = cur, (b if a == prev else a)
        path.append(c)
        paths.append((path, -1, -1))
    return paths, node_of


def _prune_spurs(skel: np.ndarray, min_length: int, rounds: int = 2) -> np.ndarray:
    """Remove side branches shorter than ``min_length`` cells (line end -> junction): thinning
    leaves them where a stroke is thick or two strokes nearly touch. Free-standing lines and
    dots are kept however short. ``skel``: ``[H, W]`` bool; returns a pruned copy."""
    skel = skel.copy()
    for _ in range(rounds):
        adj = _adjacency(skel)
        paths, _ = _trace(adj)
        removed = False
        for path, _, _ in paths:
            if len(path) < 2 or len(path) - 1 >= min_length:
                continue
            d0, d1 = len(adj[path[0]]), len(adj[path[-1]])
            if d0 == 1 and d1 >= 3:
                body = path[:-1]
            elif d1 == 1 and d0 >= 3:
                body = path[1:]
            else:
                continue
            for y, x in body:
                skel[y, x] = False
            removed = True
        if not removed:
            break
    return skel


def _gauss(r: int, sigma: float) -> np.ndarray:
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


def _reflect(points: np.ndarray, r: int) -> np.ndarray:
    """``r`` points beyond ``points[0]``, nearest first: the line's start mirrored through
    ``points[0]`` (point reflection), so a line end stays put and stays straight when smoothed."""
    idx = np.minimum(np.arange(1, r + 1), len(points) - 1)
    return 2 * points[0] - points[idx]


def _smooth_open(points: np.ndarray, sigma: float, head: np.ndarray | None, tail: np.ndarray | None) -> np.ndarray:
    """Gaussian moving average (sigma in points) of an open polyline ``[N, 2]``.

    ``head`` / ``tail``: ``[>= r, 2]`` points that continue the line beyond its first / last
    point (nearest first), e.g. the straightest other branch through a junction; None mirrors
    the line through its end instead (:func:`_reflect`). Returns ``[N, 2]``.
    """
    r = int(math.ceil(2.5 * sigma))
    if len(points) < 2 or r == 0:
        return points
    head = head[:r] if head is not None and len(head) >= r else _reflect(points, r)
    tail = tail[:r] if tail is not None and len(tail) >= r else _reflect(points[::-1], r)
    padded = np.concatenate([head[::-1], points, tail])
    k = _gauss(r, sigma)
    return np.stack([np.convolve(padded[:, i], k, mode="valid") for i in range(2)], axis=1)


def _smooth_closed(points: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian moving average of a closed polyline ``[N, 2]`` (last point = first), wrapping around."""
    ring = points[:-1]
    r = min(int(math.ceil(2.5 * sigma)), len(ring) - 1)
    if r <= 0:
        return points
    padded = ring[np.arange(-r, len(ring) + r) % len(ring)]
    out = np.stack([np.convolve(padded[:, i], _gauss(r, sigma), mode="valid") for i in range(2)], axis=1)
    return np.concatenate([out, out[:1]])


def _polylines(skel: np.ndarray, sigma: float, bridge: int) -> list[np.ndarray]:
    """Smooth polylines ``[N, 2]`` of ``(y, x)`` fine-grid cell coordinates along a skeleton.

    Junctions joined by a path of at most ``bridge`` cells (thinning splits a crossing into two
    forks) become one junction; every branch of a junction starts at the junction's centroid.
    Each branch is smoothed (Gaussian, ``sigma`` cells) as if it went on through its
    junction into the straightest other branch there (turning by less than 50 degrees), so
    curves stay round through crossings; the smoothed ends are then eased back onto the
    junction so the branches still meet.
    """
    adj = _adjacency(skel)
    paths, node_of = _trace(adj)
    junction = {n for c, n in node_of.items() if len(adj[c]) >= 3}
    parent = {n: n for n in set(node_of.values())}

    def find(n: int) -> int:
        while parent[n] != n:
            n = parent[n]
        return n

    members: dict[int, list[tuple[int, int]]] = {}
    for c, n in node_of.items():
        members.setdefault(n, []).append(c)
    kept = []
    for path, a, b in paths:
        if a in junction and b in junction and len(path) - 1 <= bridge and find(a) != find(b):
            parent[find(b)] = find(a)  # merge the two forks; the bridge becomes part of the junction
            members[b] = members[b] + path
        else:
            kept.append((path, a, b))
    cells: dict[int, list[tuple[int, int]]] = {}
    for n, cs in members.items():
        cells.setdefault(find(n), []).extend(cs)
    centre = {n: np.mean(np.asarray(cs, dtype=np.float64), axis=0) for n, cs in cells.items()}

    lines = []  # (points, start junction or None, end junction or None)
    for path, a, b in kept:
        pts = np.asarray(path, dtype=np.float64)
        if a == -1:
            lines.append((pts, None, None))
            continue
        ja = find(a) if a in junction else None
        jb = find(b) if b in junction else None
        if ja is not None and ja == jb and len(path) - 1 <= bridge:
            continue  # a stub inside a merged junction
        if ja is not None:
            pts[0] = centre[ja]
        if jb is not None:
            pts[-1] = centre[jb]
        lines.append((pts, ja, jb))

    # branch ends at each junction: (line index, 0 = start / 1 = end)
    ends: dict[int, list[tuple[int, int]]] = {}
    for i, (_, ja, jb) in enumerate(lines):
        if ja is not None:
            ends.setdefault(ja, []).append((i, 0))
        if jb is not None:
            ends.setdefault(jb, []).append((i, 1))
    r = int(math.ceil(2.5 * sigma))
    look = max(2, r)

    def outward(i: int, side: int) -> np.ndarray:
        pts = lines[i][0]
        return pts if side == 0 else pts[::-1]

    def continuation(j: int, i: int, side: int) -> np.ndarray | None:
        mine = outward(i, side)
        d_in = mine[0] - mine[min(look, len(mine) - 1)]
        best, best_cos = None, math.cos(math.radians(50))
        for k, t in ends.get(j, []):
            if (k, t) == (i, side):
                continue
            other = outward(k, t)
            d_out = other[min(look, len(other) - 1)] - other[0]
            norm = float(np.hypot(*d_in) * np.hypot(*d_out))
            if norm > 0 and float(d_in @ d_out) / norm > best_cos:
                best, best_cos = other[1:], float(d_in @ d_out) / norm
        return best

    out = []
    for i, (pts, ja, jb) in enumerate(lines):
        if ja is None and jb is None and len(pts) > 2 and (pts[0] == pts[-1]).all():
            out.append(_smooth_closed(pts, sigma))
            continue
        if len(pts) == 1 or r == 0:
            out.append(pts)
            continue
        head = continuation(ja, i, 0) if ja is not None else None
        tail = continuation(jb, i, 1) if jb is not None else None
        sm = _smooth_open(pts, sigma, head, tail)
        w = np.clip(1.0 - np.arange(len(sm)) / r, 0.0, None)[:, None]  # 1 at the end -> 0 at r points
        if ja is not None:
            sm += (pts[0] - sm[0]) * w
        if jb is not None:
            sm += (pts[-1] - sm[-1]) * w[::-1]
        out.append(sm)
    for n in sorted({find(m) for m in junction} - set(ends)):  # a junction without branches (a tiny blob): a dot
        out.append(centre[n][None])
    return out


def _fine_ink(ink: np.ndarray) -> np.ndarray:
    """The ink map ``[H, W]`` upsampled (bicubic) to ``[H * GRID_FACTOR, W * GRID_FACTOR]`` float32."""
    h, w = ink.shape
    f = GRID_FACTOR
    return np.asarray(Image.fromarray(ink, mode="F").resize((w * f, h * f), Image.Resampling.BICUBIC))


def _morph(mask: np.ndarray, radius: int, grow: bool) -> np.ndarray:
    """Binary dilation (``grow``) or erosion of ``[H, W]`` bool by an octagon of ``radius`` cells
    (alternating 3x3 square and cross steps); outside the array counts as background."""
    h, w = mask.shape
    square = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    cross = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
    for i in range(radius):
        p = np.pad(mask, 1)
        out = mask.copy()
        for dy, dx in square if i % 2 == 0 else cross:
            nb = p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            out = out | nb if grow else out & nb
        mask = out
    return mask


def solid_areas(bitmap: np.ndarray, level: float = 0.8, radius: float = 1.125) -> np.ndarray:
    """Where the bitmap is solid ink rather than strokes: filled dots (eyes, buttons), scribbled fills.

    Solid = the dark part of the upsampled ink map (``> level``) holds an octagon of ``radius``
    bitmap pixels there (a QuickDraw stroke, about 1.5 px wide, does not, nor does a crossing of
    two strokes). The area is that octagon's sweep grown by a quarter pixel, within the ink
    above 0.5, so a filled dot keeps about the size it has in the bitmap.

    Args:
        bitmap: ``[H, W]`` float in ``[0, 1]``, 1 = ink.
        level: ink level of solid ink.
        radius: half the smallest width, in bitmap pixels, of a solid area.

    Returns:
        ``[H * GRID_FACTOR, W * GRID_FACTOR]`` bool on the fine grid of :func:`centre_lines`.
    """
    fine = _fine_ink(np.clip(np.asarray(bitmap, dtype=np.float32), 0.0, 1.0))
    r = int(round(radius * GRID_FACTOR))
    core = _morph(fine > level, r, grow=False)
    if not core.any():
        return core
    return _morph(core, r + GRID_FACTOR // 4, grow=True) & (fine > 0.5)


def centre_lines(bitmap: np.ndarray, threshold: float = 0.3, smooth: float = 0.35) -> list[np.ndarray]:
    """Centre lines of the ink of a bitmap, as smooth polylines in bitmap coordinates.

    The ink map is upsampled (bicubic) to ``GRID_FACTOR`` cells per pixel, thresholded,
    thinned (:func:`thin`), cleared of spurs shorter than 1.5 pixels, traced into polylines
    and smoothed.

    Args:
        bitmap: ``[H, W]`` float in ``[0, 1]``, 1 = ink.
        threshold: ink level, after upsampling, above which a cell is stroke.
        smooth: width (Gaussian sigma) of the path smoothing, in bitmap pixels; it removes
            the stair-steps of the pixel grid and rounds sharp corners by about as much.

    Returns:
        list of ``[N, 2]`` float64 arrays of ``(x, y)`` points, where the bitmap spans
        ``[0, W] x [0, H]`` (pixel ``(i, j)`` covers ``[j, j+1] x [i, i+1]``); a closed loop
        repeats its first point at the end, a dot is a single point.
    """
    ink = np.clip(np.asarray(bitmap, dtype=np.float32), 0.0, 1.0)
    f = GRID_FACTOR
    mask = _fine_ink(ink) > threshold
    if not mask.any():
        return []
    skel = _prune_spurs(thin(mask), min_length=int(round(1.5 * f)))
    lines = []
    for pts in _polylines(skel, sigma=smooth * f, bridge=f // 2):
        # fine cell (r, c) has its centre at bitmap point ((c + 0.5) / f, (r + 0.5) / f)
        lines.append((pts[:, ::-1] + 0.5) / f)
    return lines


def _check_args(bitmap: np.ndarray, size: int, margin: float) -> np.ndarray:
    ink = np.asarray(bitmap, dtype=np.float32)
    if ink.ndim != 2 or min(ink.shape) < 2:
        raise ValueError(f"expected a 2-D bitmap [H, W] with H, W >= 2 (QuickDraw: [28, 28]), got shape {ink.shape}")
    if not np.isfinite(ink).all():
        raise ValueError("bitmap holds NaN or infinite values")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer (pixels), got {size!r}")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5) (fraction of size per side), got {margin!r}")
    return ink


def render_crisp_sketch(bitmap: np.ndarray, size: int = 224, canvas: int = 512, stroke: float = 2.0,
                        margin: float = 0.0, *, threshold: float = 0.3, smooth: float = 0.35,
                        fill: bool = True) -> Image.Image:
    """Re-draw an ink bitmap as thin, uniform black pen strokes on white.

    The bitmap's centre lines (:func:`centre_lines`) are drawn as polylines of width ``stroke``
    on a ``canvas`` x ``canvas`` drawing (round joints and caps, supersampled for
    anti-aliasing), which is then resized to ``size``. So the output's strokes are
    ``stroke * size / canvas`` pixels wide (2 px at 512 -> 0.875 px, anti-aliased grey, at
    224; the demo canvas's 8 px brush at 512 is ``stroke=8``). Framing matches
    :func:`render_sketch` with the same ``margin``: the bitmap fills the centred
    ``round(size * (1 - 2 * margin))`` square. With ``fill``, solid ink (:func:`solid_areas`:
    filled eyes, buttons, scribbled-in areas) is drawn filled, with smooth edges, instead of
    being thinned to a short line.

    Args:
        bitmap: ``[H, W]`` float in ``[0, 1]``, 1 = ink (e.g. a QuickDraw ``[28, 28]``).
        size: output side in pixels.
        canvas: side of the drawing the stroke width refers to, in pixels (>= 16).
        stroke: line width in canvas pixels, in ``(0, canvas / 8]``.
        margin: white border on each side, as a fraction of ``size``, in ``[0, 0.5)``.
        threshold: ink level that counts as stroke after upsampling, in ``(0, 1)``.
        smooth: path smoothing width in bitmap pixels (0 = none); see :func:`centre_lines`.
        fill: draw solid areas filled (False: strokes only).

    Returns:
        RGB ``PIL.Image`` of ``size x size``; all white for a bitmap without ink.

    Raises:
        ValueError: a bitmap that is not 2-D or holds NaN, or an argument out of range.
    """
    ink = _check_args(bitmap, size, margin)
    if isinstance(canvas, bool) or not isinstance(canvas, (int, np.integer)) or canvas < 16:
        raise ValueError(f"canvas must be an integer >= 16 (pixels), got {canvas!r}")
    if not 0.0 < stroke <= canvas / 8:
        raise ValueError(f"stroke must be in (0, canvas / 8] = (0, {canvas / 8:g}] canvas pixels, got {stroke!r}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0 (bitmap pixels), got {smooth!r}")
    h, w = ink.shape
    inner = max(1, int(round(size * (1.0 - 2.0 * margin))))
    offset = (size - inner) // 2
    ss = max(1, min(_SUPERSAMPLE, 4096 // canvas))  # at most 4096 px drawn
    hi = canvas * ss
    scale = hi / size  # output pixels -> supersampled canvas pixels
    width = stroke * ss
    img = Image.new("L", (hi, hi), 255)
    draw = ImageDraw.Draw(img)
    for pts in centre_lines(ink, threshold=threshold, smooth=smooth):
        # bitmap coordinates -> output pixels (as render_sketch maps them) -> canvas; PIL draws
        # with integer coordinates at pixel centres, hence the half-pixel shift
        xy = np.empty_like(pts)
        xy[:, 0] = (offset + pts[:, 0] * inner / w) * scale - 0.5
        xy[:, 1] = (offset + pts[:, 1] * inner / h) * scale - 0.5
        flat = [(float(x), float(y)) for x, y in xy]
        if len(flat) > 1:
            draw.line(flat, fill=0, width=max(1, int(round(width))), joint="curve")
        r = width / 2.0
        for x, y in (flat[0], flat[-1]):  # round caps (and dots)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    if fill:
        solid = solid_areas(ink)
        if solid.any():
            # soften the octagons' corners, scale the fine grid onto its place on the canvas, cut at half
            soft = Image.fromarray(solid.astype(np.uint8) * 255, mode="L").filter(ImageFilter.GaussianBlur(2.0))
            side = max(1, int(round(inner * scale)))
            soft = soft.resize((side, side), Image.Resampling.BICUBIC)
            cut = soft.point(lambda v: 255 if v >= 128 else 0)
            img.paste(0, (int(round(offset * scale)), int(round(offset * scale))), mask=cut)
    img = img.resize((size, size), Image.Resampling.BOX if hi >= size else Image.Resampling.BICUBIC)
    return img.convert("RGB")


def render_sketch_style(bitmap: np.ndarray, size: int = 224, style: str = "bitmap", margin: float = 0.0) -> Image.Image:
    """Render an ink bitmap in one of :data:`SKETCH_STYLES`.

    Args:
        bitmap: ``[H, W]`` float in ``[0, 1]``, 1 = ink.
        size: output side in pixels.
        style: ``"bitmap"`` (:func:`render_sketch`, soft) or ``"crisp"`` (:func:`render_crisp_sketch`
            with its defaults: 2 px strokes on a 512 px canvas).
        margin: white border on each side, as a fraction of ``size``.

    Returns:
        RGB ``PIL.Image`` of ``size x size``.
    """
    if style == "bitmap":
        _check_args(bitmap, size, margin)
        return render_sketch(bitmap, size, margin=margin)
    if style == "crisp":
        return render_crisp_sketch(bitmap, size, margin=margin)
    raise ValueError(f"unknown sketch style {style!r}; expected one of {SKETCH_STYLES}")


__all__ = [
    "GRID_FACTOR", "SKETCH_STYLES", "centre_lines", "render_crisp_sketch", "render_sketch_style", "solid_areas", "thin",
]
