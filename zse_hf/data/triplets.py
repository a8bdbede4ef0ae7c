"""Training triplets (anchor sketch, positive photo, negative photo), their resumable sampler,
and their DataLoader collate function."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .datasets import CombinedPhotos, NaturalPhotoDataset, OfflinePhotoDataset, OfflineSketchDataset, RetrievalDataset
from .pseudo_sketch import photo_to_pseudo_sketch
from .split import check_classes_allowed


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
        correspondence_prob: share of items that also carry a warped pseudo-sketch pair of their
            positive photo (``"correspondence"``: ``{"sketch", "photo", "targets"}`` or ``None``)
            for the correspondence training term; 0 (default) adds no key.
        correspondence_size, correspondence_grid: the pairs' image side and relation grid G.
        extra_photos: photos outside the classes, each its own instance (e.g.
            :class:`~zse_hf.data.stamps.StampPhotoDataset`, the reviewed extra stamps); used only
            with the two probabilities below, drawn from their own stream ``default_rng([seed, i, 3])``.
        extra_pair_prob: share of items replaced by an instance-level pair: a pseudo-sketch of
            an extra photo as anchor, that photo as positive (label ``len(classes) + k`` for
            extra photo ``k``), the item's negative as negative.
        extra_negative_prob: share of items whose negative is an extra photo instead; an extra
            photo that resembles the anchor's class (``extra_photos.lookalikes``, where the set
            has it) gives way to the next one that does not.
        crisp_sketch_prob: share of real sketch anchors drawn as crisp thin strokes
            (``sketches.render(i, "crisp")``) instead of the set's own style; from its own stream
            ``default_rng([seed, i, 4])``, so the chosen ids do not depend on it.
        natural_augment: callable ``(rgb_image, rng) -> RGB image`` for photos that are not cut-outs
            (``photos.cutout`` false, e.g. natural photos with backgrounds; default ``photo_augment``).
            Pseudo-sketches and correspondence pairs are drawn from cut-outs only.

    Items: ``{"sketch", "positive", "negative"}`` images plus ``"label"``, ``"negative_label"``
    (indices into ``classes``), ``"sketch_id"``, ``"positive_id"``, ``"negative_id"``, ``"pseudo"``
    (and ``"correspondence"`` when ``correspondence_prob > 0``).
    """

    def __init__(self, sketches: RetrievalDataset, photos: RetrievalDataset, seed: int = 0, length: int | None = None,
                 sketch_augment: Callable | None = None, photo_augment: Callable | None = None,
                 pseudo_sketch_prob: float = 0.0, pseudo_sketch_kwargs: dict | None = None,
                 unseen: Iterable[str] | None = None, correspondence_prob: float = 0.0,
                 correspondence_size: int = 112, correspondence_grid: int = 4,
                 extra_photos: RetrievalDataset | None = None, extra_pair_prob: float = 0.0,
                 extra_negative_prob: float = 0.0, natural_augment: Callable | None = None,
                 crisp_sketch_prob: float = 0.0):
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
        if not 0.0 <= float(correspondence_prob) <= 1.0:
            raise ValueError(f"correspondence_prob must be in [0, 1], got {correspondence_prob}")
        self.correspondence_prob = float(correspondence_prob)
        self.correspondence_size, self.correspondence_grid = int(correspondence_size), int(correspondence_grid)
        for name, v in (("extra_pair_prob", extra_pair_prob), ("extra_negative_prob", extra_negative_prob)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if float(extra_pair_prob) + float(extra_negative_prob) > 1.0:
            raise ValueError("extra_pair_prob + extra_negative_prob must be at most 1")
        if (extra_pair_prob or extra_negative_prob) and (extra_photos is None or len(extra_photos) == 0):
            raise ValueError("extra_pair_prob / extra_negative_prob need extra_photos (e.g. StampPhotoDataset())")
        self.extra_photos = extra_photos
        self.extra_pair_prob, self.extra_negative_prob = float(extra_pair_prob), float(extra_negative_prob)
        self.natural_augment = natural_augment
        if not 0.0 <= float(crisp_sketch_prob) <= 1.0:
            raise ValueError(f"crisp_sketch_prob must be in [0, 1], got {crisp_sketch_prob}")
        if crisp_sketch_prob > 0 and not hasattr(sketches, "render"):
            raise ValueError("crisp_sketch_prob needs sketches that render both styles (OfflineSketchDataset)")
        self.crisp_sketch_prob = float(crisp_sketch_prob)
        cutout = getattr(photos, "cutout", None)  # per item (CombinedPhotos), else one flag for the set
        if cutout is None:
            cutout = [getattr(photos, "has_cutouts", True)] * len(photos)
        self._cutout = np.asarray(cutout, dtype=bool)
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
                natural_classes: Sequence[str] | None = None, natural_crop_scale: tuple[float, float] = (0.35, 1.0),
                **kwargs) -> TripletDataset:
        """Triplets from the offline data; refuses ``unseen_all`` classes unless ``allow_unseen``.

        ``augment=True`` uses the default :class:`~zse_hf.data.augment.SketchAugment` and
        :class:`~zse_hf.data.augment.PhotoAugment`; other keyword arguments go to ``__init__``.
        ``natural_classes``: also the natural photos with backgrounds of these classes (classes
        without cut-outs are added to ``classes``), augmented with random resized crops of
        ``natural_crop_scale`` of the area (with ``augment``).
        """
        classes = list(classes)
        if natural_classes:
            classes += [c for c in natural_classes if c not in set(classes)]
        if not allow_unseen:
            check_classes_allowed(classes)
        sk = OfflineSketchDataset(classes, size=sketch_size, root=quickdraw_root)
        ph = OfflinePhotoDataset(classes, verify=verify, max_side=photo_max_side, root=photo_root)
        if natural_classes:
            ph = CombinedPhotos([ph, NaturalPhotoDataset(classes, verify=verify, max_side=photo_max_side,
                                                         photo_classes=natural_classes)])
        if augment:
            from .augment import PhotoAugment, SketchAugment

            kwargs.setdefault("sketch_augment", SketchAugment())
            kwargs.setdefault("photo_augment", PhotoAugment())
            if natural_classes:
                kwargs.setdefault("natural_augment", PhotoAugment(crop_scale=natural_crop_scale))
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
        cutouts = [k for k in range(len(photos)) if self._cutout[photos[k]]]  # pseudo-sketches need a cut-out
        if use_pseudo and cutouts:
            src = cutouts[int(rng.integers(len(cutouts)))]
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
        augment = self.photo_augment if self._cutout[index] else (self.natural_augment or self.photo_augment)
        if augment is None:
            return self.photos.load(index)
        return augment(self.photos.load(index, rgba=True), rng)

    def extra_sample(self, index: int, sample: dict | None = None) -> dict:
        """The extra-photo choice of item ``index``: ``{"kind": None | "pair" | "negative",
        "extra_index": int | None}`` (its own random stream; a negative reads the item's class from
        ``sample``, the item's :meth:`sample`, computed here when not given)."""
        if self.extra_photos is None or not (self.extra_pair_prob or self.extra_negative_prob):
            return {"kind": None, "extra_index": None}
        rng = np.random.default_rng([self.seed, int(index), 3])
        u, k = rng.random(), int(rng.integers(len(self.extra_photos)))
        if u < self.extra_pair_prob:
            return {"kind": "pair", "extra_index": k}
        if u < self.extra_pair_prob + self.extra_negative_prob:
            label = (sample if sample is not None else self.sample(index))["label"]
            return {"kind": "negative", "extra_index": self._unlike(k, self.classes[label])}
        return {"kind": None, "extra_index": None}

    def _unlike(self, k: int, class_name: str) -> int:
        """Extra photo ``k``, or the next one (cyclically) that does not resemble ``class_name``."""
        look = getattr(self.extra_photos, "lookalikes", None)
        if look is None:
            return k
        n = len(self.extra_photos)
        for step in range(n):
            j = (k + step) % n
            if class_name not in look[j]:
                return j
        raise ValueError(f"every extra photo resembles {class_name!r}: none can be its negative")

    def _extra_photo(self, index: int, rng: np.random.Generator) -> Image.Image:
        if self.photo_augment is None:
            return self.extra_photos.load(index)
        return self.photo_augment(self.extra_photos.load(index, rgba=True), rng)

    def __getitem__(self, index: int) -> dict:
        s = self.sample(index)
        extra = self.extra_sample(index, s)
        if extra["kind"] == "pair":
            return self._extra_pair(index, s, extra["extra_index"])
        item = self._triplet(index, s)
        if extra["kind"] == "negative":  # the triplet as usual, with an extra photo as negative
            k = extra["extra_index"]
            rng = np.random.default_rng([self.seed, int(index), 1, 1])
            item.update(negative=self._extra_photo(k, rng), negative_label=len(self.classes) + k,
                        negative_id="extra:" + self.extra_photos.ids[k])
        return item

    def _triplet(self, index: int, s: dict) -> dict:
        rng = np.random.default_rng([self.seed, int(index), 1])
        if s["sketch_index"] is not None:
            crisp = self.crisp_sketch_prob > 0 and (
                np.random.default_rng([self.seed, int(index), 4]).random() < self.crisp_sketch_prob)
            k = s["sketch_index"]
            sketch = self.sketches.render(k, "crisp") if crisp else self.sketches.load(k)
            sketch_id = self.sketches.ids[s["sketch_index"]] + ("#crisp" if crisp else "")
        else:
            sketch = self._pseudo_sketch(self.photos, s["pseudo_photo_index"])
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
            **self._correspondence(index, s["positive_index"]),
        }

    def _extra_pair(self, index: int, s: dict, k: int) -> dict:
        """An instance-level item: pseudo-sketch of extra photo ``k``, that photo, the item's negative."""
        rng = np.random.default_rng([self.seed, int(index), 1])
        extra_id = "extra:" + self.extra_photos.ids[k]
        sketch = self._pseudo_sketch(self.extra_photos, k)
        if self.sketch_augment is not None:
            sketch = self.sketch_augment(sketch, rng)
        return {
            "sketch": sketch,
            "positive": self._extra_photo(k, rng),
            "negative": self._photo(s["negative_index"], rng),
            "label": len(self.classes) + k,
            "negative_label": s["negative_label"],
            "sketch_id": "pseudo:" + extra_id,
            "positive_id": extra_id,
            "negative_id": self.photos.ids[s["negative_index"]],
            "pseudo": True,
            **self._correspondence(index, s["positive_index"]),
        }

    def _pseudo_sketch(self, photos: RetrievalDataset, index: int) -> Image.Image:
        """The pseudo-sketch of photo ``index`` of ``photos`` (pre-rendered when the set has a
        render cache of these settings)."""
        kw = dict(self.pseudo_sketch_kwargs)
        kw.setdefault("size", 224)
        cache = photos.render_cache
        if cache is not None and kw == {"size": cache.sketch_size}:
            return cache.pseudo_sketch(index)
        return photo_to_pseudo_sketch(photos.load(index, rgba=True), **kw)

    def _correspondence(self, index: int, photo_index: int) -> dict:
        """With probability ``correspondence_prob``: a warped pseudo-sketch of the positive photo
        with its true cell correspondence (:func:`~zse_hf.data.warps.warped_pair`), under the key
        ``"correspondence"`` (``None`` otherwise); no key when the probability is 0, so streams
        without it are unchanged. Draws from its own generator: the triplet is the same either way."""
        if self.correspondence_prob <= 0:
            return {}
        from .warps import sample_warp, warped_pair

        rng = np.random.default_rng([self.seed, int(index), 2])
        if rng.random() >= self.correspondence_prob or not self._cutout[photo_index]:
            return {"correspondence": None}
        warp, cache = sample_warp(rng), self.photos.render_cache
        if cache is not None and cache.pair_size == self.correspondence_size:
            pair = warped_pair(None, warp, self.correspondence_size, self.correspondence_grid,
                               base=cache.square_pair(photo_index))
        else:
            pair = warped_pair(self.photos.load(photo_index, rgba=True), warp, self.correspondence_size,
                               self.correspondence_grid)
        return {"correspondence": pair}


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


def collate_triplets(batch: list[dict]) -> dict:
    """DataLoader ``collate_fn`` for :class:`TripletDataset` items: images stay lists,
    ``label``/``negative_label`` become int64 tensors ``[B]``."""
    out = {k: [b[k] for b in batch] for k in batch[0]}
    out["label"] = torch.tensor(out["label"])
    out["negative_label"] = torch.tensor(out["negative_label"])
    return out


__all__ = ["TripletDataset", "TripletSampler", "collate_triplets"]
