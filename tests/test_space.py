"""`zse-sbir space`: the assembled Hugging Face Space folder holds the app, the package, pinned
requirements, the README front matter, the gallery and examples with their NOTICE files and
the model (the shipped one bundled by default, a folder, or a Hub id that resolves now);
`python app.py` started offline from the no-options folder (a subprocess, no checkout on its
path) serves searches through `gradio_client`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from filecmp import cmpfiles
from importlib import metadata
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("faiss")

from zse_hf import cli  # noqa: E402
from zse_hf.serving import space  # noqa: E402

from conftest import save_tiny_model  # noqa: E402
from hf_cache import make_hf_cache  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
HUB_MODEL = "someone/some-zse-model"


def _run_cli(args: list[str], tmp_path: Path, network: str, hf_home: Path) -> subprocess.CompletedProcess:
    """`zse-sbir ARGS` in a subprocess with its own HF_HOME, either offline (HF_HUB_OFFLINE=1) or
    "no network" (online mode, the Hub endpoint a closed local port)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = str(hf_home)
    if network == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    return subprocess.run([sys.executable, "-m", "zse_hf.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(tiny model folder, gallery of 3 bundled photos with the NOTICE)."""
    tmp = tmp_path_factory.mktemp("space_inputs")
    save_tiny_model(tmp / "model")
    (tmp / "model" / "eval_results.json").write_text("{}")
    gallery = tmp / "gallery"
    gallery.mkdir()
    for photo in sorted((DEMO / "gallery").glob("*.jpg"))[:3]:
        shutil.copy(photo, gallery / photo.name)
    shutil.copy(DEMO / "gallery" / "NOTICE", gallery / "NOTICE")
    return tmp / "model", gallery


def test_requirements_pin_the_installed_runtime_dependencies():
    pins = dict(line.split("==") for line in space.pinned_requirements())
    assert pins["torch"] == metadata.version("torch").split("+")[0] and "+" not in pins["torch"]
    for name in ("transformers", "huggingface_hub", "safetensors", "numpy", "pillow", "faiss-cpu", "matplotlib"):
        assert pins[name] == metadata.version(name), name
    assert "gradio" not in pins and "pytest" not in pins and "onnx" not in pins  # the SDK; dev / other extras


@pytest.mark.parametrize("network", ["offline", "no-network"])
def test_a_hub_id_that_does_not_resolve_fails_in_one_line(tmp_path, network):
    """An unknown Hub id, offline or with the Hub unreachable: exit code 2, one line on stderr,
    no Space folder (nor its work folder) left."""
    out = tmp_path / "space"
    proc = _run_cli(["space", "--out", str(out), "--model", "some/unknown-repo"], tmp_path, network,
                    tmp_path / "hf")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("zse-sbir space: cannot resolve Hub model 'some/unknown-repo': "), lines[0]
    assert lines[0].endswith("; pass a local folder with --model")
    assert ("HF_HUB_OFFLINE=1" if network == "offline" else "cannot be reached") in lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("network", ["offline", "no-network"])
def test_a_hub_id_in_the_local_cache_is_accepted(inputs, tmp_path, network):
    """A Hub id found in an on-disk Hugging Face cache (offline, or the Hub unreachable): the
    Space names it (space_config.json, README `models:`) and bundles no weights."""
    model, _ = inputs
    make_hf_cache(tmp_path / "hf", HUB_MODEL, model)
    out = tmp_path / "space"
    proc = _run_cli(["space", "--out", str(out), "--model", HUB_MODEL], tmp_path, network, tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"model: {HUB_MODEL}." in proc.stdout
    names = {p.name for p in out.iterdir()}
    assert {"app.py", "zse_hf", "requirements.txt", "README.md", "gallery", "examples", "space_config.json",
            ".gitattributes"} <= names and "model" not in names
    assert (out / "space_config.json").read_text().strip().endswith(f'"{HUB_MODEL}"\n}}')
    meta, _ = space.split_front_matter((out / "README.md").read_text())
    assert meta["models"] == [HUB_MODEL]


def test_space_refuses_bad_arguments(tmp_path, capsys):
    out = tmp_path / "space"
    out.mkdir()
    # the folder exists: refused without --force (before the model is looked at)
    assert cli.main(["space", "--out", str(out), "--model", HUB_MODEL]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(["space", "--out", str(tmp_path / "x"), "--model", "not a model"]) == 2
    assert "neither a model folder nor a Hub id" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_space_with_index_is_loaded_by_the_app(inputs, tmp_path):
    """`--model DIR --with-index`: the model folder is bundled and the prebuilt index is what the
    app's bundled-gallery lookup loads (no encoding)."""
    model, gallery = inputs
    out = tmp_path / "space"
    assert space.main(["--out", str(out), "--model", str(model), "--gallery", str(gallery), "--with-index"]) == 0
    assert (out / "model" / "config.json").is_file() and (out / "model" / "eval_results.json").is_file()
    assert "models" not in space.split_front_matter((out / "README.md").read_text())[0]
    assert list((out / "index_cache").glob("*/gallery.json"))
    from zse_hf.serving import launcher as demo_launcher

    app = demo_launcher.load_app()
    dm = app.load_demo_model(str(out / "model"), "--model")
    index, loaded = app.bundled_index(dm, out / "gallery", None, seed_roots=(out / "index_cache",))
    assert loaded and len(index) == len(list(gallery.glob("*.jpg")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_space_without_options_bundles_the_shipped_model_and_serves_offline(tmp_path, capsys):
    """`zse-sbir space --out DIR`, no options: the shipped model (the demo's `hub_card/`) is copied
    to `model/`; `python app.py` in DIR, offline with an empty Hugging Face cache and nothing of
    the checkout on its path, indexes the gallery with it and answers a search."""
    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file

    shipped = space.shipped_model()
    assert shipped == REPO / "hub_card"
    out = tmp_path / "space"
    assert cli.main(["space", "--out", str(out)]) == 0
    assert "model: bundled in model/" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"app.py", "zse_hf", "requirements.txt", "README.md", "gallery", "examples", "space_config.json",
            ".gitattributes", "model", "index_cache"} <= names
    # the index of the shipped model and the bundled gallery is built into the Space: one entry, bound to both
    from zse_hf.loading import load_model, weights_fingerprint
    from zse_hf.serving.gallery_index import cache_key, gallery_files, gallery_fingerprint

    key = cache_key(weights_fingerprint(load_model(shipped)[0]), gallery_fingerprint(gallery_files(out / "gallery")))
    assert [p.name for p in (out / "index_cache").iterdir()] == [key]
    shipped_files = sorted(p.name for p in shipped.iterdir() if p.is_file() and not p.name.startswith("."))
    assert sorted(p.name for p in (out / "model").iterdir()) == shipped_files
    same, differ, errors = cmpfiles(shipped, out / "model", shipped_files, shallow=False)
    assert not differ and not errors, (differ, errors)
    assert (out / "space_config.json").read_text() == '{\n "model": "model"\n}\n'
    assert (out / "app.py").read_bytes() == (DEMO / "app.py").read_bytes()
    assert (out / "zse_hf" / "__init__.py").is_file() and not list(out.rglob("__pycache__"))
    assert (out / "zse_hf" / "data" / "split.json").is_file()  # package data too
    assert (out / "gallery" / "NOTICE").is_file() and (out / "examples" / "NOTICE").is_file()
    n_photos = len(list((DEMO / "gallery").glob("*.jpg")))
    assert len(list((out / "gallery").glob("*.jpg"))) == n_photos
    meta, body = space.split_front_matter((out / "README.md").read_text())
    import gradio

    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ and meta["app_file"] == "app.py"
    assert "models" not in meta and meta["license"] == "other"
    assert "](../" not in body and "zse-sbir space" in body and "copied to `model/`" in body
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    assert f"torch=={metadata.version('torch').split('+')[0]}" in requirements
    assert "*.safetensors filter=lfs diff=lfs merge=lfs -text" in (out / ".gitattributes").read_text()

    # offline, an empty Hugging Face cache: only what DIR holds can serve
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "ZSE_DEMO_MODEL", "ZSE_DEMO_APP", "ZSE_DEMO_GALLERY") and not k.startswith("HF_")}
    env.update({"GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "ZSE_SBIR_CACHE": str(tmp_path / "cache"),
                "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
                "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"})
    where = subprocess.run([sys.executable, "-c", "import zse_hf, sys; print(zse_hf.__file__); print(sys.path)"],
                           cwd=out, env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.startswith(str(out / "zse_hf")), where.stdout  # the Space's own copy
    assert str(REPO) not in where.stdout.splitlines()[1]
    port = _free_port()
    log = tmp_path / "space.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=out, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import httpx

        # the page comes up with the gallery's prebuilt index loaded (nothing to encode)
        deadline, up = time.monotonic() + 240, False
        while time.monotonic() < deadline and not up and proc.poll() is None:
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.25)
        assert up, log.read_text()[-3000:]
        indexed = "loaded the bundled gallery index from"
        while time.monotonic() < deadline and indexed not in log.read_text() and proc.poll() is None:
            time.sleep(0.5)
        text = log.read_text()
        assert indexed in text, text[-3000:]
        assert "untrained" not in text and "fallback" not in text, text[-3000:]
        page = httpx.get(f"http://127.0.0.1:{port}/config", timeout=30).text  # the model note, from model/
        assert "Untrained demo model" not in page and "About the model" in page and "[Ret] cosine only" in page
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        # the shipped model ranks a penguin photo first for this sketch (docs/results.md, the demo's examples)
        sketch = out / "examples" / "penguin__quickdraw-011.png"
        editor = {"background": None, "layers": [], "composite": handle_file(str(sketch)), "id": None}
        items, scores, status, _ = client.predict(editor, None, "bundled", 3, "ret", 5, api_name="/search")
        client.close()
        assert status.startswith(f"Top 3 of {n_photos} photos in the bundled gallery"), status
        assert "penguin" in [r["class"] for r in scores], scores
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
