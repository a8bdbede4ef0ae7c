"""The one model loader and the one weights fingerprint.

Every command (`eval`, `report`, `explain`, `search`, `train-relation`, `export`, the demo)
loads through :func:`load_model`: a ZSE model folder or Hub repo id loads through `AutoModel` /
`AutoProcessor`; a plain backbone (`Dinov2Model`, `ViTModel`, CLIP vision tower) is wrapped
with `ZseModel.from_backbone` under a fixed seed, so its untrained head is the same on every run.
:func:`weights_fingerprint` names the weights in eval JSONs, index manifests and demo caches.
:func:`save_model_folder` is the one writer of a model folder (training's `best/`, a soup).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import torch

from .image_processing_zse import ZseImageProcessor
from .modeling_zse import ZseModel

SHORT_FINGERPRINT = 16  # hex digits of the fingerprint kept as an eval JSON's `model_hash`


class ModelLoadError(ValueError):
    """A model path or repo id that cannot be loaded; the message names it and says why."""


class LoadedModel(NamedTuple):
    """What :func:`load_model` loaded (unpacks as `model, processor, from_backbone`)."""

    model: ZseModel
    """fp32, eval mode, on the requested device."""
    processor: ZseImageProcessor
    """the image processor (`processor(images, modality="sketch" | "photo")`)."""
    from_backbone: bool
    """True when a plain backbone was wrapped with a fresh, untrained ZSE head."""


def image_processor_of(processor) -> ZseImageProcessor:
    """The [`ZseImageProcessor`] inside a [`ZseProcessor`] (or the argument itself)."""
    return getattr(processor, "image_processor", processor)


def _read_config(source: str):
    """The `AutoConfig` of a local folder or Hub id; ModelLoadError with the reason otherwise."""
    import huggingface_hub
    from transformers import AutoConfig

    local = Path(source).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise ModelLoadError(f"no config.json in {local}: pass a ZSE model folder, a backbone folder or a Hub id")
    try:
        return AutoConfig.from_pretrained(str(local) if local.exists() else source)
    except (OSError, ValueError) as err:
        if local.exists():
            raise ModelLoadError(f"cannot read the config of {local}: {err}") from err
        where = ("offline mode is on (HF_HUB_OFFLINE=1) and it is not in the local Hugging Face cache"
                 if huggingface_hub.is_offline_mode() else "it could not be fetched from the Hub")
        raise ModelLoadError(f"model {source!r} is not a local folder and {where}: {err}") from err


def load_model(source: str | os.PathLike, device: str | torch.device | None = None, *, strict: bool = False,
               **backbone_kwargs) -> LoadedModel:
    """Load a ZSE model (or wrap a backbone) with its image processor.

    Args:
        source: a local folder or a Hub repo id (`org/name`; from the local cache when
            `HF_HUB_OFFLINE=1`).
        device: where to put the model (default: stay on the CPU).
        strict: refuse backbones (only a trained ZSE checkpoint will do) and weights that do
            not fit the model (missing, unexpected or mis-shaped keys).
        backbone_kwargs: `ZseConfig` fields for `ZseModel.from_backbone` when `source` is a
            backbone (e.g. `image_size=112, relation_grid=4`); ignored for ZSE checkpoints.

    Returns:
        [`LoadedModel`]: the model in fp32 and eval mode, its image processor (the saved one,
        else one made from the model config), and whether it was built from a backbone.

    Raises:
        ModelLoadError: no config, an unreachable Hub id, or (with `strict`) a backbone or
            weights that do not fit.
    """
    from transformers import AutoModel, AutoProcessor

    source = str(source)
    config = _read_config(source)
    from_backbone = getattr(config, "model_type", None) != "zse"
    if from_backbone:
        if strict:
            raise ModelLoadError(f"{source} holds a {getattr(config, 'model_type', '?')} backbone, not a ZSE model")
        with torch.random.fork_rng():  # the fresh head is the same on every run
            torch.manual_seed(0)
            model = ZseModel.from_backbone(source, **backbone_kwargs)
        processor = ZseImageProcessor.from_model_config(model.config)
    else:
        try:
            model, info = AutoModel.from_pretrained(source, dtype=torch.float32, output_loading_info=True)
        except (OSError, RuntimeError, ValueError) as err:  # unreadable files, mis-shaped weights
            raise ModelLoadError(f"cannot load the weights in {source}: {err}") from err
        bad = {k: list(v)[:3] for k, v in info.items()
               if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if strict and not isinstance(model, ZseModel):
            raise ModelLoadError(f"{source} holds a {type(model).__name__}, not a ZseModel")
        if strict and bad:
            raise ModelLoadError(f"weights in {source} do not fit the model: {bad}")
        try:
            processor = image_processor_of(AutoProcessor.from_pretrained(source))
        except (OSError, ValueError, TypeError):
            processor = None
        if not isinstance(processor, ZseImageProcessor):  # no processor saved
            processor = ZseImageProcessor.from_model_config(model.config)
    model = model.float().eval()
    if device is not None:
        model.to(device)
    return LoadedModel(model, processor, from_backbone)


def weights_fingerprint(model: torch.nn.Module, short: bool = False) -> str:
    """sha256 over the model's `state_dict`: names, shapes, and values (floating tensors cast
    to float32), so the same weights hash the same whatever their dtype or device.

    An eval JSON's `model_hash` is the first 16 hex digits. Eval JSONs written before this
    fingerprint (`hub_card/eval_results.json`: a hash of the raw bytes and dtypes) do not match
    it; re-run `zse-sbir eval` before `zse-sbir export`, or pass `--allow-hash-mismatch`.

    Args:
        short: the first 16 hex digits instead of all 64.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        if t.is_floating_point():
            t = t.float()
        h.update(f"{name}|{list(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:SHORT_FINGERPRINT] if short else h.hexdigest()


__all__ = ["LoadedModel", "ModelLoadError", "SHORT_FINGERPRINT", "image_processor_of", "load_model",
           "weights_fingerprint"]


def save_model_folder(folder: str | os.PathLike, model: ZseModel, image_processor: ZseImageProcessor,
                      summary_name: str, summary: dict) -> Path:
    """Write `folder`: `model.save_pretrained`, its processor and `summary` as `summary_name` (JSON).

    Everything is written to `folder.tmp` first and renamed into place; an existing `folder`
    is set aside as `folder.old` until the new one is in, so a crash at any point leaves a
    complete old or new folder on disk.
    """
    from .processing_zse import ZseProcessor

    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    ZseProcessor(image_processor).save_pretrained(tmp)
    (tmp / summary_name).write_text(json.dumps(summary, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder
