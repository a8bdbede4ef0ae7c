"""scripts/device_train.py: the training assets travel in checked parts, a run trains from them
alone, and the best model comes back in pieces that join to the same file."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # needs the real QuickDraw / Tux Paint data

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("device_train", ROOT / "scripts" / "device_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parts_fit_are_checked_and_complete_the_cache_only_together(tmp_path):
    dt = _script()
    assert 0 < dt.tree_bytes() < dt.CARRY_LIMIT
    budget = 6 * 2**20
    parts = dt.stage(tmp_path / "stage", budget)
    assert len(parts) >= 3
    for part in parts:
        assert sum(f.stat().st_size for f in part.rglob("*") if f.is_file() and f.name != dt.MANIFEST) <= budget
    files = {e["path"] for p in parts for e in json.loads((p / dt.MANIFEST).read_text())["files"]}
    assert len(files) == 57 + 134 + 170  # QuickDraw training classes, their photos, the extra stamps
    cache = tmp_path / "cache"
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(parts[0]), str(damaged)], check=True)
    victim = next(f for f in damaged.rglob("*.png"))
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(SystemExit, match="damaged"):
        dt.receive(damaged, cache)
    for part in parts[:-1]:
        dt.receive(part, cache)
    assert dt.missing_parts(cache) == [len(parts)]
    assert not list(cache.glob("*/.complete"))  # incomplete assets are never marked complete
    dt.receive(parts[-1], cache)
    assert dt.missing_parts(cache) == [] and len(list(cache.glob("*/.complete"))) == 2


def test_train_from_received_parts_and_collect(tmp_path, tiny_backbone):
    """The device steps on the CPU: a 2-step run reading only the received assets (with the
    render cache), packed and joined back to the same weights."""
    from zse_hf import ZseModel

    dt = _script()
    cache = tmp_path / "cache"
    for part in dt.stage(tmp_path / "stage", 20 * 2**20):
        dt.receive(part, cache)
    start = tmp_path / "start"
    ZseModel.from_backbone(tiny_backbone, image_size=56, relation_grid=2).save_pretrained(start)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "device_train.py"), "train", "--minutes", "5", "--out", str(out),
         "--run", str(tmp_path / "run"), "--cache", str(cache), "--", "--config", "tiny", "--init-from", str(start),
         "--render-cache", "--stamp-pair-prob", "0.25", "--correspondence-weight", "1.0"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((cache / "render").glob("*.safetensors"))  # the pre-rendered inputs were built there
    assert len(list(out.iterdir())) <= 8
    best = dt.collect(out, tmp_path / "back")
    a, b = load_file(best / "model.safetensors"), load_file(tmp_path / "run" / "best" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (best / "config.json").is_file() and (tmp_path / "back" / "run" / "metrics.jsonl").is_file()
    ZseModel.from_pretrained(best)
    (out / "model.safetensors.00").write_bytes(b"x" + (out / "model.safetensors.00").read_bytes()[1:])
    with pytest.raises(SystemExit, match="damaged"):
        dt.collect(out, tmp_path / "again")
