"""The demo's service layer without Gradio (`zse_hf.serving`): every module imports with Gradio
blocked; `SketchSearchService` searches and explains on a tiny model and three bundled photos,
indexes a session's uploads within its caps and frees them when the session ends; the bundled
index's cache is bound to the model's and the gallery's fingerprints; a saved photo store (a
Milvus Lite file, when the milvus extra is installed, or a `ZseIndex` folder) is searched as the
collection, and one built with other weights is refused."""

from __future__ import annotations

import json
import pkgutil
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("faiss")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

import zse_hf.serving  # noqa: E402
from zse_hf.serving import gallery_index, sessions  # noqa: E402
from zse_hf.serving.gallery_index import cache_key, gallery_files, gallery_fingerprint  # noqa: E402
from zse_hf.serving.models import load_demo_model  # noqa: E402
from zse_hf.serving.service import (  # noqa: E402
    BLANK_SKETCH,
    BUNDLED,
    COLLECTION,
    MINE,
    RERANK,
    RET,
    THUMBNAIL_PX,
    SketchSearchService,
    UserError,
    caption,
    sketch_query,
    thumbnail,
)
from zse_hf.serving.sessions import FileHost, Session  # noqa: E402
from zse_hf.serving.uploads import UploadLimits  # noqa: E402

from conftest import save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUNDLED_PHOTOS = REPO / "demo" / "gallery"
MILVUS_EXTRA = "the milvus extra is not installed (pip install 'zse-sbir[milvus]')"


def small_gallery(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted(BUNDLED_PHOTOS.glob("*.jpg"))[:n]:
        shutil.copy(photo, folder / photo.name)
    return folder


def make_photos(folder: Path, n: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"photo_{seed}_{i}.jpg"
        Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)).resize((96, 72)).save(path)
        paths.append(path)
    return paths


def _sketch() -> Image.Image:
    from zse_hf.data import read_quickdraw, render_sketch

    return render_sketch(read_quickdraw("giraffe")[5], size=256)


