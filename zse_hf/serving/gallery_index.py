"""The bundled gallery's index and its cache: a folder of photos indexed with faiss
(`zse_hf.retrieval.ZseIndex`, ids = file names), cached under
`<cache root>/<model hash[:16]>-<gallery hash[:16]>/` and loaded back only for the same weights and
gallery files (every file's checksum checked). Read-only "seed" roots hold prebuilt entries (a
Space's `index_cache/`, or the demo's after `python demo/app.py --prebuild-index`).

[`BundledGallery`] is a server's view of it: loaded from a cache entry, else built, in a
background thread if asked, with its progress readable while it runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

from .. import assets
from ..retrieval import ZseIndex
from .models import DemoModel
from .runtime import ModelThread, trim_memory
from .uploads import UserInputError as UserError

log = logging.getLogger("zse_demo")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
INDEX_CHUNK = 16  # photos per progress step when indexing (bundled gallery and uploads)


def gallery_files(folder: Path) -> list[Path]:
    """Image files directly in `folder` (suffix in `IMAGE_SUFFIXES`), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def gallery_fingerprint(files: list[Path]) -> str:
    """sha256 (64 hex digits) over the gallery's file names and contents."""
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{assets.sha256_file(p)}".encode())
    return h.hexdigest()


def cache_key(model_sha256: str, gallery_sha256: str) -> str:
    """The cache folder name of a bundled index: `<model hash[:16]>-<gallery hash[:16]>`."""
    return f"{model_sha256[:16]}-{gallery_sha256[:16]}"


def default_cache_root() -> Path:
    """`$ZSE_SBIR_CACHE/demo_index` (default `~/.cache/zse_sbir/demo_index`)."""
    return assets.cache_dir() / "demo_index"


def load_cached_index(dm: DemoModel, gallery_sha256: str, roots: Iterable) -> tuple[ZseIndex, Path] | None:
    """`(index, entry folder)` from the first of `roots` (folders; None entries are skipped)
    holding an entry for this model and gallery, loaded with every file's checksum and the model
    binding checked; None when there is none (a damaged entry is logged and skipped)."""
    for root in roots:
        if root is None:
            continue
        folder = Path(root) / cache_key(dm.fingerprint, gallery_sha256)
        meta = folder / "gallery.json"
        if not meta.is_file():
            continue
        try:
            recorded = json.loads(meta.read_text())
            if (recorded.get("gallery_sha256"), recorded.get("model_sha256")) != (gallery_sha256, dm.fingerprint):
                raise ValueError("it was made for another gallery or model")
            index = ZseIndex.load(folder / "index", model=dm.model, processor=dm.processor, verify=True)
        except Exception as err:  # noqa: BLE001 - a damaged entry is rebuilt, whatever is wrong with it
            log.warning("not using the cached index in %s: %s", folder, err)
            continue
        log.info("loaded the bundled gallery index from %s", folder)
        return index, folder
    return None


def build_gallery_index(dm: DemoModel, files: list[Path], progress: Callable[[int, int], None] | None = None,
                        run: Callable | None = None) -> ZseIndex:
    """Encode `files` (ids = file names) into a new index, `INDEX_CHUNK` photos at a time;
    `progress(done, total)` after each chunk; each chunk is one `run(fn)` call when given (a
    [`ModelThread`]), so other model calls interleave."""
    index = ZseIndex(dm.model, dm.processor)
    run = run or (lambda fn: fn())
    try:
        for start in range(0, len(files), INDEX_CHUNK):
            chunk = files[start:start + INDEX_CHUNK]
            run(lambda chunk=chunk: index.add([str(p) for p in chunk], ids=[p.name for p in chunk],
                                              batch_size=INDEX_CHUNK, progress=False))
            if progress is not None:
                progress(start + len(chunk), len(files))
    except BaseException:
        index.close()
        raise
    return index


def save_cached_index(index: ZseIndex, dm: DemoModel, gallery_sha256: str, n_files: int,
                      cache_root: str | os.PathLike) -> Path | None:
    """Save `index` as the cache entry of this model and gallery under `cache_root` (the index
    atomically with `ZseIndex.save`, then its record `gallery.json`, also by rename).

    Returns:
        Path | None: the entry's folder; None when it cannot be written (logged).
    """
    folder = Path(cache_root) / cache_key(dm.fingerprint, gallery_sha256)
    try:
        index.save(folder / "index")
        tmp = folder / f".gallery.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"gallery_sha256": gallery_sha256, "n_photos": n_files, "n_indexed": len(index),
                                   "model": dm.name, "model_sha256": dm.fingerprint}, indent=1))
        os.replace(tmp, folder / "gallery.json")
    except OSError as err:
        log.warning("could not cache the index in %s: %s", folder, err)
        return None
    return folder


def _announce(n: int) -> None:
    print(f"zse-sbir demo: indexing {n} bundled photos (first start with this model and gallery; "
          "cached afterwards)", file=sys.stderr)


def bundled_index(dm: DemoModel, gallery_dir: Path, cache_root: Path | None, progress=None, run=None,
                  seed_roots=()) -> tuple[ZseIndex, bool]:
    """`(index, loaded_from_cache)` of the photos in `gallery_dir`: loaded from
    `cache_root/<model hash>-<gallery hash>/` (or a read-only `seed_roots` entry) when one was
    made with these model weights and gallery files, else built (ids = file names; see
    [`build_gallery_index`] for `progress` and `run`) and saved there (`cache_root=None`: not saved).

    Raises:
        UserError: `gallery_dir` holds no images.
    """
    files = gallery_files(gallery_dir)
    if not files:
        raise UserError(f"the bundled gallery {gallery_dir} holds no images")
    gallery_hash = gallery_fingerprint(files)
    cached = load_cached_index(dm, gallery_hash, [cache_root, *seed_roots])
    if cached is not None:
        return cached[0], True
    _announce(len(files))
    index = build_gallery_index(dm, files, progress=progress, run=run)
    if cache_root is not None:
        save_cached_index(index, dm, gallery_hash, len(files), cache_root)
    return index, False


