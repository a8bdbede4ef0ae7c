"""zse-sbir: zero-shot everything sketch-based image retrieval (ZSE-SBIR) for transformers.

Importing this package registers the model with the `Auto*` classes, so a saved folder or
Hub repo loads with `AutoModel.from_pretrained(...)` and `AutoProcessor.from_pretrained(...)`, and
registers the `"sketch-based-image-retrieval"` pipeline task ([`ZseSketchRetrievalPipeline`]) with
transformers' `pipeline()`.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

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
from .pipeline_zse import TASK as SBIR_TASK
from .pipeline_zse import ZseSketchRetrievalPipeline
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

# pipeline("sketch-based-image-retrieval", model=...) with the package's class; a Hub repo also names
# the class in its config's `custom_pipelines` (written by `zse-sbir export`), for trust_remote_code=True.
if PIPELINE_REGISTRY.supported_tasks.get(SBIR_TASK, {}).get("impl") is not ZseSketchRetrievalPipeline:
    PIPELINE_REGISTRY.register_pipeline(SBIR_TASK, pipeline_class=ZseSketchRetrievalPipeline, pt_model=AutoModel,
                                        type="image")

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
    "ZseSketchRetrievalPipeline",
    "ZseTokenizer",
]
