"""The model an index is bound to: its weights fingerprint and name, the processor derived
from it, and where it runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the model's `state_dict` (names, shapes, and values cast to float32 for
    floating tensors), so the same weights hash the same whatever their dtype or device."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        if t.is_floating_point():
            t = t.float()
        h.update(f"{name}|{list(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_name(model) -> str | None:
    """The model's folder (absolute) or Hub id, as recorded in an index manifest."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name:
        return None
    p = Path(name)
    return str(p.resolve()) if p.exists() else str(name)



def image_processor(processor):
    """The object whose `__call__(images, modality=...)` gives `pixel_values`."""
    return getattr(processor, "image_processor", processor)


def model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's first parameter."""
    p = next(model.parameters())
    return p.device, p.dtype


def check_model(info: dict | None, model) -> None:
    """ValueError when `model`'s weights differ from the fingerprint recorded in `info`."""
    if info is None or model is None:
        return
    digest = model_fingerprint(model)
    if digest != info.get("sha256"):
        raise ValueError(f"model mismatch: the index was built with {info.get('name_or_path')!r} "
                         f"(weights sha256 {str(info.get('sha256'))[:12]}...), but the given model's weights hash to "
                         f"{digest[:12]}...; its embeddings would not be comparable")


def default_processor(model):
    """A `ZseProcessor` matching `model.config`."""
    from ..processing_zse import ZseProcessor

    return ZseProcessor.from_config(model.config)

