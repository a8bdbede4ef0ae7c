"""Training data: triplets of the recipe's classes, the collator, the validation sets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..data import RetrievalDataset
from ..image_processing_zse import ZseImageProcessor
from .config import TrainConfig

# ----------------------------------------------------------------------------- data


class TripletCollator:
    """Turns triplet items (PIL images) into model inputs.

    Returns dicts with `sketch_pixel_values`, `photo_pixel_values`, `negative_pixel_values`
    (`[B, 3, S, S]`) and `labels` (`[B]`); when some items carry a warped pair
    (`"correspondence"`), also `correspondence_sketch_pixel_values` and
    `correspondence_photo_pixel_values` (`[Bc, 3, S, S]`, not ink-cropped: the cells must stay
    where the warp put them) and `correspondence_targets` (`[Bc, G*G]`).
    """

    def __init__(self, image_processor: ZseImageProcessor):
        self.image_processor = image_processor

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        proc = self.image_processor
        return {
            "sketch_pixel_values": proc([it["sketch"] for it in items], modality="sketch")["pixel_values"],
            "photo_pixel_values": proc([it["positive"] for it in items], modality="photo")["pixel_values"],
            "negative_pixel_values": proc([it["negative"] for it in items], modality="photo")["pixel_values"],
            "labels": torch.tensor([it["label"] for it in items], dtype=torch.long),
            **self._correspondence([it.get("correspondence") for it in items]),
        }

    def _correspondence(self, pairs: list) -> dict[str, torch.Tensor]:
        pairs = [p for p in pairs if p is not None]
        if not pairs:
            return {}
        proc, side = self.image_processor, self.image_processor.side

        def fit(image):
            return image if image.size == (side, side) else image.resize((side, side), Image.Resampling.BICUBIC)

        return {
            "correspondence_sketch_pixel_values": proc.normalize_prepared([fit(p["sketch"]) for p in pairs])[
                "pixel_values"],
            "correspondence_photo_pixel_values": proc.normalize_prepared([fit(p["photo"]) for p in pairs])[
                "pixel_values"],
            "correspondence_targets": torch.as_tensor(np.stack([p["targets"] for p in pairs]), dtype=torch.long),
        }


def build_datasets(cfg: TrainConfig, num_triplets: int | None = None):
    """`(train_triplets, val_queries, val_gallery)` for the recipe's data.

    Offline: triplets from the training classes minus the validation classes; validation on
    the held-out training classes. Research layouts: their `train` split, with validation
    classes carved from it the same way. `num_triplets` is the stream length (default
    `max_steps x batch_size`, one process; `train` multiplies it by the number of processes).
    """
    from ..data import TripletDataset, evaluation_set, open_dataset, train_val_split

    triplet_seed = cfg.seed if cfg.triplet_seed is None else cfg.triplet_seed
    length = num_triplets if num_triplets is not None else cfg.max_steps * cfg.batch_size

    from ..data.stamps import StampPhotoDataset

    def stamps(val_classes: Sequence[str]) -> dict:
        if not (cfg.stamp_pair_prob > 0 or cfg.stamp_negative_prob > 0):
            return {}
        return {"extra_photos": StampPhotoDataset(withhold_lookalikes_of=val_classes),
                "extra_pair_prob": cfg.stamp_pair_prob, "extra_negative_prob": cfg.stamp_negative_prob}

    if cfg.data == "offline":
        fit, val_classes = train_val_split(seed=cfg.seed, num_val_classes=cfg.val_classes, fold=cfg.val_fold)
        extra = stamps(val_classes)
        if cfg.natural_photos:
            from ..data.split import natural_val_split

            natural_fit, natural_val = natural_val_split(cfg.seed, cfg.val_classes, fold=cfg.val_fold)
            extra["natural_classes"] = natural_fit
            if extra.get("extra_photos") is not None:  # no stamp resembling a natural validation class either
                extra["extra_photos"] = StampPhotoDataset(withhold_lookalikes_of=[*val_classes, *natural_val])
        if cfg.crisp_sketch_prob > 0:
            extra["crisp_sketch_prob"] = cfg.crisp_sketch_prob
        triplets = TripletDataset.offline(
            fit, seed=triplet_seed, length=length, sketch_size=max(cfg.image_size, 112),
            augment=cfg.augment, pseudo_sketch_prob=cfg.pseudo_sketch_prob,
            correspondence_prob=cfg.correspondence_fraction if cfg.correspondence_weight > 0 else 0.0,
            correspondence_size=cfg.image_size, correspondence_grid=cfg.relation_grid, **extra,
        )
        if cfg.render_cache:
            from ..data.render_cache import attach_triplet_caches

            attach_triplet_caches(triplets)
        val = evaluation_set("val", val_seed=cfg.seed, num_val_classes=cfg.val_classes, val_fold=cfg.val_fold,
                             max_per_class=cfg.val_sketches_per_class, sketch_size=max(cfg.image_size, 112))
        return triplets, val.queries, val.gallery
    queries, gallery = open_dataset(cfg.data, "train")
    rng = np.random.default_rng(cfg.seed)
    val_labels = set(rng.choice(len(queries.classes), size=cfg.val_classes, replace=False).tolist())
    extra = stamps([queries.classes[i] for i in sorted(val_labels)])
    fit_q = _Subset(queries, [i for i, lab in enumerate(queries.labels) if lab not in val_labels])
    fit_g = _Subset(gallery, [i for i, lab in enumerate(gallery.labels) if lab not in val_labels])
    per_class: dict[int, int] = {}
    val_q_idx = []
    for i, lab in enumerate(queries.labels):
        if lab in val_labels and per_class.get(lab, 0) < cfg.val_sketches_per_class:
            per_class[lab] = per_class.get(lab, 0) + 1
            val_q_idx.append(i)
    val_q = _Subset(queries, val_q_idx)
    val_g = _Subset(gallery, [i for i, lab in enumerate(gallery.labels) if lab in val_labels])
    triplets = TripletDataset(fit_q, fit_g, seed=triplet_seed, length=length,
                              correspondence_prob=cfg.correspondence_fraction if cfg.correspondence_weight > 0 else 0.0,
                              correspondence_size=cfg.image_size, correspondence_grid=cfg.relation_grid, **extra)
    return triplets, val_q, val_g


def natural_validation_set(cfg: TrainConfig):
    """`(queries, gallery)` of the natural validation gallery of the recipe (`natural_photos`), or
    None: the sketches of the natural validation classes against their photos with backgrounds."""
    if not cfg.natural_photos:
        return None
    from ..data import evaluation_set

    val = evaluation_set("val", val_seed=cfg.seed, num_val_classes=cfg.val_classes, val_fold=cfg.val_fold,
                         max_per_class=cfg.val_sketches_per_class, sketch_size=max(cfg.image_size, 112),
                         gallery="natural")
    return val.queries, val.gallery


class _Subset(RetrievalDataset):
    """A [`RetrievalDataset`] of some items of another one (same `classes`, so same labels)."""

    def __init__(self, base: RetrievalDataset, indices: Sequence[int]):
        self.base, self.indices = base, [int(i) for i in indices]
        super().__init__(base.classes, [base.class_names[i] for i in self.indices],
                         [base.ids[i] for i in self.indices], [base.instances[i] for i in self.indices],
                         transform=base.transform)
        self.modality = base.modality

    def load(self, index: int, rgba: bool = False):
        return self.base.load(self.indices[index], rgba=rgba)


