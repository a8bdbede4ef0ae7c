"""Lossy int8 CPU re-ranking: the pair head's linear layers under torch dynamic quantisation.

`int8_pair_model(model)` returns a copy of the model whose cross-attention and relation-network
`nn.Linear` layers are `torch.ao` dynamically quantised (int8 weights, activations quantised on
the fly); the encoder is left in fp32, so [Ret] embeddings and stored tokens are unchanged.
Relation scores are *approximate*: with the shipped model, score correlation with fp32 is
~0.999 and the test-class mAP changes slightly (README, "Retrieval with faiss"). CPU only.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def int8_pair_model(model: nn.Module) -> nn.Module:
    """A CPU copy of `model` (a `ZseModel`) with the pair head's `nn.Linear` layers dynamically
    quantised to int8 (lossy); its `score_indexed_pairs` etc. then run the int8 head. `model`
    itself is not changed. Raises ValueError for a model that is not on the CPU in fp32."""
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        raise ValueError(f"int8 re-ranking needs an fp32 model on the CPU, got {param.dtype} on {param.device}")
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as err:  # pragma: no cover
        raise ValueError("int8 re-ranking needs torch.ao.quantization (torch >= 2.0)") from err
    quantized = copy.deepcopy(model).eval()
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        for name in ("cross_attention", "relation_network"):
            setattr(quantized, name, quantize_dynamic(getattr(quantized, name), {nn.Linear}, dtype=torch.qint8))
    quantized.is_int8_pair_head = True
    return quantized
