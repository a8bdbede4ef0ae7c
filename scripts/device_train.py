"""Train on a remote GPU machine that is reached only by copying files within size limits: the
offline assets go there in parts, and the best model comes back in pieces small enough to travel.

A call to that machine sends the working tree (53 MiB, most of it `hub_card/model.safetensors`)
plus extra files copied along with it, 64 MiB in all, and returns at most 8 files of 16 MiB
(what the command writes under `$OUT` there). The training data (the 57 training classes'
QuickDraw files, their 134 photos, the 170 reviewed extra stamps: 16 MiB) does not fit beside
the tree in one call, so it travels in parts over consecutive calls to the same machine while it
stays up, each part checked by sha256 on arrival::

    # here
    python scripts/device_train.py stage                   # -> .device/part1 .. partN (ignored by git)
    # remote call 1 (copy .device/part1 along): receive, and whatever else the GPU should run
    python3 scripts/device_train.py receive .device/part1
    # remote call 2, at once (the machine still up keeps /tmp; copy .device/part2 along)
    python3 scripts/device_train.py receive .device/part2 && python3 scripts/device_train.py train --minutes 8
    # here, with the folder the call's returned files were copied to
    python scripts/device_train.py collect RETURNED_FILES_DIR --out runs/gpu224

`train` runs `zse_hf.training` with the `offline-gpu` preset (224 px, 7x7 cells, render cache,
12 loader workers), warm-started from `hub_card` unless told otherwise (it is 224 px, 7x7 too, so
every weight carries over; from a 112 px, 4x4 model the relation MLP's first layer would start
fresh), stops after `--minutes`, and writes the run's best model to `$OUT` as <= 15 MiB pieces
with a sha256 manifest; `collect` joins and checks them into a model folder. Extra arguments after `--` go to
`zse_hf.training` (e.g. `-- --max-steps 4000 --batch-size 24`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zse_hf.assets import sha256_file  # noqa: E402

CARRY_LIMIT = 64 * 2**20  # what one call may send: tree + files copied along
PIECE = 15 * 2**20  # a returned file's size (the limit is 16 MiB)
DEVICE_CACHE = "/tmp/zse_sbir_cache"  # ZSE_SBIR_CACHE on the remote machine
MANIFEST = "part.json"


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of the working tree a remote call sends (tracked + untracked, not ignored, files)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout
    return sum((root / p).stat().st_size for p in out.decode().split("\0") if p and (root / p).is_file())


def training_files() -> list[tuple[str, Path]]:
    """`(path relative to the asset cache, local file)` of every asset file a training run reads."""
    from zse_hf import assets
    from zse_hf.data import load_split
    from zse_hf.data.photos import load_photo_table
    from zse_hf.data.quickdraw import _quickdraw_file
    from zse_hf.data.stamps import usable_stamp_records

    cache = assets.cache_dir().resolve()
    train = load_split()["train"]
    qd = assets.quickdraw_root()
    files = [_quickdraw_file(c, qd) for c in train]
    tux = assets.tuxpaint_root()
    files += [r.path(tux) for r in usable_stamp_records()]
    files += [r.path(tux) for r in load_photo_table() if r.class_name in set(train)]
    return [(str(Path(f).resolve().relative_to(cache)), Path(f)) for f in files]


def stage(out: Path, budget: int) -> list[Path]:
    """Copy the training assets into parts of at most `budget` bytes each (with `part.json`:
    file list, sha256, the asset markers, the number of parts)."""
    from zse_hf import assets

    files = training_files()
    if out.exists():
        shutil.rmtree(out)
    parts: list[list[tuple[str, Path]]] = [[]]
    size = 0
    for rel, src in files:
        n = src.stat().st_size
        if n > budget:
            raise SystemExit(f"{src} ({n} bytes) alone exceeds the per-call budget of {budget} bytes")
        if size + n > budget:
            parts.append([])
            size = 0
        parts[-1].append((rel, src))
        size += n
    markers = {a.name: a.sha256 for a in (assets.QUICKDRAW, assets.TUXPAINT)}
    folders = []
    for k, part in enumerate(parts, 1):
        folder = out / f"part{k}"
        entries = []
        for rel, src in part:
            dst = folder / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            entries.append({"path": rel, "sha256": sha256_file(dst), "bytes": dst.stat().st_size})
        (folder / MANIFEST).write_text(json.dumps({"part": k, "parts": len(parts), "markers": markers,
                                                   "files": entries}, indent=1))
        folders.append(folder)
    return folders


def receive(part: Path, cache: Path) -> dict:
    """Check a carried part against its manifest and merge it into the asset cache `cache`; once
    every part is in, write the assets' completion markers. Returns the manifest."""
    manifest = json.loads((part / MANIFEST).read_text())
    for e in manifest["files"]:
        src = part / e["path"]
        if not src.is_file() or sha256_file(src) != e["sha256"]:
            raise SystemExit(f"{src}: missing or damaged in transit (sha256 differs)")
        dst = cache / e["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    received = cache / ".received"
    received.mkdir(parents=True, exist_ok=True)
    (received / f"part{manifest['part']}.json").write_text(json.dumps(manifest))
    if len(list(received.glob("part*.json"))) == manifest["parts"]:
        for name, sha in manifest["markers"].items():
            (cache / name).mkdir(parents=True, exist_ok=True)
            (cache / name / ".complete").write_text(sha + "\n")
    return manifest


def missing_parts(cache: Path) -> list[int]:
    """Parts not yet received into `cache` (numbers), from any received manifest's count."""
    manifests = sorted((cache / ".received").glob("part*.json"))  # none when the folder is absent
    if not manifests:
        return [1]
    got = {int(p.stem[4:]) for p in manifests}
    total = json.loads(manifests[0].read_text())["parts"]
    return [k for k in range(1, total + 1) if k not in got]


def pack(model_dir: Path, run_dir: Path, out: Path) -> list[Path]:
    """Write `model_dir` (a saved model) and the run's log to `out` as returnable files:
    `model.safetensors` in <= 15 MiB pieces, the rest in `small.tar`, and `manifest.json`."""
    out.mkdir(parents=True, exist_ok=True)
    weights = model_dir / "model.safetensors"
    pieces = []
    with open(weights, "rb") as f:
        for k, block in enumerate(iter(lambda: f.read(PIECE), b"")):
            p = out / f"model.safetensors.{k:02d}"
            p.write_bytes(block)
            pieces.append({"name": p.name, "sha256": hashlib.sha256(block).hexdigest()})
    with tarfile.open(out / "small.tar", "w") as tf:
        for f in sorted(model_dir.iterdir()):
            if f.is_file() and f.name != "model.safetensors":
                tf.add(f, arcname=f"model/{f.name}")
        for name in ("metrics.jsonl", "train_config.json"):
            if (run_dir / name).is_file():
                tf.add(run_dir / name, arcname=f"run/{name}")
    (out / "manifest.json").write_text(json.dumps({"model_sha256": sha256_file(weights), "pieces": pieces}, indent=1))
    files = sorted(out.iterdir())
    if len(files) > 8:
        raise SystemExit(f"{len(files)} files to return; a remote call brings back 8")
    return files


def collect(files: Path, out: Path) -> Path:
    """Join and check what `pack` wrote (the folder its returned files were copied to) into `out/best`
    (model) and `out` (log)."""
    manifest = json.loads((files / "manifest.json").read_text())
    best = out / "best"
    best.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    tmp = best / "model.safetensors.part"
    with open(tmp, "wb") as w:
        for p in manifest["pieces"]:
            block = (files / p["name"]).read_bytes()
            if hashlib.sha256(block).hexdigest() != p["sha256"]:
                raise SystemExit(f"{p['name']}: damaged in transit")
            h.update(block)
            w.write(block)
    if h.hexdigest() != manifest["model_sha256"]:
        raise SystemExit("the joined model.safetensors does not match its sha256")
    os.replace(tmp, best / "model.safetensors")
    with tarfile.open(files / "small.tar") as tf:
        tf.extractall(out, filter="data")
    for f in (out / "model").iterdir():
        os.replace(f, best / f.name)
    (out / "model").rmdir()
    return best


def train(minutes: float, out: Path, run_dir: Path, extra: list[str], cache: Path) -> list[Path]:
    """Run `zse_hf.training` (offline-gpu, warm start from hub_card unless `extra` names another
    `--init-from`), then pack its best model into `out`."""
    lacking = missing_parts(cache)
    if lacking:
        raise SystemExit(f"asset parts {lacking} not received into {cache}: run `receive` with them first")
    cmd = [sys.executable, "-m", "zse_hf.training", "--config", "offline-gpu", "--out", str(run_dir),
           "--time-limit", str(int(minutes * 60))]
    if "--init-from" not in extra:
        cmd += ["--init-from", str(ROOT / "hub_card")]
    cmd += extra
    env = {**os.environ, "ZSE_SBIR_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    print(f"training took {time.time() - t0:.0f} s", flush=True)
    return pack(run_dir / "best", run_dir, out)


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage", help="here: the training assets in parts under .device/")
    s.add_argument("--out", default=str(ROOT / ".device"))
    s.add_argument("--budget-mib", type=float, default=None,
                   help="MiB per part (default: 64 MiB minus the working tree, less 0.5 MiB)")
    r = sub.add_parser("receive", help="remote: check a copied part and merge it into the asset cache")
    r.add_argument("part")
    r.add_argument("--cache", default=DEVICE_CACHE)
    t = sub.add_parser("train", help="remote: train, then pack the best model into $OUT")
    t.add_argument("--minutes", type=float, default=8.0)
    t.add_argument("--out", default=os.environ.get("OUT", "device_out"))
    t.add_argument("--run", default="/tmp/zse_run")
    t.add_argument("--cache", default=DEVICE_CACHE)
    c = sub.add_parser("collect", help="here: join the returned files into a model folder")
    c.add_argument("files")
    c.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.cmd == "stage":
        budget = int(args.budget_mib * 2**20) if args.budget_mib else CARRY_LIMIT - tree_bytes() - 2**19
        for folder in stage(Path(args.out), budget):
            n = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            print(f"{folder}: {n / 2**20:.2f} MiB (copy {str(folder.relative_to(ROOT))!r} along with the call)")
    elif args.cmd == "receive":
        m = receive(Path(args.part), Path(args.cache))
        print(f"part {m['part']} of {m['parts']}: {len(m['files'])} files in {args.cache}; "
              f"still missing: {missing_parts(Path(args.cache)) or 'none'}")
    elif args.cmd == "train":
        for f in train(args.minutes, Path(args.out), Path(args.run), extra, Path(args.cache)):
            print(f"{f}: {f.stat().st_size / 2**20:.2f} MiB")
    else:
        print(f"model: {collect(Path(args.files), Path(args.out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
