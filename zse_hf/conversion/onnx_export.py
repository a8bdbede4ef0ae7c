"""Export the ZSE image encoder for serving: `torch.export` and ONNX (run with onnxruntime).

The encoder (`ZseModel.get_image_features`) is wrapped as a plain module, tensors in and
tensors out, and exported at a fixed image size with a dynamic batch dimension:

```python
>>> from zse_hf.conversion.onnx_export import OnnxImageEncoder, export_image_encoder_onnx
>>> export_image_encoder_onnx(model, "encoder.onnx")           # needs onnx + onnxscript
>>> encoder = OnnxImageEncoder("encoder.onnx")                   # needs onnxruntime
>>> feats = encoder(pixel_values)                                # ZseImageFeatures, like the model's
```
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..modeling_zse import ZseImageFeatures, ZseModel

OUTPUT_NAMES = ("ret_embeds", "local_tokens", "token_mask")


class ZseImageEncoder(nn.Module):
    """`ZseModel.get_image_features` as a module for export.

    `pixel_values [B, 3, H, W]` -> `(ret_embeds [B, D], local_tokens [B, N, D], token_mask [B, N])`.
    """

    def __init__(self, model: ZseModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        features = self.model.get_image_features(
            pixel_values, output_attentions=False, output_hidden_states=False, return_dict=True
        )
        return features.ret_embeds, features.local_tokens, features.token_mask


def _example(model: ZseModel, image_size: int | None, batch_size: int) -> torch.Tensor:
    size = int(image_size or model.config.image_size)
    param = next(model.parameters())
    x = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    return x.to(param.device, param.dtype)


def export_image_encoder(
    model: ZseModel, image_size: int | None = None, batch_size: int = 2, dynamic_batch: bool = True
) -> torch.export.ExportedProgram:
    """`torch.export` of the image encoder at `image_size` (default: the config's).

    Args:
        model: a [`ZseModel`] (put in eval mode by the caller).
        image_size: side of the square input in pixels.
        batch_size: batch of the example input used for tracing.
        dynamic_batch: export the batch dimension as dynamic (any batch >= 1 at run time).

    Returns: the `ExportedProgram`; `program.module()(pixel_values)` gives the three tensors
    of [`ZseImageEncoder`].
    """
    example = _example(model, image_size, batch_size)
    shapes = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    with torch.no_grad():
        return torch.export.export(ZseImageEncoder(model).eval(), (example,), dynamic_shapes=shapes, strict=False)


def export_image_encoder_onnx(
    model: ZseModel,
    path: str | os.PathLike,
    image_size: int | None = None,
    dynamic_batch: bool = True,
    opset: int = 18,
) -> Path:
    """Write the image encoder as one self-contained ONNX file (weights inside).

    Uses PyTorch's `torch.export`-based ONNX exporter (needs `onnx` and `onnxscript`). A
    `<path>.json` beside it records the image size, patch grid and output names, which
    [`OnnxImageEncoder`] reads.

    Args:
        model: a [`ZseModel`].
        path: the `.onnx` file to write (its folder is created).
        image_size: side of the square input in pixels (default: the config's).
        dynamic_batch: keep the batch dimension dynamic.
        opset: ONNX opset version.

    Returns: `path`.
    """
    if importlib.util.find_spec("onnxscript") is None or importlib.util.find_spec("onnx") is None:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install \"zse-sbir[convert]\"")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = int(image_size or model.config.image_size)
    patch = model.config.patch_size
    if size < patch or size % patch:
        raise ValueError(f"image_size must be a positive multiple of the patch size {patch}, got {size}")
    was_training = model.training
    model.eval()
    try:
        example = _example(model, size, 2)
        shapes = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
        tmp = path.with_name(path.name + ".tmp")
        with torch.no_grad():
            program = torch.onnx.export(
                ZseImageEncoder(model).eval(),
                (example,),
                input_names=["pixel_values"],
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=shapes,
                external_data=False,
                verbose=False,
            )
        program.save(str(tmp), external_data=False)
        os.replace(tmp, path)
    finally:
        model.train(was_training)
    meta = {"image_size": size, "grid_size": [size // patch, size // patch], "outputs": list(OUTPUT_NAMES)}
    path.with_name(path.name + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


class OnnxImageEncoder:
    """The exported image encoder on onnxruntime (CPU by default).

    Args:
        path: an ONNX file from [`export_image_encoder_onnx`].
        providers: onnxruntime execution providers (default `["CPUExecutionProvider"]`).
        num_threads: intra-op threads (default: onnxruntime's choice).
    """

    def __init__(self, path: str | os.PathLike, providers=None, num_threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError("serving the ONNX encoder needs onnxruntime: pip install \"zse-sbir[convert]\"") from err
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        meta_file = path.with_name(path.name + ".json")
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} is missing: export with "
                                    "zse_hf.conversion.onnx_export.export_image_encoder_onnx")
        self.meta = json.loads(meta_file.read_text())
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])

    @property
    def image_size(self) -> int:
        """Side in pixels the encoder was exported at."""
        return int(self.meta["image_size"])

    def __call__(self, pixel_values) -> ZseImageFeatures:
        """Encode `pixel_values [B, 3, S, S]` (numpy or tensor, float32) into [`ZseImageFeatures`]
        with `ret_embeds [B, D]`, `local_tokens [B, N, D]`, `token_mask [B, N]` (torch tensors)."""
        x = pixel_values.detach().cpu().numpy() if isinstance(pixel_values, torch.Tensor) else np.asarray(pixel_values)
        s = self.image_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"pixel_values must have shape [B, 3, {s}, {s}], got {list(x.shape)}")
        ret, local, mask = self.session.run(list(OUTPUT_NAMES), {"pixel_values": x.astype(np.float32, copy=False)})
        return ZseImageFeatures(
            ret_embeds=torch.from_numpy(ret),
            local_tokens=torch.from_numpy(local),
            token_mask=torch.from_numpy(mask),
            grid_size=tuple(self.meta["grid_size"]),
        )


__all__ = ["OnnxImageEncoder", "ZseImageEncoder", "export_image_encoder", "export_image_encoder_onnx"]
