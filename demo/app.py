"""ZSE-SBIR demo: draw a sketch, find the matching photos, and see why they matched.

Runs locally (`zse-sbir demo`, `python demo/app.py`) and as a Hugging Face Space unchanged
(`zse-sbir space --out DIR` assembles one). This file is the page only: its layout and event
handlers, which turn Gradio's values into calls of `zse_hf.serving.SketchSearchService` (the model,
the bundled gallery's index and its cache, each browser session's photos and pictures, the model
thread) and its answers into page updates. It passes this folder's paths in: `gallery/`,
`examples/`, `index_cache/` (a prebuilt index if any: a Space's, or `--prebuild-index`),
`space_config.json`, `hub_card/`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

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

from zse_hf import assets
from zse_hf.configuration_zse import default_rerank_k
from zse_hf.retrieval import ZseIndex, remove_stale_work_dirs  # noqa: F401 - ZseIndex: read from here by tests
from zse_hf.serving import gallery_index, models
from zse_hf.serving.gallery_index import bundled_index, cache_key, gallery_files, gallery_fingerprint  # noqa: F401
from zse_hf.serving.runtime import ModelThread, env_number, remove_stale_picture_dirs  # noqa: F401
from zse_hf.serving.runtime import exit_on_signal as _exit_on_signal
from zse_hf.serving.service import BUNDLED, MINE, RERANK, RET, SketchSearchService, sketch_files, sketch_query
from zse_hf.serving.service import photo_class as photo_class  # the bundled photos' class rule, read by benchmarks
from zse_hf.serving.sessions import SESSION_TTL_S, FileHost, Session
from zse_hf.serving.uploads import MAX_UPLOAD_BYTES, UploadLimits, read_upload, upload_roots
from zse_hf.serving.uploads import UserInputError as UserError

log = logging.getLogger("zse_demo")

GALLERY_DIR = HERE / "gallery"
EXAMPLES_DIR = HERE / "examples"
HUB_CARD_DIR = HERE.parent / "hub_card"
SPACE_CONFIG = HERE / "space_config.json"  # written by `zse-sbir space`
SEED_INDEX_DIR = HERE / "index_cache"  # prebuilt bundled-gallery indexes (read only)
QUEUE_MAX_SIZE = int(env_number("ZSE_DEMO_QUEUE_SIZE", 64))  # waiting events; more are refused


# the service's model choice and note, with this folder's `space_config.json` and `hub_card/` (an eval JSON's
# model paths are relative to the repository)
resolve_model_path = functools.partial(models.resolve_model_path, space_config=SPACE_CONFIG, hub_card_dir=HUB_CARD_DIR)
load_demo_model = functools.partial(models.load_demo_model, roots=[HERE.parent])
model_note = functools.partial(models.model_note, roots=[HERE.parent])


def prebuild_seed_index(model: str | None = None, gallery_dir: Path = GALLERY_DIR, root: Path = SEED_INDEX_DIR) -> Path:
    """Write the read-only index entry of `model` (default: the demo's) and the bundled gallery under
    `root` (`index_cache/`, read by a first start before it encodes the photos), removing other entries; its folder."""
    return gallery_index.prebuild_seed_index(load_demo_model(*resolve_model_path(model)), gallery_dir, root)


# ----------------------------------------------------------------------------- the page


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


class GradioFiles(FileHost):
    """Gradio's side of the session files: pictures go to its cache (served without copying); its copies
    of the bundled photos and example sketches (an upload of the same file lands on the same path) and
    the files it keeps are never deleted; deleted files leave its lists."""

    def __init__(self, demo: gr.Blocks | None, gallery_dir: Path, examples_dir: Path):
        self.demo, self.folders, self._copies = demo, (gallery_dir, examples_dir), None

    def picture_dir(self) -> Path:
        return Path(self.demo.GRADIO_CACHE) if self.demo is not None else super().picture_dir()

    def protected(self) -> set[str]:
        if self._copies is None:
            copies = set()
            try:
                from gradio.processing_utils import hash_file
                from gradio_client.utils import strip_invalid_filename_characters

                cache = self.picture_dir()
                copies = {os.path.realpath(cache / hash_file(p) / strip_invalid_filename_characters(p.name))
                          for folder in self.folders if folder.is_dir() for p in gallery_files(folder)}
            except (ImportError, OSError) as err:
                log.warning("cannot list Gradio's copies of the bundled files: %s", err)
            self._copies = copies
        keep = set(self._copies)
        if self.demo is not None:
            for block in list(self.demo.blocks.values()):
                keep.update(os.path.realpath(p) for p in list(getattr(block, "keep_in_cache", ())))
        return keep

    def forget(self, paths: set[str]) -> None:
        for files in list(getattr(self.demo, "temp_file_sets", [])):
            for p in [p for p in list(files) if os.path.realpath(p) in paths]:
                files.discard(p)

    def uploads(self) -> set[str]:
        return self.demo.upload_file_set if self.demo is not None else set()


class DemoApp:
    """The demo page over a `SketchSearchService`: `blocks()` builds it; the handlers translate Gradio
    values to service calls. The service's attributes (`dm`, `index`, `sessions`, ...) read through.

    Args:
        model: model folder or Hub id; None picks one with [`resolve_model_path`].
        gallery_dir, examples_dir: the bundled photos (`<class>__<stem>.jpg`), example sketch PNGs.
        index_when_launched: with `background`, index once [`launch`] has the page up (a quicker start).
        cache_root, background, limits, seed_roots, photos: see `SketchSearchService` (`photos`: a saved
            store, searched as a third gallery, "Collection").
    """

    def __init__(self, model: str | None = None, *, gallery_dir: str | os.PathLike = GALLERY_DIR,
                 examples_dir: str | os.PathLike = EXAMPLES_DIR, cache_root: str | os.PathLike | None = "default",
                 background: bool = False, index_when_launched: bool = False, limits: UploadLimits | None = None,
                 seed_roots=(SEED_INDEX_DIR,), photos: str | os.PathLike | None = None):
        dm = load_demo_model(*resolve_model_path(model))
        self.examples_dir = Path(examples_dir).resolve()
        self.demo: gr.Blocks | None = None  # the page, once `blocks()` built it
        self.service = SketchSearchService(dm, gallery_dir, cache_root=cache_root, background=background, photos=photos,
                                           defer_indexing=index_when_launched, limits=limits, seed_roots=seed_roots)
        self.service.registry.attach(GradioFiles(None, self.gallery_dir, self.examples_dir))

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "service":  # copies and pickles, and before `service` is set
            raise AttributeError(name)
        return getattr(self.service, name)

    # ------------------------------------------------------------------ handlers

    def index_status(self, gallery: str | None = None):
        """Handler (page load and a 1 s timer while indexing): the progress note, the Search
        button (enabled when the chosen gallery can be searched) and the timer (stopped when done)."""
        note = self.index_note()
        return (gr.update(value=note, visible=bool(note)), self._search_button(gallery),
                gr.Timer(active=not self.index_ready.is_set()))

    def _search_button(self, gallery: str | None):
        return gr.update(interactive=self.gallery_ready(gallery))

    def session_for(self, value, request: gr.Request | None = None) -> Session:
        """The session of a handler call: by Gradio's session hash, else the `gr.State` value, else new."""
        return self.service.session(getattr(request, "session_hash", None), value)

    def end_session(self, request: gr.Request | None = None) -> None:
        """Handler of the page's unload event (tab closed or reloaded): release its session."""
        self.service.end_session(getattr(request, "session_hash", None), "page closed")

    def state_deleted(self, value) -> None:
        """`delete_callback` of the session `gr.State` (expired): release it in a thread (called in Gradio's loop)."""
        self.service.release_later(value, "state expired")

    def _query(self, sketch_value, upload, input_tab: str):
        """The query sketch: the active tab's input, else the other one; UserError if none."""
        upload_path = upload.get("path") if isinstance(upload, dict) else upload
        return sketch_query(sketch_value, upload_path, input_tab, self.dm.processor)

    def search(self, sketch_value, upload, gallery: str, top_k, mode: str, rerank_k, input_tab, session,
               request: gr.Request | None = None):
        """Handler: rank the chosen gallery for the sketch. Returns (gallery items, scores JSON,
        status, session, explain rank)."""
        session = self.session_for(session, request)
        try:
            self.service.track_uploads(session, "sketch", *sketch_files(sketch_value, upload))
            self.service.check_gallery(gallery)
            sketch = self._query(sketch_value, upload, input_tab or "draw")
            found = self.service.search(sketch, gallery, top_k, mode, rerank_k, session)
            status = found.summary() + " Select a result to see why it matched."
            return found.items(), found.public(), status, session, 1
        except UserError as err:
            gr.Warning(str(err))
            session.hits = []
            return [], [], f"⚠️ {err}", session, 1
        except Exception as err:  # noqa: BLE001 - never show a traceback to the user
            log.error("search failed:\n%s", traceback.format_exc())
            gr.Warning("Search failed; see the message below.")
            return [], [], f"⚠️ Search failed: {type(err).__name__}: {err}", session, 1

    def explain(self, rank, session, request: gr.Request | None = None):
        """Handler: the four explanation pictures (PNG files in the session's folder) and a Markdown
        summary for result number `rank` of the session's last search."""
        session = self.session_for(session, request)
        try:
            shown = self.service.explain(rank, session)
            return (*shown.pictures, shown.summary)
        except UserError as err:
            gr.Warning(str(err))
            return None, None, None, None, f"⚠️ {err}"
        except Exception as err:  # noqa: BLE001
            log.error("explain failed:\n%s", traceback.format_exc())
            return None, None, None, None, f"⚠️ Explanation failed: {type(err).__name__}: {err}"

    def explain_selected(self, session, evt: gr.SelectData, request: gr.Request | None = None):
        """Handler for a click on a result: its rank plus [`explain`]'s outputs."""
        rank = (evt.index if isinstance(evt.index, int) else 0) + 1
        return (rank, *self.explain(rank, session, request))

    def explain_top(self, session, request: gr.Request | None = None):
        """Handler chained after a search: explain result #1 (nothing when there are no results)."""
        session = self.session_for(session, request)
        return self.explain(1, session, request) if session.hits else (None, None, None, None, "")

    def index_photos(self, files, session, progress=gr.Progress(),  # noqa: B008 - Gradio's progress idiom
                     request: gr.Request | None = None):
        """Handler: index the uploaded photos for this session, within the limits (files beyond a
        cap are deleted and the message names the cap). Returns (status, session, gallery choice)."""
        session = self.session_for(session, request)
        paths = [f.get("path") if isinstance(f, dict) else f for f in (files or [])]

        def report(done: int, total: int) -> None:  # Gradio's progress bar
            if done:
                progress((done, total), desc="Indexing your photos", unit="photos")
            else:
                progress(0, desc="Indexing your photos")

        message, choice = self.service.index_photos([str(p) for p in paths if p], session, report, gr.Warning)
        return message, session, choice

    def clear_photos(self, session, request: gr.Request | None = None):
        """Handler: forget this session's uploaded gallery (and delete its files)."""
        session = self.session_for(session, request)
        self.service.clear_photos(session)
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
                    gallery = gr.Radio(self.gallery_choices(), value=BUNDLED, label="Search in",
                                       elem_id="gallery-choice")
                    with gr.Group(visible=False) as mine_group:
                        lim = self.limits
                        photos = gr.File(label=f"Your photos (up to {lim.max_photos}, {lim.max_megabytes:g} MB and "
                                               f"{lim.max_megapixels:g} megapixels in all; only you can search them)",
                                         file_count="multiple", type="filepath", elem_id="user-photos")
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
                        explain_rank = gr.Number(1, precision=0, minimum=1, label="Result #", scale=0, min_width=130)
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
        self.service.registry.attach(GradioFiles(demo, self.gallery_dir, self.examples_dir))  # its cache folder
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
    p.add_argument("--photos", default=os.environ.get("ZSE_DEMO_PHOTOS") or None, help="a saved photo store to search "
                   "too: a Milvus URI (photos.db, http://host:19530) or a ZseIndex folder (default: $ZSE_DEMO_PHOTOS)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="create a public gradio.live link")
    p.add_argument("--prebuild-index", action="store_true", help="write the bundled gallery's index for the model "
                   "into index_cache/ next to the app (read only at start; not tracked by git) and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build and launch the demo (the page is up while the bundled photos are indexed); returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, _exit_on_signal)  # run clean-ups (index work dirs, pictures)
    remove_stale_work_dirs()  # left by a demo that was killed
    remove_stale_picture_dirs(upload_roots()[0])
    if args.prebuild_index:
        print(prebuild_seed_index(args.model, Path(args.gallery)))
        return 0
    try:
        demo = build_demo(args.model, gallery_dir=args.gallery, background=True, index_when_launched=True,
                          photos=args.photos)
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
