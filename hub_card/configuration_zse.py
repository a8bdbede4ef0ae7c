"""ZSE-SBIR model configuration."""

from __future__ import annotations

import math

from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig

_SUPPORTED_BACKBONES = ("dinov2", "vit", "clip_vision_model")
_QUERY_SIDES = ("self", "other")


def _default_backbone_config():
    """A DINOv2 ViT-S/14 configuration (the shape of ``facebook/dinov2-small``)."""
    return CONFIG_MAPPING["dinov2"](
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        mlp_ratio=4,
        use_mask_token=False,
    )


def check_rerank_ret_weight(value) -> float:
    """`value` as a float if it is a finite number >= 0 (a re-rank's [Ret] weight), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"rerank_ret_weight must be a finite number >= 0, got {value!r}")
    return float(value)


def check_default_ranking(value) -> str:
    """`value` if it names a ranking, else ValueError: `"ret"` ([Ret] cosine alone) or `"rn@K"`
    (the best K [Ret] candidates re-ranked by the relation network, K >= 1)."""
    if value == "ret":
        return value
    k = value[3:] if isinstance(value, str) and value.startswith("rn@") else ""
    if not (k.isascii() and k.isdigit() and int(k) >= 1 and str(int(k)) == k):
        raise ValueError(f"default_ranking must be 'ret' or 'rn@K' with an integer K >= 1, got {value!r}")
    return value


def default_rerank_k(ranking: str) -> int:
    """How many [Ret] candidates a ranking re-ranks: 0 for `"ret"`, K for `"rn@K"`."""
    ranking = check_default_ranking(ranking)
    return 0 if ranking == "ret" else int(ranking[3:])


class ZseConfig(PretrainedConfig):
    r"""Configuration of a [`ZseModel`]: a shared ViT encoder with a learnable tokenizer, a
    bidirectional cross-attention module and a kernel-based relation network.

    Args:
        backbone_config (`dict` or `PretrainedConfig`, *optional*):
            The encoder. A `Dinov2Config` (default: ViT-S/14), a `ViTConfig` (the paper's
            ViT-B/16) or a `CLIPVisionConfig`.
        image_size (`int`, *optional*, defaults to 224):
            Input resolution used by the processor and by training.
        tokenizer_channels (`list[int]`, *optional*, defaults to `[48, 96, 192]`):
            Widths of the first three conv layers of the tokenizer stem; the fourth outputs
            the backbone's hidden size. Each conv is 3x3 with stride 2, followed by ReLU.
        num_selected_tokens (`int`, *optional*):
            Keep only the K patch tokens that the [Ret] token attends to most in the last
            encoder layer (the paper's token selection); that layer then computes only [Ret] and the
            kept tokens, and the pair head only the kept ones. `None` keeps all tokens, as the
            official code does.
        cross_attention_heads (`int`, *optional*, defaults to 8):
            Heads of each cross-attention layer.
        cross_attention_ffn_dim (`int`, *optional*, defaults to 1024):
            Width of the cross-attention feed-forward network.
        cross_attention_query_side (`str`, *optional*, defaults to `"self"`):
            `"self"`: a side's own tokens are the queries and the other side's tokens the
            keys and values (each token looks for its counterpart in the other image; the
            paper's Fig. 2). `"other"`: the roles are swapped (queries from the other side,
            keys/values from this side, as in the official code's call order).
        relation_grid (`int`, *optional*, defaults to 7):
            Side G of the pooled token grid of the relation network (G*G local tokens).
        relation_dim (`int`, *optional*, defaults to 512):
            Channels of the pooled local tokens.
        relation_mlp_dims (`list[int]`, *optional*, defaults to `[343, 49]`):
            Hidden widths of the MLP scoring the flattened G^2 x G^2 kernel.
        triplet_margin (`float`, *optional*, defaults to 1.0): triplet loss margin (L2).
        triplet_weight (`float`, *optional*, defaults to 2.0): weight of the triplet loss.
        relation_weight (`float`, *optional*, defaults to 4.0): weight of the relation MSE.
        infonce_weight (`float`, *optional*, defaults to 0.0):
            Weight of an optional InfoNCE loss on the [Ret] embeddings (not in the paper).
        infonce_temperature (`float`, *optional*, defaults to 0.07): its temperature.
        relation_rank_weight (`float`, *optional*, defaults to 0.0):
            Weight of an optional listwise loss on relation logits (not in the paper): each
            sketch is scored against every photo of the batch and cross-entropy picks its own
            positive, which trains the relation network for re-ranking hard candidates.
        correspondence_weight (`float`, *optional*, defaults to 0.0):
            Weight of an optional correspondence loss (not in the paper): for sketch-photo pairs
            drawn through a known warp, each inked sketch cell's softmax over the relation
            kernel's photo cells is pushed towards its true cell, so the kernel localizes.
        correspondence_temperature (`float`, *optional*, defaults to 0.1): that softmax's temperature.
        rerank_ret_weight (`float`, *optional*, defaults to 0.0):
            How the re-rank orders a query's top-K [Ret] candidates: by `relation score +
            rerank_ret_weight * [Ret] cosine` (see [`ZseModel.rerank_score`]). 0 is the paper's
            ordering by the relation score alone; larger values lean on [Ret]. Not used in training.
        default_ranking (`str`, *optional*, defaults to `"ret"`):
            The ranking that search follows when none is asked for (`ZseIndex.search` without
            `rerank_k`, `zse-sbir search`, the demo, the model card's headline): `"ret"` ([Ret]
            cosine alone) or `"rn@K"` (the best K [Ret] candidates re-ranked by the relation
            network). It records what the evaluation evidence supports for these weights.
        initializer_range (`float`, *optional*, defaults to 0.02): std of new weights.
        image_mean, image_std (`list[float]`, *optional*):
            Normalisation; defaults follow the backbone (ImageNet for DINOv2, 0.5 for ViT,
            CLIP's for CLIP).
    """

    model_type = "zse"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config=None,
        image_size: int = 224,
        tokenizer_channels=(48, 96, 192),
        num_selected_tokens: int | None = None,
        cross_attention_heads: int = 8,
        cross_attention_ffn_dim: int = 1024,
        cross_attention_query_side: str = "self",
        relation_grid: int = 7,
        relation_dim: int = 512,
        relation_mlp_dims=(343, 49),
        triplet_margin: float = 1.0,
        triplet_weight: float = 2.0,
        relation_weight: float = 4.0,
        infonce_weight: float = 0.0,
        infonce_temperature: float = 0.07,
        relation_rank_weight: float = 0.0,
        correspondence_weight: float = 0.0,
        correspondence_temperature: float = 0.1,
        rerank_ret_weight: float = 0.0,
        default_ranking: str = "ret",
        initializer_range: float = 0.02,
        image_mean=None,
        image_std=None,
        **kwargs,
    ):
        if backbone_config is None:
            backbone_config = _default_backbone_config()
        elif isinstance(backbone_config, dict):
            model_type = backbone_config.get("model_type")
            if model_type not in CONFIG_MAPPING:
                raise ValueError(f"backbone_config has unknown model_type {model_type!r}")
            backbone_config = CONFIG_MAPPING[model_type](**backbone_config)
        if backbone_config.model_type not in _SUPPORTED_BACKBONES:
            raise ValueError(
                f"unsupported backbone {backbone_config.model_type!r}; expected one of {_SUPPORTED_BACKBONES}"
            )
        if cross_attention_query_side not in _QUERY_SIDES:
            raise ValueError(
                f"cross_attention_query_side must be one of {_QUERY_SIDES}, got {cross_attention_query_side!r}"
            )
        if num_selected_tokens is not None and num_selected_tokens < 1:
            raise ValueError(f"num_selected_tokens must be >= 1 or None, got {num_selected_tokens}")
        if relation_grid < 1:
            raise ValueError(f"relation_grid must be >= 1, got {relation_grid}")
        if backbone_config.model_type == "dinov2":
            # ZSE never masks patches: no untrainable mask token (DDP would reject it as unused)
            backbone_config.use_mask_token = False
        hidden = backbone_config.hidden_size
        if hidden % cross_attention_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by cross_attention_heads={cross_attention_heads}")
        self.backbone_config = backbone_config
        self.image_size = int(image_size)
        self.tokenizer_channels = list(tokenizer_channels)
        self.num_selected_tokens = num_selected_tokens
        self.cross_attention_heads = cross_attention_heads
        self.cross_attention_ffn_dim = cross_attention_ffn_dim
        self.cross_attention_query_side = cross_attention_query_side
        self.relation_grid = relation_grid
        self.relation_dim = relation_dim
        self.relation_mlp_dims = list(relation_mlp_dims)
        self.triplet_margin = triplet_margin
        self.triplet_weight = triplet_weight
        self.relation_weight = relation_weight
        self.infonce_weight = infonce_weight
        self.infonce_temperature = infonce_temperature
        self.relation_rank_weight = relation_rank_weight
        self.correspondence_weight = correspondence_weight
        self.correspondence_temperature = correspondence_temperature
        self.rerank_ret_weight = check_rerank_ret_weight(rerank_ret_weight)
        self.default_ranking = check_default_ranking(default_ranking)
        self.initializer_range = initializer_range
        default_mean, default_std = _backbone_normalisation(backbone_config)
        self.image_mean = list(image_mean) if image_mean is not None else default_mean
        self.image_std = list(image_std) if image_std is not None else default_std
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """Width of the encoder tokens (the backbone's hidden size)."""
        return self.backbone_config.hidden_size

    @property
    def patch_size(self) -> int:
        """Side of a backbone patch in pixels."""
        p = self.backbone_config.patch_size
        return int(p[0] if isinstance(p, (list, tuple)) else p)


def _backbone_normalisation(backbone_config) -> tuple[list[float], list[float]]:
    """Mean/std that match the backbone's pretraining."""
    if backbone_config.model_type == "dinov2":
        return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    if backbone_config.model_type == "clip_vision_model":
        return [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    return [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


__all__ = ["ZseConfig", "check_default_ranking", "check_rerank_ret_weight", "default_rerank_k"]
