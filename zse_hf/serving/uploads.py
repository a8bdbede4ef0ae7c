"""Reading images that users upload to a web page (the demo), safely: only from the web
framework's upload folder and size-limited; decoding goes through the image processor's loader
(its pixel limit, reduced JPEG decoding and EXIF orientation, as for the CLI and the API), then
downscaled with transparency on white. Problems raise :class:`UserInputError` worded for the user.

A user's whole gallery is capped too (:class:`UploadLimits`: photos, total pixels, total bytes,
checked from file sizes and image headers before anything is decoded), and uploads are deleted
again with :func:`remove_uploads` (only ever inside the upload folder).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..image_processing_zse import ImageTooLargeError, ZseImageProcessor, to_rgb_on_white

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per file
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


def read_upload(path: str | os.PathLike, what: str = "file",
                image_processor: ZseImageProcessor | None = None) -> Image.Image:
    """Open an uploaded image: RGB on white, at most `MAX_SIDE` pixels a side.

    Args:
        path: the uploaded file; it must lie in an upload folder.
        what: how the message names it (`"photo"`, `"the uploaded sketch"`).
        image_processor: whose `load_image` decodes it (its `max_input_pixels`); default a
            `ZseImageProcessor()` with the library's defaults.

    Raises:
        UserInputError: not uploaded here, gone, empty, over `MAX_UPLOAD_BYTES` or the
            processor's pixel limit, or not an image; the message starts with a capital.
    """
    try:
        return _read_upload(Path(path), what, image_processor or ZseImageProcessor())
    except UserInputError as err:
        msg = str(err)
        raise UserInputError(msg[:1].upper() + msg[1:]) from None


def _read_upload(p: Path, what: str, image_processor: ZseImageProcessor) -> Image.Image:
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
    return fit_on_white(load_user_image(image_processor, p, f"{what} {name!r}"))


def load_user_image(image_processor: ZseImageProcessor, image, what: str) -> Image.Image:
    """`image_processor.load_image(image)` (pixel limit, EXIF orientation) with its errors
    worded for the user as :class:`UserInputError`; `what` names the input in the message."""
    limit = image_processor.max_input_pixels
    try:
        return image_processor.load_image(image)
    except ImageTooLargeError as err:
        size = ""
        if isinstance(image, (str, os.PathLike)):
            try:
                with Image.open(image) as probe:  # the header only
                    size = f" ({probe.width}×{probe.height} px, {probe.width * probe.height / 1e6:.0f} MP)"
            except (OSError, ValueError, Image.DecompressionBombError):
                pass
        raise UserInputError(f"{what} is huge{size}; please use an image under {limit / 1e6:.0f} MP "
                             "(e.g. 2000×2000 px).") from err
    except (ValueError, TypeError):
        raise UserInputError(f"{what} is not an image this demo can read (PNG, JPEG, WebP, ...).") from None


def fit_on_white(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """RGB copy of `image` with transparency on white, downscaled (Lanczos) to at most `max_side` a side."""
    image = to_rgb_on_white(image)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def image_pixels(path: str | os.PathLike) -> int | None:
    """Width x height read from the file's header (nothing is decoded); None when PIL cannot open it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression-bomb warning: the size is what is asked
            with Image.open(path) as probe:
                return int(probe.width) * int(probe.height)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


@dataclass(frozen=True)
class UploadLimits:
    """Caps on one user's uploaded gallery.

    Attributes:
        max_photos: number of files.
        max_megapixels: total width x height over the files (from their headers), in millions.
        max_megabytes: total file size, in MiB.
    """

    max_photos: int = 300
    max_megapixels: float = 1000.0
    max_megabytes: float = 200.0

    def select(self, paths: list[str]) -> tuple[list[str], list[str], str]:
        """`(used, dropped, note)`: the longest prefix of `paths` within all three caps, the rest,
        and a message naming the cap that was reached ("" when all fit). Files that cannot be
        measured (gone, not an image) count as 0 pixels / 0 bytes; reading them reports them."""
        why = f"at most {self.max_photos} photos per session" if len(paths) > self.max_photos else ""
        candidates = paths[:self.max_photos]
        total_bytes = total_pixels = 0
        for i, path in enumerate(candidates):
            try:
                size = os.stat(path).st_size
            except OSError:
                size = 0
            pixels = image_pixels(path) or 0
            if total_bytes + size > self.max_megabytes * 2**20:
                why = f"your photos may total at most {self.max_megabytes:g} MB per session"
            elif total_pixels + pixels > self.max_megapixels * 1e6:
                why = f"your photos may total at most {self.max_megapixels:g} megapixels per session"
            else:
                total_bytes, total_pixels = total_bytes + size, total_pixels + pixels
                continue
            candidates = candidates[:i]
            break
        used = list(candidates)
        dropped = list(paths[len(used):])
        note = f"only the first {len(used)} of {len(paths)} photos were used: {why}" if dropped else ""
        return used, dropped, note


def remove_uploads(paths, keep=()) -> tuple[int, int]:
    """Delete uploaded files, and the folders Gradio made for them once empty; files outside the
    upload folder (:func:`upload_roots`) and those in `keep` are never touched. Returns
    `(files removed, bytes removed)`."""
    roots = upload_roots()
    keep = {os.path.realpath(k) for k in keep}
    n = freed = 0
    for path in paths:
        real = os.path.realpath(path)
        if real in keep or not in_upload_area(real):
            continue
        try:
            size = os.stat(real).st_size
            os.remove(real)
        except OSError:
            continue
        n, freed = n + 1, freed + size
        parent = Path(real).parent
        if parent not in roots:
            try:
                parent.rmdir()  # Gradio's per-upload folder, when nothing else is in it
            except OSError:
                pass
    return n, freed


__all__ = ["MAX_SIDE", "MAX_UPLOAD_BYTES", "UploadLimits", "UserInputError", "fit_on_white", "image_pixels",
           "in_upload_area", "load_user_image", "read_upload", "remove_uploads", "upload_roots"]
