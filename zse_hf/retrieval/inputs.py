"""What `build`/`add` accept: a folder of images, or a list of paths / images, with ids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All image files (by extension) under `folder`, recursively, in sorted order."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"not a directory: {root}")
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())



def json_id(value) -> str | int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"ids must be str or int, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"ids must be str or int, got {type(value).__name__}")



def resolve_items(images_or_paths, ids):
    """(items, ids, paths) for a folder, a single item, or a list."""
    if isinstance(images_or_paths, (str, os.PathLike)) and Path(images_or_paths).is_dir():
        root = Path(images_or_paths)
        files = list_images(root)
        items = [str(p.absolute()) for p in files]
        default_ids = [p.relative_to(root).as_posix() for p in files]
    else:
        if isinstance(images_or_paths, (str, os.PathLike)) or not isinstance(images_or_paths, (list, tuple)):
            images_or_paths = [images_or_paths]
        items = list(images_or_paths)
        default_ids = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else p for p, x in enumerate(items)]
    paths = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else None for x in items]
    if ids is None:
        ids = default_ids
    else:
        ids = [json_id(i) for i in ids]
        if len(ids) != len(items):
            raise ValueError(f"{len(items)} images but {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    return items, list(ids), paths

