"""The model an index is bound to: its weights fingerprint and name, the photo preprocessing
its rows were encoded with, the processor derived from them, and where it runs."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..loading import weights_fingerprint as model_fingerprint  # the index manifest's `model.sha256`


def model_name(model) -> str | None:
    """The model's folder (absolute) or Hub id, as recorded in an index manifest."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name:
        return None
    p = Path(name)
    return str(p.resolve()) if p.exists() else str(name)


def model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's first parameter."""
    p = next(model.parameters())
    return p.device, p.dtype


def check_model(info: dict | None, model, what: str = "index") -> None:
    """ValueError when `model`'s weights differ from the fingerprint recorded in `info` (the
    record of an `"index"` or a database `"collection"`, as the message says)."""
    if info is None or model is None:
        return
    digest = model_fingerprint(model)
    if digest != info.get("sha256"):
        raise ValueError(f"model mismatch: the {what} was built with {info.get('name_or_path')!r} "
                         f"(weights sha256 {str(info.get('sha256'))[:12]}...), but the given model's weights hash to "
                         f"{digest[:12]}...; its embeddings would not be comparable")


def photo_crop_of(processor) -> str | None:
    """The `photo_crop` of a `ZseProcessor` or `ZseImageProcessor` (None for none, or no processor)."""
    return getattr(getattr(processor, "image_processor", processor), "photo_crop", None)


def recorded_photo_crop(info: dict | None) -> str | None:
    """The `photo_crop` recorded in an index's `model_info` / a store record's `model` (None when the
    record predates it: such rows were encoded without a crop)."""
    return (info or {}).get("photo_crop")


def record_photo_crop(info: dict | None, processor) -> None:
    """Record in `info` (in place) the `photo_crop` of the `processor` encoding the first photos."""
    if info is not None:
        info["photo_crop"] = photo_crop_of(processor)


def check_photo_crop(info: dict | None, processor, what: str = "index") -> None:
    """ValueError (one line) when `processor` crops photos differently from the `photo_crop` that
    encoded the rows of the `what` (`"index"` or `"collection"`) `info` describes."""
    if info is None:
        return
    recorded, given = recorded_photo_crop(info), photo_crop_of(processor)
    if given != recorded:
        raise ValueError(f"photo_crop mismatch: the {what}'s photos were encoded with photo_crop={recorded!r}, "
                         f"but the processor has photo_crop={given!r}; their embeddings would not be comparable "
                         f"(use a processor with photo_crop={recorded!r}, or build a new {what})")


def bind_photo_crop(info: dict | None, processor, stored: bool, what: str = "index") -> None:
    """Before photos are encoded with `processor`: record its `photo_crop` in `info` when nothing is
    `stored` yet, else [`check_photo_crop`] (one index or collection never mixes the two)."""
    if stored:
        check_photo_crop(info, processor, what)
    else:
        record_photo_crop(info, processor)


def with_photo_crop(processor, photo_crop: str | None):
    """`processor` (a `ZseProcessor` or `ZseImageProcessor`), or a copy of it with `photo_crop` set
    when it has another one."""
    from ..image_processing_zse import _PHOTO_CROPS

    if photo_crop not in _PHOTO_CROPS:
        raise ValueError(f"photo_crop must be one of {_PHOTO_CROPS}, got {photo_crop!r}")
    if processor is None or photo_crop_of(processor) == photo_crop:
        return processor
    processor = copy.deepcopy(processor)
    getattr(processor, "image_processor", processor).photo_crop = photo_crop
    return processor


def default_processor(model, info: dict | None = None):
    """A `ZseProcessor` matching `model.config`, cropping photos as recorded in `info` (an index's
    `model_info` or a store record's `model`; None or no record: no crop)."""
    from ..processing_zse import ZseProcessor

    return with_photo_crop(ZseProcessor.from_config(model.config), recorded_photo_crop(info))

