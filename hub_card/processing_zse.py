"""Processor for ZSE-SBIR: one image processor, used in sketch or photo mode."""

from __future__ import annotations

from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack

from .image_processing_zse import ZseImageProcessor


class ZseProcessor(ProcessorMixin):
    r"""Wraps a [`ZseImageProcessor`] to prepare (sketch, photo) inputs for [`ZseModel`].

    `processor(sketches=..., photos=..., return_tensors="pt")` returns a `BatchFeature` with
    `sketch_pixel_values` `[B, 3, S, S]` and/or `photo_pixel_values` `[B', 3, S, S]`, ready for
    `model(**inputs)` or `model.get_image_features(...)`. Without `return_tensors` the values
    are numpy arrays, as with transformers' own processors.
    """

    def __init__(self, image_processor=None, **kwargs):
        if image_processor is None:
            image_processor = ZseImageProcessor()
        super().__init__(image_processor, **kwargs)

    @classmethod
    def from_config(cls, config, **kwargs) -> ZseProcessor:
        """A processor matching a [`ZseConfig`] (input size and normalisation)."""
        return cls(ZseImageProcessor.from_model_config(config, **kwargs))

    def __call__(self, sketches=None, photos=None, **kwargs: Unpack[ProcessingKwargs]) -> BatchFeature:
        """Process sketches and/or photos (each one image or a list).

        Args:
            sketches, photos: one image or a list (paths, bytes, PIL images, arrays, tensors).
            **kwargs: processing options, e.g. `return_tensors` (`"pt"`, `"np"`, or None for
                numpy arrays, the default), flat or as `images_kwargs={...}` / `common_kwargs`.
        """
        if sketches is None and photos is None:
            raise ValueError("pass sketches=..., photos=... or both")
        merged = self._merge_kwargs(ProcessingKwargs, **kwargs)
        options = merged["images_kwargs"]
        options.setdefault("return_tensors", None)  # numpy unless asked, as transformers' processors
        data = {}
        if sketches is not None:
            data["sketch_pixel_values"] = self.image_processor(sketches, modality="sketch", **options)["pixel_values"]
        if photos is not None:
            data["photo_pixel_values"] = self.image_processor(photos, modality="photo", **options)["pixel_values"]
        return BatchFeature(data=data, tensor_type=options.get("return_tensors"))

    @property
    def model_input_names(self):
        return ["sketch_pixel_values", "photo_pixel_values"]


__all__ = ["ZseProcessor"]
