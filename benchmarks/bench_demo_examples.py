"""What a demo user sees: for each example sketch of the Gradio demo, the rank of the first photo of
its class in the demo's bundled gallery (all reviewed photos), by [Ret] alone and with the
relation re-rank of the top K (--rerank-k). The examples are test-class QuickDraw drawings (unseen in training), so
this is test data: it describes the shipped model, it must not choose one.

    python benchmarks/bench_demo_examples.py --model hub_card          # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zse_hf.loading import load_model
from zse_hf.retrieval import ZseIndex
from zse_hf.serving.launcher import load_app

REPO = Path(__file__).resolve().parents[1]


def first_right_rank(hits, label: str, class_of) -> int | None:
    """1-based rank of the first hit whose file is of class `label` (None: not among the hits)."""
    return next((h.rank for h in hits if class_of(h.path) == label), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / "hub_card"))
    p.add_argument("--gallery", default=str(REPO / "demo" / "gallery"))
    p.add_argument("--examples", default=str(REPO / "demo" / "examples"))
    p.add_argument("--rerank-k", type=int, default=10, help="re-rank depth of the re-rank column (demo default)")
    args = p.parse_args()

    class_of = load_app().photo_class  # the demo's own `<class>__<name>` file-name rule
    model, processor, _ = load_model(args.model, None)
    index = ZseIndex.build(model, processor, args.gallery, index_factory="Flat")
    sketches = sorted(Path(args.examples).glob("*.png"))
    n = len(index)
    plain = index.search([str(s) for s in sketches], k=n)
    rer = index.search([str(s) for s in sketches], k=n, rerank_k=args.rerank_k)
    print(f"model {args.model}; gallery {n} photos; re-rank top {args.rerank_k}\n")
    print("| example sketch | photos of its class | first right photo, [Ret] | with re-rank | top-3 with re-rank |")
    print("|---|---:|---:|---:|---|")
    for sketch, a, b in zip(sketches, plain, rer):
        label = class_of(sketch.name)
        n_right = sum(class_of(h.path) == label for h in a)
        top3 = ", ".join(class_of(h.path) for h in b[:3])
        print(f"| {sketch.name} | {n_right} | {first_right_rank(a, label, class_of)} | "
              f"{first_right_rank(b, label, class_of)} | {top3} |")


if __name__ == "__main__":
    main()
