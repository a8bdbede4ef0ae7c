"""Pre-rendered training inputs: the decoded cut-outs of a photo set, their pseudo-sketches and
the unwarped pairs of the correspondence term, in one safetensors file per photo set and size.

Rendering a pseudo-sketch (~20 ms) and decoding a stamp are the costly parts of a training
triplet; both depend only on the photo, so they are done once (``zse-sbir train`` with
``render_cache: true``) and every loader worker reads the same file through the page cache
instead of holding its own decoded copies. The cached pixels are the ones the loader would have
drawn, so a run gives the same triplets with and without the cache.

The file's name is a hash of what its pixels depend on (the photos' sha256, the loader's
``max_side``/crop, the sizes, :data:`RENDER_CACHE_VERSION`); it is written to a temporary name
and renamed, so a crash never leaves a half file under the final name, and a rebuild never
changes a file that a running loader has mapped (never truncate one in place: readers map it).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import save_file

RENDER_CACHE_VERSION = 1  # bump when pseudo_sketch / warps / photo loading change their pixels


def photo_set_fingerprint(photos) -> str | None:
    """A hash of what a photo set's decoded pixels depend on, or ``None`` when they cannot be
    named (a set without sha256-checked ``records``, e.g. a research layout): such sets are
    rendered on the fly."""
    records = getattr(photos, "records", None)
    if records is None or not all(getattr(r, "sha256", None) for r in records):
        return None
    key = {"type": type(photos).__name__, "max_side": getattr(photos, "max_side", None),
           "crop": getattr(photos, "crop", True), "ids": [r.stamp_path for r in records],
           "sha256": [r.sha256 for r in records], "version": RENDER_CACHE_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class RenderCache:
    """Pre-rendered inputs of one photo set (see the module docstring).

    Tensors in the file (``P`` photos): ``rgba.<k>`` uint8 ``[H_k, W_k, 4]`` (the cut-out as
    ``photos.load(k, rgba=True)`` returns it), ``pseudo`` uint8 ``[P, S, S]`` (the grey
    pseudo-sketch at ``sketch_size``; ``S = sketch_size``), ``pair_sketch`` uint8 ``[P, Q, Q]``
    and ``pair_photo`` uint8 ``[P, Q, Q, 3]`` (the :func:`~zse_hf.data.warps.square_pair` at
    ``pair_size`` ``Q``; absent when ``pair_size`` is ``None``).

    The file is opened lazily in each process, so a cache can be handed to forked or spawned
    data-loader workers.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with safe_open(str(self.path), framework="np") as f:
            meta = f.metadata() or {}
        try:
            self.num_photos = int(meta["num_photos"])
            self.sketch_size = int(meta["sketch_size"])
            self.pair_size = int(meta["pair_size"]) if meta.get("pair_size") else None
        except (KeyError, ValueError) as err:
            raise ValueError(f"{self.path}: not a render cache (metadata {sorted(meta)})") from err
        self._handle, self._pid = None, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": None}

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = safe_open(str(self.path), framework="np"), os.getpid()
        return self._handle

    def _check(self, index: int) -> int:
        if not 0 <= int(index) < self.num_photos:
            raise IndexError(f"photo {index} outside the render cache's {self.num_photos}")
        return int(index)

    def rgba(self, index: int) -> Image.Image:
        """The cut-out of photo ``index`` (RGBA)."""
        k = self._check(index)
        return Image.fromarray(self._file().get_tensor(f"rgba.{k}"), mode="RGBA")

    def pseudo_sketch(self, index: int) -> Image.Image:
        """The pseudo-sketch of photo ``index`` at ``sketch_size`` (RGB)."""
        k = self._check(index)
        grey = self._file().get_slice("pseudo")[k]
        return Image.fromarray(np.ascontiguousarray(grey), mode="L").convert("RGB")

    def square_pair(self, index: int) -> tuple[Image.Image, Image.Image]:
        """The unwarped (pseudo-sketch, photo) pair of photo ``index`` at ``pair_size`` (RGB)."""
        if self.pair_size is None:
            raise KeyError(f"{self.path} holds no correspondence pairs (built without pair_size)")
        f, k = self._file(), self._check(index)
        sketch = Image.fromarray(np.ascontiguousarray(f.get_slice("pair_sketch")[k]), mode="L").convert("RGB")
        return sketch, Image.fromarray(np.ascontiguousarray(f.get_slice("pair_photo")[k]), mode="RGB")

    @classmethod
    def build(cls, photos, path: str | os.PathLike, sketch_size: int, pair_size: int | None = None,
              progress: bool = True) -> RenderCache:
        """Render every photo of ``photos`` (decode, pseudo-sketch, unwarped pair) into ``path``.

        Args:
            photos: a photo set with ``load(k, rgba=True)`` (e.g. ``OfflinePhotoDataset``).
            path: the file to write (atomically: temporary name, then rename).
            sketch_size: side of the pseudo-sketches (the triplets' ``pseudo_sketch_kwargs`` size).
            pair_size: side of the correspondence pairs (the model's input side), or ``None``.
            progress: show a tqdm bar.
        """
        from tqdm.auto import tqdm

        from .pseudo_sketch import photo_to_pseudo_sketch
        from .warps import square_pair

        n = len(photos)
        tensors: dict[str, np.ndarray] = {"pseudo": np.zeros((n, sketch_size, sketch_size), np.uint8)}
        if pair_size is not None:
            tensors["pair_sketch"] = np.zeros((n, pair_size, pair_size), np.uint8)
            tensors["pair_photo"] = np.zeros((n, pair_size, pair_size, 3), np.uint8)
        for k in tqdm(range(n), desc=f"pre-rendering {n} photos", disable=not progress):
            rgba = photos.load(k, rgba=True)
            tensors[f"rgba.{k}"] = np.asarray(rgba.convert("RGBA"), dtype=np.uint8)
            tensors["pseudo"][k] = _grey(photo_to_pseudo_sketch(rgba, size=sketch_size))
            if pair_size is not None:
                sketch, photo = square_pair(rgba, pair_size)
                tensors["pair_sketch"][k] = _grey(sketch)
                tensors["pair_photo"][k] = np.asarray(photo.convert("RGB"), dtype=np.uint8)
        meta = {"num_photos": str(n), "sketch_size": str(int(sketch_size)),
                "pair_size": "" if pair_size is None else str(int(pair_size)),
                "version": str(RENDER_CACHE_VERSION), "ids": json.dumps(list(photos.ids))}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the cache is shared like any file
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return cls(path)


