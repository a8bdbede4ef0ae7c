"""transformers' own common tests (those of the installed version, from its PyPI sdist) on ZseModel, ZseConfig,
ZseImageProcessor and ZseProcessor with a tiny DINOv2 configuration.

The testers follow transformers' CLIP tests for a composite model: `vision_model_tester` gives
`get_image_features` its own inputs; the second image input (`photo_pixel_values`) is an
`additional_model_inputs` entry. Each test that does not apply is declared below with its reason.
"""

import tempfile
import unittest

import numpy as np
import torch
import transformers_common
from PIL import Image

from zse_hf import ZseConfig, ZseImageProcessor, ZseModel, ZseProcessor

from conftest import tiny_config

modeling_common, configuration_common, image_processing_common, processing_common = transformers_common.load()
ModelTesterMixin = modeling_common.ModelTesterMixin
floats_tensor = modeling_common.floats_tensor
ConfigTester = configuration_common.ConfigTester
ImageProcessingTestMixin = image_processing_common.ImageProcessingTestMixin
ImageProcessingTester = image_processing_common.ImageProcessingTester
ProcessorTesterMixin = processing_common.ProcessorTesterMixin

IMAGE_SIZE = 56
PATCH = 14
LAYERS = 2


def _not_applicable(reason: str):
    """A common test that does not apply to ZSE, skipped with `reason`."""

    def test(self, *args, **kwargs):
        self.skipTest(reason)

    return test


def _declare(tester: type, mixin: type, table: dict[str, tuple[str, ...]]) -> None:
    """Declare the mixin tests in `table` (`{reason: test names}`) not applicable on `tester`.

    Every name must be a test of `mixin` (a typo or a renamed test fails at import)."""
    for reason, names in table.items():
        for name in names:
            if not callable(getattr(mixin, name, None)):
                raise AttributeError(f"{mixin.__name__} has no test {name!r} to declare not applicable")
            setattr(tester, name, _not_applicable(reason))


# ----------------------------------------------------------------------------- model


class ZseVisionTester:
    """Inputs of the shared encoder alone (`get_image_features(pixel_values=...)`)."""

    def __init__(self, parent, batch_size=3):
        self.parent = parent
        self.batch_size = batch_size
        self.num_hidden_layers = LAYERS

    def prepare_config_and_inputs_for_common(self):
        config = tiny_config()
        return config, {"pixel_values": floats_tensor([self.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE])}


