"""The reviewed extra Tux Paint stamps (``stamps_review.csv``): real photos of things outside the
reviewed classes, for instance-level training pairs (a photo and its pseudo-sketch) and as
extra negatives.

Only rows of kind ``"photo"`` are ever loaded; ``"unseen-concept"`` rows (photos that depict or
resemble one of the 63 unseen concepts), drawings and non-objects never reach training. A usable
photo that depicts or closely resembles a training class (a hen for "bird", a kettle for "teapot")
names it in ``training_lookalike``: it is never a negative for that class's sketches, and a run
withholds the stamps that resemble its validation classes (a rubber duck while "duck" is held out).
"""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Iterable
from importlib import resources

from PIL import Image

from .datasets import PseudoSketchQueries, RetrievalDataset, cached_cutout
from .photos import PhotoRecord, load_photo_rgba

USABLE_KIND = "photo"


@functools.lru_cache(maxsize=1)
def _review_rows() -> tuple[dict, ...]:
    text = resources.files(__package__).joinpath("stamps_review.csv").read_text(encoding="utf-8")
    return tuple(csv.DictReader(io.StringIO(text)))


def load_stamp_review() -> list[dict]:
    """All rows of ``stamps_review.csv`` (``stamp_path``, ``sha256``, ``kind``, ``unseen_concept``,
    ``training_lookalike``, ``note``)."""
    return [dict(r) for r in _review_rows()]


def usable_stamp_records() -> list[PhotoRecord]:
    """The stamps reviewed as usable real photos (kind ``"photo"``, no unseen concept), in file
    order, as :class:`PhotoRecord` with class name ``"stamp:<stamp_path>"`` (one instance each)."""
    out = []
    for r in _review_rows():
        if r["kind"] != USABLE_KIND:
            continue
        if r["unseen_concept"]:  # the review never marks a usable photo so; refuse if it ever does
            raise ValueError(f"stamps_review.csv: {r['stamp_path']} is kind 'photo' but names unseen concept "
                             f"{r['unseen_concept']!r}")
        out.append(PhotoRecord("stamp:" + r["stamp_path"], r["stamp_path"], r["sha256"].lower()))
    return out


def stamp_training_lookalikes() -> dict[str, frozenset[str]]:
    """``{stamp_path: training classes it depicts or closely resembles}`` for the usable stamps
    (``training_lookalike`` of ``stamps_review.csv``, ``;``-separated; empty sets included)."""
    return {r["stamp_path"]: frozenset(c for c in r["training_lookalike"].split(";") if c)
            for r in _review_rows() if r["kind"] == USABLE_KIND}


class StampPhotoDataset(RetrievalDataset):
    """The usable extra stamps as a photo set: each stamp its own class (instance level).

    Args:
        verify: sha256-check each file (against ``stamps_review.csv``) on load.
        max_side: downscale so the longer side is at most this.
        cache: keep loaded cut-outs in memory.
        root: stamps folder (default ``assets.tuxpaint_root()``).
        withhold_lookalikes_of: class names (a run's validation classes) whose look-alike stamps
            are left out, so that validation stays zero-shot.

    Attributes:
        lookalikes: ``[N]`` frozensets of the training classes each stamp resembles
            (:func:`stamp_training_lookalikes`).
        withheld: stamp paths left out by ``withhold_lookalikes_of``.

    Items: ``{"image": RGB PIL (square, on white), "label", "class_name": "stamp:<path>",
    "id": stamp_path, "instance": stamp_path}``.
    """

    modality = "photo"

    def __init__(self, verify: bool = True, max_side: int | None = 512, cache: bool = True,
                 root: str | os.PathLike | None = None, withhold_lookalikes_of: Iterable[str] = ()):
        look = stamp_training_lookalikes()
        withhold = frozenset(withhold_lookalikes_of)
        records = usable_stamp_records()
        self.withheld = [r.stamp_path for r in records if look[r.stamp_path] & withhold]
        self.records = [r for r in records if not look[r.stamp_path] & withhold]
        self.lookalikes = [look[r.stamp_path] for r in self.records]
        self.verify, self.max_side, self.root = verify, max_side, root
        self._cache: dict[int, Image.Image] | None = {} if cache else None
        names = [r.class_name for r in self.records]
        ids = [r.stamp_path for r in self.records]
        super().__init__(names, names, ids, instances=ids)

    def load(self, index: int, rgba: bool = False) -> Image.Image:
        """Stamp ``index``: RGB on white, or the RGBA cut-out with ``rgba=True`` (cropped, square)."""
        return cached_cutout(self, index, rgba, lambda: load_photo_rgba(
            self.records[index], verify=self.verify, max_side=self.max_side, root=self.root))


class StampPseudoSketchDataset(PseudoSketchQueries):
    """Pseudo-sketches of the usable stamps as instance-level queries (:class:`PseudoSketchQueries`
    of a :class:`StampPhotoDataset`): ``variants`` per stamp, the first drawn straight, the others
    through a seeded random warp.

    Items: ``{"image": RGB PIL size x size, "label", "class_name": "stamp:<path>",
    "id": "pseudo:<path>#<v>", "instance": stamp_path}``; item ``i`` is variant ``i % variants``
    of stamp ``i // variants``.
    """

    def __init__(self, stamps: StampPhotoDataset, variants: int = 1, size: int = 224, seed: int = 0):
        super().__init__(stamps, variants, size=size, seed=seed)
        self.stamps = stamps


__all__ = ["StampPhotoDataset", "StampPseudoSketchDataset", "load_stamp_review", "stamp_training_lookalikes",
           "usable_stamp_records"]
