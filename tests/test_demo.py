"""The Gradio demo (demo/app.py, `zse-sbir demo`): served on 127.0.0.1 with a tiny random model
and a few bundled photos, driven through `gradio_client` (search, explanation, bad input,
per-session galleries) and through a real headless Chromium (draw a stroke, search, results)."""

from __future__ import annotations

import io
import json
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")  # pandas deprecations inside gradio

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")
pytest.importorskip("faiss")
pytest.importorskip("matplotlib")

from gradio_client import Client, handle_file  # noqa: E402

from zse_hf import ZseModel  # noqa: E402
from zse_hf.data import read_quickdraw, render_sketch  # noqa: E402
from zse_hf.serving import gallery_index  # noqa: E402
from zse_hf.serving import launcher as demo_launcher  # noqa: E402

from conftest import save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "demo" / "gallery"
GALLERY_CLASSES = ("giraffe", "airplane", "pineapple", "tree", "cow", "banana")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _editor(path) -> dict:
    """A `gr.Sketchpad` value as the client sends it."""
    return {"background": None, "layers": [], "composite": handle_file(str(path)) if path else None, "id": None}


@pytest.fixture(scope="module")
def app_module():
    return demo_launcher.load_app()


@pytest.fixture(scope="module")
def served(app_module, tmp_path_factory):
    """(app module, first DemoApp, served Blocks, url, tmp dir): a tiny model, 6 bundled photos."""
    tmp = tmp_path_factory.mktemp("demo")
    model_dir = tmp / "model"
    save_tiny_model(model_dir)
    gallery = tmp / "gallery"
    gallery.mkdir()
    for cls in GALLERY_CLASSES:
        photo = sorted(BUNDLED.glob(f"{cls}__*.jpg"))[0]
        shutil.copy(photo, gallery / photo.name)
    first = app_module.DemoApp(str(model_dir), gallery_dir=gallery, cache_root=tmp / "cache")
    demo = app_module.build_demo(str(model_dir), gallery_dir=gallery, cache_root=tmp / "cache")
    port = _free_port()
    app_module.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    sketch = tmp / "giraffe.png"
    render_sketch(read_quickdraw("giraffe")[5], size=256).save(sketch)  # a real drawing of a test class
    try:
        yield {"app": app_module, "first": first, "demo": demo, "url": f"http://127.0.0.1:{port}/", "tmp": tmp,
               "sketch": sketch, "model_dir": model_dir}
    finally:
        demo.close()


@pytest.fixture
def client(served):
    return Client(served["url"], verbose=False)


def _search(client, sketch=None, upload=None, gallery="bundled", k=4, mode="ret", rerank_k=5):
    up = handle_file(str(upload)) if upload else None
    return client.predict(_editor(sketch), up, gallery, k, mode, rerank_k, api_name="/search")


# ----------------------------------------------------------------------------- index cache


def test_bundled_index_is_cached_by_model_and_gallery_hash(served):
    app, first, demo = served["app"], served["first"], served["demo"]
    assert not first.index_from_cache and demo.zse.index_from_cache
    assert len(demo.zse.index) == len(GALLERY_CLASSES)
    folders = [p.name for p in (served["tmp"] / "cache").iterdir()]
    gallery_hash = app.gallery_fingerprint(app.gallery_files(served["tmp"] / "gallery"))
    assert folders == [app.cache_key(demo.zse.dm.fingerprint, gallery_hash)]


# ----------------------------------------------------------------------------- API


@pytest.mark.parametrize("mode", ["ret", "rerank"])
def test_search_with_a_quickdraw_sketch_returns_k_results(served, client, mode):
    items, scores, status, rank = _search(client, served["sketch"], k=4, mode=mode)
    assert len(items) == 4 and len(scores) == 4 and rank == 1
    assert status.startswith("Top 4 of 6 photos")
    for i, (item, row) in enumerate(zip(items, scores), start=1):
        assert Path(item["image"]).is_file()
        assert item["caption"].startswith(f"#{i} {row['class']}")
        assert set(row) == {"rank", "photo", "class", "ret_score", "relation_score"}
        assert row["rank"] == i and row["photo"] in {p.name for p in (served["tmp"] / "gallery").iterdir()}
        assert row["class"] == row["photo"].split("__")[0].replace("_", " ")
        assert -1.0 <= row["ret_score"] <= 1.0
        if mode == "rerank":
            assert 0.0 < row["relation_score"] < 1.0
        else:
            assert row["relation_score"] is None
    if mode == "ret":
        assert [r["ret_score"] for r in scores] == sorted((r["ret_score"] for r in scores), reverse=True)
    else:
        rel = [r["relation_score"] for r in scores]
        assert rel == sorted(rel, reverse=True)


