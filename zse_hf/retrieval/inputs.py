"""What `build`/`add` accept: a folder of images, a list of paths / images, or the images of a
Hugging Face `datasets.Dataset`, with ids."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
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



class DatasetImages(Sequence):
    """The images of one column of a Hugging Face `datasets.Dataset`, decoded one at a time on access.

    Item `i` is row `i`'s image as the dataset formats it (a PIL image for an `Image()` column, an
    array or tensor under `with_format("numpy"/"torch")`); for a column cast to `Image(decode=False)`
    it is the file's bytes (or its path), which the image processor opens. Nothing is decoded up
    front, so a gallery larger than memory can be indexed.

    Args:
        source: a `datasets.Dataset` (then `column` names the image column) or one of its
            columns (`ds["image"]`, a `datasets` `Column`).
        column: the image column of `source` when it is a `Dataset`.
    """

    def __init__(self, source, column: str | None = None):
        if column is None:
            self._get = source.__getitem__
        else:
            rows = source.select_columns([column])  # rows[i] decodes this column only
            self._get = lambda i: rows[i][column]
        self._len = len(source)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._len))]
        if not -self._len <= i < self._len:
            raise IndexError(f"row {i} of a dataset of {self._len} rows")
        return _decoded(self._get(int(i) % self._len))


def _decoded(value):
    """A dataset's undecoded image (`{"bytes", "path"}`) as its bytes or path (the image processor
    opens both, with its size limits); anything else as is."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            return value["bytes"]
        if value.get("path") is not None:
            return value["path"]
        raise ValueError("dataset image with neither bytes nor path")
    return value


def _datasets_module():
    """The `datasets` module when it is imported (an input can only be one of its objects then)."""
    module = sys.modules.get("datasets")
    if module is None or not all(hasattr(module, n) for n in ("Dataset", "DatasetDict", "IterableDataset")):
        return None  # not imported, or some other top-level module of that name
    return module


def _image_column(dataset) -> str:
    """The one `Image()` column of `dataset` (ValueError when it has none or several)."""
    import datasets

    found = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    if len(found) != 1:
        described = f"image columns {found}" if found else f"no Image() column (columns: {dataset.column_names})"
        raise ValueError(f"the dataset has {described}: pass one column, e.g. ds[{(found or ['image'])[0]!r}]")
    return found[0]


def dataset_items(images_or_paths):
    """`(items, default_ids, paths)` for a Hugging Face `datasets` input, or None for any other input.

    - a `Dataset`: its one `Image()` column; ids default to its `id` column when it has one,
      else to the row index.
    - a column of one (`ds["image"]`, datasets 4+): that column; ids default to the row index.
      A string column is taken as file paths (also recorded as the hits' paths). Older
      `datasets` return a plain list for `ds["image"]`, which is a list input.

    `items` is a lazy [`DatasetImages`] (a list for a column of paths); `paths` is None per row
    for in-memory images. A streaming `IterableDataset` or a `DatasetDict` is
    rejected with a TypeError saying what to pass instead.
    """
    datasets = _datasets_module()
    if datasets is None:
        return None
    if isinstance(images_or_paths, datasets.IterableDataset):
        raise TypeError("a streaming IterableDataset has no length or random access: index a Dataset, e.g. "
                        "Dataset.from_generator(...) or load_dataset(..., streaming=False)")
    if isinstance(images_or_paths, datasets.DatasetDict):
        raise TypeError(f"a DatasetDict holds several splits ({list(images_or_paths)}): pass one, e.g. ds['train']")
    if isinstance(images_or_paths, datasets.Dataset):
        column = _image_column(images_or_paths)
        n = len(images_or_paths)
        if "id" in images_or_paths.column_names:
            try:
                default_ids = [json_id(i) for i in images_or_paths.select_columns(["id"])["id"]]
            except TypeError as err:
                raise TypeError(f"the dataset's 'id' column: {err} (pass ids= to use other ids)") from err
        else:
            default_ids = list(range(n))
        return DatasetImages(images_or_paths, column), default_ids, [None] * n
    column_type = getattr(getattr(datasets, "arrow_dataset", None), "Column", None)
    if column_type is not None and isinstance(images_or_paths, column_type):
        n = len(images_or_paths)
        feature = getattr(images_or_paths, "features", None)
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            paths = list(images_or_paths)  # file paths: cheap to list, and recorded as the hits' paths
            return paths, list(range(n)), paths
        return DatasetImages(images_or_paths), list(range(n)), [None] * n
    return None


def resolve_items(images_or_paths, ids):
    """`(items, ids, paths)` for a folder, a single item, a list, or a Hugging Face `datasets` input
    (a `Dataset` or its image column, see [`dataset_items`]; its rows are decoded when encoded)."""
    from_dataset = dataset_items(images_or_paths)
    if from_dataset is not None:
        items, default_ids, paths = from_dataset
    elif isinstance(images_or_paths, (str, os.PathLike)) and Path(images_or_paths).is_dir():
        root = Path(images_or_paths)
        files = list_images(root)
        items = [str(p.absolute()) for p in files]
        default_ids = [p.relative_to(root).as_posix() for p in files]
    else:
        if isinstance(images_or_paths, (str, os.PathLike)) or not isinstance(images_or_paths, (list, tuple)):
            images_or_paths = [images_or_paths]
        items = list(images_or_paths)
        default_ids = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else p for p, x in enumerate(items)]
    if from_dataset is None:
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
