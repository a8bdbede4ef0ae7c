"""Image utilities of the data layer: opening any file on white, cropping a cut-out to its
alpha, padding to a square. Compositing on white is the image processor's
(`zse_hf.image_processing_zse.to_rgb_on_white`, re-exported here as ``composite_on_white``)."""

from __future__ import annotations

import os
from typing import Any

from PIL import Image

from ..image_processing_zse import to_rgb_on_white as composite_on_white

WHITE = (255, 255, 255)


def open_image_on_white(path: str | os.PathLike) -> Image.Image:
    """Open any image file as RGB, compositing transparency (alpha, palette) onto white."""
    with Image.open(path) as im:
        im.load()
        return composite_on_white(im)


def crop_to_alpha(rgba: Image.Image, threshold: int = 8) -> Image.Image:
    """Crop an RGBA image to the bounding box of ``alpha > threshold`` (unchanged if empty)."""
    box = rgba.getchannel("A").point(lambda v: 255 if v > threshold else 0).getbbox()
    return rgba.crop(box) if box else rgba


def pad_to_square(image: Image.Image, margin: float = 0.0, fill: Any = None) -> Image.Image:
    """Centre ``image`` on a square canvas of side ``max(w, h) * (1 + 2 * margin)``.

    ``fill`` defaults to transparent for RGBA/LA and white otherwise.
    """
    w, h = image.size
    side = int(round(max(w, h) * (1.0 + 2.0 * margin)))
    if fill is None:
        fill = (0, 0, 0, 0) if image.mode == "RGBA" else (0, 0) if image.mode == "LA" else \
            255 if image.mode == "L" else WHITE
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


__all__ = ["WHITE", "composite_on_white", "crop_to_alpha", "open_image_on_white", "pad_to_square"]
