"""`zse-sbir explain`: the pictures and scores of one (sketch, photo) pair, and which kernel source a
model explains with by default."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..cli_args import at_least
from ..loading import image_processor_of, load_model
from .core import PICTURES, READABLE_GRID, READABLE_IMAGE_SIZE, SCORES_FILE, SOURCES, explain_pair
from .pictures import explanation_pictures

# ----------------------------------------------------------------------------- command line


def recorded_locality(model_path: str | os.PathLike) -> dict | None:
    """The `kernel_locality` block of the `eval_results.json` beside a model folder (written by
    `zse-sbir eval --locality` and carried by `zse-sbir export`), or None when there is none."""
    path = Path(model_path) / "eval_results.json"
    try:
        return json.loads(path.read_text()).get("kernel_locality") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def default_source(model_path: str | os.PathLike | None, trained: bool = True) -> str:
    """`"relation"` for a trained model whose recorded kernel locality beats the content-free
    same-position prior both within one cell and on the exact cell (the kernel localizes, so the
    paper's module explains its own score); `"encoder"` otherwise (untrained heads, or no record)."""
    loc = recorded_locality(model_path) if trained and model_path is not None else None
    if not loc:
        return "encoder"
    try:
        beats = (loc["locality"] > loc["identity_baseline"]
                 and loc["exact"] > loc["exact_identity_baseline"])
    except (KeyError, TypeError):
        return "encoder"
    return "relation" if beats else "encoder"


def _parse_cell(text: str | None):
    if text is None:
        return None
    if "," in text:
        return tuple(int(v) for v in text.split(","))
    return int(text)


def _dump_scores(scores: dict) -> str:
    """Indented JSON with one line per cell."""
    cells = scores.pop("cells")
    text = json.dumps(scores, indent=2)
    rows = ",\n".join("    " + json.dumps(c) for c in cells)
    return text[:-2] + ',\n  "cells": [\n' + rows + "\n  ]\n}\n"


def main(argv: list[str] | None = None) -> int:
    """`zse-sbir explain --model DIR SKETCH PHOTO --out DIR [--source relation|encoder] [--grid G]
    [--image-size S] [--top-n 12] [--cell R,C]`.

    Writes `explain_correspondence.png`, `explain_attention.png`, `explain_synthesis.png`,
    `explain_kernel.png` and `explain_scores.json` into `--out`; returns the exit code.
    """
    parser = argparse.ArgumentParser(
        prog="zse-sbir explain", description="Explain why a sketch matched a photo (four PNG pictures + scores JSON)."
    )
    parser.add_argument("sketch", help="sketch image file")
    parser.add_argument("photo", help="photo image file")
    parser.add_argument("--model", required=True, help="ZSE model folder, or a backbone folder (head untrained)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--source", choices=SOURCES, default=None,
                        help="cell kernel: the model's own relation kernel (default when the model's recorded kernel "
                             "locality beats the same-position prior) or encoder tokens pooled to cells (default "
                             "otherwise; readable with any checkpoint)")
    parser.add_argument("--grid", type=at_least(1), default=None,
                        help=f"cells per side for --source encoder (default {READABLE_GRID}; relation: the model's)")
    parser.add_argument("--image-size", type=at_least(1), default=None,
                        help=f"prepare the pair at this side in pixels (default for --source encoder: "
                             f"{READABLE_IMAGE_SIZE} or the processor's size if larger; relation: the processor's)")
    parser.add_argument("--top-n", type=at_least(1), default=12, help="correspondence lines to draw (default 12)")
    parser.add_argument("--cell", default=None, help="sketch cell for the heat map: 'row,col' or flat index "
                                                     "(default: the inkiest cell)")
    args = parser.parse_args(argv)
    for image in (args.sketch, args.photo):  # before the model loads
        if not Path(image).is_file():
            print(f"zse-sbir explain: image file not found: {image}", file=sys.stderr)
            return 1
    out = Path(args.out)
    try:  # check the output folder before any work
        existing = out
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"--out {out}: {existing} is a file, not a folder")
        probe = existing / f".zse-explain-write-test-{os.getpid()}"
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except ValueError as err:
        print(f"zse-sbir explain: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"zse-sbir explain: cannot write to {out}: {err.strerror or err}", file=sys.stderr)
        return 1
    try:
        model, processor, built = load_model(args.model)
        note = "relation head untrained (model built from a backbone folder)" if built else ""
        args.source = args.source or default_source(args.model, trained=not built)
        grid, size = args.grid, args.image_size
        if args.source == "encoder":
            grid = grid or READABLE_GRID
            size = size or max(READABLE_IMAGE_SIZE, image_processor_of(processor).side)
        expl = explain_pair(model, processor, args.sketch, args.photo, source=args.source, note=note,
                            grid=grid, image_size=size)
        pictures = explanation_pictures(expl, top_n=args.top_n, sketch_cell=_parse_cell(args.cell))
    except (FileNotFoundError, ValueError, TypeError, OSError) as err:
        print(f"zse-sbir explain: {err}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for key, image in pictures.items():
        image.save(out / PICTURES[key])
        print(out / PICTURES[key])
    scores = expl.scores()
    scores.update(sketch=str(args.sketch), photo=str(args.photo), model=str(args.model))
    (out / SCORES_FILE).write_text(_dump_scores(scores))
    print(out / SCORES_FILE)
    print(f"relation score {expl.relation_score:.4f}  [Ret] cosine {expl.cosine:.4f}  source {expl.source}")
    return 0



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