def test_explain_endpoint_returns_images(served, client):
    _search(client, served["sketch"], k=3, mode="rerank")
    *pictures, summary = client.predict(2, api_name="/explain")
    assert len(pictures) == 4
    for path in pictures:
        with Image.open(path) as im:
            assert im.width > 300 and im.height > 200
    assert summary.startswith("**Why #2") and "relation score" in summary


def test_bad_input_gives_friendly_messages(served, client):
    tmp = served["tmp"]
    white = tmp / "white.png"
    Image.new("RGB", (512, 512), "white").save(white)
    text = tmp / "notes.txt"
    text.write_text("not an image")
    fake = tmp / "fake.png"
    fake.write_bytes(b"\x89PNG but not really" * 10)
    huge = tmp / "huge.png"
    Image.new("1", (8000, 8000), 1).save(huge)  # 64 MP, small file

    cases = [
        ((None, None), "canvas is empty"),
        ((white, None), "canvas is empty"),
        ((None, text), "not an image"),
        ((None, fake), "not an image"),
        ((None, huge), "is huge (8000×8000 px"),
    ]
    for (sketch, upload), expected in cases:
        items, scores, status, _ = _search(client, sketch, upload)
        assert items == [] and scores == [] and status.startswith("⚠️") and expected in status, (sketch, upload, status)
    items, _, status, _ = _search(client, served["sketch"], gallery="mine")
    assert items == [] and "gallery is empty" in status
    message, choice = client.predict([handle_file(str(text))], api_name="/index_photos")
    assert "None of the 1 files could be read" in message and choice == "bundled"
    *pictures, summary = Client(served["url"], verbose=False).predict(1, api_name="/explain")
    assert pictures == [None] * 4 and "Search first" in summary
    _search(client, served["sketch"], k=2)
    assert "no result #9" in client.predict(9, api_name="/explain")[-1]


def test_user_gallery_is_per_session(served, client):
    uploads = sorted((served["tmp"] / "gallery").glob("*.jpg"))[:3]
    message, choice = client.predict([handle_file(str(p)) for p in uploads], api_name="/index_photos")
    assert message.startswith("Indexed 3 of your photos") and choice == "mine"
    items, scores, status, _ = _search(client, served["sketch"], gallery="mine", k=5, mode="rerank")
    assert len(items) == 3 and {r["photo"] for r in scores} == {p.name for p in uploads}
    assert "your photos" in status
    other = Client(served["url"], verbose=False)
    assert "gallery is empty" in _search(other, served["sketch"], gallery="mine")[2]


def test_uploads_are_read_only_from_the_gradio_temp_area(app_module):
    with pytest.raises(app_module.UserError, match="not uploaded through this page"):
        app_module.read_upload(sorted(BUNDLED.glob("*.jpg"))[0], "photo")


def test_model_events_are_queued_one_at_a_time_and_the_config_holds_no_app_methods(served):
    """Search and explain go through the queue in one concurrency group of 1 (users see their
    place), the REST routes cannot skip it, and the page config (deep-copied by Gradio for every
    page load) references no method of the app, which would copy the model with it."""
    import types

    demo = served["demo"]
    deps = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name in ("search", "explain", "index_photos")}
    assert all(fn.queue for fn in deps.values()) and not demo.api_open
    assert deps["search"].concurrency_id == deps["explain"].concurrency_id == "model"
    assert deps["search"].concurrency_limit == 1  # the group's limit (the lowest of its events')
    assert demo._queue.max_size == served["app"].QUEUE_MAX_SIZE

    def methods(value):
        if isinstance(value, dict):
            return [m for v in value.values() for m in methods(v)]
        if isinstance(value, (list, tuple)):
            return [m for v in value for m in methods(v)]
        return [value] if isinstance(value, types.MethodType) else []

    assert methods(demo.get_config_file()) == []


# ----------------------------------------------------------------------------- model note


