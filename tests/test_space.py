"""`zse-sbir space`: the assembled Hugging Face Space folder holds the app, the package, pinned
requirements, the README front matter, the gallery and examples with their NOTICE files and
the model (bundled or by Hub id); `python app.py` started from that folder (a subprocess, no
checkout on its path) serves searches through `gradio_client`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import yaml

pytest.importorskip("gradio")
pytest.importorskip("faiss")

from zse_hf import cli, space  # noqa: E402

from conftest import save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"


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


def test_space_with_a_hub_model(tmp_path, capsys):
    out = tmp_path / "space"
    assert cli.main(["space", "--out", str(out), "--model", "someone/some-zse-model"]) == 0
    assert "wrote" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"app.py", "zse_hf", "requirements.txt", "README.md", "gallery", "examples", "space_config.json",
            ".gitattributes"} <= names and "model" not in names
    assert (out / "app.py").read_bytes() == (DEMO / "app.py").read_bytes()
    assert (out / "zse_hf" / "__init__.py").is_file() and not list(out.rglob("__pycache__"))
    assert (out / "zse_hf" / "data" / "split.json").is_file()  # package data too
    assert (out / "gallery" / "NOTICE").is_file() and (out / "examples" / "NOTICE").is_file()
    assert len(list((out / "gallery").glob("*.jpg"))) == len(list((DEMO / "gallery").glob("*.jpg")))
    assert (out / "space_config.json").read_text().strip().endswith('"someone/some-zse-model"\n}')
    readme = (out / "README.md").read_text()
    meta, body = space.split_front_matter(readme)
    import gradio

    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ and meta["app_file"] == "app.py"
    assert meta["models"] == ["someone/some-zse-model"] and meta["license"] == "other"
    assert "](../" not in body and "zse-sbir space" in body
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    assert f"torch=={metadata.version('torch').split('+')[0]}" in requirements
    # the folder exists now: refused without --force
    assert cli.main(["space", "--out", str(out), "--model", "someone/some-zse-model"]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(["space", "--out", str(tmp_path / "x"), "--model", "not a model"]) == 2
    assert "neither a model folder nor a Hub id" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_space_app_starts_from_its_folder_and_searches(inputs, tmp_path):
    """A bundled model and a prebuilt index: `python app.py` in the Space folder, with nothing
    of the checkout on its path, loads the index (no encoding) and answers a search."""
    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file

    model, gallery = inputs
    out = tmp_path / "space"
    assert space.main(["--out", str(out), "--model", str(model), "--gallery", str(gallery), "--with-index"]) == 0
    assert (out / "model" / "config.json").is_file() and (out / "model" / "eval_results.json").is_file()
    assert "models" not in yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert list((out / "index_cache").glob("*/gallery.json"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZSE_DEMO_MODEL", "ZSE_DEMO_APP")}
    env.update({"GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "ZSE_SBIR_CACHE": str(tmp_path / "cache"),
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

        deadline, up = time.monotonic() + 180, False
        while time.monotonic() < deadline and not up and proc.poll() is None:
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.25)
        assert up, log.read_text()[-3000:]
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        sketch = sorted((out / "examples").glob("*.png"))[0]
        editor = {"background": None, "layers": [], "composite": handle_file(str(sketch)), "id": None}
        items, scores, status, _ = client.predict(editor, None, "bundled", 3, "ret", 5, api_name="/search")
        client.close()
        assert status.startswith("Top 3 of 3 photos in the bundled gallery"), status
        assert {r["photo"] for r in scores} == {p.name for p in gallery.glob("*.jpg")}
        text = log.read_text()
        assert "loaded the bundled gallery index from " + str(out / "index_cache") in text, text[-3000:]
        assert "indexing" not in text  # nothing was encoded at start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
