"""Shared fixtures: tiny configurations that run in milliseconds on CPU."""

import pytest
import torch
from transformers import Dinov2Config

from zse_hf import ZseConfig, ZseModel


def tiny_config(**overrides) -> ZseConfig:
    """A DINOv2-shaped ZSE config small enough for unit tests (56 px input, 4x4 patch grid)."""
    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=56, mlp_ratio=2
    )
    kwargs = dict(
        backbone_config=backbone,
        image_size=56,
        tokenizer_channels=[4, 8, 16],
        cross_attention_heads=2,
        cross_attention_ffn_dim=64,
        relation_grid=2,
        relation_dim=16,
        relation_mlp_dims=[8, 4],
    )
    kwargs.update(overrides)
    return ZseConfig(**kwargs)


@pytest.fixture
def tiny_model() -> ZseModel:
    torch.manual_seed(0)
    return ZseModel(tiny_config()).eval()


@pytest.fixture
def pixels() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 56, 56)
