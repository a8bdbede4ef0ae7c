"""Retrieval datasets: the common query/gallery structure, the offline QuickDraw sketch and Tux
Paint photo sets, and the deterministic evaluation sets of the offline split.

Everything here yields PIL images (RGB, white background) plus integer labels; turning
them into tensors (and normalising) is the image processor's job.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

from .images import composite_on_white
from .photos import load_photo_rgba, load_photo_table, photos_by_class
from .quickdraw import read_quickdraw, render_sketch
from .split import load_split, train_val_split


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
    render_cache = None  # photo sets: pre-rendered inputs (zse_hf.data.render_cache.attach_render_cache)
    has_cutouts = True  # photo sets: `load(i, rgba=True)` is a cut-out (False: a photo with its background)

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
        style: ``"bitmap"`` (the 28 px bitmap upsampled) or ``"crisp"`` (thin strokes re-drawn at high
            resolution, :func:`~zse_hf.data.crisp.render_crisp_sketch`).

    Attributes:
        bitmaps: float32 ``[N, 28, 28]``, 1 = ink.

    Items: ``{"image": RGB PIL size x size, "label", "class_name", "id": "quickdraw/<class>/<k>",
    "instance": None}``.
    """

    modality = "sketch"

    def __init__(self, classes: Sequence[str], size: int = 224, max_per_class: int | None = None,
                 root: str | os.PathLike | None = None, transform: Callable | None = None, margin: float = 0.0,
                 style: str = "bitmap"):
        from .crisp import SKETCH_STYLES

        if style not in SKETCH_STYLES:
            raise ValueError(f"sketch style must be one of {SKETCH_STYLES}, got {style!r}")
        self.style = style
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
        """Render sketch ``index`` in the set's style (RGB; ``rgba=True`` gives an opaque RGBA copy)."""
        return self.render(index, self.style, rgba)

    def render(self, index: int, style: str, rgba: bool = False) -> Image.Image:
        """Sketch ``index`` in ``style`` (``"bitmap"`` or ``"crisp"``), whatever the set's own style."""
        if style == "bitmap":
            im = render_sketch(self.bitmaps[index], self.size, margin=self.margin)
        else:
            from .crisp import render_sketch_style

            im = render_sketch_style(self.bitmaps[index], self.size, style, margin=self.margin)
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
        return cached_cutout(self, index, rgba, lambda: load_photo_rgba(
            self.records[index], verify=self.verify, crop=self.crop, square=self.crop, max_side=self.max_side,
            root=self.root))


class NaturalPhotoDataset(RetrievalDataset):
    """Reviewed natural photos with their backgrounds (GCompris, ``natural_photos.csv``) of the given
    classes, as they are: no crop, no compositing beyond flattening any transparency onto white.

    Args:
        classes: class names; label = position in this list. Classes without natural photos
            contribute no items.
        verify: sha256-check each photo on first load.
        max_side: downscale so the longer side is at most this.
        cache: keep loaded photos in memory.
        root: the ``rcc`` folder (default ``assets.gcompris_rcc_root()``).
        transform: optional callable on the PIL image.
        photo_classes: take photos of these of ``classes`` only (default all).

    Attributes:
        records: the :class:`~zse_hf.data.natural_photos.NaturalPhotoRecord` per item.

    Items: ``{"image": RGB PIL, "label", "class_name", "id": "<rcc file>:<resource path>", "instance": None}``.
    """

    modality = "photo"
    has_cutouts = False

    def __init__(self, classes: Sequence[str], verify: bool = True, max_side: int | None = 512, cache: bool = True,
                 root: str | os.PathLike | None = None, transform: Callable | None = None,
                 photo_classes: Sequence[str] | None = None):
        from .natural_photos import natural_photos_by_class

        classes = list(classes)
        wanted = classes if photo_classes is None else [c for c in classes if c in set(photo_classes)]
        groups = natural_photos_by_class(wanted)
        self.records = [r for c in wanted for r in groups.get(c, [])]
        self.verify, self.max_side, self.root = verify, max_side, root
        self._cache: dict[int, Image.Image] | None = {} if cache else None
        super().__init__(classes, [r.class_name for r in self.records], [r.id for r in self.records],
                         transform=transform)

    def load(self, index: int, rgba: bool = False) -> Image.Image:
        """Photo ``index`` as RGB (``rgba=True``: an opaque RGBA copy; there is no cut-out)."""
        from .natural_photos import load_natural_photo

        im = self._cache.get(index) if self._cache is not None else None
        if im is None:
            im = load_natural_photo(self.records[index], verify=self.verify, max_side=self.max_side, root=self.root)
            if self._cache is not None:
                self._cache[index] = im
        return im.convert("RGBA") if rgba else im.copy()


