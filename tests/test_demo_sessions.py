"""The demo as a service: the bundled index built in the background (progress on the page,
searching it refused with the count until it is in, then cached by model and gallery hash),
per-session caps on "My photos", and sessions freed when they end: checked on the demo's
functions, and with a real server process driven by `gradio_client` sessions that upload
photos and leave (their uploads, index work folders and pictures are deleted, the server's
session count drops back to zero)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
pytest.importorskip("faiss")
pytestmark = pytest.mark.filterwarnings("ignore:::gradio", "ignore::UserWarning")

from zse_hf.serving import gallery_index  # noqa: E402
from zse_hf.serving import launcher as demo_launcher  # noqa: E402
from zse_hf.serving.uploads import UploadLimits  # noqa: E402

from conftest import save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "demo" / "app.py"
BUNDLED = REPO / "demo" / "gallery"


def make_photos(folder: Path, n: int, seed: int, size=(96, 72)) -> list[Path]:
    """`n` distinct JPEG photos (coloured blocks, seeded) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST)
        path = folder / f"photo_{seed}_{i}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def small_gallery(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted(BUNDLED.glob("*.jpg"))[:n]:
        shutil.copy(photo, folder / photo.name)
    return folder


@pytest.fixture(scope="module")
def app():
    return demo_launcher.load_app()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, gallery of 3 bundled photos, tmp dir)."""
    tmp = tmp_path_factory.mktemp("demo_sessions")
    save_tiny_model(tmp / "model")
    return tmp / "model", small_gallery(tmp / "gallery", 3), tmp


@pytest.fixture
def upload_area(tmp_path, monkeypatch):
    area = tmp_path / "gradio"
    area.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(area))
    return area


def _sketch():
    from zse_hf.data import read_quickdraw, render_sketch

    return render_sketch(read_quickdraw("giraffe")[5], size=256)


# ----------------------------------------------------------------------------- bundled index


def test_background_index_shows_progress_refuses_bundled_search_then_caches(app, tiny, tmp_path, upload_area,
                                                                            monkeypatch):
    model, gallery, _ = tiny
    sketch = upload_area / "sketch.png"
    _sketch().save(sketch)
    real, first_in, go_on = gallery_index.build_gallery_index, threading.Event(), threading.Event()

    def held_after_first_photo(dm, files, progress=None, run=None):
        def report(done, total):
            progress(done, total)
            if done == 1:
                first_in.set()
                go_on.wait(60)

        return real(dm, files, progress=report, run=run)

    monkeypatch.setattr(gallery_index, "INDEX_CHUNK", 1)
    monkeypatch.setattr(gallery_index, "build_gallery_index", held_after_first_photo)
    zse = app.DemoApp(str(model), gallery_dir=gallery, cache_root=tmp_path / "cache", background=True)
    try:
        assert first_in.wait(60)
        assert "Indexing the bundled photos: 1/3" in zse.index_note() and not zse.bundled_ready()
        note, button, timer = zse.index_status(app.BUNDLED)
        assert note["visible"] and button["interactive"] is False and timer.active
        assert zse.index_status(app.MINE)[1]["interactive"] is True  # your own photos meanwhile
        items, _, status, _, _ = zse.search(None, str(sketch), app.BUNDLED, 3, "ret", 5, "upload", None)
        assert items == [] and "Still indexing the bundled photos (1/3)" in status
    finally:
        go_on.set()
    assert zse.index_ready.wait(120) and zse.bundled_ready() and not zse.index_from_cache
    note, button, timer = zse.index_status(app.BUNDLED)
    assert not note["visible"] and button["interactive"] is True and not timer.active
    items, _, status, _, _ = zse.search(None, str(sketch), app.BUNDLED, 3, "ret", 5, "upload", None)
    assert len(items) == 3 and status.startswith("Top 3 of 3")
    monkeypatch.setattr(gallery_index, "build_gallery_index", real)
    again = app.DemoApp(str(model), gallery_dir=gallery, cache_root=tmp_path / "cache", background=True)
    assert again.index_from_cache and again.bundled_ready()  # the next start serves at once


def test_a_cache_entry_of_another_model_or_gallery_is_never_used(app, tiny, tmp_path):
    model, gallery, _ = tiny
    cache = tmp_path / "cache"
    first = app.DemoApp(str(model), gallery_dir=gallery, cache_root=cache)
    key = app.cache_key(first.dm.fingerprint, app.gallery_fingerprint(app.gallery_files(gallery)))
    assert [p.name for p in cache.iterdir()] == [key]
    # one more photo: another gallery hash, another entry; the first is left as it was
    bigger = small_gallery(tmp_path / "bigger", 4)
    other = app.DemoApp(str(model), gallery_dir=bigger, cache_root=cache)
    assert not other.index_from_cache and len(other.index) == 4 and len(list(cache.iterdir())) == 2
    # another model: another entry
    save_tiny_model(tmp_path / "model2", seed=1)
    third = app.DemoApp(str(tmp_path / "model2"), gallery_dir=gallery, cache_root=cache)
    assert not third.index_from_cache and len(list(cache.iterdir())) == 3
    # an entry whose record names another model is rebuilt, not used
    meta = cache / key / "gallery.json"
    meta.write_text(meta.read_text().replace(first.dm.fingerprint, "0" * 64))
    assert not app.DemoApp(str(model), gallery_dir=gallery, cache_root=cache).index_from_cache
    assert app.DemoApp(str(model), gallery_dir=gallery, cache_root=cache).index_from_cache


def test_a_prebuilt_seed_entry_is_used_read_only(app, tiny, tmp_path):
    model, gallery, _ = tiny
    app.DemoApp(str(model), gallery_dir=gallery, cache_root=tmp_path / "seed")
    served = app.DemoApp(str(model), gallery_dir=gallery, cache_root=tmp_path / "empty",
                         seed_roots=[tmp_path / "seed"])
    assert served.index_from_cache and not (tmp_path / "empty").exists()


def test_the_repository_tracks_no_prebuilt_index(app):
    """The bundled gallery's index is derived data (32 MB for the 224 px model's tokens): the
    repository does not track it, so its working tree stays small enough to travel to a remote
    machine; a first start builds it in the background and caches it, and `zse-sbir space` builds
    it into the Space."""
    import subprocess

    root = app.HERE.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", str(app.SEED_INDEX_DIR)], cwd=root, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked == []
    ignored = subprocess.run(["git", "check-ignore", "-q", str(app.SEED_INDEX_DIR / "x" / "gallery.json")],
                             cwd=root)
    assert ignored.returncode == 0  # `--prebuild-index` output stays out of commits


def test_prebuild_writes_one_seed_entry_and_drops_stale_ones(app, tiny, tmp_path):
    model, gallery, _ = tiny
    root = tmp_path / "seed"
    (root / "0123456789abcdef-0123456789abcdef").mkdir(parents=True)  # an entry of earlier weights
    entry = app.prebuild_seed_index(str(model), gallery, root)
    assert [p.name for p in root.iterdir()] == [entry.name]
    served = app.DemoApp(str(model), gallery_dir=gallery, cache_root=None, seed_roots=[root])
    assert served.index_from_cache


# ----------------------------------------------------------------------------- limits


def test_model_calls_run_one_at_a_time_on_one_thread(app):
    run = app.ModelThread()
    seen, active, overlaps = [], [0], []
    guard = threading.Lock()

    def call(i):
        with guard:
            active[0] += 1
            overlaps.append(active[0])
        seen.append(threading.get_ident())
        time.sleep(0.01)
        with guard:
            active[0] -= 1
        return i * 2

    results = {}
    callers = [threading.Thread(target=lambda i=i: results.__setitem__(i, run(call, i))) for i in range(6)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(30)
    assert results == {i: i * 2 for i in range(6)}
    assert max(overlaps) == 1 and len(set(seen)) == 1 and seen[0] != threading.get_ident()
    assert run(lambda: run(threading.get_ident)) == seen[0]  # a nested call runs in place, no deadlock
    with pytest.raises(ZeroDivisionError):
        run(lambda: 1 / 0)
    assert run(lambda: "still serving") == "still serving"


def test_upload_limits_name_the_cap_that_was_reached(tmp_path):
    photos = make_photos(tmp_path, 4, seed=0, size=(100, 100))  # 10,000 px each
    size = photos[0].stat().st_size
    assert UploadLimits(10, 1, 1).select([str(p) for p in photos]) == ([str(p) for p in photos], [], "")
    used, dropped, note = UploadLimits(3, 1000, 100).select([str(p) for p in photos])
    assert len(used) == 3 and len(dropped) == 1 and note == "only the first 3 of 4 photos were used: " \
        "at most 3 photos per session"
    used, _, note = UploadLimits(10, 0.025, 100).select([str(p) for p in photos])
    assert len(used) == 2 and note.endswith("your photos may total at most 0.025 megapixels per session")
    limit_mb = (size * 2.5) / 2**20
    used, _, note = UploadLimits(10, 1000, limit_mb).select([str(p) for p in photos])
    assert len(used) == 2 and f"at most {limit_mb:g} MB per session" in note


def test_photos_over_a_cap_are_refused_with_the_limit_named_and_deleted(app, tiny, upload_area):
    model, gallery, tmp = tiny
    zse = app.DemoApp(str(model), gallery_dir=gallery, cache_root=tmp / "cache",
                      limits=UploadLimits(max_photos=2))
    photos = make_photos(upload_area / "up", 3, seed=1)
    request = SimpleNamespace(session_hash="limits")
    message, session, choice = zse.index_photos([str(p) for p in photos], None, lambda *a, **k: None, request)
    assert message.startswith("Indexed 2 of your photos") and "at most 2 photos per session" in message
    assert choice == app.MINE and len(session.user_index) == 2
    assert photos[0].exists() and photos[1].exists() and not photos[2].exists()
    zse.end_session(request)


# ----------------------------------------------------------------------------- sessions (in process)


def test_session_end_drops_its_index_files_and_pictures(app, tiny, upload_area):
    model, gallery, tmp = tiny
    zse = app.DemoApp(str(model), gallery_dir=gallery, cache_root=tmp / "cache")
    sketch = upload_area / "sketch.png"
    _sketch().save(sketch)
    mine = make_photos(upload_area / "a", 3, seed=2)
    shared = make_photos(upload_area / "b", 1, seed=3)
    alice, bob = SimpleNamespace(session_hash="alice"), SimpleNamespace(session_hash="bob")
    zse.index_photos([str(p) for p in mine + shared], None, lambda *a, **k: None, alice)
    zse.index_photos([str(p) for p in shared], None, lambda *a, **k: None, bob)
    a = zse.sessions["alice"]
    work = a.user_index._work_dir()
    zse.search(None, str(sketch), app.MINE, 3, "ret", 5, "upload", None, alice)
    pictures = zse.explain(1, None, alice)[:4]
    assert all(Path(p).is_file() for p in pictures) and work.is_dir() and zse.live_sessions() == 2
    zse.end_session(alice)
    assert zse.live_sessions() == 1 and "alice" not in zse.sessions
    assert a.released and a.user_index is None and a.hits == [] and a.sketch is None and not a.files()
    assert not work.exists() and not any(Path(p).exists() for p in pictures)
    assert not any(p.exists() for p in mine) and not sketch.exists()
    assert shared[0].exists()  # bob still uses the same upload
    zse.state_deleted(a)  # Gradio's own clean-up later: nothing left to do
    zse.end_session(bob)
    assert not shared[0].exists() and zse.live_sessions() == 0


# ----------------------------------------------------------------------------- sessions (real processes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, log: Path | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def server(tiny, tmp_path):
    """A demo server process (tiny model, 3 bundled photos, heartbeat every 0.5 s, at most 3
    photos per session) with its own Gradio and temp folders; (url, tmp dirs, log)."""
    pytest.importorskip("gradio_client")
    model, gallery, _ = tiny
    dirs = {name: tmp_path / name for name in ("gradio", "tmp", "cache")}
    for d in dirs.values():
        d.mkdir()
    port = _free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(dirs["gradio"]), "TMPDIR": str(dirs["tmp"]),
           "ZSE_SBIR_CACHE": str(dirs["cache"]), "GRADIO_HEARTBEAT_INTERVAL": "0.5",
           "GRADIO_ANALYTICS_ENABLED": "False", "ZSE_DEMO_MAX_PHOTOS": "3", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(APP), "--model", str(model), "--gallery", str(gallery),
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        import httpx

        def up():
            if proc.poll() is not None:
                raise AssertionError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 180, "the server", log)
        yield url, dirs, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_sessions_that_leave_free_their_files_and_state(server, tmp_path):
    from gradio_client import Client, handle_file

    url, dirs, log = server
    sketch = tmp_path / "sketch.png"
    _sketch().save(sketch)
    editor = {"background": None, "layers": [], "composite": handle_file(str(sketch)), "id": None}
    before = _files(dirs["gradio"])
    clients, uploaded = [], []
    for i in range(3):
        client = Client(url, verbose=False)
        photos = make_photos(tmp_path / f"user{i}", 4, seed=10 + i)
        message, choice = client.predict([handle_file(str(p)) for p in photos], api_name="/index_photos")
        assert message.startswith("Indexed 3 of your photos") and "at most 3 photos per session" in message, message
        items, _, status, _ = client.predict(editor, None, "mine", 3, "ret", 5, api_name="/search")
        assert len(items) == 3 and "your photos" in status
        *pictures, summary = client.predict(1, api_name="/explain")
        assert summary.startswith("**Why #1") and all(Path(p).is_file() for p in pictures)
        clients.append(client)
        uploaded.append({p for p in _files(dirs["gradio"]) - before if p.name.startswith("photo_")})
        before = _files(dirs["gradio"])
    assert [len(u) for u in uploaded] == [3, 3, 3]  # the fourth photo of each was over the cap: deleted
    work_dirs = lambda: sorted(p for p in dirs["tmp"].iterdir() if p.name.startswith("zse-index-"))  # noqa: E731
    assert len(work_dirs()) == 4  # the bundled index and three users' indexes
    released = lambda: len(re.findall(r"released session \w+ \(page closed\)", log.read_text()))  # noqa: E731

    for client in clients[:2]:
        client.close()
    _wait(lambda: released() == 2, 60, "two sessions to be released", log)
    assert not any(p.exists() for p in uploaded[0] | uploaded[1])
    assert all(p.exists() for p in uploaded[2])
    assert len(work_dirs()) == 2
    pictures = [p for p in _files(dirs["gradio"]) if p.parent.parent.name.startswith("zse-demo-")]
    assert len(pictures) == 4  # the remaining session's explanation

    clients[2].close()
    _wait(lambda: released() == 3, 60, "the last session to be released", log)
    assert not any(p.exists() for p in uploaded[2]) and len(work_dirs()) == 1
    assert not [p for p in _files(dirs["gradio"]) if p.parent.parent.name.startswith("zse-demo-")]
    assert "; 0 live sessions" in log.read_text().strip().splitlines()[-1]