def _grey(image: Image.Image) -> np.ndarray:
    """The single grey channel of a black-and-white RGB rendering (all three channels equal)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
        raise ValueError("expected a grey rendering (equal RGB channels)")
    return arr[..., 0]


def default_folder() -> Path:
    """Where render caches live by default: ``<asset cache>/render``."""
    from ..assets import cache_dir

    return cache_dir() / "render"


def attach_render_cache(photos, sketch_size: int, pair_size: int | None = None,
                        folder: str | os.PathLike | None = None, progress: bool = True) -> RenderCache | None:
    """Give ``photos`` its pre-rendered inputs (``photos.render_cache``), building the file once.

    The file lives in ``folder`` (default ``<asset cache>/render``) under its fingerprint, so
    another photo set, size or version gets another file. The set's own in-memory cache of
    decoded cut-outs is dropped: the file replaces it (one copy in the page cache, however
    many loader workers).

    Returns:
        the cache, or ``None`` for a set whose pixels cannot be fingerprinted (left as it is).
    """
    fp = photo_set_fingerprint(photos)
    if fp is None:
        return None
    if folder is None:
        folder = default_folder()
    name = f"{fp[:24]}-s{int(sketch_size)}" + (f"-q{int(pair_size)}" if pair_size else "") + ".safetensors"
    path = Path(folder) / name
    cache = None
    if path.exists():
        try:
            cache = RenderCache(path)
            if cache.num_photos != len(photos):
                cache = None
        except Exception:  # a foreign or damaged file under our name: render again
            cache = None
    if cache is None:
        cache = RenderCache.build(photos, path, sketch_size, pair_size, progress=progress)
    photos.render_cache = cache
    if getattr(photos, "_cache", None) is not None:
        photos._cache = None
    return cache


def attach_triplet_caches(triplets, folder: str | os.PathLike | None = None, progress: bool = True) -> list:
    """:func:`attach_render_cache` for a :class:`~zse_hf.data.triplets.TripletDataset`'s photos and
    extra photos, at the sizes its pseudo-sketches and correspondence pairs use.

    Returns:
        the caches attached (``None`` for a set left uncached).
    """
    kw = dict(triplets.pseudo_sketch_kwargs)
    sketch_size = int(kw.pop("size", 224))
    if kw:  # non-default pseudo-sketch settings: rendered on the fly
        return []
    pair_size = triplets.correspondence_size if triplets.correspondence_prob > 0 else None
    sets = [triplets.photos] + ([triplets.extra_photos] if triplets.extra_photos is not None else [])
    return [attach_render_cache(ds, sketch_size, pair_size, folder=folder, progress=progress) for ds in sets]


__all__ = ["RENDER_CACHE_VERSION", "RenderCache", "attach_render_cache", "attach_triplet_caches",
           "photo_set_fingerprint"]
