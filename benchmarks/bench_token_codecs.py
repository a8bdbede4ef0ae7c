"""Token codecs for the re-rank store, on the offline data (no training).

The split's photos and sketches are encoded once (`zse_hf.evaluation.encode_dataset`); for each
codec an index is built over those features (`ZseIndex.from_features(..., token_codec=...)`), the
gallery's tokens are read back decoded, and the [Ret] top-K is re-ranked from them (`zse_hf.evaluation.rerank_scores`,
relation score alone: the model config's `rerank_ret_weight` unless `--ret-weight`). Printed
per codec:

  * bytes per photo of the token store (codes; the [n, N] mask adds N bytes to every codec),
    and the codec file's size (once per index);
  * rn@K mAP@all and its change vs fp16 with the paired class-bootstrap 95% interval
    (`zse_hf.evaluation.compare.compare_results`);
  * agreement of the re-ranked top-K with fp16's: the same top-1, and the share of the K
    positions that hold the same photo (the *set* of the top K is the same for every codec:
    only its order comes from the tokens);
  * ms to gather and decode 100 photos' tokens from the memory-mapped store (median of repeats;
    fp16: gather only), and the build time (training the codec and encoding the tokens).

Where each codec is trained (`--codec-train`):

  * `train_fit` (default): on a seeded sample of the tokens of the `train_fit` photos (training
    classes minus validation: never the queries' classes, and outside the gallery with
    `--gallery split`; `--gallery all` holds them as distractors), then passed to the build. This is the
    case of a real gallery, which is far larger than the codec's sample (at most 256 photos), so
    nearly every photo it encodes was not in that sample.
  * `gallery`: on the evaluated gallery itself, as `ZseIndex.build` does for a gallery of this size.
    With 16-32 photos (1-2k token vectors) a trained codec (PQ, RQ: 256 centroids per codebook)
    nearly memorises the gallery, so its rows overstate what it keeps on a large one.

Choose on validation; `--split test` needs `--allow-test`.

    python benchmarks/bench_token_codecs.py --model hub_card                     # val, all sketches
    python benchmarks/bench_token_codecs.py --max-per-class 1 --codecs fp16 sq8  # quick check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zse_hf.data import evaluation_set  # noqa: E402
from zse_hf.evaluation import data_hash, encode_dataset, rerank_scores  # noqa: E402
from zse_hf.evaluation.compare import compare_results  # noqa: E402
from zse_hf.evaluation.metrics import compute_metrics, rank_gallery  # noqa: E402
from zse_hf.loading import load_model  # noqa: E402
from zse_hf.modeling_zse import ZseImageFeatures  # noqa: E402
from zse_hf.retrieval import ZseIndex  # noqa: E402
from zse_hf.retrieval.token_codec import TokenCodec, codec_factory, training_sample  # noqa: E402

DEFAULT_CODECS = ["fp16", "sq8", "sq6", "sq4", "pq96", "pq48", "opq48", "rq16"]


def decode_ms(index: ZseIndex, n_photos: int = 100, repeats: int = 7, seed: int = 0) -> float:
    """Median ms to read and decode the tokens of `n_photos` random photos (with replacement)."""
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(repeats):
        rows = np.sort(rng.integers(0, index.num_rows, n_photos))
        t0 = time.perf_counter()
        index._gather("tokens", rows)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def codec_row(name: str, gallery: ZseImageFeatures, ids: list, work: Path, model,
              train_tokens: ZseImageFeatures | None = None) -> tuple[ZseIndex, dict]:
    """Build the token store of `gallery` (`local_tokens [n, N, D]`) with codec `name`, trained on
    `train_tokens` (`[m, N, D]`, other photos) when given, else on the gallery's own tokens;
    returns the index and its sizes and times (`build_s` includes training the codec)."""
    t0 = time.perf_counter()
    request, (key, factory) = name, codec_factory(name)
    if train_tokens is not None and factory is not None:
        sample = training_sample(train_tokens.local_tokens.numpy(), train_tokens.token_mask.numpy())
        request = TokenCodec.train(key, factory, sample)
    index = ZseIndex.from_features(gallery.ret_embeds, gallery.local_tokens, gallery.token_mask,
                                   grid_size=gallery.grid_size, ids=ids, model=model, index_factory="Flat",
                                   work_dir=work, token_codec=request)
    build_s = time.perf_counter() - t0
    codec = index.token_codec
    n_tok = index.token_shape[0]
    return index, {"codec": name, "lossy": bool(codec and codec.lossy),
                   "bytes_per_photo": n_tok * (codec.code_size if codec else 2 * index.token_shape[1]),
                   "codec_bytes": len(codec.data) if codec else 0, "build_s": build_s,
                   "decode_ms": decode_ms(index)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="hub_card")
    p.add_argument("--split", default="val")
    p.add_argument("--allow-test", action="store_true", help="allow --split test (only after a decision)")
    p.add_argument("--gallery", default="split", choices=["split", "all"])
    p.add_argument("--max-per-class", type=int, default=None, help="query sketches per class (default all)")
    p.add_argument("--rerank-k", type=int, default=10)
    p.add_argument("--ret-weight", type=float, default=None, help="cosine weight of the re-rank key "
                   "(default: the model config's rerank_ret_weight)")
    p.add_argument("--codecs", nargs="+", default=DEFAULT_CODECS,
                   help="codec names or faiss factory strings; fp16 (the reference) is always included")
    p.add_argument("--codec-train", default="train_fit", choices=["train_fit", "gallery"],
                   help="train each codec on the train_fit photos' tokens (default; held out from the evaluated "
                   "classes) or on the evaluated gallery itself")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    if args.split == "test" and not args.allow_test:
        p.error("choose a codec on validation; --split test needs --allow-test (after the decision)")
    codecs = ["fp16"] + [c for c in args.codecs if c != "fp16"]

    t0 = time.time()
    torch.manual_seed(0)
    model, processor, _ = load_model(args.model, None)
    model.eval()
    queries, gallery = evaluation_set(args.split, max_per_class=args.max_per_class, gallery=args.gallery)
    q = encode_dataset(model, processor, queries, "sketch", args.batch_size, keep_local=True)
    g = encode_dataset(model, processor, gallery, "photo", args.batch_size, keep_local=True)
    train_tokens = None
    if args.codec_train == "train_fit":
        train_photos = evaluation_set("train_fit", max_per_class=1).gallery
        train_tokens = encode_dataset(model, processor, train_photos, "photo", args.batch_size, keep_local=True)
    ret = (q.ret_embeds @ g.ret_embeds.T).numpy()
    k = min(args.rerank_k, ret.shape[1])
    mode = f"rn@{k}"
    labels = (queries.labels, gallery.labels)
    ids = list(range(len(gallery)))

    rows, results, tops = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-token-codecs-") as work:
        for name in codecs:
            try:
                index, row = codec_row(name, g, ids, Path(work), model, train_tokens)
            except ValueError as err:
                print(f"{name}: skipped ({err})", file=sys.stderr)
                continue
            with index:
                decoded = index.local_tokens(ids)
                feats = ZseImageFeatures(ret_embeds=g.ret_embeds, local_tokens=decoded.local_tokens,
                                         token_mask=decoded.token_mask, grid_size=g.grid_size)
                scores = rerank_scores(model, q, feats, ret, rerank_k=k, ret_weight=args.ret_weight)
            results[name] = compute_metrics(scores, *labels, n_bootstrap=0)
            tops[name] = rank_gallery(scores, k=k)
            rows.append(row)
    if "fp16" not in results:
        raise SystemExit("the fp16 reference failed")

    payload = {"data_hash": data_hash(queries, gallery), "results": results}
    print(f"model {args.model}; {args.split}, gallery {args.gallery}: {len(queries)} sketches x {len(gallery)} photos "
          f"(data_hash {payload['data_hash']}); tokens {tuple(g.local_tokens.shape[1:])} per photo; re-rank top-{k}; "
          + ("codecs trained on the gallery itself" if train_tokens is None else
             f"codecs trained on {len(train_tokens.local_tokens)} train_fit photos (held out)"))
    print(f"\n| codec | bytes/photo | codec file | {mode} mAP@all | minus fp16 [95% CI] | same top-1 | "
          f"same position in top-{k} | decode ms/100 photos | build s |")
    print("|---|---|---|---|---|---|---|---|---|")
    ref = tops["fp16"]
    for row in rows:
        name = row["codec"]
        m = results[name]["mAP@all"]
        if name == "fp16":
            change = ""
        else:
            c = compare_results(payload, payload, "fp16", name)
            lo, hi = c["difference_CI"]
            change = f"{c['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        top1 = float(np.mean(tops[name][:, 0] == ref[:, 0]))
        same_pos = float(np.mean(tops[name] == ref))
        label = f"{name} (LOSSY)" if row["lossy"] else name
        print(f"| {label} | {row['bytes_per_photo']:,} | {row['codec_bytes']:,} B | {m:.4f} | {change} | "
              f"{top1:.3f} | {same_pos:.3f} | {row['decode_ms']:.2f} | {row['build_s']:.1f} |")
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
