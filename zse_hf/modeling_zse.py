"""PyTorch ZSE-SBIR model (Lin et al., "Zero-Shot Everything Sketch-Based Image Retrieval,
and in Explainable Style", CVPR 2023).

One encoder serves sketches and photos: a pretrained ViT (DINOv2, ViT or CLIP vision tower)
whose patch tokens are enriched by a learnable conv **tokenizer** through a zero-initialised
gate. Its CLS position is the **[Ret] token**, used for fast cosine retrieval. A pairwise head
ranks (sketch, photo) pairs: a bidirectional **cross-attention** module, then a kernel-based
**relation network** on spatially pooled local tokens.

Pair API (all on [`ZseModel`]): `get_image_features` encodes images once; `score_pairs` scores
paired features (sketch i with photo i, `[B]`); `score_indexed_pairs` scores any list of
(query row, candidate row) pairs in chunks (`[M]`); `score_all_pairs` scores every query
against every candidate (`[Q, K]`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_zse import ZseConfig, check_rerank_ret_weight

try:  # transformers >= 5: init helpers that respect already-loaded weights
    from transformers import initialization as init
except ImportError:  # pragma: no cover
    from torch.nn import init


# ----------------------------------------------------------------------------- outputs


@dataclass
class ZseImageFeatures(ModelOutput):
    """Encoder outputs for a batch of images (sketches or photos), from [`ZseModel.get_image_features`].

    The first four fields follow transformers' `BaseModelOutputWithPooling`; the rest are what
    retrieval and the relation head read.

    Args:
        last_hidden_state: `[B, 1 + N, D]` the backbone's last hidden state ([Ret] token first).
        pooler_output: `[B, D]` the L2-normalised [Ret] embeddings (same tensor as `ret_embeds`).
        hidden_states: tuple of `[B, 1 + N, D]`, embeddings then every backbone layer, when asked.
        attentions: tuple of `[B, heads, 1 + N, 1 + N]` backbone self-attentions, when asked
            (needs `attn_implementation="eager"`, as in transformers' own vision models).
        ret_embeds: `[B, D]` L2-normalised [Ret] embeddings.
        local_tokens: `[B, N, D]` patch tokens after the encoder's final norm, N = h * w (tokens
            dropped by token selection are 0: the last block never computes them).
        token_mask: `[B, N]` bool, True where a token was kept by token selection
            (all True when selection is off).
        ret_attention: `[B, N]` last-layer attention of the [Ret] token over the patches
            (averaged over heads), when computed.
        grid_size: `(h, w)` patch grid of `local_tokens`.
        cross_projections: `[B, 3, N, D]` this image's cross-attention projections (its queries
            for one branch, its keys and values for the other), when precomputed by
            [`ZseModel.project_image_features`]; the pair head then skips them.
        cross_projection_side: `"sketch"` or `"photo"`, the side `cross_projections` were made for.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    ret_embeds: torch.FloatTensor | None = None
    local_tokens: torch.FloatTensor | None = None
    token_mask: torch.BoolTensor | None = None
    ret_attention: torch.FloatTensor | None = None
    grid_size: tuple[int, int] | None = None
    cross_projections: torch.FloatTensor | None = None
    cross_projection_side: str | None = None

    def select(self, index) -> ZseImageFeatures:
        """The rows `index` (`[M]` long tensor or a slice) of the per-image fields that the pair
        head reads (`ret_embeds`, `local_tokens`, `token_mask`, `ret_attention`, `grid_size`,
        `cross_projections`)."""
        return ZseImageFeatures(
            ret_embeds=self.ret_embeds[index] if self.ret_embeds is not None else None,
            local_tokens=self.local_tokens[index],
            token_mask=self.token_mask[index] if self.token_mask is not None else None,
            ret_attention=self.ret_attention[index] if self.ret_attention is not None else None,
            grid_size=self.grid_size,
            cross_projections=self.cross_projections[index] if self.cross_projections is not None else None,
            cross_projection_side=self.cross_projection_side if self.cross_projections is not None else None,
        )

    def to_model(self, model: nn.Module) -> ZseImageFeatures:
        """The pair-head fields on `model`'s device, floating tensors in its dtype (for features
        stored on the CPU or in fp16, e.g. an index's token store)."""
        param = next(model.parameters())

        def move(t):
            if t is None:
                return None
            return t.to(param.device, param.dtype) if t.is_floating_point() else t.to(param.device)

        return ZseImageFeatures(
            ret_embeds=move(self.ret_embeds),
            local_tokens=move(self.local_tokens),
            token_mask=move(self.token_mask),
            ret_attention=move(self.ret_attention),
            grid_size=self.grid_size,
            cross_projections=move(self.cross_projections),
            cross_projection_side=self.cross_projection_side if self.cross_projections is not None else None,
        )


@dataclass
class ZseCrossAttentionOutput(ModelOutput):
    """Outputs of [`ZseCrossAttention`] for B (sketch, photo) pairs.

    Each branch's tokens lie on the grid of the side that supplied its queries, so each branch
    carries that side's grid and token mask.

    Args:
        sketch_tokens: `[B, N_q, D]` cross-attended tokens of the sketch branch.
        sketch_grid_size: `(h, w)` grid of `sketch_tokens`.
        sketch_token_mask: `[B, N_q]` bool mask of `sketch_tokens`.
        photo_tokens, photo_grid_size, photo_token_mask: the same for the photo branch.
        sketch_attentions: `[B, heads, N_q, N_kv]` attention weights of the sketch branch, when asked.
        photo_attentions: `[B, heads, N_q, N_kv]` the same for the photo branch.
    """

    sketch_tokens: torch.FloatTensor | None = None
    sketch_grid_size: tuple[int, int] | None = None
    sketch_token_mask: torch.BoolTensor | None = None
    photo_tokens: torch.FloatTensor | None = None
    photo_grid_size: tuple[int, int] | None = None
    photo_token_mask: torch.BoolTensor | None = None
    sketch_attentions: torch.FloatTensor | None = None
    photo_attentions: torch.FloatTensor | None = None


@dataclass
class ZseRelationOutput(ModelOutput):
    """Outputs of [`ZseRelationNetwork`] for B pairs.

    Args:
        logits: `[B]` relation logits (`sigmoid` gives the relation score).
        kernel: `[B, G*G, G*G]` cosine kernel between sketch cells (rows) and photo cells.
        sketch_cells, photo_cells: `[B, G*G, C]` pooled cells of each branch (empty cells are 0).
    """

    logits: torch.FloatTensor | None = None
    kernel: torch.FloatTensor | None = None
    sketch_cells: torch.FloatTensor | None = None
    photo_cells: torch.FloatTensor | None = None


@dataclass
class ZsePairOutput(ModelOutput):
    """Outputs of [`ZseModel.score_pairs`] for B (sketch i, photo i) pairs.

    Args:
        relation_logits: `[B]` relation-network logits.
        relation_scores: `[B]` `sigmoid(relation_logits)` in (0, 1).
        kernel: `[B, G*G, G*G]` the relation network's cell kernel, when asked.
        sketch_cross_attentions: `[B, heads, N_q, N_kv]` cross-attention of the sketch branch,
            when asked (queries from the sketch with `cross_attention_query_side="self"`).
        photo_cross_attentions: `[B, heads, N_q, N_kv]` the same for the photo branch.
    """

    relation_logits: torch.FloatTensor | None = None
    relation_scores: torch.FloatTensor | None = None
    kernel: torch.FloatTensor | None = None
    sketch_cross_attentions: torch.FloatTensor | None = None
    photo_cross_attentions: torch.FloatTensor | None = None


