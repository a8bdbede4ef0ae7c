"""Data layer: offline QuickDraw/Tux Paint data, augmentation, research-dataset layouts.

| module | what it holds |
|---|---|
| `split` | class spelling, the zero-shot split, the unseen-class guard, validation classes |
| `quickdraw` | reading and rendering QuickDraw sketches |
| `photos` | the reviewed Tux Paint photo table, verification, loading cut-outs |
| `images` | opening on white, cropping to alpha, padding to a square |
| `pseudo_sketch` | line drawings made from cut-out photos |
| `datasets` | query/gallery datasets and the offline evaluation sets |
| `triplets` | training triplets, their sampler and collate function |
| `augment` | sketch and photo augmentation |
| `layouts` | readers for Sketchy / TU-Berlin / QuickDraw-Extended folders |
| `prepare` | `zse-sbir prepare` |

Datasets yield RGB PIL images on white plus integer labels; the model's image processor
turns them into tensors. Training must use :func:`check_classes_allowed` (done by
:meth:`TripletDataset.offline`) and select models on :func:`train_val_split` classes.
"""

from .augment import (
    PhotoAugment,
    SketchAugment,
    as_generator,
    augment_photo,
    augment_sketch,
    color_jitter,
    random_affine,
    random_background,
    random_hflip,
    random_resized_crop,
    stroke_jitter,
)
from .datasets import (
    OfflinePhotoDataset,
    OfflineSketchDataset,
    PseudoSketchQueries,
    RetrievalDataset,
    RetrievalPair,
    collate_retrieval,
    distractor_classes,
    evaluation_set,
    with_instance_ids,
)
from .images import composite_on_white, crop_to_alpha, open_image_on_white, pad_to_square
from .layouts import (
    LAYOUTS,
    QUICKDRAW_25,
    QUICKDRAW_30_ZSE,
    SKETCHY_21,
    SKETCHY_25,
    TUBERLIN_30,
    ZERO_SHOT_SPLITS,
    DatasetLayout,
    DatasetNotFoundError,
    ImageListDataset,
    ResolvedLayout,
    from_filelists,
    open_dataset,
    read_class_list,
    read_filelist,
    read_layout,
    read_quickdraw_ext,
    read_sketchy,
    read_tuberlin,
    resolve_layout,
    scan_class_folders,
    sketchy_instance_pairs,
)
from .photos import (
    PhotoRecord,
    PhotoVerificationError,
    load_photo,
    load_photo_rgba,
    load_photo_table,
    photos_by_class,
)
from .pseudo_sketch import photo_to_pseudo_sketch
from .quickdraw import quickdraw_classes, read_quickdraw, render_sketch
from .split import canonical_class, check_classes_allowed, check_split, load_split, train_val_split
from .triplets import TripletDataset, TripletSampler, collate_triplets

__all__ = [
    # split, quickdraw, photos, images, pseudo_sketch, datasets, triplets
    "OfflinePhotoDataset", "OfflineSketchDataset", "PhotoRecord", "PhotoVerificationError", "PseudoSketchQueries",
    "RetrievalDataset", "with_instance_ids",
    "RetrievalPair", "TripletDataset", "TripletSampler", "canonical_class", "check_classes_allowed", "check_split",
    "collate_retrieval", "collate_triplets", "distractor_classes",
    "composite_on_white", "crop_to_alpha", "evaluation_set", "load_photo",
    "load_photo_rgba", "load_photo_table", "load_split", "open_image_on_white", "pad_to_square",
    "photo_to_pseudo_sketch", "photos_by_class", "quickdraw_classes", "read_quickdraw", "render_sketch",
    "train_val_split",
    # augment
    "PhotoAugment", "SketchAugment", "as_generator", "augment_photo", "augment_sketch", "color_jitter",
    "random_affine", "random_background", "random_hflip", "random_resized_crop", "stroke_jitter",
    # layouts
    "LAYOUTS", "QUICKDRAW_25", "QUICKDRAW_30_ZSE", "SKETCHY_21", "SKETCHY_25", "TUBERLIN_30", "ZERO_SHOT_SPLITS",
    "DatasetLayout", "DatasetNotFoundError", "ImageListDataset", "ResolvedLayout", "from_filelists", "open_dataset",
    "read_class_list", "read_filelist", "read_layout", "read_quickdraw_ext", "read_sketchy", "read_tuberlin",
    "resolve_layout", "scan_class_folders", "sketchy_instance_pairs",
]