def test_model_note_reads_the_eval_json(app_module, tmp_path):
    from zse_hf.loading import weights_fingerprint

    run = tmp_path / "run"
    folder = run / "best"
    save_tiny_model(folder)
    model = ZseModel.from_pretrained(folder).eval()
    note = app_module.model_note(folder, model, True)
    assert "not measured" in note and "unknown" in note
    assert str(tmp_path) not in note and "About the model: best" in note  # named, never by its local path
    (run / "train_config.json").write_text(json.dumps({"data": "offline", "max_steps": 123}))
    payload = {"results": {"ret": {"mAP@all": 0.4321, "mAP@all_CI": [0.31, 0.55], "mAP@200": 0.4},
                           "rn@10": {"mAP@all": 0.5012}},
               "model_hash": weights_fingerprint(model, short=True), "data": "offline", "split": "test",
               "image_size": 56,
               "n_queries": 660, "n_gallery": 36}
    (folder / "eval_results.json").write_text(json.dumps(payload))
    note = app_module.model_note(folder, model, True)
    assert "cosine only: **0.432** (95% interval 0.310–0.550)" in note and "relation re-rank of the top 10" in note
    assert "top 10: **0.501**" in note and "Each of 660 test sketches searched 36 photos" in note
    assert str(tmp_path) not in note
    assert "exactly these weights" in note and "bundled offline data" in note and "123 steps" in note
    payload["model_hash"] = "0" * 16
    (folder / "eval_results.json").write_text(json.dumps(payload))
    assert "may belong to another checkpoint" in app_module.model_note(folder, model, True)
    (folder / "training_summary.json").write_text(json.dumps({  # a relation stage on top of a run
        "global_step": 450, "config": {"data": "offline"}, "relation_stage": {"step": 400}}))
    assert "(450 steps, then 400 of the relation-head stage, `zse-sbir train-relation`; from" in (
        app_module.model_note(folder, model, True))
    payload["rerank_ret_weight"] = 0.5  # numbers of a fused re-rank say so
    (folder / "eval_results.json").write_text(json.dumps(payload))
    note = app_module.model_note(folder, model, True)
    assert "relation re-rank of the top 10 by relation score + 0.5 x cosine" in note


def test_model_display_name_is_never_a_local_path(tmp_path):
    """The page names a model by its Hub id, its model card's name or heading, else its folder's name."""
    from zse_hf.model_summary import display_name

    assert display_name("org/some-model") == "org/some-model"
    folder = tmp_path / "deep" / "checkpoint-500"
    folder.mkdir(parents=True)
    assert display_name(folder) == "checkpoint-500"
    (folder / "README.md").write_text("---\nlicense: mit\n---\n\n# My sketch model\n\ntext\n")
    assert display_name(folder) == "My sketch model"
    (folder / "README.md").write_text("---\nmodel-index:\n- name: zse-sbir-test\n  results: []\n---\n# Title\n")
    assert display_name(folder) == "zse-sbir-test"
    if (REPO / "hub_card" / "README.md").is_file():
        assert display_name(REPO / "hub_card") == "zse-sbir-dinov2-small"


def test_model_path_resolution(app_module, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("ZSE_DEMO_MODEL", "/some/model")
    assert app_module.resolve_model_path("/cli/model") == ("/cli/model", "--model")
    assert app_module.resolve_model_path(None) == ("/some/model", "$ZSE_DEMO_MODEL")
    monkeypatch.delenv("ZSE_DEMO_MODEL")
    expected = (str(app_module.HUB_CARD_DIR), "hub_card/") if (app_module.HUB_CARD_DIR / "config.json").is_file() \
        else (None, "fallback")
    assert app_module.resolve_model_path(None) == expected


def test_launcher_errors_clearly(monkeypatch, capsys, tmp_path):
    assert demo_launcher.app_path() == REPO / "demo" / "app.py"
    monkeypatch.setenv("ZSE_DEMO_APP", str(tmp_path / "missing.py"))
    assert demo_launcher.main([]) == 2
    assert "pip install -e" in capsys.readouterr().err
    monkeypatch.delenv("ZSE_DEMO_APP")
    from zse_hf import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--help"])
    assert exit_info.value.code == 0 and "--model" in capsys.readouterr().out


def test_photos_option_adds_the_collection_to_the_page(app_module, monkeypatch, capsys, tmp_path):
    """`--photos` (default $ZSE_DEMO_PHOTOS) reaches the service: a saved store is a third "Search in" choice;
    one that cannot be opened is one line on stderr and exit code 2."""
    import signal

    from zse_hf.retrieval import ZseIndex
    from zse_hf.serving import COLLECTION

    model = save_tiny_model(tmp_path / "model")
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for photo in sorted(BUNDLED.glob("*.jpg"))[:2]:
        shutil.copy(photo, gallery / photo.name)
    with ZseIndex.build(model, None, gallery, progress=False) as index:
        saved = index.save(tmp_path / "team-photos")
    monkeypatch.setenv("ZSE_DEMO_PHOTOS", "from-env.db")
    assert app_module.parse_args([]).photos == "from-env.db"
    assert app_module.parse_args(["--photos", str(saved)]).photos == str(saved)
    demo = app_module.build_demo(str(tmp_path / "model"), gallery_dir=gallery, cache_root=None, photos=saved)
    radio = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "gallery-choice")
    assert [tuple(c) for c in radio.choices][-1] == ("Collection: team-photos (2 photos)", COLLECTION)
    assert demo.zse.gallery_ready(COLLECTION)
    demo.zse.service.close()
    capsys.readouterr()
    before = signal.getsignal(signal.SIGTERM)  # main() installs its own
    try:
        assert app_module.main(["--model", str(tmp_path / "model"), "--gallery", str(gallery),
                                "--photos", str(tmp_path / "missing")]) == 2
    finally:
        signal.signal(signal.SIGTERM, before)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("zse-sbir demo:")]
    assert len(err) == 1 and err[0].startswith(f"zse-sbir demo: Cannot open the photo store {tmp_path / 'missing'}")