@dataclass
class ZseModelOutput(ModelOutput):
    """Outputs of [`ZseModel.forward`] for a batch of (sketch, photo) pairs.

    Args:
        loss: scalar, `triplet_weight * triplet + relation_weight * relation_mse
            (+ infonce_weight * infonce + relation_rank_weight * relation_rank)`, when `labels`
            are given.
        triplet_loss, relation_loss, infonce_loss, relation_rank_loss: the unweighted terms.
        cosine: `[B]` cosine similarity of the pairs' [Ret] embeddings.
        relation_logits: `[B]` relation-network logits of the pairs.
        relation_scores: `[B]` `sigmoid(relation_logits)` (one score per pair; see
            [`ZseModel.score_all_pairs`] for a `[Q, K]` matrix).
        sketch_embeds, photo_embeds: `[B, D]` L2-normalised [Ret] embeddings.
        sketch_token_mask, photo_token_mask: `[B, N]` token-selection masks.
        hidden_states: tuple of `[B, 1 + N, D]` encoder hidden states of the sketches (the main
            input), when `output_hidden_states`.
        attentions: tuple of `[B, heads, 1 + N, 1 + N]` encoder self-attentions of the sketches,
            when `output_attentions` (eager attention only).
        photo_hidden_states, photo_attentions: the same for the photos.
        sketch_cross_attentions: `[B, heads, N_q, N_kv]` attention of the sketch branch
            (queries from the sketch with the default `cross_attention_query_side="self"`), when
            `output_attentions`.
        photo_cross_attentions: `[B, heads, N_q, N_kv]` attention of the photo branch.
        correspondence_loss: the unweighted correspondence term (see [`correspondence_loss`]),
            when warped pairs are given; it enters `loss` with the config's
            `correspondence_weight` (default 0).
    """

    loss: torch.FloatTensor | None = None
    triplet_loss: torch.FloatTensor | None = None
    relation_loss: torch.FloatTensor | None = None
    infonce_loss: torch.FloatTensor | None = None
    relation_rank_loss: torch.FloatTensor | None = None
    cosine: torch.FloatTensor | None = None
    relation_logits: torch.FloatTensor | None = None
    relation_scores: torch.FloatTensor | None = None
    sketch_embeds: torch.FloatTensor | None = None
    photo_embeds: torch.FloatTensor | None = None
    sketch_token_mask: torch.BoolTensor | None = None
    photo_token_mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    photo_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    photo_attentions: tuple[torch.FloatTensor, ...] | None = None
    sketch_cross_attentions: torch.FloatTensor | None = None
    photo_cross_attentions: torch.FloatTensor | None = None
    correspondence_loss: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------- backbone access


def _is_clip(backbone: nn.Module) -> bool:
    return getattr(backbone.config, "model_type", None) == "clip_vision_model"


def _clip_tower(backbone: nn.Module) -> nn.Module:
    """The CLIP module holding `embeddings`, `encoder.layers` and `post_layernorm`
    (transformers 5 flattened `CLIPVisionModel`; older versions wrap it in `vision_model`)."""
    return getattr(backbone, "vision_model", backbone)


def backbone_embeddings(backbone: nn.Module) -> nn.Module:
    """The patch + position embedding module of a DINOv2, ViT or CLIP backbone."""
    return _clip_tower(backbone).embeddings if _is_clip(backbone) else backbone.embeddings


def backbone_blocks(backbone: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a DINOv2, ViT or CLIP backbone, first to last."""
    if _is_clip(backbone):
        return _clip_tower(backbone).encoder.layers
    if hasattr(backbone, "layers"):  # ViT
        return backbone.layers
    return backbone.encoder.layer  # DINOv2


def _patch_embedding(backbone: nn.Module) -> nn.Module:
    """The module that turns pixels into patch tokens, for DINOv2, ViT and CLIP towers."""
    if _is_clip(backbone):  # a Conv2d: output [B, D, h, w]
        return _clip_tower(backbone).embeddings.patch_embedding
    return backbone.embeddings.patch_embeddings


def _last_attention(backbone: nn.Module) -> tuple[nn.Module, nn.Module]:
    """`(pre-attention norm, self-attention)` of the backbone's last layer."""
    norm1, attention = _block_parts(backbone_blocks(backbone)[-1])[:2]
    return norm1, attention


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`[B, T, H * d]` -> `[B, H, T, d]`."""
    return x.view(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)


def _ret_attention(ret_query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """`[B, N]` head-averaged attention of the [Ret] query `[B, H, 1, d]` over the patch keys of
    `keys [B, H, 1 + N, d]` (the [Ret] self-weight is left out)."""
    weights = torch.softmax((ret_query @ keys.transpose(-1, -2)) * keys.shape[-1] ** -0.5, dim=-1)
    return weights.mean(1)[:, 0, 1:]


def _block_parts(block: nn.Module):
    """`(norm1, attention, out_proj, after_attention, norm2, mlp, after_mlp)` of a DINOv2, ViT or CLIP
    block; `after_*` maps a branch's output to what is added to the residual (layer scale, drop path,
    dropout)."""
    if hasattr(block, "layer_norm1"):  # CLIP
        keep = nn.Identity()
        return block.layer_norm1, block.self_attn, block.self_attn.out_proj, keep, block.layer_norm2, block.mlp, keep
    if hasattr(block, "layernorm_before"):  # ViT
        attention, drop = block.attention, block.dropout
        return block.layernorm_before, attention, attention.o_proj, drop, block.layernorm_after, block.mlp, drop
    return (  # DINOv2
        block.norm1,
        block.attention,
        block.attention.o_proj,
        lambda x: block.drop_path(block.layer_scale1(x)),
        block.norm2,
        block.mlp,
        lambda x: block.drop_path(block.layer_scale2(x)),
    )


def selective_last_block(
    block: nn.Module, hidden: torch.Tensor, num_heads: int, k: int, attention_dropout: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backbone's last block, run only for the [Ret] token and the `k` patch tokens it attends to most
    (token selection on the encoder side: the dropped tokens' rows are never computed).

    Every token stays a key and value, so each kept row equals the full block's output for that row.

    Args:
        block: the last DINOv2 / ViT / CLIP transformer block.
        hidden: `[B, 1 + N, D]` the block's input ([Ret] first).
        num_heads: its attention heads; k: patch tokens to keep (1 <= k <= N).

    Returns: `(rows [B, 1 + k, D], ret_attention [B, N], kept [B, k])`: the block's output for [Ret] then
    the kept patches, the head-averaged [Ret] attention over patches, and the kept patch positions.
    """
    norm1, attention, out_proj, after_attention, norm2, mlp, after_mlp = _block_parts(block)
    b = hidden.shape[0]
    x = norm1(hidden)
    keys, values = _split_heads(attention.k_proj(x), num_heads), _split_heads(attention.v_proj(x), num_heads)
    ret_query = _split_heads(attention.q_proj(x[:, :1]), num_heads)
    ret_attention = _ret_attention(ret_query, keys)
    kept = ret_attention.topk(k, dim=1).indices
    rows = torch.cat([kept.new_zeros(b, 1), kept + 1], dim=1)
    queries = torch.cat([ret_query, _split_heads(attention.q_proj(gather_tokens(x, kept + 1)), num_heads)], dim=2)
    attended = F.scaled_dot_product_attention(
        queries, keys, values, dropout_p=attention_dropout, scale=keys.shape[-1] ** -0.5
    )
    out = gather_tokens(hidden, rows) + after_attention(out_proj(attended.transpose(1, 2).reshape(b, 1 + k, -1)))
    return out + after_mlp(mlp(norm2(out))), ret_attention, kept


