"""Tux Paint photos (Debian ``tuxpaint-stamps-default``): the reviewed photo table
(`photos.csv`), sha256 verification, and loading a cut-out as RGBA or on white."""

from __future__ import annotations

import csv
import functools
import io
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from PIL import Image

from .. import assets
from .images import composite_on_white, crop_to_alpha, pad_to_square


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
    rows = csv.DictReader(io.StringIO(resources.files(__package__).joinpath("photos.csv").read_text(encoding="utf-8")))
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


__all__ = ["PhotoRecord", "PhotoVerificationError", "load_photo", "load_photo_rgba", "load_photo_table",
           "photos_by_class"]