class CombinedPhotos(RetrievalDataset):
    """Several photo sets of one class list as one (e.g. the cut-outs and the natural photos of the
    training classes), items in part order.

    Attributes:
        parts: the sets.
        cutout: bool ``[N]``, whether item ``i`` is a cut-out (its part's ``has_cutouts``).
    """

    modality = "photo"

    def __init__(self, parts: Sequence[RetrievalDataset]):
        self.parts = list(parts)
        if not self.parts or any(list(p.classes) != list(self.parts[0].classes) for p in self.parts):
            raise ValueError("CombinedPhotos needs one or more sets with the same classes list")
        self._where = [(j, i) for j, part in enumerate(self.parts) for i in range(len(part))]
        self.cutout = np.array([self.parts[j].has_cutouts for j, _ in self._where], dtype=bool)
        super().__init__(self.parts[0].classes, [n for p in self.parts for n in p.class_names],
                         [i for p in self.parts for i in p.ids], [i for p in self.parts for i in p.instances])

    def load(self, index: int, rgba: bool = False) -> Image.Image:
        j, i = self._where[index]
        return self.parts[j].load(i, rgba=rgba)


class PseudoSketchQueries(RetrievalDataset):
    """Pseudo-sketches of a photo set's cut-outs as instance-level queries: ``variants`` per photo,
    the first drawn straight (:func:`~zse_hf.data.pseudo_sketch.photo_to_pseudo_sketch`), the
    others through a seeded random warp (:func:`~zse_hf.data.warps.sample_warp`: crop/scale,
    shift, flip). Each query's ``instance`` is its photo's id, so a gallery whose ``instances``
    are its ids (:func:`with_instance_ids`) gives every query one true photo (acc@k).

    Args:
        photos: a photo set whose ``load(i, rgba=True)`` gives cut-outs (offline photos, stamps).
        variants: sketches per photo (>= 1).
        size: sketch side in pixels.
        seed: warp seed (item ``(photo, v)`` draws from ``default_rng([seed, photo, v])``).
        classes: the class list labels index (default ``photos.classes``; a larger gallery's list
            to search that gallery).

    Items: ``{"image": RGB PIL size x size, "label", "class_name", "id": "pseudo:<photo id>#<v>",
    "instance": photo id}``; item ``i`` is variant ``i % variants`` of photo ``i // variants``.
    """

    modality = "sketch"

    def __init__(self, photos: RetrievalDataset, variants: int = 1, size: int = 224, seed: int = 0,
                 classes: Sequence[str] | None = None):
        if int(variants) < 1:
            raise ValueError(f"variants must be >= 1, got {variants}")
        self.photos, self.variants, self.size, self.seed = photos, int(variants), int(size), int(seed)
        n = len(photos) * self.variants
        names = [photos.class_names[i // self.variants] for i in range(n)]
        ids = [f"pseudo:{photos.ids[i // self.variants]}#{i % self.variants}" for i in range(n)]
        inst = [photos.ids[i // self.variants] for i in range(n)]
        super().__init__(photos.classes if classes is None else classes, names, ids, instances=inst)

    def load(self, index: int, rgba: bool = False) -> Image.Image:
        """Variant ``index % variants`` of photo ``index // variants`` (RGB; ``rgba=True``: opaque RGBA)."""
        from .pseudo_sketch import photo_to_pseudo_sketch
        from .warps import sample_warp, warp_sketch

        photo, v = divmod(int(index), self.variants)
        im = photo_to_pseudo_sketch(self.photos.load(photo, rgba=True), size=self.size)
        if v:
            im = warp_sketch(im, sample_warp(np.random.default_rng([self.seed, photo, v])), self.size)
        return im.convert("RGBA") if rgba else im.convert("RGB")


class _InstanceIds(RetrievalDataset):
    """A photo set whose ``instances`` are its ids (see :func:`with_instance_ids`)."""

    def __init__(self, base: RetrievalDataset):
        self.base = base
        super().__init__(base.classes, base.class_names, base.ids, instances=base.ids, transform=base.transform)
        self.modality = base.modality

    def load(self, index: int, rgba: bool = False) -> Image.Image:
        return self.base.load(index, rgba=rgba)


def with_instance_ids(photos: RetrievalDataset) -> RetrievalDataset:
    """`photos` with each item's id as its instance id (same items, labels and loading), the
    gallery side of :class:`PseudoSketchQueries`."""
    return _InstanceIds(photos)


def cached_cutout(photos: RetrievalDataset, index: int, rgba: bool, load: Callable[[], Image.Image]) -> Image.Image:
    """A photo set's cut-out ``index``: from its render cache, else its in-memory cache (``_cache``:
    a dict, or ``None`` for none), else ``load()`` (then kept in ``_cache``); RGBA copy with
    ``rgba=True``, else composited on white."""
    if photos.render_cache is not None:
        im = photos.render_cache.rgba(index)
        return im if rgba else composite_on_white(im)
    memory = getattr(photos, "_cache", None)
    im = memory.get(index) if memory is not None else None
    if im is None:
        im = load()
        if memory is not None:
            memory[index] = im
    return im.copy() if rgba else composite_on_white(im)


def _offline_split_classes(split: str, val_seed: int = 0, num_val_classes: int = 10, val_fold=None) -> list[str]:
    s = load_split()
    if split == "test":
        return list(s["test"])
    if split == "train":
        return list(s["train"])
    fit, val = train_val_split(seed=val_seed, num_val_classes=num_val_classes, fold=val_fold)
    if split == "val":
        return val
    if split == "train_fit":
        return fit
    raise ValueError(f"unknown offline split {split!r}: use 'test', 'train', 'val' or 'train_fit'")


def evaluation_set(split: str = "test", *, sketch_size: int = 224, max_per_class: int | None = None,
                   photo_max_side: int | None = 512, verify: bool = True, val_seed: int = 0,
                   num_val_classes: int = 10, quickdraw_root: str | os.PathLike | None = None,
                   photo_root: str | os.PathLike | None = None, gallery: str = "split",
                   val_fold=None, sketch_style: str = "bitmap") -> RetrievalPair:
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
        val_seed, num_val_classes, val_fold: passed to :func:`train_val_split` (``val_fold``
            ``"I/K"``: fold I of a K-fold partition of the validation candidates).
        quickdraw_root, photo_root: data folders (default: the asset cache).
        gallery: ``"split"`` (the split's own photos: the standard protocol), ``"all"`` (the
            demo's setting: every reviewed photo of ``photos.csv`` as gallery, the other classes'
            photos as distractors; for a split other than ``"test"`` the test-class photos are
            left out, so model selection never sees them) or ``"natural"`` (the split's natural
            photos with backgrounds and the sketches of their classes, :func:`natural_split_classes`;
            ``"val"`` and ``"train_fit"`` only).
        sketch_style: ``"bitmap"`` or ``"crisp"`` queries (:class:`OfflineSketchDataset`).

    Returns:
        :class:`RetrievalPair` ``(queries, gallery)``: classes in ``split.json`` order (with
        ``gallery="all"`` followed by the distractor classes in ``photos.csv`` order), sketches
        in file order, photos in ``photos.csv`` order; labels index ``queries.classes``.
    """
    if gallery not in ("split", "all", "natural"):
        raise ValueError(f"gallery must be 'split', 'all' or 'natural', got {gallery!r}")
    if gallery == "natural":
        classes = natural_split_classes(split, val_seed, num_val_classes, val_fold)
        queries = OfflineSketchDataset(classes, size=sketch_size, max_per_class=max_per_class, root=quickdraw_root,
                                       style=sketch_style)
        return RetrievalPair(queries, NaturalPhotoDataset(classes, verify=verify, max_side=photo_max_side))
    classes = _offline_split_classes(split, val_seed, num_val_classes, val_fold)
    queries = OfflineSketchDataset(classes, size=sketch_size, max_per_class=max_per_class, root=quickdraw_root,
                                   style=sketch_style)
    if gallery == "all":
        classes = classes + distractor_classes(classes, include_test=split == "test")
        queries.classes = list(classes)  # the split's classes come first: the query labels are unchanged
    photos = OfflinePhotoDataset(classes, verify=verify, max_side=photo_max_side, root=photo_root)
    return RetrievalPair(queries, photos)


def natural_split_classes(split: str, val_seed: int = 0, num_val_classes: int = 10, val_fold=None) -> list[str]:
    """The classes of a split's natural gallery (:func:`~zse_hf.data.split.natural_val_split`): ``"val"``
    its natural validation classes, ``"train_fit"`` the natural-photo classes training uses. There is
    none for ``"test"``: the unseen concepts' natural photos are never extracted."""
    from .split import natural_val_split

    if split not in ("val", "train_fit"):
        raise ValueError(f"no natural gallery for split {split!r}: natural photos exist for 'val' and 'train_fit' "
                         "only (the unseen concepts' photos are never extracted, so there is no natural test set)")
    fit, val = natural_val_split(val_seed, num_val_classes, fold=val_fold)
    return val if split == "val" else fit


def distractor_classes(classes: Sequence[str], include_test: bool = True) -> list[str]:
    """The classes of ``photos.csv`` (in file order) that are not in ``classes``; the test
    classes only with ``include_test``."""
    seen, test = set(classes), set(load_split()["test"])
    out: list[str] = []
    for rec in load_photo_table():
        c = rec.class_name
        if c not in seen and (include_test or c not in test):
            seen.add(c)
            out.append(c)
    return out


def collate_retrieval(batch: list[dict]) -> dict:
    """DataLoader ``collate_fn`` for :class:`RetrievalDataset` items: images stay a list.

    Returns:
        ``{"image": list, "label": int64 tensor [B], "class_name": list, "id": list, "instance": list}``.
    """
    return {"image": [b["image"] for b in batch], "label": torch.tensor([b["label"] for b in batch]),
            "class_name": [b["class_name"] for b in batch], "id": [b["id"] for b in batch],
            "instance": [b["instance"] for b in batch]}


__all__ = ["CombinedPhotos", "NaturalPhotoDataset", "OfflinePhotoDataset", "OfflineSketchDataset",
           "PseudoSketchQueries", "RetrievalDataset", "RetrievalPair", "collate_retrieval", "distractor_classes",
           "evaluation_set", "natural_split_classes", "with_instance_ids"]
