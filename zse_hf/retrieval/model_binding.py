"""The model an index is bound to: its weights fingerprint and name, the processor derived
from it, and where it runs."""

from __future__ import annotations

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


def default_processor(model):
    """A `ZseProcessor` matching `model.config`."""
    from ..processing_zse import ZseProcessor

    return ZseProcessor.from_config(model.config)

