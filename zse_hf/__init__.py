"""zse-sbir: zero-shot everything sketch-based image retrieval (ZSE-SBIR) for transformers.

Importing this package registers the model with the `Auto*` classes, so a saved folder or
Hub repo loads with `AutoModel.from_pretrained(...)` and `AutoProcessor.from_pretrained(...)`.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

from .configuration_zse import ZseConfig
from .image_processing_zse import ZseImageProcessor
from .modeling_zse import (
    ZseCrossAttention,
    ZseCrossAttentionOutput,
    ZseEncoder,
    ZseImageFeatures,
    ZseModel,
    ZseModelOutput,
    ZsePairOutput,
    ZsePreTrainedModel,
    ZseRelationNetwork,
    ZseRelationOutput,
    ZseTokenizer,
)
from .processing_zse import ZseProcessor

__version__ = "0.1.0"

AutoConfig.register("zse", ZseConfig, exist_ok=True)
AutoModel.register(ZseConfig, ZseModel, exist_ok=True)
AutoImageProcessor.register(ZseConfig, slow_image_processor_class=ZseImageProcessor, exist_ok=True)
AutoProcessor.register(ZseConfig, ZseProcessor, exist_ok=True)

# `save_pretrained` writes `auto_map`, so saved folders also load with trust_remote_code=True
# where this package is not installed.
ZseConfig.register_for_auto_class()
ZseModel.register_for_auto_class("AutoModel")
ZseImageProcessor.register_for_auto_class("AutoImageProcessor")
ZseProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "ZseConfig",
    "ZseCrossAttention",
    "ZseCrossAttentionOutput",
    "ZseEncoder",
    "ZseImageFeatures",
    "ZseImageProcessor",
    "ZseModel",
    "ZseModelOutput",
    "ZsePairOutput",
    "ZsePreTrainedModel",
    "ZseProcessor",
    "ZseRelationNetwork",
    "ZseRelationOutput",
    "ZseTokenizer",
]
