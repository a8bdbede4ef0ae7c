"""The whole search path, as a user calls it (not a test): `ZseIndex.search([sketch], k=10,
rerank_k=100)` with the shipped model over the bundled gallery (166 photos), which covers the
sketch's encoding, the ANN search and the top-100 re-rank with its token decoding. In the same
run, interleaved call by call so that load from other processes hits both alike, one plain 224 px
forward of a `transformers.Dinov2Model` holding the shipped backbone weights (batch 1), the unit
the cost is compared with. Prints medians beside best-of figures and the ratio of the medians.

    python benchmarks/bench_search.py                          # fp16 and sq4 token stores
    python benchmarks/bench_search.py --codecs fp16 sq8 --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transformers import Dinov2Model  # noqa: E402

from zse_hf.loading import load_model  # noqa: E402
from zse_hf.retrieval import ZseIndex  # noqa: E402

GALLERY = REPO / "demo" / "gallery"
EXAMPLES = REPO / "demo" / "examples"


def plain_backbone(model) -> Dinov2Model:
    """A plain `Dinov2Model` with the shipped encoder's backbone weights (eval, fp32)."""
    plain = Dinov2Model(model.config.backbone_config).eval()
    plain.load_state_dict(model.encoder.backbone.state_dict(), strict=True)
    return plain


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "hub_card"))
    p.add_argument("--codecs", nargs="+", default=["fp16", "sq4"], help="token stores to time")
    p.add_argument("--rerank-k", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="passes over the example sketches")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, processor, _ = load_model(args.model)
    plain = plain_backbone(model)
    x224 = torch.randn(1, 3, 224, 224)
    sketches = [str(s) for s in sorted(EXAMPLES.glob("*.png"))]
    photos = sorted(q for q in GALLERY.iterdir() if q.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(photos) < args.rerank_k:
        raise SystemExit(f"{GALLERY} holds {len(photos)} photos, fewer than --rerank-k {args.rerank_k}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="zse-bench-search-") as work:
        for codec in args.codecs:
            index = ZseIndex.build(model, processor, [str(q) for q in photos], token_codec=codec, work_dir=work,
                                   progress=False)
            with torch.inference_mode():
                for s in sketches[:2]:  # warm-up
                    index.search([s], k=10, rerank_k=args.rerank_k)
                    plain(pixel_values=x224)
                search_s, plain_s = [], []
                for r in range(args.rounds):
                    for s in sketches:
                        pair = [lambda s=s, index=index: index.search([s], k=10, rerank_k=args.rerank_k),
                                lambda: plain(pixel_values=x224)]
                        first, second = pair if r % 2 == 0 else pair[::-1]
                        a, b = timed(first), timed(second)
                        search_s.append(a if r % 2 == 0 else b)
                        plain_s.append(b if r % 2 == 0 else a)
            rows.append((codec, statistics.median(search_s), min(search_s), statistics.median(plain_s), min(plain_s),
                         len(search_s)))
            index.close()
    print(f"\n{model.config.image_size} px model ({Path(args.model).name}), {len(photos)} photos, "
          f"top-{args.rerank_k} re-rank, torch threads {torch.get_num_threads()}\n")
    print("| tokens | `search` median / best (s) | plain 224 px forward median / best (s) | ratio of medians | calls |")
    print("|---|---|---|---|---|")
    for codec, sm, sb, pm, pb, n in rows:
        print(f"| {codec} | {sm:.3f} / {sb:.3f} | {pm:.3f} / {pb:.3f} | {sm / pm:.1f}x | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