def _check_pixels(pixel_values, name: str, min_size: int) -> None:
    """Shape, dtype and size checks (static: they never read tensor values, so export traces them)."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"{name} must have shape [B, 3, H, W], got {list(pixel_values.shape)}")
    if not pixel_values.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {pixel_values.dtype}")
    if pixel_values.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if min(pixel_values.shape[-2:]) < min_size:
        raise ValueError(f"{name} is {tuple(pixel_values.shape[-2:])} px; the backbone needs at least {min_size} px")


# ----------------------------------------------------------------------------- modules


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention: `query [B, H, Nq, d]`, `key`/`value [B, H, Nk, d]`, additive
    `attention_mask [B, 1, 1, Nk]`. Returns `(output [B, Nq, H, d], weights [B, H, Nq, Nk])`."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def masked_grid_pool(tokens: torch.Tensor, grid_size: tuple[int, int], size: int, mask: torch.Tensor | None = None):
    """Average tokens `[B, h*w, D]` laid out on their grid `(h, w)` into `size x size` windows
    (adaptive pooling), leaving out tokens whose `mask [B, h*w]` is False.

    Returns: `(mean [B, D, size, size], weight [B, 1, size, size])`, where `weight` is the
    fraction of kept tokens in each window (a window with none has mean 0 and weight 0).
    """
    b, n, d = tokens.shape
    h, w = grid_size
    if h * w != n:
        raise ValueError(f"{n} tokens do not fit a {h}x{w} grid")
    x = tokens.reshape(b, h, w, d).permute(0, 3, 1, 2)
    if mask is None:
        m = torch.ones(b, 1, h, w, dtype=x.dtype, device=x.device)
    else:
        m = mask.reshape(b, 1, h, w).to(x.dtype)
    summed = F.adaptive_avg_pool2d(x * m, size)
    weight = F.adaptive_avg_pool2d(m, size)
    return summed / weight.clamp_min(1e-6), weight


def _tracing() -> bool:
    """True under torch.jit tracing, torch.compile or torch.export (no data-dependent shapes there)."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or exporting()


def kept_token_index(mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Positions of the kept tokens of a token-selection `mask [B, N]`, for computing on them only.

    Returns `(index [B, K], valid [B, K])` with K the largest kept count of a row: row b's kept
    positions in grid order first, then (where `valid` is False) padding positions of dropped
    tokens. None when there is nothing to save (no mask, every token kept, or tracing/export,
    where the masked path runs instead, or when a row keeps no token).
    """
    if mask is None or _tracing() or bool(mask.all()):
        return None
    counts = mask.sum(1)
    if int(counts.min()) == 0:  # an image with no kept token: the masked path defines that case
        return None
    k = int(counts.max())
    index = torch.sort(mask.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]
    valid = torch.arange(k, device=mask.device)[None, :] < counts[:, None]
    return index, valid


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index [B, K]` of `x [B, N, ...]` along dim 1 -> `[B, K, ...]`."""
    return x.gather(1, index.view(*index.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:]))


def scatter_tokens(x: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, n: int) -> torch.Tensor:
    """Put `x [B, K, D]` back at positions `index [B, K]` of zeros `[B, n, D]` (invalid rows stay 0)."""
    x = x * valid[..., None].to(x.dtype)
    out = x.new_zeros(x.shape[0], n, x.shape[2])
    return out.scatter(1, index[..., None].expand(-1, -1, x.shape[2]), x)


class ZseTokenizer(nn.Module):
    """Learnable tokenizer: a conv stem whose tokens are added to the patch embedding.

    Four 3x3 conv + ReLU layers of stride 2 (the paper's stem) map `[B, 3, H, W]` to
    `[B, D, H/16, W/16]`; the result is resized to the backbone's patch grid and added to the
    patch tokens through a per-channel gate initialised to zero, so at step 0 the encoder is
    exactly the pretrained backbone.
    """

    def __init__(self, config: ZseConfig):
        super().__init__()
        widths = [3, *config.tokenizer_channels, config.hidden_size]
        layers = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*layers)
        self.gate = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(self, pixel_values: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """Tokens `[B, D, h, w]` on the patch grid `grid_size = (h, w)`, already gated."""
        x = self.stem(pixel_values.to(self.gate.dtype))
        if tuple(x.shape[-2:]) != tuple(grid_size):
            x = F.interpolate(x, size=grid_size, mode="bilinear", align_corners=False)
        return x * self.gate.view(1, -1, 1, 1)


class ZseEncoder(nn.Module):
    """The shared encoder: a transformers ViT backbone plus the [`ZseTokenizer`].

    The tokenizer is applied by a forward hook on the backbone's patch-embedding module, so
    the backbone stays a stock transformers model (its weights load unchanged) while its
    patch tokens become `patch_embed + gate * stem`.
    """

    def __init__(self, config: ZseConfig):
        super().__init__()
        self.config = config
        self.backbone = AutoModel.from_config(config.backbone_config)
        self.tokenizer = ZseTokenizer(config)
        self.is_clip = _is_clip(self.backbone)
        _patch_embedding(self.backbone).register_forward_hook(self._add_tokenizer_tokens)

    def _add_tokenizer_tokens(self, module, args, output):
        pixel_values = args[0]
        patch = self.config.patch_size
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        tokens = self.tokenizer(pixel_values, grid)
        if output.ndim == 4:  # CLIP: conv output [B, D, h, w]
            return output + tokens.to(output.dtype)
        return output + tokens.flatten(2).transpose(1, 2).to(output.dtype)

    def ret_attention(self, last_layer_input: torch.Tensor) -> torch.Tensor:
        """`[B, N]` last-layer attention of the [Ret] token over patch tokens, head-averaged,
        from the input `[B, 1 + N, D]` of the backbone's last layer."""
        norm, module = _last_attention(self.backbone)
        hidden = norm(last_layer_input)
        heads = self.config.backbone_config.num_attention_heads
        ret_query = _split_heads(module.q_proj(hidden[:, :1]), heads)
        return _ret_attention(ret_query, _split_heads(module.k_proj(hidden), heads))

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_ret_attention: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> ZseImageFeatures:
        """Encode `[B, 3, H, W]` images into [Ret] embeddings `[B, D]` and local tokens `[B, N, D]`."""
        _check_pixels(pixel_values, "pixel_values", self.config.patch_size)
        patch = self.config.patch_size
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        selecting = self.config.num_selected_tokens is not None
        k = min(self.config.num_selected_tokens, grid[0] * grid[1]) if selecting else None
        out = None
        if selecting and not (output_attentions or output_hidden_states):
            hidden, ret, local, ret_attention, kept = self._encode_selected(pixel_values, k)
        else:
            need_ret = selecting or output_ret_attention
            kwargs = {} if self.config.backbone_config.model_type == "dinov2" else {"interpolate_pos_encoding": True}
            out = self.backbone(
                pixel_values=pixel_values,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states or need_ret,
                return_dict=True,
                **kwargs,
            )
            ret_attention = self.ret_attention(out.hidden_states[-2]) if need_ret else None
            hidden = out.last_hidden_state
            if self.is_clip:  # last_hidden_state is before CLIP's post-layernorm; pooler_output after
                ret = out.pooler_output
                local = _clip_tower(self.backbone).post_layernorm(hidden[:, 1:])
            else:
                ret = hidden[:, 0]
                local = hidden[:, 1:]
            kept = ret_attention.topk(k, dim=1).indices if selecting else None
        mask = torch.ones(local.shape[:2], dtype=torch.bool, device=local.device)
        if kept is not None:
            mask = torch.zeros_like(mask).scatter_(1, kept, True)
        ret = F.normalize(ret, dim=-1)
        return ZseImageFeatures(
            last_hidden_state=hidden,
            pooler_output=ret,
            hidden_states=out.hidden_states if output_hidden_states else None,
            attentions=out.attentions if output_attentions else None,
            ret_embeds=ret,
            local_tokens=local,
            token_mask=mask,
            ret_attention=ret_attention,
            grid_size=grid,
        )

    def _encode_selected(self, pixel_values: torch.Tensor, k: int):
        """Token selection that saves encoder work: blocks 1..L-1 as usual, then the last block for
        [Ret] and the `k` kept tokens only ([`selective_last_block`]). Same values as the full path at
        the kept tokens; dropped tokens are zero in the local tokens and the last hidden state.

        Returns: `(last_hidden_state [B, 1+N, D], ret [B, D] (not normalised), local [B, N, D],
        ret_attention [B, N], kept [B, k])`.
        """
        backbone, cfg = self.backbone, self.config.backbone_config
        if self.is_clip:
            tower = _clip_tower(backbone)
            hidden = tower.pre_layrnorm(tower.embeddings(pixel_values, interpolate_pos_encoding=True))
        elif cfg.model_type == "dinov2":
            hidden = backbone.embeddings(pixel_values)
        else:
            weight = _patch_embedding(backbone).projection.weight
            hidden = backbone.embeddings(pixel_values.to(weight.dtype), interpolate_pos_encoding=True)
        blocks = backbone_blocks(backbone)
        for block in blocks[:-1]:
            hidden = block(hidden, None)
        dropout = getattr(cfg, "attention_probs_dropout_prob", getattr(cfg, "attention_dropout", 0.0))
        rows, ret_attention, kept = selective_last_block(
            blocks[-1], hidden, cfg.num_attention_heads, k, dropout if self.training else 0.0
        )
        n = hidden.shape[1] - 1
        everywhere = torch.ones(kept.shape, dtype=torch.bool, device=kept.device)
        if self.is_clip:  # CLIP's last_hidden_state is before its post-layernorm
            normed = _clip_tower(backbone).post_layernorm(rows)
            last = torch.cat([rows[:, :1], scatter_tokens(rows[:, 1:], kept, everywhere, n)], dim=1)
            return last, normed[:, 0], scatter_tokens(normed[:, 1:], kept, everywhere, n), ret_attention, kept
        normed = backbone.layernorm(rows)
        last = torch.cat([normed[:, :1], scatter_tokens(normed[:, 1:], kept, everywhere, n)], dim=1)
        return last, normed[:, 0], last[:, 1:], ret_attention, kept


class ZseCrossAttentionLayer(GradientCheckpointingLayer):
    """One post-norm transformer layer whose attention reads another token set.

    `out = LN(q + MHA(q, kv, kv)); out = LN(out + FFN(out))`. The attention function comes
    from transformers' registry (`config._attn_implementation`: `"sdpa"`, `"eager"`, ...);
    attention weights, when asked for, are computed eagerly.
    """

    def __init__(self, config: ZseConfig):
        super().__init__()
        d = config.hidden_size
        self.config = config
        self.num_heads = config.cross_attention_heads
        self.head_dim = d // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, config.cross_attention_ffn_dim), nn.GELU(), nn.Linear(config.cross_attention_ffn_dim, d)
        )
        self.ffn_norm = nn.LayerNorm(d)

    def forward(
        self,
        queries,
        keys_values,
        kv_mask=None,
        output_attentions: bool = False,
        projected_queries=None,
        projected_keys=None,
        projected_values=None,
    ):
        """Args: queries `[B, Nq, D]`, keys_values `[B, Nk, D]`, kv_mask `[B, Nk]` bool (True = usable);
        optionally their projections already made (`projected_queries [B, Nq, D]` = `q_proj(queries)`,
        `projected_keys`/`projected_values [B, Nk, D]`), which are then not recomputed.

        Returns: tokens `[B, Nq, D]` and, if asked, attention weights `[B, heads, Nq, Nk]` (else None).
        """
        b, nq, d = queries.shape
        nk = keys_values.shape[1]
        q = self.q_proj(queries) if projected_queries is None else projected_queries
        k = self.k_proj(keys_values) if projected_keys is None else projected_keys
        v = self.v_proj(keys_values) if projected_values is None else projected_values
        q = q.view(b, nq, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, nk, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, nk, self.num_heads, self.head_dim).transpose(1, 2)
        bias = None
        if kv_mask is not None:  # additive mask; no data-dependent branch, so it exports
            bias = torch.zeros(b, 1, 1, nk, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~kv_mask[:, None, None, :], torch.finfo(q.dtype).min)
        attention: Callable = eager_attention_forward
        if not output_attentions:
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        attn, weights = attention(self, q, k, v, bias, scaling=self.scaling, dropout=0.0)
        attn = self.o_proj(attn.reshape(b, nq, d))
        x = self.attn_norm(queries + attn)
        x = self.ffn_norm(x + self.ffn(x))
        return x, (weights if output_attentions else None)