# ----------------------------------------------------------------------------- browser


def _chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.add_argument("--user-data-dir=" + tempfile.mkdtemp(prefix="zse-chromium-"))
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _brush_selected(driver) -> bool:
    from selenium.webdriver.common.by import By

    brushes = driver.find_elements(By.CSS_SELECTOR, '#sketchpad button[aria-label="Brush"]')
    return bool(brushes) and "highlight" in (brushes[0].get_attribute("class") or "")


def test_browser_draw_search_and_explain(served, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium binary at {CHROMIUM} (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = _chrome()
    try:
        driver.get(served["url"])
        canvas = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#sketchpad canvas"), 30, "the canvas")[-1]
        # the page selects the brush by itself
        _wait(lambda: _brush_selected(driver), 15, "the brush tool to be selected")
        stroke = ActionChains(driver).move_to_element_with_offset(canvas, -90, -70).click_and_hold()
        for dx, dy in ((45, 35), (45, 35), (45, 35), (0, 60), (-90, 0)):
            stroke.move_by_offset(dx, dy)
        stroke.release().perform()
        driver.find_element(By.ID, "search-btn").click()
        status = _wait(lambda: (t := driver.find_element(By.ID, "status").text).startswith(("Top", "⚠")) and t,
                       60, "search results")
        assert status.startswith("Top 6 of 6 photos"), status
        images = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#results img"), 30, "result images")
        assert len(images) == 6
        _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#expl-correspondence img"), 60, "the explanation")
        assert driver.find_element(By.ID, "explain-summary").text.startswith("Why #1")
        shot = tmp_path / "demo.png"
        driver.save_screenshot(str(shot))
        with Image.open(io.BytesIO(shot.read_bytes())) as im:
            assert im.width >= 1000 and im.height >= 600
    finally:
        driver.quit()


def test_browser_shows_indexing_progress_and_enables_search_when_done(app_module, served, monkeypatch):
    """A first start: the page is up while the bundled photos are indexed in the background; it
    shows the progress and a disabled Search button, then enables it (a 1 s timer) when done."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium binary at {CHROMIUM} (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium")
    import threading

    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    real, first_in, go_on = gallery_index.build_gallery_index, threading.Event(), threading.Event()

    def held_after_first_photo(dm, files, progress=None, run=None):
        def report(done, total):
            progress(done, total)
            if done == 1:
                first_in.set()
                go_on.wait(120)

        return real(dm, files, progress=report, run=run)

    monkeypatch.setattr(gallery_index, "INDEX_CHUNK", 1)
    monkeypatch.setattr(gallery_index, "build_gallery_index", held_after_first_photo)
    tmp = served["tmp"]
    demo = app_module.build_demo(str(served["model_dir"]), gallery_dir=tmp / "gallery", cache_root=tmp / "cache-bg",
                                 background=True)
    port = _free_port()
    app_module.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    driver = _chrome()
    try:
        assert first_in.wait(60)
        driver.get(f"http://127.0.0.1:{port}/")
        def shown(element_id: str):  # the element's text and enabled state (None while it is not there)
            found = driver.find_elements(By.ID, element_id)
            try:
                return (found[0].text, found[0].is_enabled()) if found and found[0].is_displayed() else None
            except StaleElementReferenceException:  # re-rendered meanwhile
                return None

        _wait(lambda: "Indexing the bundled photos: 1/6" in (shown("index-status") or ("",))[0], 30, "the progress")
        _wait(lambda: shown("search-btn") == ("Search", False), 30, "a disabled Search button")
        time.sleep(2)  # the timer ticks: still disabled while indexing
        assert shown("search-btn") == ("Search", False)
        go_on.set()
        _wait(lambda: shown("search-btn") == ("Search", True), 120, "Search to be enabled")
        _wait(lambda: shown("index-status") is None, 30, "the note to go")
        assert demo.zse.bundled_ready() and len(demo.zse.index) == 6
    finally:
        go_on.set()
        driver.quit()
        demo.close()


# ----------------------------------------------------------------------------- docs/demo.png


def docs_screenshot(out: str | Path, example: str = "airplane", width: int = 1400) -> tuple[Path, int | None]:
    """Serve the demo with its default model and the bundled gallery, click the `example` sketch
    (which searches), select the first hit of that class (else #1) and save a full-page screenshot.
    Returns the screenshot and the rank of the first hit of the example's class (None: not shown)."""
    from selenium.webdriver.common.by import By

    app = demo_launcher.load_app()
    demo = app.build_demo(None)
    port = _free_port()
    app.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    driver = _chrome()
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
        driver.get(f"http://127.0.0.1:{port}/")
        _wait(lambda: _brush_selected(driver), 60, "the brush tool")
        examples = driver.find_elements(By.CSS_SELECTOR, "#examples button.gallery-item")
        sources = [e.find_element(By.TAG_NAME, "img").get_attribute("src") for e in examples]
        examples[[i for i, s in enumerate(sources) if f"/{example}__" in s][0]].click()
        _wait(lambda: driver.find_element(By.ID, "status").text.startswith(("Top", "⚠")), 300, "results")
        _wait(lambda: driver.find_element(By.ID, "explain-summary").text.startswith("Why #1"), 300, "an explanation")
        items = driver.find_elements(By.CSS_SELECTOR, "#results button.thumbnail-item")
        same = [i for i, item in enumerate(items) if item.text.split("\n")[0].split(" ", 1)[-1] == example]
        if same and same[0] > 0:
            items[same[0]].click()
            _wait(lambda: driver.find_element(By.ID, "explain-summary").text.startswith(f"Why #{same[0] + 1} "),
                  300, "the selected explanation")
        time.sleep(2)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(2)
        out = Path(out)
        driver.save_screenshot(str(out))
        return out, (same[0] + 1 if same else None)
    finally:
        driver.quit()
        demo.close()


def docs_picture(out: str | Path, good: str = "penguin", miss: str = "tree", width: int = 1400) -> Path:
    """docs/demo.png: the page after clicking the `good` example (its class first among the bundled
    photos) beside the page after clicking the `miss` example, each under a label that says which it is."""
    from PIL import ImageDraw, ImageFont

    out = Path(out)
    shots, ranks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for example in (good, miss):
            shot, rank = docs_screenshot(Path(tmp) / f"{example}.png", example, width)
            with Image.open(shot) as im:
                shots.append(im.convert("RGB"))
            ranks.append(rank)
    if ranks[0] != 1 or ranks[1] is not None:
        raise RuntimeError(f"{good} should come first and {miss} be missed; the page shows ranks {ranks}")
    labels = (f"Does well: a {good} sketch (a class it never trained on) finds a {good} photo first",
              f"A miss: no {miss} photo among the shown results for a {miss} sketch")
    font = ImageFont.load_default(size=34)
    band = 64
    sheet = Image.new("RGB", (sum(s.width for s in shots) + 24, max(s.height for s in shots) + band), "white")
    x = 0
    for shot, label, colour in zip(shots, labels, ("#1b7f3b", "#b3261e")):
        draw = ImageDraw.Draw(sheet)
        draw.rectangle([x, 0, x + shot.width, band - 6], fill=colour)
        draw.text((x + 20, 12), label, fill="white", font=font)
        sheet.paste(shot, (x, band))
        x += shot.width + 24
    sheet.thumbnail((2400, 2400))
    sheet.save(out, optimize=True)
    return out


if __name__ == "__main__":  # python tests/test_demo.py docs/demo.png [good example] [missed example]
    import sys

    print(docs_picture(*sys.argv[1:4]))


def test_sigterm_exits_through_clean_ups_once(app_module):
    """SIGTERM exits with 128 + 15 (the clean-ups run); a second SIGTERM while they run is ignored
    instead of raising inside an atexit callback."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_info:
            app_module._exit_on_signal(signal.SIGTERM, None)
        assert exit_info.value.code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
