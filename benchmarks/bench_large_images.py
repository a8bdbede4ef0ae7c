"""Peak memory of preparing very large images (not a test).

Each case runs in a fresh process: after the imports, the peak RSS is reset
(`/proc/self/clear_refs`), the image is prepared by `ZseImageProcessor` (or a small index is
built from a folder of such images with 2 decoding threads), and the growth of the peak RSS
(`VmHWM`) is printed with the outcome. Linux only.

    python benchmarks/bench_large_images.py            # the table
    python benchmarks/bench_large_images.py --quick    # smaller JPEGs, no index case
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

CHILD = r"""
import json, sys, time, warnings
from pathlib import Path
sys.path.insert(0, {repo!r})
import torch
from PIL import Image
from zse_hf.image_processing_zse import ZseImageProcessor
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
case = json.loads(sys.argv[1])

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024

if case["kind"] == "index":
    from zse_hf import ZseModel, ZseProcessor
    from zse_hf.retrieval import ZseIndex
    from conftest import tiny_config
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    processor = ZseProcessor.from_config(model.config)
open("/proc/self/clear_refs", "w").write("5")
before, t0 = status("VmRSS:"), time.perf_counter()
try:
    if case["kind"] == "index":
        index = ZseIndex.build(model, processor, case["path"], num_workers=2, batch_size=2, progress=False,
                               work_dir=case["work"])
        outcome = f"indexed {{len(index)}}, skipped {{len(index.skipped)}}"
    else:
        ip = ZseImageProcessor(max_input_pixels=case.get("limit", 40_000_000))
        image = ip.load_image(case["path"])
        ip(image, modality=case["modality"])
        outcome = f"accepted, decoded at {{image.width}}x{{image.height}}"
except ValueError as err:
    outcome = "refused: " + str(err).split(": ", 1)[-1][:70]
print(json.dumps({{"peak_mb": (status("VmHWM:") - before) / 2**20, "seconds": time.perf_counter() - t0,
                  "outcome": outcome}}))
"""


def run_case(case: dict) -> dict:
    code = CHILD.format(repo=str(REPO))
    path = os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(case)], capture_output=True, text=True, env=env,
                         timeout=900)
    if out.returncode != 0:
        return {"peak_mb": float("nan"), "seconds": float("nan"), "outcome": "crashed: " + out.stderr.strip()[-120:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from PIL import Image

    from test_image_limits import big_png

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        png144 = big_png(tmp / "png144.png", 12_000, 12_000, ink=True)
        png39 = big_png(tmp / "png39.png", 6_200, 6_200, ink=True)
        side = 8_000 if args.quick else 12_000
        jpg = tmp / f"jpg{side * side // 10**6}.jpg"
        Image.new("L", (side, side), 200).save(jpg, quality=85)
        folder = tmp / "gallery"
        folder.mkdir()
        for name in ("a.png", "b.png"):
            (folder / name).symlink_to(png144)
        (folder / "c.jpg").symlink_to(jpg)
        Image.new("RGB", (300, 200), "red").save(folder / "d.png")
        mb = {p: p.stat().st_size / 1e6 for p in (png144, png39, jpg)}
        print(f"# inputs written in {time.perf_counter() - t0:.0f} s: PNG 144 MP {mb[png144]:.2f} MB, "
              f"PNG 38 MP {mb[png39]:.2f} MB, JPEG {side * side / 1e6:.0f} MP {mb[jpg]:.1f} MB")
        cases = [
            ("PNG 12000x12000 (144 MP), photo", {"kind": "image", "path": str(png144), "modality": "photo"}),
            ("PNG 12000x12000 (144 MP), sketch", {"kind": "image", "path": str(png144), "modality": "sketch"}),
            ("PNG 6200x6200 (38 MP), photo", {"kind": "image", "path": str(png39), "modality": "photo"}),
            (f"JPEG {side}x{side} ({side * side / 1e6:.0f} MP), photo",
             {"kind": "image", "path": str(jpg), "modality": "photo"}),
            ("PNG 144 MP with the limit raised to 200 MP (full decode)",
             {"kind": "image", "path": str(png144), "modality": "photo", "limit": 200_000_000}),
        ]
        if not args.quick:
            cases.append(("index build, 2 threads: 2x PNG 144 MP + JPEG + small PNG",
                          {"kind": "index", "path": str(folder), "work": str(tmp)}))
        print("\n| case | peak RSS growth | time | outcome |\n|---|---|---|---|")
        for label, case in cases:
            r = run_case(case)
            print(f"| {label} | {r['peak_mb']:.0f} MB | {r['seconds']:.2f} s | {r['outcome']} |", flush=True)


if __name__ == "__main__":
    main()