class ZseCrossAttention(nn.Module):
    """Bidirectional cross-attention between sketch and photo tokens, one layer per direction.

    Which side gives Q, K and V (`config.cross_attention_query_side`):

    - `"self"` (default): the sketch branch takes **queries from the sketch** and **keys and
      values from the photo**; the photo branch the reverse. Each output token stays at its own
      image position and is enriched with what it found in the other image, so the relation
      network's pooled grid keeps each image's spatial layout. This follows the paper's Fig. 2.
    - `"other"`: the sketch branch takes queries from the photo and keys/values from the sketch
      (the official code's argument order); its output lies on the photo's grid.
    """

    def __init__(self, config: ZseConfig):
        super().__init__()
        self.query_side = config.cross_attention_query_side
        self.sketch_layer = ZseCrossAttentionLayer(config)
        self.photo_layer = ZseCrossAttentionLayer(config)

    def side_layers(self, side: str) -> tuple[ZseCrossAttentionLayer, ZseCrossAttentionLayer]:
        """`(layer this side gives queries to, layer it gives keys/values to)` for `side` in
        `"sketch"`, `"photo"`."""
        if side not in ("sketch", "photo"):
            raise ValueError(f"side must be 'sketch' or 'photo', got {side!r}")
        own, other = self.sketch_layer, self.photo_layer
        if side == "photo":
            own, other = other, own
        return (own, other) if self.query_side == "self" else (other, own)

    def project(self, features: ZseImageFeatures, side: str) -> torch.Tensor:
        """The cross-attention projections `[B, 3, N, D]` of one side's images: `q_proj` of the
        layer it gives queries to, `k_proj` and `v_proj` of the layer it gives keys/values to.
        They depend on one image only, so a query's are made once for all its candidates and a
        photo's can be stored at index time. Tokens dropped by token selection are not
        projected (their rows are 0: attention and pooling never read them)."""
        q_layer, kv_layer = self.side_layers(side)
        tokens = features.local_tokens
        kept = kept_token_index(features.token_mask)
        if kept is not None:
            tokens = gather_tokens(tokens, kept[0])
        out = torch.stack([q_layer.q_proj(tokens), kv_layer.k_proj(tokens), kv_layer.v_proj(tokens)], dim=1)
        if kept is not None:
            n = features.local_tokens.shape[1]
            out = torch.stack([scatter_tokens(out[:, i], kept[0], kept[1], n) for i in range(3)], dim=1)
        return out

    def forward(
        self, sketch: ZseImageFeatures, photo: ZseImageFeatures, output_attentions: bool = False
    ) -> ZseCrossAttentionOutput:
        """Cross-attend paired features (batch B each); see [`ZseCrossAttentionOutput`].

        Precomputed `cross_projections` of either side are used instead of recomputing them.
        With token selection (a token mask with dropped tokens), each branch runs on the kept
        tokens only (gathered; queries and keys/values) and its outputs are scattered back onto
        the full grid for the relation network's pooling, which is exact against attending with
        the mask and pooling the kept tokens (attention weights, when asked, come from the
        masked path on the full grid)."""
        s, p = sketch, photo
        if self.query_side == "self":
            s_q, p_q = s, p  # each branch keeps its own grid
        else:
            s_q, p_q = p, s
        s_kv, p_kv = p_q, s_q
        proj = {}
        for side, f in (("sketch", s), ("photo", p)):
            if f.cross_projections is not None and f.cross_projection_side == side:
                proj[side] = f.cross_projections
        if not proj and output_attentions:  # the plain path, as trained
            s_tok, s_attn = self.sketch_layer(
                s_q.local_tokens, s_kv.local_tokens, s_kv.token_mask, output_attentions=True
            )
            p_tok, p_attn = self.photo_layer(
                p_q.local_tokens, p_kv.local_tokens, p_kv.token_mask, output_attentions=True
            )
        else:
            s_from, p_from = ("sketch", "photo") if self.query_side == "self" else ("photo", "sketch")
            s_tok, s_attn = self._branch(self.sketch_layer, s_q, s_kv, proj.get(s_from), proj.get(p_from),
                                         output_attentions)
            p_tok, p_attn = self._branch(self.photo_layer, p_q, p_kv, proj.get(p_from), proj.get(s_from),
                                         output_attentions)
        return ZseCrossAttentionOutput(
            sketch_tokens=s_tok,
            sketch_grid_size=s_q.grid_size,
            sketch_token_mask=s_q.token_mask,
            photo_tokens=p_tok,
            photo_grid_size=p_q.grid_size,
            photo_token_mask=p_q.token_mask,
            sketch_attentions=s_attn,
            photo_attentions=p_attn,
        )

    def _branch(self, layer, q_feats, kv_feats, q_side_proj, kv_side_proj, output_attentions: bool):
        """One branch: `layer` with queries from `q_feats` and keys/values from `kv_feats`,
        reading their precomputed projections `[B, 3, N, D]` (or None) where given."""
        q_proj = q_side_proj[:, 0] if q_side_proj is not None else None
        k_proj, v_proj = (kv_side_proj[:, 1], kv_side_proj[:, 2]) if kv_side_proj is not None else (None, None)
        queries, keys_values, kv_mask = q_feats.local_tokens, kv_feats.local_tokens, kv_feats.token_mask
        q_kept = None if output_attentions else kept_token_index(q_feats.token_mask)
        kv_kept = None if output_attentions else kept_token_index(kv_mask)
        if q_kept is not None:
            queries = gather_tokens(queries, q_kept[0])
            q_proj = gather_tokens(q_proj, q_kept[0]) if q_proj is not None else None
        if kv_kept is not None:
            keys_values = gather_tokens(keys_values, kv_kept[0])
            k_proj = gather_tokens(k_proj, kv_kept[0]) if k_proj is not None else None
            v_proj = gather_tokens(v_proj, kv_kept[0]) if v_proj is not None else None
            kv_mask = kv_kept[1]
        tokens, attn = layer(queries, keys_values, kv_mask, output_attentions=output_attentions,
                             projected_queries=q_proj, projected_keys=k_proj, projected_values=v_proj)
        if q_kept is not None:
            tokens = scatter_tokens(tokens, q_kept[0], q_kept[1], q_feats.local_tokens.shape[1])
        return tokens, attn