class RecordingHost(FileHost):
    """Pictures under a folder of the test's; records what the service asks it to forget."""

    def __init__(self, folder: Path, protected=()):
        self.folder, self.kept, self.forgotten = folder, set(protected), set()

    def picture_dir(self) -> Path:
        return self.folder

    def protected(self) -> set[str]:
        return set(self.kept)

    def forget(self, paths: set[str]) -> None:
        self.forgotten |= paths


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(the served tiny model, a gallery of 3 bundled photos, tmp dir)."""
    tmp = tmp_path_factory.mktemp("serving")
    save_tiny_model(tmp / "model")
    return load_demo_model(str(tmp / "model")), small_gallery(tmp / "gallery", 3), tmp


@pytest.fixture
def upload_area(tmp_path, monkeypatch):
    area = tmp_path / "uploads"
    area.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(area))
    return area


@pytest.fixture
def service(tiny, tmp_path, upload_area):
    dm, gallery, tmp = tiny
    return SketchSearchService(dm, gallery, cache_root=tmp / "cache", files=RecordingHost(tmp_path / "pictures"))


def test_serving_never_imports_gradio():
    """Every module of `zse_hf.serving` imports with Gradio blocked, and none pulls it in."""
    names = sorted(m.name for m in pkgutil.iter_modules(zse_hf.serving.__path__))
    assert {"service", "models", "gallery_index", "sessions", "runtime"} <= set(names)
    code = ("import importlib, sys\nsys.modules['gradio'] = None\n"
            f"for name in {names!r}:\n    importlib.import_module('zse_hf.serving.' + name)\n"
            "import zse_hf.serving as s\nassert s.SketchSearchService and s.DemoModel\n"
            "assert sys.modules['gradio'] is None, 'gradio was imported'\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


# ----------------------------------------------------------------------------- search and explain


@pytest.mark.parametrize("mode", [RET, RERANK])
def test_search_and_explain_through_the_service(service, mode):
    session = service.session("user")
    ranking = service.search(_sketch(), BUNDLED, k=2, mode=mode, rerank_k=3, session=session)
    assert len(ranking.results) == 2 and ranking.n_photos == 3 and ranking.gallery == BUNDLED
    assert ranking.summary().startswith("Top 2 of 3 photos in the bundled gallery (")
    assert session.hits == ranking.results and session.sketch is not None
    photos = {p.name for p in service.gallery_dir.iterdir()}
    for i, r in enumerate(ranking.results, start=1):
        assert r["rank"] == i and r["photo"] in photos and Path(r["path"]) == service.gallery_dir / r["photo"]
        assert r["class"] == r["photo"].split("__")[0].replace("_", " ")
        assert (r["relation_score"] is None) == (mode == RET)
    assert all("path" not in r for r in ranking.public())
    assert ranking.items() == [(r["path"], caption(r)) for r in ranking.results]
    shown = service.explain(2, session)
    assert len(shown.pictures) == 4 and all(Path(p).is_file() for p in shown.pictures)
    assert all(Path(p).parent.parent.parent == service.registry.host.folder for p in shown.pictures)
    assert shown.summary.startswith(f"**Why #2 ({ranking.results[1]['class']}) matched:**")
    service.end_session("user")
    assert not any(Path(p).exists() for p in shown.pictures) and service.live_sessions() == 0


def test_user_errors_keep_their_words(service, upload_area):
    session = Session()
    with pytest.raises(UserError, match=r"^Search first, then select a result to explain it\.$"):
        service.explain(1, session)
    white = Image.new("RGB", (300, 300), "white")
    session.hits = [{"stale": True}]
    with pytest.raises(UserError) as err:
        service.search(white, BUNDLED, session=session)
    assert str(err.value) == BLANK_SKETCH and session.hits == []
    service.search(_sketch(), BUNDLED, k=2, session=session)
    with pytest.raises(UserError, match=r"^There is no result #9; pick 1 to 2\.$"):
        service.explain(9, session)
    with pytest.raises(UserError, match="Your photo gallery is empty: upload some photos under"):
        service.search(_sketch(), MINE, session=session)
    with pytest.raises(UserError, match=r"^No photo collection was given to this server"):
        service.search(_sketch(), COLLECTION, session=session)
    assert session.hits == [] and [g for _, g in service.gallery_choices()] == [BUNDLED, MINE]
    with pytest.raises(UserError, match="^The canvas is empty: draw something"):
        sketch_query(None, None, "draw", service.dm.processor)
    with pytest.raises(UserError, match="^No sketch uploaded yet"):
        sketch_query(None, None, "upload", service.dm.processor)
    blank = upload_area / "blank.png"
    white.save(blank)
    with pytest.raises(UserError, match="^The uploaded sketch is blank"):
        sketch_query(None, str(blank), "upload", service.dm.processor)


# ----------------------------------------------------------------------------- sessions and their limits


def test_a_sessions_photos_are_capped_searched_and_freed(tiny, tmp_path, upload_area):
    dm, gallery, tmp = tiny
    host = RecordingHost(tmp_path / "pictures")
    service = SketchSearchService(dm, gallery, cache_root=tmp / "cache", limits=UploadLimits(max_photos=2),
                                  files=host)
    photos = make_photos(upload_area / "a", 3, seed=1)
    session = service.session("alice")
    steps, warnings = [], []
    message, choice = service.index_photos([str(p) for p in photos], session,
                                           progress=lambda done, total: steps.append((done, total)),
                                           warn=warnings.append)
    assert message == "Indexed 2 of your photos (only you can search them). Note: only the first 2 of 3 photos " \
                      "were used: at most 2 photos per session."
    assert choice == MINE and steps[0] == (0, 2) and steps[-1] == (2, 2)
    assert warnings == ["Only the first 2 of 3 photos were used: at most 2 photos per session."]
    assert photos[0].exists() and photos[1].exists() and not photos[2].exists()
    ranking = service.search(_sketch(), MINE, k=5, session=session)
    assert {r["photo"] for r in ranking.results} == {photos[0].name, photos[1].name}
    assert ranking.summary().startswith("Top 2 of 2 photos in your photos")
    work = session.user_index._work_dir()
    pictures = service.explain(1, session).pictures
    assert service.sessions == {"alice": session} and work.is_dir()
    service.end_session("alice")
    assert session.released and session.user_index is None and session.hits == [] and not session.files()
    assert not work.exists() and not photos[0].exists() and not any(Path(p).exists() for p in pictures)
    assert {str(Path(p).resolve()) for p in pictures} <= host.forgotten
    assert service.live_sessions() == 0


def test_sessions_share_uploads_and_keep_protected_files(tiny, tmp_path, upload_area):
    dm, gallery, tmp = tiny
    shared = make_photos(upload_area / "shared", 1, seed=2)[0]
    kept = make_photos(upload_area / "kept", 1, seed=3)[0]
    service = SketchSearchService(dm, gallery, cache_root=tmp / "cache",
                                  files=RecordingHost(tmp_path / "pictures", {str(kept.resolve())}))
    alice, bob = service.session("alice"), service.session("bob")
    assert service.session("alice") is alice and service.live_sessions() == 2
    for who in (alice, bob):
        assert service.index_photos([str(shared), str(kept)], who)[1] == MINE
    service.end_session("alice")
    assert shared.exists() and kept.exists()  # bob still uses the shared upload
    service.clear_photos(bob)
    assert bob.user_index is None and not shared.exists() and kept.exists()  # never deletes a protected file
    assert service.index_photos([], bob)[0].startswith("⚠️ Your photo gallery is empty")


def test_idle_and_expired_sessions_are_released(service, monkeypatch):
    idle = service.session("idle")
    idle.last_used -= sessions.SESSION_TTL_S + 1
    monkeypatch.setattr(sessions, "IDLE_SWEEP_S", 0)
    service.session("active")
    assert idle.released and "idle" not in service.sessions and service.live_sessions() == 1
    expired = service.sessions["active"]
    service.release_later(expired)
    deadline = time.monotonic() + 30
    while not expired.released and time.monotonic() < deadline:
        time.sleep(0.05)
    assert expired.released and service.live_sessions() == 0
    back = service.session("active", expired)  # the page came back: its session serves again
    assert back is expired and not back.released and service.live_sessions() == 1


# ----------------------------------------------------------------------------- the bundled index and its cache


def test_the_index_cache_is_bound_to_the_model_and_the_gallery(tiny, tmp_path):
    dm, gallery, tmp = tiny
    cache = tmp_path / "cache"
    first = SketchSearchService(dm, gallery, cache_root=cache)
    key = cache_key(dm.fingerprint, gallery_fingerprint(gallery_files(gallery)))
    assert not first.index_from_cache and [p.name for p in cache.iterdir()] == [key]
    assert SketchSearchService(dm, gallery, cache_root=cache).index_from_cache
    save_tiny_model(tmp_path / "model2", seed=1)  # other weights
    other = load_demo_model(str(tmp_path / "model2"))
    assert other.fingerprint != dm.fingerprint
    assert not SketchSearchService(other, gallery, cache_root=cache).index_from_cache
    assert len(list(cache.iterdir())) == 2
    meta = cache / key / "gallery.json"  # a record naming other weights is rebuilt, not used
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "model_sha256": "0" * 64}))
    assert not SketchSearchService(dm, gallery, cache_root=cache).index_from_cache
    assert SketchSearchService(dm, gallery, cache_root=None, seed_roots=[cache]).index_from_cache  # read only
    with pytest.raises(UserError, match="holds no images"):
        SketchSearchService(dm, tmp_path / "empty", cache_root=None)


def test_a_deferred_bundled_index_is_refused_until_built(tiny, tmp_path, monkeypatch):
    dm, gallery, _ = tiny
    monkeypatch.setattr(gallery_index, "INDEX_CHUNK", 1)
    service = SketchSearchService(dm, gallery, cache_root=tmp_path / "cache", background=True, defer_indexing=True)
    assert not service.bundled_ready() and "Indexing the bundled photos: 0/3" in service.index_note()
    with pytest.raises(UserError, match=r"^Still indexing the bundled photos \(0/3\)"):
        service.search(_sketch(), BUNDLED)
    service.check_gallery(MINE)  # the session's own photos can be searched meanwhile
    service.start_indexing()
    assert service.index_ready.wait(120) and service.bundled_ready() and service.index_note() == ""
    assert len(service.search(_sketch(), BUNDLED, k=3).results) == 3


# ----------------------------------------------------------------------------- a saved photo store (photos=)


def _team_photos(tmp_path: Path) -> list[Path]:
    return sorted(small_gallery(tmp_path / "team", 5).glob("*.jpg"))


def _check_collection(service, store, paths, name):
    """`service` searches `store` (opened apart) as the collection: same ids and order, the stored paths."""
    assert service.gallery_choices()[-1] == (f"Collection: {name} ({len(paths)} photos)", COLLECTION)
    assert service.gallery_ready(COLLECTION)
    session = service.session("team")
    for mode, rerank_k in ((RET, 0), (RERANK, 3)):
        ranking = service.search(_sketch(), COLLECTION, k=4, mode=mode, rerank_k=rerank_k, session=session)
        want = store.search(_sketch(), k=4, rerank_k=rerank_k)[0]
        assert [r["photo"] for r in ranking.results] == [h.id for h in want]
        assert [r["ret_score"] for r in ranking.results] == pytest.approx([h.ret_score for h in want], abs=1e-4)
        assert [r["path"] for r in ranking.results] == [h.path for h in want]
        assert {r["path"] for r in ranking.results} <= {str(p) for p in paths}
        assert all(r["class"] == r["photo"].split("__")[0].replace("_", " ") for r in ranking.results)
        assert (ranking.results[0]["relation_score"] is None) == (mode == RET)
        assert ranking.gallery == COLLECTION and ranking.n_photos == len(paths)
        assert ranking.summary().startswith(f"Top 4 of {len(paths)} photos in the collection (")
    shown = ranking.items()  # thumbnails: a page serves only its own folders
    assert [c for _, c in shown] == [caption(r) for r in ranking.results]
    assert all(isinstance(im, Image.Image) and max(im.size) <= THUMBNAIL_PX for im, _ in shown)
    assert max(shown[0][0].size) == min(THUMBNAIL_PX, max(Image.open(ranking.results[0]["path"]).size))
    assert thumbnail(service.gallery_dir / "gone.jpg").getpixel((0, 0)) == (208, 208, 208)
    shown = service.explain(1, session)
    assert len(shown.pictures) == 4 and all(Path(p).is_file() for p in shown.pictures)
    service.end_session("team")


def test_the_service_searches_a_milvus_store_as_the_collection(tiny, tmp_path, upload_area):
    pytest.importorskip("pymilvus", reason=MILVUS_EXTRA)
    pytest.importorskip("milvus_lite", reason=MILVUS_EXTRA)
    from zse_hf.retrieval import ZseMilvusStore, open_store

    dm, gallery, tmp = tiny
    paths = _team_photos(tmp_path)
    db = tmp_path / "photos.db"
    ZseMilvusStore.build(dm.model, dm.processor, [str(p) for p in paths], ids=[p.name for p in paths], uri=str(db),
                         progress=False).close()
    service = SketchSearchService(dm, gallery, cache_root=tmp / "cache", files=RecordingHost(tmp_path / "pictures"),
                                  photos=db)
    store = open_store(str(db), dm.model, dm.processor)
    try:
        assert isinstance(store, ZseMilvusStore)
        _check_collection(service, store, paths, "zse_photos")
    finally:
        store.close()
        service.close()
    assert service.collection is None
    with pytest.raises(UserError, match=r"^No photo collection was given"):
        service.search(_sketch(), COLLECTION)

    save_tiny_model(tmp_path / "other", seed=1)  # other weights: refused in one line
    other = load_demo_model(str(tmp_path / "other"))
    with pytest.raises(UserError) as err:
        SketchSearchService(other, gallery, cache_root=None, photos=db)
    assert str(err.value).startswith(f"Cannot open the photo store {db}: model mismatch: the collection was built")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"^Cannot open the photo store .*typo\.db: .*typo\.db does not exist$"):
        SketchSearchService(dm, gallery, cache_root=None, photos=tmp_path / "typo.db")
    assert not (tmp_path / "typo.db").exists()


def test_the_service_searches_a_saved_index_folder_as_the_collection(tiny, tmp_path, upload_area):
    from zse_hf.retrieval import ZseIndex

    dm, gallery, tmp = tiny
    paths = _team_photos(tmp_path)
    with ZseIndex.build(dm.model, dm.processor, [str(p) for p in paths], ids=[p.name for p in paths],
                        progress=False) as index:
        folder = index.save(tmp_path / "team.zse-index")
    service = SketchSearchService(dm, gallery, cache_root=tmp / "cache", files=RecordingHost(tmp_path / "pictures"),
                                  photos=folder)
    store = ZseIndex.load(folder, dm.model, dm.processor)
    try:
        _check_collection(service, store, paths, "team.zse-index")
    finally:
        store.close()
        service.close()
    save_tiny_model(tmp_path / "other", seed=1)
    with pytest.raises(UserError, match=r"^Cannot open the photo store .*: model mismatch: the index was built") as err:
        SketchSearchService(load_demo_model(str(tmp_path / "other")), gallery, cache_root=None, photos=folder)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"^Cannot open the photo store .*missing: .*does not exist"):
        SketchSearchService(dm, gallery, cache_root=None, photos=tmp_path / "missing")
