"""[`SketchSearchService`]: sketch-based photo search as a front end serves it, without any web
framework. It holds the model, the bundled gallery's index ([`BundledGallery`]), the users'
sessions with their own uploaded galleries ([`SessionRegistry`]) and the one thread every model
call runs on; a page (the Gradio demo), an API server or another UI translates its inputs to
these calls and shows what comes back.

    service = SketchSearchService(load_demo_model("hub_card"), "demo/gallery")
    session = service.session("user-1")
    ranking = service.search(sketch_image, BUNDLED, k=10, mode=RERANK, rerank_k=10, session=session)
    shown = service.explain(1, session)       # four PNG paths and a Markdown summary
    service.end_session("user-1")             # its index, uploads and pictures are deleted

With `photos=` (a Milvus store URI such as `photos.db`, or a saved `ZseIndex` folder) it also
searches that collection (`COLLECTION`), opened once at start.

Problems with the user's input raise `UserError` (`zse_hf.serving.uploads.UserInputError`) worded
to be shown to them.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..explain import ink_map
from ..image_processing_zse import BlankSketchError, ZseImageProcessor, to_rgb_on_white
from ..model_summary import format_metric, mode_description
from ..retrieval import ZseIndex, is_store_uri, open_store, parse_store_uri
from . import gallery_index
from .gallery_index import BundledGallery, default_cache_root
from .models import DemoModel
from .runtime import ModelThread, trim_memory, tune_heap
from .sessions import FileHost, Session, SessionRegistry, default_limits
from .uploads import UploadLimits, fit_on_white, in_upload_area, load_user_image, read_upload
from .uploads import UserInputError as UserError

log = logging.getLogger("zse_demo")

BUNDLED, MINE = "bundled", "mine"  # the galleries: the bundled photos, the session's own
COLLECTION = "collection"  # a saved photo store given at start (`photos=`), shared by every session
RET, RERANK = "ret", "rerank"  # the rankings: [Ret] cosine only, re-ranked by the relation network
MIN_INK_PIXELS = 20  # fewer dark pixels than this = empty canvas
THUMBNAIL_PX = 384  # a collection's result photos, as a page shows them
BLANK_SKETCH = "The sketch is blank: draw something with dark lines."


# ----------------------------------------------------------------------------- inputs


def ink_pixels(image: Image.Image) -> int:
    """Number of inked pixels (darker or more coloured than white; `zse_hf.explain.ink_map`)."""
    return int(ink_map(image).sum())


def canvas_image(value, image_processor) -> Image.Image | None:
    """The drawing of a sketch canvas: `value` is an image, a file path, or a dict whose
    `"composite"` is one (Gradio's `Sketchpad`), read through the processor's loader (its pixel
    limit; `UserError` when refused) and flattened on white (RGB); None when there is none."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("composite")
    if value is None:
        return None
    return fit_on_white(load_user_image(image_processor, value, "The drawing"))


def sketch_query(drawn, upload: str | os.PathLike | None, input_tab: str, image_processor) -> Image.Image:
    """The query sketch (RGB on white) of a page with a canvas and an upload: the active input
    (`input_tab` "draw" or "upload") when it has one, else the other; a canvas with fewer than
    `MIN_INK_PIXELS` inked pixels counts as empty.

    Args:
        drawn: the canvas value (see [`canvas_image`]) or None.
        upload: an uploaded sketch file (in the upload folder) or None.

    Raises:
        UserError: no usable sketch (empty canvas, blank or unreadable upload).
    """
    drawn = canvas_image(drawn, image_processor)
    if drawn is not None and ink_pixels(drawn) < MIN_INK_PIXELS:
        drawn = None
    if upload and (input_tab == "upload" or drawn is None):
        uploaded = read_upload(upload, "the uploaded sketch", image_processor)
        if ink_pixels(uploaded) < MIN_INK_PIXELS:
            raise UserError("The uploaded sketch is blank: upload a drawing with dark lines on a light background.")
        return uploaded
    if drawn is not None:
        return drawn
    if input_tab == "upload":
        raise UserError("No sketch uploaded yet: choose an image file in the **Upload a sketch** tab.")
    raise UserError("The canvas is empty: draw something (or click an example sketch, or upload one) first.")


def sketch_files(drawn, upload) -> list:
    """The files behind a canvas value and an upload (paths, or dicts with a `"path"`, as
    [`canvas_image`] reads them), to record them as the session's uploads."""
    composite = drawn.get("composite") if isinstance(drawn, dict) else drawn
    composite = composite.get("path") if isinstance(composite, dict) else composite
    upload = upload.get("path") if isinstance(upload, dict) else upload
    return [p for p in (composite, upload) if isinstance(p, (str, os.PathLike))]


def photo_class(name: str) -> str:
    """The class in a bundled photo's file name `<class>__<stem>.jpg` (spaces were written as `_`); "" if none."""
    stem = Path(name).stem
    return stem.split("__", 1)[0].replace("_", " ") if "__" in stem else ""


def store_name(photos: str | os.PathLike) -> str:
    """What a page calls a photo store: a database URI's collection, else the folder's name."""
    return parse_store_uri(photos).collection if is_store_uri(photos) else Path(photos).name


# ----------------------------------------------------------------------------- answers


@dataclass
class Ranking:
    """A search's answer.

    Attributes:
        results: best first, one dict each: `rank` (1-based), `photo` (its id: the file name),
            `class` (from the file name, or None), `ret_score` and `relation_score` (None without
            re-ranking; both rounded to 4 digits) and `path` (the photo's file on the server; in
            a `COLLECTION`, the path stored with the photo).
        n_photos: photos in the gallery searched.
        gallery: `BUNDLED`, `MINE` or `COLLECTION`.
        how: the ranking in words (`zse_hf.model_summary.mode_description`).
    """

    results: list[dict]
    n_photos: int
    gallery: str
    how: str

    def summary(self) -> str:
        """One line: how many of how many photos, where, and how they were ranked."""
        where = {MINE: "your photos", COLLECTION: "the collection"}.get(self.gallery, "the bundled gallery")
        return f"Top {len(self.results)} of {self.n_photos} photos in {where} ({self.how})."

    def public(self) -> list[dict]:
        """`results` without the server's file paths."""
        return [{key: v for key, v in r.items() if key != "path"} for r in self.results]

    def items(self) -> list[tuple]:
        """`(photo, caption)` per result, for a page's gallery: the photo's path, or in a `COLLECTION`
        its [`thumbnail`] (a page serves files of its own folders only, not a collection's)."""
        return [(thumbnail(r["path"]) if self.gallery == COLLECTION else r["path"], caption(r)) for r in self.results]


def thumbnail(path, size: int = THUMBNAIL_PX) -> Image.Image:
    """The photo at `path` fit in `size` x `size` pixels (RGB, upright), or a grey tile when it cannot be read."""
    try:  # the processor's loader: JPEGs decoded at a reduced scale, the pixel limit, EXIF orientation
        return to_rgb_on_white(ZseImageProcessor(max_input_side=size).load_image(path))
    except (OSError, ValueError):
        return Image.new("RGB", (size, size), "#d0d0d0")


def caption(result: dict) -> str:
    """Two lines for a result's thumbnail: `#rank class`, then its scores."""
    label = result["class"] or Path(result["photo"]).stem
    rel = f"relation {format_metric(result['relation_score'])} · " if result["relation_score"] is not None else ""
    return f"#{result['rank']} {label}\n{rel}[Ret] {format_metric(result['ret_score'])}"


@dataclass
class Explained:
    """Why a result matched: `pictures` are PNG paths (correspondence, attention, synthesis,
    kernel) in the session's picture folder, `summary` a Markdown sentence with the scores."""

    pictures: list[str]
    summary: str


# ----------------------------------------------------------------------------- the service


class SketchSearchService:
    """Sketch search over a bundled gallery, each session's own photos and optionally a saved
    photo store (`COLLECTION`), with explanations.

    Args:
        model: the served model ([`load_demo_model`]).
        gallery_dir: the bundled photos (`<class>__<stem>.jpg`).
        cache_root: where bundled indexes are cached ("default": [`default_cache_root`]; None: no cache).
        background: build a bundled index that is not cached in a background thread (`index_ready`
            is set when it is done; see `index_note`) instead of before returning.
        defer_indexing: with `background`, wait for [`start_indexing`].
        limits: caps on each session's uploaded gallery (default: [`default_limits`]).
        seed_roots: read-only folders of prebuilt cache entries, tried after `cache_root`.
        files: what the front end keeps of its own files (default: [`FileHost`]).
        photos: a saved photo store searched as `COLLECTION`: a database URI (a Milvus Lite `.db`
            file, `milvus://`, `http(s)://`) or a saved `ZseIndex` folder, built with the served
            model's weights (`zse-sbir index photos/ --out photos.db`); see [`close`].

    Raises:
        UserError: `gallery_dir` holds no images, or `photos` cannot be opened (missing,
            unreachable, built with other weights).
    """

    def __init__(self, model: DemoModel, gallery_dir: str | os.PathLike, *,
                 cache_root: str | os.PathLike | None = "default", background: bool = False,
                 defer_indexing: bool = False, limits: UploadLimits | None = None, seed_roots=(),
                 files: FileHost | None = None, photos: str | os.PathLike | None = None):
        self.dm = model
        self.gallery_dir = Path(gallery_dir).resolve()
        self.cache_root = default_cache_root() if cache_root == "default" else cache_root
        self.limits = limits or default_limits()
        tune_heap()
        self.run = ModelThread()  # every model call, one at a time
        self.collection, self.collection_name, self.n_collection = None, "", 0
        if photos is not None:
            self.collection, self.collection_name = self.run(self._open_collection, photos), store_name(photos)
            self.n_collection = self.run(len, self.collection)
        self.registry = SessionRegistry(self.run, files)
        try:
            self.bundled = BundledGallery(model, self.gallery_dir, self.run, self.cache_root, seed_roots=seed_roots,
                                          background=background, defer=defer_indexing)
        except BaseException:
            self.close()
            raise

    def _open_collection(self, photos):
        """`photos` opened with the served model (`open_store`); UserError, one line, when it cannot be."""
        try:
            return open_store(photos, self.dm.model, self.dm.processor)
        except (ValueError, OSError, ImportError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"Cannot open the photo store {os.fspath(photos)}: {reason}") from None

    def close(self) -> None:
        """Close the `COLLECTION` store, if any (on the model thread, not while a search reads it)."""
        store, self.collection = self.collection, None
        if store is not None:
            self.run(store.close)

    def gallery_choices(self) -> list[tuple[str, str]]:
        """`(label, gallery)` of each gallery a page offers: the bundled photos, the session's own,
        and the `COLLECTION` when one was given."""
        choices = [(f"Bundled photos ({self.n_bundled})", BUNDLED), ("My photos", MINE)]
        if self.collection is not None:
            choices.append((f"Collection: {self.collection_name} ({self.n_collection} photos)", COLLECTION))
        return choices

    def gallery_ready(self, gallery: str | None) -> bool:
        """True when `gallery` can be searched now: the bundled one once indexed; the session's and
        the collection always (an empty one says so when searched)."""
        return gallery in (MINE, COLLECTION) or self.bundled_ready()

    # ------------------------------------------------------------------ bundled gallery

    @property
    def index(self) -> ZseIndex | None:
        """The bundled gallery's index (None until built, or when its build failed)."""
        return self.bundled.index

    @property
    def index_ready(self):
        """`threading.Event`, set when the bundled index is built or loaded (or its build failed)."""
        return self.bundled.ready

    @property
    def index_from_cache(self) -> bool:
        """True when the bundled index was loaded from a cache entry."""
        return self.bundled.from_cache

    @property
    def n_bundled(self) -> int:
        """Number of bundled photos."""
        return self.bundled.n_photos

    def start_indexing(self) -> None:
        """Start a deferred background build of the bundled index (once)."""
        self.bundled.start()

    def bundled_ready(self) -> bool:
        """True once the bundled index can be searched."""
        return self.bundled.searchable()

    def index_note(self) -> str:
        """Markdown on the bundled index: its progress or failure; "" once it is ready."""
        return self.bundled.note()

    def check_gallery(self, gallery: str) -> None:
        """UserError when `gallery` is `COLLECTION` and none was given, or `BUNDLED` (anything else
        but `MINE`) and its index cannot be searched (yet)."""
        if gallery == COLLECTION:
            if self.collection is None:
                raise UserError("No photo collection was given to this server: search the bundled gallery or "
                                "your own photos.")
        elif gallery != MINE:
            self.bundled.check()

    # ------------------------------------------------------------------ sessions

    @property
    def sessions(self) -> dict[str, Session]:
        """The live sessions by key."""
        return self.registry.by_key

    def session(self, key: str | None = None, value: Session | None = None) -> Session:
        """The session of a request: the one registered under `key`, else `value`, else a new one
        (registered when there is a key). See [`SessionRegistry.get`]."""
        return self.registry.get(key, value)

    def live_sessions(self) -> int:
        """Number of live sessions."""
        return self.registry.live()

    def end_session(self, key: str | None, why: str = "page closed") -> None:
        """Release the session under `key` (its index, uploads and pictures are deleted)."""
        self.registry.end(key, why)

    def release(self, session: Session, why: str = "ended") -> None:
        """Release `session` now (see [`SessionRegistry.release`])."""
        self.registry.release(session, why)

    def release_later(self, session, why: str = "state expired") -> None:
        """Release `session` in a background thread, if it is a live [`Session`]."""
        self.registry.release_later(session, why)

    def track_uploads(self, session: Session, kind: str, *paths) -> None:
        """Record uploaded files (`kind` "photo" or "sketch") as `session`'s: deleted with it."""
        self.registry.track(session, kind, *paths)

    def clear_photos(self, session: Session) -> None:
        """Forget `session`'s uploaded gallery (its index is closed, its files deleted)."""
        self.registry.set_user_gallery(session, None, {}, set())

    # ------------------------------------------------------------------ search and explain

    def search(self, sketch: Image.Image, gallery: str = BUNDLED, k=10, mode: str = RET, rerank_k=10,
               session: Session | None = None) -> Ranking:
        """Rank `gallery` (`BUNDLED`; `MINE`: the session's photos; `COLLECTION`: the `photos=` store) for `sketch`.

        Args:
            sketch: the query, RGB (e.g. from [`sketch_query`]).
            k: results, clamped to 1..50 (None: 10).
            mode: `RET` ([Ret] cosine) or `RERANK` (the top `rerank_k`, clamped to 1..200, re-scored
                by the relation network).
            session: remembers the sketch and results for [`explain`] (default: a new one).

        Returns:
            Ranking: the results (also kept in `session.hits`).

        Raises:
            UserError: the gallery cannot be searched (still indexing, empty) or the sketch is blank;
                `session.hits` is emptied.
        """
        session = session if session is not None else Session()
        mine, shared = gallery == MINE, gallery == COLLECTION
        try:
            self.check_gallery(gallery)
            k = int(max(1, min(50, int(k or 10))))
            rerank = int(max(1, min(200, int(rerank_k or 10)))) if mode == RERANK else 0

            def ranked():  # on the model thread, where a session's release closes its index too
                index = session.user_index if mine else self.collection if shared else self.index
                n_photos = 0 if index is None else len(index)
                if shared and n_photos == 0:
                    raise UserError("The photo collection is empty (or was closed): search the bundled gallery.")
                if n_photos == 0:
                    raise UserError("Your photo gallery is empty: upload some photos under **My photos** first "
                                    "(or switch to the bundled gallery).")
                how = mode_description(f"rn@{rerank}" if rerank else "ret", index.model.config.rerank_ret_weight)
                return index.search(sketch, k=k, rerank_k=rerank)[0], n_photos, how

            hits, n_photos, how = self.run(ranked)
        except (UserError, BlankSketchError) as err:
            session.hits = []
            if isinstance(err, BlankSketchError):
                raise UserError(BLANK_SKETCH) from err
            raise
        results = []
        for h in hits:
            if shared:  # the path stored with the photo; named by its id, else its file name
                path = str(h.path or "")
                name = str(h.id) if isinstance(h.id, str) or not path else Path(path).name
                cls = photo_class(Path(path or name).name)
            else:
                name = str(h.id)
                path = session.user_paths.get(h.id, h.path) if mine else str(self.gallery_dir / name)
                cls = photo_class(name)
            results.append({"rank": h.rank, "photo": name, "class": cls or None,
                            "ret_score": round(h.ret_score, 4),
                            "relation_score": None if h.relation_score is None else round(h.relation_score, 4),
                            "path": path})
        session.sketch, session.hits = sketch, results
        return Ranking(results, n_photos, MINE if mine else COLLECTION if shared else BUNDLED, how)

    def explain(self, rank, session: Session) -> Explained:
        """Why result number `rank` (1-based) of the session's last search matched: the four
        explanation pictures, written as PNGs to the session's folder, and a summary.

        Raises:
            UserError: no search yet, no such result, or its photo is gone.
        """
        from ..explain import explain_pair, explanation_pictures

        if not session.hits or session.sketch is None:
            raise UserError("Search first, then select a result to explain it.")
        try:
            rank = int(rank)
        except (TypeError, ValueError):
            raise UserError("Enter the number of a result to explain.") from None
        if not 1 <= rank <= len(session.hits):
            raise UserError(f"There is no result #{rank}; pick 1 to {len(session.hits)}.")
        r = session.hits[rank - 1]
        if not r["path"] or not Path(r["path"]).is_file():
            raise UserError(f"The photo of result #{rank} is no longer on the server; search again.")
        dm = self.dm
        note = "" if dm.trained else "untrained demo model: encoder tokens, not a trained relation head"

        def explained():
            expl = explain_pair(dm.model, dm.processor, session.sketch, r["path"], source=dm.explain_source,
                                note=note, grid=dm.explain_grid, image_size=dm.explain_image_size)
            return expl, explanation_pictures(expl)

        expl, pics = self.run(explained)
        paths = self.registry.write_pictures(session, pics)
        label = r["class"] or r["photo"]
        md = (f"**Why #{rank} ({label}) matched:** relation score {format_metric(expl.relation_score)}, "
              f"[Ret] cosine {format_metric(expl.cosine)}; cell kernel from the "
              f"{'relation head' if expl.source == 'relation' else 'encoder tokens'} "
              f"({expl.grid}×{expl.grid} cells, {expl.sketch_image.width} px)." + (f" *{note}.*" if note else ""))
        return Explained(paths, md)

    # ------------------------------------------------------------------ the session's photos

    def index_photos(self, paths: list[str], session: Session, progress: Callable[[int, int], None] | None = None,
                     warn: Callable[[str], None] | None = None) -> tuple[str, str]:
        """Index uploaded photos as the session's gallery, within `limits` (files beyond a cap are
        deleted and the message names the cap); unreadable files are skipped.

        Args:
            paths: uploaded files (in the upload folder).
            progress: `progress(done, total)`: at the start (0) and after each `INDEX_CHUNK` photos.
            warn: called with each message worth a pop-up (a cap reached, files skipped, nothing usable).

        Returns:
            tuple[str, str]: `(message, gallery)`: `MINE` when the session now has photos, else `BUNDLED`.
        """
        warn = warn or (lambda msg: None)
        progress = progress or (lambda done, total: None)
        registry = self.registry
        if not paths:
            registry.set_user_gallery(session, None, {}, set())
            msg = "Your photo gallery is empty: upload some photos (JPEG/PNG) to search them."
            warn(msg)
            return f"⚠️ {msg}", BUNDLED
        used, refused, limit_note = self.limits.select(paths)
        notes = [limit_note] if limit_note else []
        if refused:
            warn(limit_note[:1].upper() + limit_note[1:] + ".")
            registry.drop_files({os.path.realpath(p) for p in refused} - {os.path.realpath(p) for p in used})
        files_used = {os.path.realpath(p) for p in used if in_upload_area(p)}
        index, mapping, skipped, names = None, {}, [], set()
        chunk = gallery_index.INDEX_CHUNK
        try:
            progress(0, len(used))
            for start in range(0, len(used), chunk):
                if session.released:  # the session ended: stop
                    break
                images, ids = [], []
                for p in used[start:start + chunk]:
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
                    self.run(index.add, images, ids=ids, batch_size=chunk, progress=False)
                    del images
                progress(min(start + chunk, len(used)), len(used))
        except Exception as err:  # noqa: BLE001
            log.error("indexing failed:\n%s", traceback.format_exc())
            if index is not None:
                self.run(index.close)
            registry.track(session, "photo", *files_used)  # deleted with the session
            return f"⚠️ Indexing failed: {type(err).__name__}: {err}", BUNDLED
        finally:
            trim_memory()  # the photos decoded in this worker thread
        if index is None or len(index) == 0:
            if not registry.set_user_gallery(session, None, {}, files_used):
                return "The page was closed.", BUNDLED
            msg = f"None of the {len(used)} files could be read as a photo: " + "; ".join(skipped[:3])
            warn(msg)
            return f"⚠️ {msg}", BUNDLED
        if not registry.set_user_gallery(session, index, mapping, files_used):
            return "The page was closed.", BUNDLED
        if skipped:
            shown = "; ".join(m.rstrip(".") for m in skipped[:3])
            notes.append(f"{len(skipped)} skipped: {shown}" + (" ..." if len(skipped) > 3 else ""))
            warn(f"{len(skipped)} file(s) skipped: " + skipped[0])
        return (f"Indexed {len(index)} of your photos (only you can search them)."
                + (" Note: " + "; ".join(notes) + "." if notes else ""), MINE)


__all__ = ["BLANK_SKETCH", "BUNDLED", "COLLECTION", "Explained", "MINE", "MIN_INK_PIXELS", "RERANK", "RET", "Ranking",
           "SketchSearchService", "UserError", "canvas_image", "caption", "ink_pixels", "photo_class", "sketch_files",
           "sketch_query", "store_name", "thumbnail"]