def prebuild_seed_index(dm: DemoModel, gallery_dir: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Write the read-only cache entry of `dm` and the photos in `gallery_dir` under `root` (a
    seed root, e.g. a Space's `index_cache/`, so a first start loads the index instead of
    encoding the photos), and remove entries of other models or galleries there.

    Returns:
        Path: the entry's folder.
    """
    bundled_index(dm, Path(gallery_dir), Path(root))
    keep = cache_key(dm.fingerprint, gallery_fingerprint(gallery_files(Path(gallery_dir))))
    for entry in Path(root).iterdir():
        if entry.is_dir() and entry.name != keep:
            shutil.rmtree(entry)
    return Path(root) / keep


class BundledGallery:
    """A server's bundled gallery: its index loaded from a cache entry at once, else built (in a
    background thread with `background`), with the progress readable meanwhile.

    Args:
        dm: the served model.
        gallery_dir: the bundled photos.
        run: the [`ModelThread`] every model call goes through.
        cache_root: where the built index is cached (None: not cached).
        seed_roots: read-only folders of prebuilt cache entries, tried after `cache_root`.
        background: build an index that is not cached in a thread instead of before returning.
        defer: with `background`, wait for [`start`] (e.g. once the page is up).

    Attributes:
        index (ZseIndex | None): the index, once built or loaded (None after a failed build).
        from_cache (bool): loaded from a cache entry.
        ready (threading.Event): set when `index` is there or the build failed.
        progress (tuple[int, int]): `(photos indexed, photos)` while it is built.
        error (str | None): why the build failed.

    Raises:
        UserError: `gallery_dir` holds no images.
    """

    def __init__(self, dm: DemoModel, gallery_dir: Path, run: ModelThread, cache_root: Path | None = None, *,
                 seed_roots=(), background: bool = False, defer: bool = False):
        self.dm, self.gallery_dir, self.run, self.cache_root = dm, Path(gallery_dir), run, cache_root
        files = gallery_files(self.gallery_dir) if self.gallery_dir.is_dir() else []
        if not files:
            raise UserError(f"the bundled gallery {self.gallery_dir} holds no images")
        self.n_photos = len(files)
        self.index: ZseIndex | None = None
        self.from_cache = False
        self.error: str | None = None
        self.progress = (0, len(files))
        self.seconds: float | None = None
        self.ready = threading.Event()
        self._pending: list[Path] | None = None
        self._hash = gallery_fingerprint(files)
        cached = load_cached_index(dm, self._hash, [cache_root, *seed_roots])
        if cached is not None:
            self.index, self.from_cache = cached[0], True
            self.ready.set()
            trim_memory()  # what reading and checking the files allocated
        elif background:
            self._pending = files
            if not defer:
                self.start()
        else:
            self._build(files, True)

    def start(self) -> None:
        """Start the background build, if one is pending (once)."""
        files, self._pending = self._pending, None
        if files:
            threading.Thread(target=self._build, args=(files, False), name="zse-demo-index", daemon=True).start()

    def _build(self, files: list[Path], raise_errors: bool) -> None:
        """Build the index (`INDEX_CHUNK` photos per model-thread call, progress in `progress`),
        cache it, and set `ready`."""
        start = time.perf_counter()
        _announce(len(files))

        def progress(done, total):
            self.progress = (done, total)

        try:
            index = build_gallery_index(self.dm, files, progress=progress, run=self.run)
            if self.cache_root is not None:
                save_cached_index(index, self.dm, self._hash, len(files), self.cache_root)
        except Exception as err:
            if raise_errors:
                raise
            log.error("indexing the bundled photos failed:\n%s", traceback.format_exc())
            self.error = f"{type(err).__name__}: {err}"
        else:
            self.index, self.seconds = index, time.perf_counter() - start
            log.info("indexed %d bundled photos in %.1f s", len(index), self.seconds)
        finally:
            self.ready.set()
            trim_memory()

    def searchable(self) -> bool:
        """True once the index can be searched."""
        return self.ready.is_set() and self.index is not None

    def note(self) -> str:
        """Markdown on the index for a page: the progress, a failure, or "" once it is ready."""
        if not self.ready.is_set():
            done, total = self.progress
            return (f"⏳ **Indexing the bundled photos: {done}/{total}** (first start with this model; the index is "
                    "cached for the next start). Searching them is enabled when they are all in; your own photos "
                    "can be searched meanwhile.")
        if self.error:
            return f"⚠️ Indexing the bundled photos failed ({self.error}); only your own photos can be searched."
        return ""

    def check(self) -> None:
        """Raise UserError (worded for the user) while the index cannot be searched."""
        if not self.ready.is_set():
            done, total = self.progress
            raise UserError(f"Still indexing the bundled photos ({done}/{total}); try again in a few seconds "
                            "(your own photos under **My photos** can be searched meanwhile).")
        if self.index is None:
            raise UserError(f"The bundled photos could not be indexed ({self.error}); "
                            "search your own photos under **My photos** instead.")


__all__ = ["BundledGallery", "IMAGE_SUFFIXES", "INDEX_CHUNK", "build_gallery_index", "bundled_index", "cache_key",
           "default_cache_root", "gallery_files", "gallery_fingerprint", "load_cached_index", "prebuild_seed_index",
           "save_cached_index"]