class ZseModelTester:
    def __init__(self, parent, batch_size=3):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = IMAGE_SIZE
        self.patch_size = PATCH
        self.num_hidden_layers = LAYERS
        self.hidden_size = 32
        self.num_attention_heads = 2
        self.seq_length = (IMAGE_SIZE // PATCH) ** 2 + 1  # patches + [Ret]
        self.expected_num_hidden_layers = LAYERS + 1
        self.num_hidden_states_types = 2  # hidden states of the sketches and of the photos
        self.is_training = True
        self.vision_model_tester = ZseVisionTester(parent, batch_size)

    def get_config(self):
        return tiny_config()

    def prepare_config_and_inputs_for_common(self):
        shape = [self.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE]
        inputs = {"sketch_pixel_values": floats_tensor(shape), "photo_pixel_values": floats_tensor(shape)}
        return self.get_config(), inputs


class ZseModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (ZseModel,)
    additional_model_inputs = ["photo_pixel_values"]
    test_resize_embeddings = False
    test_can_init_all_missing_weights_before_2023 = True  # ours has no dated copyright header: run it
    _is_composite = True  # the backbone is a sub-config with its own attention implementation

    def setUp(self):
        self.model_tester = ZseModelTester(self)
        self.config_tester = ConfigTester(self, config_class=ZseConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:  # class ids, two classes so that in-batch negatives exist
            n = inputs_dict["sketch_pixel_values"].shape[0]
            inputs_dict["labels"] = torch.arange(n) % 2
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = ZseModel(config).eval()
        with torch.no_grad():
            out = model(**inputs)
        b = self.model_tester.batch_size
        self.assertEqual(out.relation_scores.shape, (b,))
        self.assertEqual(out.sketch_embeds.shape, (b, self.model_tester.hidden_size))

    def test_tuple_and_dict_outputs_agree(self):
        """`return_dict=False` gives `to_tuple()` of the dict output, bool token masks included
        (what `test_model_outputs_equivalence` checks for float outputs)."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = ZseModel(config).eval()
        for flags in ({}, {"output_hidden_states": True}, {"output_attentions": True}):
            with torch.no_grad():
                as_tuple = model(**inputs, return_dict=False, **flags)
                as_dict = model(**inputs, return_dict=True, **flags).to_tuple()
            self.assertEqual(len(as_tuple), len(as_dict))
            for a, b in zip(torch.utils._pytree.tree_leaves(as_tuple), torch.utils._pytree.tree_leaves(as_dict)):
                self.assertTrue(torch.equal(a, b))

    # ---- not applicable, with the reason
    test_inputs_embeds = _not_applicable("ZSE takes images only: no input embeddings")
    test_model_get_set_embeddings = _not_applicable("ZSE has no token embeddings to get or set")
    test_model_outputs_equivalence = _not_applicable(
        "the outputs hold bool token masks, which the test's difference message subtracts (`bool - bool` "
        "raises); the same tuple/dict check runs in test_tuple_and_dict_outputs_agree"
    )
    test_reverse_loading_mapping = _not_applicable(
        "by design ZsePreTrainedModel.save_pretrained defaults to save_original_format=False: keys are saved as "
        "state_dict() names them (no legacy DINOv2 renaming), so raw load_state_dict users (Trainer "
        "checkpoints) read them back; loading the legacy names still works (test_modeling round trips)"
    )


# ----------------------------------------------------------------------------- image processor


_declare(ZseModelTest, ModelTesterMixin, {
    "ZSE has no language-model head, labels shift or cache": (
        "test_bc_cache_name_forward",
        "test_causal_lm_loss_honors_shift_labels",
        "test_encoder_decoder_loss_no_double_shift",
    ),
    "no rotary position embeddings (DINOv2's are learned and interpolated)": (
        "test_model_rope_scaling_frequencies", "test_model_rope_scaling_from_config_0_linear",
        "test_model_rope_scaling_from_config_1_dynamic", "test_model_rope_scaling_from_config_2_yarn",
        "test_model_rope_with_partial_rotation", "test_vision_axial_rope",
    ),
    "no mixture-of-experts layers": (
        "test_moe_models_record_router_logits", "test_output_router_logits_from_config",
        "test_eager_matches_batched_and_grouped_inference_0_fp16",
        "test_eager_matches_batched_and_grouped_inference_1_fp32",
        "test_eager_matches_batched_and_grouped_inference_2_bf16",
    ),
    "no token or position-embedding vocabulary to resize (pixel inputs)": (
        "test_resize_embeddings_untied", "test_resize_embeddings_untied_no_reinit_on_post_init",
        "test_resize_tokens_embeddings", "test_resize_position_vector_embeddings",
        "test_resize_embeddings_untied_with_deepspeed", "test_resize_embeddings_untied_with_deepspeed_multi_gpu",
        "test_resize_tokens_embeddings_with_deepspeed", "test_resize_tokens_embeddings_with_deepspeed_multi_gpu",
    ),
    "enable_input_require_grads hooks the input embeddings; ZSE has none (get_input_embeddings is not defined)": (
        "test_enable_input_require_grads_with_gradient_checkpointing",
    ),
    "no modules are kept in fp32": (
        "test_keep_in_fp32_modules",
        "test_keep_in_fp32_modules_exist",
        "test_keep_in_fp32_modules_strict_also_hardcode_fp32",
    ),
    "no sliding-window attention": ("test_sliding_window_mask",),
    "no tensor-parallel plan (a small vision model)": ("test_tp_plan_matches_params",),
    "ZSE is composite (backbone sub-config): dispatch is checked by test_attn_implementation_composite_models and "
    "test_modeling's set_attn_implementation test": ("test_sdpa_can_dispatch_non_composite_models",),
    "needs a vision tower plus a language sub-model; ZSE has no language model": (
        "test_sdpa_can_dispatch_composite_models",
    ),
})


class ZseImageProcessingTester(ImageProcessingTester):
    """Random RGB images of 30-400 px; output `size x size` photos (padded on white)."""

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        self.image_mean = [0.485, 0.456, 0.406]
        self.image_std = [0.229, 0.224, 0.225]
        self.modality = "photo"
        self.photo_resize_mode = "pad"

    def _get_image_processing_classes(self):
        return {"pil": ZseImageProcessor}  # one backend: PIL

    def prepare_image_processor_dict(self):
        return {
            "size": self.size,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "modality": self.modality,
            "photo_resize_mode": self.photo_resize_mode,
        }


class ZseImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = ZseImageProcessingTester

    def test_rgba_input_is_composited_on_white(self):
        """What ZSE does with 4-channel input instead of keeping the channel."""
        processor = ZseImageProcessor(**self.image_processor_dict)
        clear = np.zeros((40, 60, 4), dtype=np.uint8)  # fully transparent black
        pixels = processor(clear, return_tensors="pt")["pixel_values"]
        white = (1 - torch.tensor(processor.image_mean)) / torch.tensor(processor.image_std)
        self.assertEqual(tuple(pixels.shape), (1, 3, IMAGE_SIZE, IMAGE_SIZE))
        torch.testing.assert_close(pixels[0].mean((1, 2)), white)

    # ---- not applicable, with the reason
    test_call_numpy_4_channels = _not_applicable(
        "by design the output is RGB: alpha is composited on white (sketch canvases, cut-out photos); "
        "see test_rgba_input_is_composited_on_white"
    )
    test_new_models_require_torchvision_backend = _not_applicable(
        "the sketch ink crop and alpha compositing are PIL operations and this project cannot use torchvision, "
        "so the processor has one (PIL) backend"
    )


_declare(ZseImageProcessingTest, ImageProcessingTestMixin, {
    "one backend (PIL): nothing to compare or convert between": (
        "test_backends_equivalence", "test_backends_equivalence_batched", "test_save_load_backends",
        "test_save_load_backends_auto", "test_fast_image_processor_explicit_none_preserved",
        "test_can_compile_torchvision_backend", "test_pil_can_run_without_torchvision",
    ),
})


# ----------------------------------------------------------------------------- processor


class ZseProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = ZseProcessor
    images_input_name = "photo_pixel_values"

    @classmethod
    def _setup_image_processor(cls):
        return ZseImageProcessor(size=IMAGE_SIZE)

    def test_sketches_and_photos(self):
        processor = self.get_processor()
        image = Image.new("RGB", (70, 50), "white")
        image.paste((0, 0, 0), (10, 10, 30, 40))
        out = processor(sketches=[image, image], photos=image, return_tensors="pt")
        self.assertEqual(tuple(out["sketch_pixel_values"].shape), (2, 3, IMAGE_SIZE, IMAGE_SIZE))
        self.assertEqual(tuple(out["photo_pixel_values"].shape), (1, 3, IMAGE_SIZE, IMAGE_SIZE))
        self.assertIsInstance(processor(photos=image)["photo_pixel_values"], np.ndarray)  # return_tensors=None
        self.assertEqual(processor.model_input_names, ["sketch_pixel_values", "photo_pixel_values"])

    def test_save_load_round_trip(self):
        """`test_processor_from_and_save_pretrained` without the `auto_map` key (see its reason)."""
        processor = self.get_processor()
        with self.subTest("folder"), tempfile.TemporaryDirectory() as folder:
            processor.save_pretrained(folder)
            loaded = ZseProcessor.from_pretrained(folder)
        first, second = processor.to_dict(), loaded.to_dict()
        first.pop("auto_map", None)
        self.assertEqual(second, first)

    # ---- not applicable, with the reason
    _by_keyword = (
        "by design ZseProcessor takes sketches=/photos= (two image roles), not text=/images=/videos=/audio=; "
        "see test_sketches_and_photos"
    )
    test_model_input_names = _not_applicable(_by_keyword)
    test_flat_kwarg_applied_when_modality_dict_lacks_it = _not_applicable(_by_keyword)
    _auto_map = (
        "ZseProcessor is registered for AutoProcessor remote code, so save_pretrained writes `auto_map` onto the "
        "saved instance and transformers does not set it on the loaded one; the rest is compared in "
        "test_save_load_round_trip"
    )
    test_processor_from_and_save_pretrained = _not_applicable(_auto_map)
    test_processor_from_and_save_pretrained_as_nested_dict = _not_applicable(_auto_map)


_declare(ZseProcessorTest, ProcessorTesterMixin, {
    "ZseProcessor has no tokenizer, video processor or feature extractor (two image roles only)": (
        "test_doubly_passed_kwargs_0_images", "test_doubly_passed_kwargs_1_videos",
        "test_kwargs_overrides_default_subprocessor_kwargs_0_images",
        "test_kwargs_overrides_default_subprocessor_kwargs_1_videos",
        "test_kwargs_overrides_default_subprocessor_kwargs_2_audio",
        "test_overlapping_text_image_kwargs_handling_0_images", "test_overlapping_text_image_kwargs_handling_1_videos",
        "test_overlapping_text_image_kwargs_handling_2_audio", "test_structured_kwargs_nested_from_dict_0_images",
        "test_structured_kwargs_nested_from_dict_1_videos", "test_structured_kwargs_nested_from_dict_2_audio",
        "test_subprocessor_defaults_0_text",
        "test_subprocessor_defaults_2_videos",
        "test_subprocessor_defaults_3_audio",
        "test_subprocessor_defaults_preserved_by_kwargs_0_images",
        "test_subprocessor_defaults_preserved_by_kwargs_1_videos",
        "test_subprocessor_defaults_preserved_by_kwargs_2_audio", "test_tokenizer_decode_defaults",
        "test_unstructured_kwargs_0_images", "test_unstructured_kwargs_1_videos", "test_unstructured_kwargs_2_audio",
        "test_unstructured_kwargs_batched_0_images", "test_unstructured_kwargs_batched_1_videos",
        "test_unstructured_kwargs_batched_2_audio", "test_if_input_has_mismatching_tokens_and_mm_data",
        "test_processor_text_has_no_visual", "test_processor_with_multiple_inputs",
    ),
    "no chat template: ZSE is not a conversational model": (
        "test_apply_chat_template_assistant_mask",
        "test_apply_chat_template_audio_0",
        "test_apply_chat_template_audio_1",
        "test_apply_chat_template_audio_2", "test_apply_chat_template_audio_3",
        "test_apply_chat_template_decoded_video_0", "test_apply_chat_template_image_0",
        "test_apply_chat_template_image_1", "test_apply_chat_template_tool_calls_no_content",
        "test_apply_chat_template_video_0", "test_apply_chat_template_video_1",
        "test_apply_chat_template_video_frame_sampling", "test_chat_template_jinja_kwargs",
        "test_chat_template_message_objects", "test_chat_template_save_loading",
        "test_chat_template_saving_rejects_path_traversal", "test_apply_chat_template_decoded_video",
        "test_apply_chat_template_video", "test_chat_template_audio_from_video", "test_apply_chat_template_audio",
        "test_chat_template_audio_sampling_rate",
    ),
    "no multimodal tokens: images are not expanded into a text sequence": (
        "test_get_num_multimodal_tokens_matches_processor_call",
        "test_get_num_multimodal_tokens_matches_processor_call_audio",
        "test_get_num_multimodal_tokens_matches_processor_call_video", "test_replacement_offsets",
    ),
})