class ZseRelationNetwork(nn.Module):
    """Kernel-based relation network.

    Each side's tokens `[B, h*w, D]` are laid out on their true grid `[B, D, h, w]` (reshape
    to `[B, h, w, D]`, then permute), average-pooled to `2G x 2G` and reduced by a 2x2 stride-2
    conv to `G x G` cells of `relation_dim` channels. Tokens removed by token selection are
    left out of the averages; a cell with no kept token is empty (all zeros, cosine 0).
    The `G^2 x G^2` cosine kernel between the two sides is flattened and scored by an MLP
    `G^4 -> 343 -> 49 -> 1`; `sigmoid` of the logit is the relation score.
    """

    def __init__(self, config: ZseConfig):
        super().__init__()
        self.grid = config.relation_grid
        self.pool_conv = nn.Conv2d(config.hidden_size, config.relation_dim, kernel_size=2, stride=2)
        dims = [self.grid**4, *config.relation_mlp_dims]
        layers = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-1], 1))
        self.mlp = nn.Sequential(*layers)

    def pool(self, tokens: torch.Tensor, grid_size: tuple[int, int], mask: torch.Tensor | None = None):
        """Pool tokens `[B, h*w, D]` on grid `(h, w)` to cells `[B, G*G, C]` and a cell mask `[B, G*G]`."""
        x, weight = masked_grid_pool(tokens, grid_size, 2 * self.grid, mask)
        cells = self.pool_conv(x)  # [B, C, G, G]
        valid = F.max_pool2d((weight > 0).to(x.dtype), 2) > 0  # [B, 1, G, G]
        cells = cells * valid
        return cells.flatten(2).transpose(1, 2), valid.flatten(1)

    def kernel(self, sketch_cells: torch.Tensor, photo_cells: torch.Tensor) -> torch.Tensor:
        """Cosine kernel `[B, G*G, G*G]` between cells `[B, G*G, C]` of both sides."""
        return F.normalize(sketch_cells, dim=-1) @ F.normalize(photo_cells, dim=-1).transpose(1, 2)

    def forward(self, cross: ZseCrossAttentionOutput) -> ZseRelationOutput:
        """Relation logits `[B]` (and the kernel and cells) for cross-attended pairs."""
        s_cells, _ = self.pool(cross.sketch_tokens, cross.sketch_grid_size, cross.sketch_token_mask)
        p_cells, _ = self.pool(cross.photo_tokens, cross.photo_grid_size, cross.photo_token_mask)
        kernel = self.kernel(s_cells, p_cells)
        logits = self.mlp(kernel.flatten(1)).squeeze(-1)
        return ZseRelationOutput(logits=logits, kernel=kernel, sketch_cells=s_cells, photo_cells=p_cells)


# ----------------------------------------------------------------------------- models


class ZsePreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading for ZSE models."""

    config_class = ZseConfig
    base_model_prefix = "zse"
    main_input_name = "sketch_pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["ZseCrossAttentionLayer", "ZseTokenizer"]
    # DINOv2 checkpoints carry a masked-image-modelling token that ZSE never uses
    _keys_to_ignore_on_load_unexpected = [r"encoder\.backbone\.embeddings\.mask_token"]

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained`, but keys are saved exactly as `state_dict()` names
        them (transformers would otherwise rename the DINOv2 backbone's keys to their legacy
        form, which raw `load_state_dict` users such as `Trainer` checkpoints do not map back)."""
        out = super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)
        if kwargs.get("is_main_process", True):
            _save_custom_pipelines(self.config, save_directory)
        return out

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, ZseTokenizer):  # visited after its convs: override them
            init.zeros_(module.gate)
            for conv in module.stem:
                if isinstance(conv, nn.Conv2d):
                    init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                    init.zeros_(conv.bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class ZseModel(ZsePreTrainedModel):
    """ZSE-SBIR: encoder with tokenizer, cross-attention and relation network.

    Example:

    ```python
    >>> from zse_hf import ZseConfig, ZseModel, ZseProcessor
    >>> model = ZseModel(ZseConfig()).eval()
    >>> processor = ZseProcessor.from_config(model.config)
    >>> inputs = processor(sketches=sketch_image, photos=photo_image, return_tensors="pt")
    >>> out = model(**inputs)
    >>> out.cosine, out.relation_scores
    >>> feats = model(pixel_values=inputs["photo_pixel_values"])  # one batch of images: get_image_features
    >>> feats.last_hidden_state, feats.pooler_output  # [B, 1 + N, D] tokens, [B, D] [Ret] embeddings
    ```
    """

    def __init__(self, config: ZseConfig):
        super().__init__(config)
        self.encoder = ZseEncoder(config)
        self.cross_attention = ZseCrossAttention(config)
        self.relation_network = ZseRelationNetwork(config)
        self.post_init()

    @classmethod
    def from_backbone(cls, backbone_name_or_path: str, **config_kwargs) -> ZseModel:
        """Build a ZSE model around pretrained backbone weights.

        Args:
            backbone_name_or_path: a Hub repo id (e.g. `facebook/dinov2-small`,
                `openai/clip-vit-base-patch16`) or a local folder holding a `Dinov2Model`,
                `ViTModel`, `CLIPVisionModel` or full `CLIPModel` checkpoint (a `CLIPModel`'s
                vision tower is taken; its text tower and projections are dropped).
            **config_kwargs: other [`ZseConfig`] fields.

        The backbone weights are loaded unchanged (a DINOv2 `mask_token`, unused by ZSE, is
        dropped); the tokenizer, cross-attention and relation network are freshly initialised
        (the tokenizer gate at zero).
        """
        backbone = AutoModel.from_pretrained(backbone_name_or_path)
        # CLIPModel / CLIPVisionModelWithProjection: keep the CLIPVisionModel inside
        while isinstance(getattr(backbone, "vision_model", None), PreTrainedModel):
            backbone = backbone.vision_model
        config = ZseConfig(backbone_config=backbone.config, **config_kwargs)
        model = cls(config)
        state = {k: v for k, v in backbone.state_dict().items() if k != "embeddings.mask_token"}
        missing, unexpected = model.encoder.backbone.load_state_dict(state, strict=False)
        missing = [k for k in missing if "pooler" not in k]
        if missing or unexpected:
            raise ValueError(f"backbone weights do not fit: missing={missing[:5]} unexpected={unexpected[:5]}")
        return model

    # ------------------------------------------------------------------ encoder

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        output_ret_attention: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ZseImageFeatures | tuple:
        """Encode images `[B, 3, H, W]` (sketches or photos: the encoder is shared).

        Args:
            pixel_values: `[B, 3, H, W]` normalised images.
            output_ret_attention: also return `ret_attention [B, N]`.
            output_attentions, output_hidden_states: the backbone's self-attentions and hidden
                states (defaults from the config).
            return_dict: `False` returns `to_tuple()` of the output (default from the config).

        Returns: [`ZseImageFeatures`]: `last_hidden_state [B, 1+N, D]`, `pooler_output` =
        `ret_embeds [B, D]` (L2-normalised), `local_tokens [B, N, D]`, `token_mask [B, N]`,
        `grid_size`.
        """
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = cfg.return_dict if return_dict is None else return_dict
        out = self.encoder(
            pixel_values,
            output_ret_attention=output_ret_attention,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return out if return_dict else out.to_tuple()

    # ------------------------------------------------------------------ pair API

    def score_pairs(
        self,
        sketch_features: ZseImageFeatures,
        photo_features: ZseImageFeatures,
        output_attentions: bool = False,
        output_kernel: bool = False,
    ) -> ZsePairOutput:
        """Score B pairs: sketch i with photo i (features from `get_image_features`, batch B each).

        Args:
            output_attentions: also return both branches' cross-attention weights.
            output_kernel: also return the relation network's `[B, G*G, G*G]` cell kernel.

        Returns: [`ZsePairOutput`] with `relation_logits [B]` and `relation_scores [B]`.
        """
        _check_pair(sketch_features, photo_features)
        cross = self.cross_attention(sketch_features, photo_features, output_attentions=output_attentions)
        relation = self.relation_network(cross)
        return ZsePairOutput(
            relation_logits=relation.logits,
            relation_scores=torch.sigmoid(relation.logits),
            kernel=relation.kernel if output_kernel else None,
            sketch_cross_attentions=cross.sketch_attentions,
            photo_cross_attentions=cross.photo_attentions,
        )

    def project_image_features(self, features: ZseImageFeatures, side: str) -> ZseImageFeatures:
        """`features` with their cross-attention projections `cross_projections [B, 3, N, D]` for
        `side` (`"sketch"` for queries, `"photo"` for candidates): the pair head's per-image work,
        done once per image instead of once per pair. Features that already carry them for
        `side` are returned unchanged. Scores are the same as without (up to float rounding)."""
        if features.cross_projections is not None and features.cross_projection_side == side:
            return features
        return ZseImageFeatures(
            ret_embeds=features.ret_embeds,
            local_tokens=features.local_tokens,
            token_mask=features.token_mask,
            ret_attention=features.ret_attention,
            grid_size=features.grid_size,
            cross_projections=self.cross_attention.project(features, side),
            cross_projection_side=side,
        )

    def score_indexed_pairs(
        self,
        query_features: ZseImageFeatures,
        candidate_features: ZseImageFeatures,
        query_index: torch.Tensor,
        candidate_index: torch.Tensor,
        chunk_size: int | None = None,
        return_logits: bool = False,
        progress: bool = False,
    ) -> torch.Tensor:
        """Relation scores `[M]` of the pairs `(query_index[m], candidate_index[m])`, `chunk_size`
        pairs at a time (bounds memory); nothing is re-encoded.

        The one chunked pair scorer: [`score_all_pairs`], evaluation's and the index's top-K
        re-ranking all call it. Features may live elsewhere (e.g. fp16 on the CPU): each chunk
        is moved to the model's device and dtype.

        Args:
            query_features: features of Q queries (sketches).
            candidate_features: features of K candidates (photos).
            query_index, candidate_index: `[M]` long row indices into each.
            chunk_size: pairs scored per call of the pair head; None: [`pair_chunk_size`].
            return_logits: return relation logits instead of scores in (0, 1).
            progress: show a progress bar.

        Each query's and each candidate's cross-attention projections are made once per chunk
        (or read from `cross_projections`, see [`project_image_features`]), not once per pair.

        Returns: `[M]` tensor on the model's device, in its dtype.
        """
        query_index = torch.as_tensor(query_index, dtype=torch.long)
        candidate_index = torch.as_tensor(candidate_index, dtype=torch.long)
        if query_index.shape != candidate_index.shape or query_index.ndim != 1:
            raise ValueError(
                f"query_index and candidate_index must be [M] of equal length, got {list(query_index.shape)} "
                f"and {list(candidate_index.shape)}"
            )
        if chunk_size is None:
            chunk_size = self.pair_chunk_size(query_features.local_tokens.shape[1])
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        starts = range(0, len(query_index), chunk_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="relation scores", unit="chunk", leave=False)
        out = []
        for start in starts:
            sl = slice(start, start + chunk_size)
            # each query and candidate of the chunk is moved and projected once, then paired
            q = self._paired_rows(query_features, query_index[sl], "sketch")
            c = self._paired_rows(candidate_features, candidate_index[sl], "photo")
            pair = self.score_pairs(q, c)
            out.append(pair.relation_logits if return_logits else pair.relation_scores)
        if not out:
            param = next(self.parameters())
            return torch.zeros(0, device=param.device, dtype=param.dtype)
        return torch.cat(out)

    def pair_chunk_size(self, num_tokens: int) -> int:
        """Default pairs per pair-head call for images of `num_tokens` tokens: on the CPU as many
        as keep about 4096 query tokens per call (the feed-forward activations stay in cache:
        1.4x faster than 128 pairs at 16x16 tokens on 2 cores), elsewhere 256."""
        if next(self.parameters()).device.type == "cpu":
            return max(1, 4096 // max(1, num_tokens))
        return 256

    def _paired_rows(self, features: ZseImageFeatures, index: torch.Tensor, side: str) -> ZseImageFeatures:
        """Rows `index [M]` of `features` on the model, with their projections for `side`, each
        distinct row moved and projected once (one row repeated M times is a broadcast view)."""
        uniq, inverse = torch.unique(index, return_inverse=True)
        device = features.local_tokens.device
        if len(uniq) == len(index):  # all distinct: one gather, already in pair order
            return self.project_image_features(features.select(index.to(device)).to_model(self), side)
        rows = self.project_image_features(features.select(uniq.to(device)).to_model(self), side)
        if len(uniq) == 1:
            m = len(index)
            return ZseImageFeatures(
                local_tokens=rows.local_tokens.expand(m, -1, -1),
                token_mask=rows.token_mask.expand(m, -1) if rows.token_mask is not None else None,
                grid_size=rows.grid_size,
                cross_projections=rows.cross_projections.expand(m, -1, -1, -1),
                cross_projection_side=side,
            )
        return rows.select(inverse.to(rows.local_tokens.device))

    def score_all_pairs(
        self,
        query_features: ZseImageFeatures,
        candidate_features: ZseImageFeatures,
        chunk_size: int | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Relation scores `[Q, K]` of every query against every candidate, without re-encoding.

        Args:
            query_features: features of Q sketches.
            candidate_features: features of K photos (e.g. the top-K of a [Ret] search,
                read back from an index's token store).
            chunk_size: number of pairs scored at once (bounds memory; None: [`pair_chunk_size`]).
        """
        q_n = query_features.local_tokens.shape[0]
        k_n = candidate_features.local_tokens.shape[0]
        qi = torch.arange(q_n).repeat_interleave(k_n)
        ki = torch.arange(k_n).repeat(q_n)
        return self.score_indexed_pairs(
            query_features, candidate_features, qi, ki, chunk_size=chunk_size, progress=progress
        ).view(q_n, k_n)

    def rerank_score(self, relation_scores, ret_scores, ret_weight: float | None = None):
        """The key a re-rank sorts a query's candidates by (descending): `relation_scores +
        ret_weight * ret_scores`.

        Args:
            relation_scores: `[...]` relation scores in (0, 1) (tensor or array).
            ret_scores: `[...]` [Ret] cosines of the same pairs.
            ret_weight: None: `config.rerank_ret_weight` (0 = the paper's relation-only order).

        Returns: `[...]`, the type of the inputs.
        """
        w = self.config.rerank_ret_weight if ret_weight is None else check_rerank_ret_weight(ret_weight)
        return relation_scores if w == 0 else relation_scores + w * ret_scores

    def relation_logits(self, sketch_features: ZseImageFeatures, photo_features: ZseImageFeatures) -> torch.Tensor:
        """Relation logits `[B]` for paired features; `score_pairs(...).relation_logits`."""
        return self.score_pairs(sketch_features, photo_features).relation_logits

    def relation_score(self, sketch_features: ZseImageFeatures, photo_features: ZseImageFeatures) -> torch.Tensor:
        """Relation scores `[B]` for paired features (sketch i with photo i); `score_pairs(...).relation_scores`."""
        return self.score_pairs(sketch_features, photo_features).relation_scores

    def relation_scores(
        self, query_features: ZseImageFeatures, candidate_features: ZseImageFeatures, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Relation scores `[Q, K]` of every query against every candidate; same as [`score_all_pairs`]."""
        return self.score_all_pairs(query_features, candidate_features, chunk_size=chunk_size)

    def _relation_rank_loss(self, sketch: ZseImageFeatures, photo: ZseImageFeatures, labels: torch.Tensor):
        """Listwise cross-entropy of relation logits: sketch i against all `B` photos of the
        batch must pick photo i; other photos of sketch i's class are left out (not negatives)."""
        b = labels.shape[0]
        qi = torch.arange(b, device=labels.device).repeat_interleave(b)
        ki = torch.arange(b, device=labels.device).repeat(b)
        logits = self.score_pairs(sketch.select(qi), photo.select(ki)).relation_logits.view(b, b)
        return in_batch_cross_entropy(logits, labels)

    def _correspondence_loss(self, sketch_pixel_values: torch.Tensor, photo_pixel_values: torch.Tensor,
                             targets: torch.Tensor) -> torch.Tensor:
        """[`correspondence_loss`] of `B` warped (pseudo-sketch, photo) pairs `[B, 3, H, W]` with
        true photo cells `targets [B, G*G]` (-1: not counted); the kernel is taken after
        cross-attention, rows on the sketch's grid."""
        sketch = self.get_image_features(sketch_pixel_values)
        photo = self.get_image_features(photo_pixel_values)
        kernel = self.score_pairs(sketch, photo, output_kernel=True).kernel
        if self.config.cross_attention_query_side != "self":  # the branches swap grids
            kernel = kernel.transpose(1, 2)
        return correspondence_loss(kernel, targets, self.config.correspondence_temperature)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        sketch_pixel_values: torch.Tensor | None = None,
        photo_pixel_values: torch.Tensor | None = None,
        negative_pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        correspondence_sketch_pixel_values: torch.Tensor | None = None,
        correspondence_photo_pixel_values: torch.Tensor | None = None,
        correspondence_targets: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> ZseModelOutput | ZseImageFeatures | tuple:
        """Score `B` (sketch, photo) pairs and, with `labels`, compute the training loss; or, with
        `pixel_values` alone, encode one batch of images.

        `model(pixel_values=x)` (`x [B, 3, H, W]`, sketches or photos) is
        `model.get_image_features(x)`: [`ZseImageFeatures`] with transformers' vision-model fields
        `last_hidden_state [B, 1 + N, D]` ([Ret] token first) and `pooler_output [B, D]` (the
        L2-normalised [Ret] embedding), as `pipeline("image-feature-extraction")` reads them.

        Args:
            sketch_pixel_values: `[B, 3, H, W]` anchor sketches.
            photo_pixel_values: `[B, 3, H, W]` photos paired with them (positives when training).
            negative_pixel_values: `[B, 3, H, W]` photos of another class than each sketch. If
                omitted while `labels` are given, the hardest in-batch photo of another class is used.
            labels: `[B]` class ids of the sketches (and of their positive photos). Turns on the
                loss: triplet margin loss (L2 on [Ret] embeddings) + MSE of relation scores
                against 1 for positives and 0 for negatives (+ optional InfoNCE and listwise
                relation terms).
            output_attentions: return the cross-attention weights and the encoder's
                self-attentions (the latter with eager attention); default from the config.
            output_hidden_states: return the encoder's hidden states; default from the config.
            return_dict: `False` returns `to_tuple()` of the output; default from the config.
            correspondence_sketch_pixel_values, correspondence_photo_pixel_values: `[Bc, 3, H, W]`
                warped pseudo-sketches and their photos (`zse_hf.data.warps.warped_pair`, not ink-cropped).
            correspondence_targets: `[Bc, G*G]` true photo cell per sketch cell (-1: not counted).
                With the three given, `correspondence_loss` is returned and, with `labels`, added
                to `loss` times the config's `correspondence_weight` (default 0).
            pixel_values: `[B, 3, H, W]` images to encode alone (no pair inputs then); returns
                [`ZseImageFeatures`] (see [`get_image_features`]).

        Returns: [`ZseModelOutput`] for pairs, [`ZseImageFeatures`] for `pixel_values`
        (`to_tuple()` of either with `return_dict=False`).
        """
        if pixel_values is not None:
            pair_inputs = {
                "sketch_pixel_values": sketch_pixel_values, "photo_pixel_values": photo_pixel_values,
                "negative_pixel_values": negative_pixel_values, "labels": labels,
                "correspondence_sketch_pixel_values": correspondence_sketch_pixel_values,
                "correspondence_photo_pixel_values": correspondence_photo_pixel_values,
                "correspondence_targets": correspondence_targets,
            }
            given = [name for name, value in pair_inputs.items() if value is not None]
            if given:
                raise ValueError(f"pass either pixel_values (one batch of images to encode) or the pair inputs, "
                                 f"not both; got pixel_values and {', '.join(given)}")
            return self.get_image_features(pixel_values, output_attentions=output_attentions,
                                           output_hidden_states=output_hidden_states, return_dict=return_dict)
        if sketch_pixel_values is None or photo_pixel_values is None:
            raise ValueError("pass sketch_pixel_values and photo_pixel_values (a batch of pairs), or pixel_values "
                             "alone (one batch of images to encode)")
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = cfg.return_dict if return_dict is None else return_dict
        flags = {
            "output_attentions": output_attentions, "output_hidden_states": output_hidden_states, "return_dict": True
        }
        sketch = self.get_image_features(sketch_pixel_values, **flags)
        photo = self.get_image_features(photo_pixel_values, **flags)
        pair = self.score_pairs(sketch, photo, output_attentions=output_attentions)
        logits = pair.relation_logits
        cosine = (sketch.ret_embeds * photo.ret_embeds).sum(-1)
        loss = triplet = relation = infonce = relation_rank = None
        if labels is not None:
            if labels.shape != (sketch.ret_embeds.shape[0],):
                raise ValueError(f"labels must have shape [{sketch.ret_embeds.shape[0]}], got {list(labels.shape)}")
            if negative_pixel_values is not None:
                negative = self.get_image_features(negative_pixel_values, output_attentions=False,
                                                   output_hidden_states=False, return_dict=True)
                _check_pair(sketch, negative)
            else:
                negative = photo.select(_hardest_negatives(sketch.ret_embeds, photo.ret_embeds, labels))
            neg_logits = self.score_pairs(sketch, negative).relation_logits
            triplet = F.triplet_margin_loss(
                sketch.ret_embeds, photo.ret_embeds, negative.ret_embeds, margin=cfg.triplet_margin, p=2
            )
            scores = torch.sigmoid(torch.cat([logits, neg_logits]))
            targets = torch.cat([torch.ones_like(logits), torch.zeros_like(neg_logits)])
            relation = F.mse_loss(scores, targets)
            loss = cfg.triplet_weight * triplet + cfg.relation_weight * relation
            if cfg.infonce_weight > 0:
                infonce = infonce_loss(sketch.ret_embeds, photo.ret_embeds, labels, cfg.infonce_temperature)
                loss = loss + cfg.infonce_weight * infonce
            if cfg.relation_rank_weight > 0:
                relation_rank = self._relation_rank_loss(sketch, photo, labels)
                loss = loss + cfg.relation_rank_weight * relation_rank
        correspondence = None
        if correspondence_targets is not None:
            if correspondence_sketch_pixel_values is None or correspondence_photo_pixel_values is None:
                raise ValueError("correspondence_targets need correspondence_sketch_pixel_values and "
                                 "correspondence_photo_pixel_values")
            correspondence = self._correspondence_loss(
                correspondence_sketch_pixel_values, correspondence_photo_pixel_values, correspondence_targets
            )
            weight = cfg.correspondence_weight
            if loss is not None and weight > 0:
                loss = loss + weight * correspondence
        output = ZseModelOutput(
            loss=loss,
            triplet_loss=triplet,
            relation_loss=relation,
            infonce_loss=infonce,
            relation_rank_loss=relation_rank,
            cosine=cosine,
            relation_logits=logits,
            relation_scores=pair.relation_scores,
            sketch_embeds=sketch.ret_embeds,
            photo_embeds=photo.ret_embeds,
            sketch_token_mask=sketch.token_mask,
            photo_token_mask=photo.token_mask,
            hidden_states=sketch.hidden_states,
            attentions=sketch.attentions,
            photo_hidden_states=photo.hidden_states,
            photo_attentions=photo.attentions,
            sketch_cross_attentions=pair.sketch_cross_attentions,
            photo_cross_attentions=pair.photo_cross_attentions,
            correspondence_loss=correspondence,
        )
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------- helpers


def _save_custom_pipelines(config, save_directory) -> None:
    """Keep a saved folder's `custom_pipelines` (from a Hub repo's `config.json`) loadable: copy each
    pipeline's code file (and the files it imports relatively) beside the model code when they sit
    beside this file, else drop the entry from the saved `config.json` (a folder must not name a
    pipeline file it lacks)."""
    from transformers.dynamic_module_utils import get_relative_import_files

    tasks = getattr(config, "custom_pipelines", None)
    config_file = os.path.join(save_directory, "config.json")
    if not tasks or not os.path.isfile(config_file):
        return
    here = os.path.dirname(os.path.abspath(__file__))
    kept = {}
    for task, info in tasks.items():
        impl = info.get("impl", "") if isinstance(info, dict) else ""
        name = impl.rsplit(".", 1)[0] + ".py" if "." in impl else ""
        source = os.path.join(here, name)
        if name and not os.path.isfile(os.path.join(save_directory, name)) and os.path.isfile(source):
            for path in (source, *get_relative_import_files(source)):
                target = os.path.join(save_directory, os.path.basename(path))
                if not os.path.isfile(target):
                    shutil.copyfile(path, target)
        if name and os.path.isfile(os.path.join(save_directory, name)):
            kept[task] = info
    if kept != tasks:
        with open(config_file, encoding="utf-8") as f:
            saved = json.load(f)
        if kept:
            saved["custom_pipelines"] = kept
        else:
            saved.pop("custom_pipelines", None)
        with open(config_file, "w", encoding="utf-8") as f:
            f.write(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def _check_pair(a: ZseImageFeatures, b: ZseImageFeatures) -> None:
    for name, f in (("sketch_features", a), ("photo_features", b)):
        if not isinstance(f, ZseImageFeatures) or f.local_tokens is None:
            raise TypeError(f"{name} must be ZseImageFeatures from get_image_features, got {type(f).__name__}")
    if a.local_tokens.shape[0] != b.local_tokens.shape[0]:
        raise ValueError(
            f"paired features need equal batch sizes, got {a.local_tokens.shape[0]} sketches and "
            f"{b.local_tokens.shape[0]} photos; use score_all_pairs() to score every pair"
        )
    if a.local_tokens.shape[-1] != b.local_tokens.shape[-1]:
        raise ValueError(f"token widths differ: {a.local_tokens.shape[-1]} vs {b.local_tokens.shape[-1]}")


def _hardest_negatives(anchors: torch.Tensor, photos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Index `[B]` of the most similar photo of another class for each anchor `[B, D]`."""
    same = labels[:, None] == labels[None, :]
    if bool(same.all(dim=1).any()):
        raise ValueError("in-batch negatives need at least two classes per batch; pass negative_pixel_values")
    sim = (anchors @ photos.T).detach().masked_fill(same, float("-inf"))
    return sim.argmax(dim=1)


def in_batch_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `[B, B]` logits (row i = query i against every candidate) towards the
    diagonal; same-class off-diagonal candidates `labels [B]` are left out rather than counted
    as negatives. Returns a scalar."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(labels), device=logits.device))


def correspondence_loss(kernel: torch.Tensor, targets: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Cross-entropy of each counted sketch cell's softmax over photo cells towards its true cell.

    Args:
        kernel: `[B, N, N]` relation kernel (cosines), sketch cells (rows) by photo cells.
        targets: `[B, N]` long true photo cell per sketch cell; `-1` = not counted (no ink, or
            the cell's centre falls outside the photo).
        temperature: the softmax is over `kernel / temperature`.

    Returns: scalar mean over the counted cells (0, still attached to `kernel`, when none counts).
    """
    if kernel.ndim != 3 or kernel.shape[1] != kernel.shape[2]:
        raise ValueError(f"kernel must be [B, N, N], got {list(kernel.shape)}")
    if targets.shape != kernel.shape[:2]:
        raise ValueError(f"targets must be [B, N] = {list(kernel.shape[:2])}, got {list(targets.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    targets = targets.to(device=kernel.device, dtype=torch.long)
    if not bool((targets >= 0).any()):
        return kernel.sum() * 0.0
    logits = kernel.flatten(0, 1).float() / temperature
    return F.cross_entropy(logits, targets.flatten(), ignore_index=-1)


def infonce_loss(sketch: torch.Tensor, photo: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE on L2-normalised `[B, D]` embeddings with class `labels [B]`;
    same-class off-diagonal pairs are not negatives. Returns a scalar."""
    logits = sketch @ photo.T / temperature
    return 0.5 * (in_batch_cross_entropy(logits, labels) + in_batch_cross_entropy(logits.T, labels))


__all__ = [
    "correspondence_loss",
    "ZseCrossAttention",
    "ZseCrossAttentionLayer",
    "ZseCrossAttentionOutput",
    "ZseEncoder",
    "ZseImageFeatures",
    "ZseModel",
    "ZseModelOutput",
    "ZsePairOutput",
    "ZsePreTrainedModel",
    "ZseRelationNetwork",
    "ZseRelationOutput",
    "ZseTokenizer",
]
