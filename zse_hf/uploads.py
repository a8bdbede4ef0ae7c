"""Reading images that users upload to a web page (the demo), safely: only from the web
framework's upload folder, size- and pixel-limited (no decompression bombs), EXIF-rotated,
downscaled, transparency on white. Problems raise :class:`UserInputError` worded for the user.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .image_processing_zse import to_rgb_on_white

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per file
MAX_PIXELS = 40_000_000  # width x height of one upload
MAX_SIDE = 1024  # uploads are downscaled to this longest side


class UserInputError(ValueError):
    """A problem with the user's input, worded to be shown to them."""


def upload_roots() -> list[Path]:
    """The folders uploads may be read from: Gradio's upload folder and `$GRADIO_TEMP_DIR`
    (default `<tmp>/gradio`), resolved."""
    roots = []
    try:
        from gradio.utils import get_upload_folder

        roots.append(Path(get_upload_folder()))
    except ImportError:  # no gradio: only the temp folder
        pass
    roots.append(Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio"))
    return [r.resolve() for r in roots]


def in_upload_area(path: str | os.PathLike) -> bool:
    """True when `path` lies in an upload folder (see :func:`upload_roots`)."""
    p = Path(path).resolve()
    return any(p == r or r in p.parents for r in upload_roots())


def read_upload(path: str | os.PathLike, what: str = "file") -> Image.Image:
    """Open an uploaded image: RGB on white, at most `MAX_SIDE` pixels a side.

    Args:
        path: the uploaded file; it must lie in an upload folder.
        what: how the message names it (`"photo"`, `"the uploaded sketch"`).

    Raises:
        UserInputError: not uploaded here, gone, empty, over `MAX_UPLOAD_BYTES` or
            `MAX_PIXELS`, or not an image; the message starts with a capital.
    """
    try:
        return _read_upload(Path(path), what)
    except UserInputError as err:
        msg = str(err)
        raise UserInputError(msg[:1].upper() + msg[1:]) from None


def _read_upload(p: Path, what: str) -> Image.Image:
    name = p.name
    if not in_upload_area(p):
        raise UserInputError(f"{what} {name!r} was not uploaded through this page; it cannot be read.")
    if not p.is_file():
        raise UserInputError(f"{what} {name!r} is no longer on the server; please upload it again.")
    size = p.stat().st_size
    if size == 0:
        raise UserInputError(f"{what} {name!r} is empty (0 bytes).")
    if size > MAX_UPLOAD_BYTES:
        raise UserInputError(f"{what} {name!r} is {size / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(p)
            w, h = image.size
            if w * h > MAX_PIXELS:
                raise UserInputError(f"{what} {name!r} is huge ({w}×{h} px, {w * h / 1e6:.0f} MP); please use an "
                                     f"image under {MAX_PIXELS / 1e6:.0f} MP (e.g. 2000×2000 px).")
            if image.format == "JPEG":
                image.draft("RGB", (MAX_SIDE, MAX_SIDE))
            image.load()
    except UserInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserInputError(f"{what} {name!r} is huge (too many pixels); please use an image under "
                             f"{MAX_PIXELS / 1e6:.0f} MP.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UserInputError(f"{what} {name!r} is not an image this demo can read (PNG, JPEG, WebP, ...).") from None
    return fit_on_white(ImageOps.exif_transpose(image))


def fit_on_white(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """RGB copy of `image` with transparency on white, downscaled (Lanczos) to at most `max_side` a side."""
    image = to_rgb_on_white(image)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


__all__ = ["MAX_PIXELS", "MAX_SIDE", "MAX_UPLOAD_BYTES", "UserInputError", "fit_on_white", "in_upload_area",
           "read_upload", "upload_roots"]
