"""The zero-shot class split: class-name spelling, the reviewed split (`split.json`), the guard
that keeps unseen classes out of training, and the validation classes held out of training.

``unseen_all`` lists every concept of the standard zero-shot unseen lists: training must never
use those classes, so training entry points call :func:`check_classes_allowed`. Model
selection uses :func:`train_val_split`, which holds out *training* classes; the test classes
are for the final report only.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Iterable, Sequence

import numpy as np

# Concepts treated as the same class across datasets (after canonical_class).
_ALIASES = {"rollerblades": "rollerskates", "rollerblade": "rollerskates"}


def canonical_class(name: str) -> str:
    """Spelling-independent class key: lower case, ``_``/``-``/spaces collapsed to one space.

    ``"teddy_bear"``, ``"teddy-bear"`` and ``"Teddy Bear"`` all give ``"teddy bear"``;
    ``"frying-pan"`` and ``"frying_pan"`` give ``"frying pan"``. Known synonyms across the
    standard datasets (``rollerblades`` -> ``rollerskates``) are folded too.
    """
    key = re.sub(r"[\s_\-]+", " ", str(name).strip().lower()).strip()
    return _ALIASES.get(key, key)


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
    return resources.files(__package__).joinpath("split.json").read_text(encoding="utf-8")


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


def parse_fold(value) -> tuple[int, int] | None:
    """`"I/K"` (or an `(I, K)` pair) as `(I, K)` with `0 <= I < K` and `K >= 2`; None stays None.

    Fold `I` of `K` is one part of a K-fold partition of the validation candidates (see
    :func:`train_val_split`)."""
    if value is None:
        return None
    try:
        i, k = (value.split("/") if isinstance(value, str) else value)
        i, k = int(i), int(k)
    except (TypeError, ValueError):
        raise ValueError(f"a validation fold is 'I/K' with integers 0 <= I < K and K >= 2, got {value!r}") from None
    if not (k >= 2 and 0 <= i < k):
        raise ValueError(f"a validation fold is 'I/K' with integers 0 <= I < K and K >= 2, got {value!r}")
    return i, k


def _val_candidates(pool: Sequence[str], max_val_photos: int | None) -> list[str]:
    """The classes of `pool` that may be held out for validation (1 to `max_val_photos` cut-outs)."""
    from .photos import photos_by_class

    check_classes_allowed(pool)
    counts = {c: len(v) for c, v in photos_by_class(pool).items()}
    return [c for c in pool if counts.get(c, 0) >= 1 and (max_val_photos is None or counts[c] <= max_val_photos)]


def train_val_split(seed: int = 0, num_val_classes: int = 10, max_val_photos: int | None = 3,
                    classes: Sequence[str] | None = None, fold=None) -> tuple[list[str], list[str]]:
    """Hold out validation classes from the *training* classes, for model selection.

    The candidates for validation are training classes with at most ``max_val_photos``
    photos, so the validation gallery looks like the test gallery (1-3 photos per class)
    and photo-rich classes (``flower``, ``bird``, ``fish``) stay in training.

    Args:
        seed: choice seed; the result depends only on it and the arguments.
        num_val_classes: how many classes to hold out (ignored with ``fold``).
        max_val_photos: cap on a candidate's photo count (``None``: no cap).
        classes: the pool (default ``load_split()["train"]``); must hold no unseen class.
        fold: ``"I/K"`` or ``(I, K)``: K-fold validation, the candidates shuffled by ``seed`` and
            cut into K near-equal parts; part I is held out. The K folds' validation classes are
            disjoint and together cover every candidate, so K runs give evidence on all of them.

    Returns:
        ``(fit_classes, val_classes)``: disjoint, each sorted.
    """
    pool = sorted(load_split()["train"] if classes is None else classes)
    cand = _val_candidates(pool, max_val_photos)
    rng = np.random.default_rng(seed)
    folded = parse_fold(fold)
    if folded is not None:
        i, k = folded
        if k > len(cand):
            raise ValueError(f"asked for {k} folds, only {len(cand)} candidate classes")
        parts = np.array_split(rng.permutation(len(cand)), k)
        val = sorted(cand[j] for j in parts[i])
    else:
        if num_val_classes > len(cand):
            raise ValueError(f"asked for {num_val_classes} validation classes, only {len(cand)} candidates")
        val = sorted(cand[i] for i in rng.choice(len(cand), size=num_val_classes, replace=False))
    fit = sorted(c for c in pool if c not in set(val))
    return fit, val


def natural_only_classes() -> list[str]:
    """Classes with reviewed natural photos (`natural_photos.csv`) that are neither in `split.json`'s
    `train` nor `test` list (castle, cat, chair, ...): extra training classes, never unseen concepts."""
    from .natural_photos import natural_photo_classes

    s = load_split()
    known = {canonical_class(c) for c in s["train"] + s["test"]}
    extra = [c for c in natural_photo_classes() if canonical_class(c) not in known]
    check_classes_allowed(extra)
    return extra


def natural_val_split(seed: int = 0, num_val_classes: int = 10, max_val_photos: int | None = 3,
                      fold=None) -> tuple[list[str], list[str]]:
    """The classes of the *natural* validation gallery (photos with backgrounds) beside
    :func:`train_val_split`'s cut-out validation classes, and the natural-photo classes training may use.

    The natural validation classes are the cut-out validation classes that have natural photos, plus
    a held-out part of :func:`natural_only_classes`: with ``fold="I/K"`` those are cut into K parts by
    ``seed`` (a stream of its own, so the cut-out folds stay as they are) and part I is held out;
    without a fold, as many as the cut-out validation's share of its candidates (at least one).

    Returns:
        ``(fit_classes, val_classes)``: disjoint, sorted; ``fit_classes`` are the natural-photo classes
        (of ``train`` and the natural-only ones) outside the cut-out and the natural validation.
    """
    from .natural_photos import natural_photo_classes

    fit_cut, val_cut = train_val_split(seed, num_val_classes, max_val_photos, fold=fold)
    extra = natural_only_classes()
    rng = np.random.default_rng([seed, 49])
    order = rng.permutation(len(extra))
    folded = parse_fold(fold)
    if folded is not None:
        i, k = folded
        held = np.array_split(order, k)[i]
    else:
        n_cand = len(_val_candidates(sorted(load_split()["train"]), max_val_photos))
        held = order[:max(1, round(len(extra) * len(val_cut) / n_cand))]
    natural = set(natural_photo_classes())
    val = sorted((natural & set(val_cut)) | {extra[j] for j in held})
    fit = sorted((natural & set(fit_cut)) | (set(extra) - set(val)))
    return fit, val


__all__ = ["canonical_class", "check_classes_allowed", "check_split", "load_split", "natural_only_classes",
           "natural_val_split", "parse_fold", "train_val_split"]
