"""Encoder throughput: `ZseModel.get_image_features` vs a plain `transformers.Dinov2Model`.

Both models are DINOv2 ViT-S/14 (hidden 384, 6 heads, 11 layers like the shipped offline
backbone, optionally 12) with *the same backbone weights* (the ZSE backbone's state dict is
copied into the plain model and a parity check confirms the outputs agree while the tokenizer
gate is zero). Timings are fp32, eval mode, `torch.inference_mode`, 224 px (`--image-size`), batch 1 and 32,
with warm-up calls and then `--repeats` timed rounds of `--iters` calls; the models are run
interleaved (the order rotates every round) so that load from other processes hits both alike,
and the median images/s over rounds is reported (the best round too). The ratio column is the
median over rounds of zse/plain measured back to back (the ratio of the best rounds in
brackets); on a shared machine the best-round figures are the less noisy ones. FLOPs come from
`torch.utils.flop_counter.FlopCounterMode` on one image (matmuls, convs and attention; no
element-wise ops), with the tokenizer stem's share.

`--onnx` (CPU) also exports the ZSE encoder with `zse_hf.conversion.onnx_export.export_image_encoder_onnx`
(dynamic batch, weights inside one file), checks it against eager, and times it on onnxruntime
(CPUExecutionProvider, intra-op threads = torch's threads) in the same interleaved rounds: the
row `ZSE encoder, ONNX (onnxruntime)` with its ratio vs plain and vs eager ZSE.

`--selected K [K ...]` adds rows for token selection (`num_selected_tokens = K` of the 256 patch
tokens): the encoder-side path (the last block computes [Ret] and the K kept tokens only) and,
as "masked", the full backbone with the mask applied afterwards (the path before encoder-side
selection, still what runs when hidden states are asked for).

`--profile` adds a breakdown of where the extra ZSE time goes (stem convs, interpolation,
gate/add in the hook, the wrapper's input check and normalisation) and times alternatives
built inside this process only (other stem widths via `ZseConfig(tokenizer_channels=...)`,
a channels-last stem); `zse_hf/modeling_zse.py` is not modified.

Examples::

    python benchmarks/bench_encoder.py --quick
    python benchmarks/bench_encoder.py --onnx --threads 2 --batches 1 32
    python benchmarks/bench_encoder.py --depths 11 12
    python benchmarks/bench_encoder.py --batches 32 --selected 128 64 --threads 2
    python benchmarks/bench_encoder.py --batches 1 32 --profile --profile-batches 1 32
    python benchmarks/bench_encoder.py --device cuda --batches 1 32 128
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import Dinov2Model  # noqa: E402

from zse_hf import ZseConfig, ZseModel  # noqa: E402

TARGET_RATIO = 0.85
IMAGE_SIZE = 224  # input side; set from --image-size


# ----------------------------------------------------------------------------- models


def build_models(depth: int, tokenizer_channels=(48, 96, 192), device: str = "cpu", seed: int = 0):
    """Build `(zse, plain)`: a `ZseModel` and a `Dinov2Model` of ViT-S/14 with `depth` layers.

    The plain model gets the ZSE backbone's exact state dict. Both are in eval mode, fp32, on
    `device`. The tokenizer gate is left at its initial zero (speed does not depend on it).
    """
    torch.manual_seed(seed)
    config = ZseConfig(tokenizer_channels=tuple(tokenizer_channels), image_size=IMAGE_SIZE)
    config.backbone_config.num_hidden_layers = depth
    zse = ZseModel(config).eval()
    plain = Dinov2Model(config.backbone_config).eval()
    result = plain.load_state_dict(zse.encoder.backbone.state_dict(), strict=True)
    if result.missing_keys or result.unexpected_keys:  # pragma: no cover - strict raises first
        raise RuntimeError(f"state dict mismatch: {result}")
    zse_attn = zse.encoder.backbone.config._attn_implementation
    plain_attn = plain.config._attn_implementation
    if zse_attn != plain_attn:
        raise RuntimeError(f"attention implementations differ: zse={zse_attn} plain={plain_attn}")
    return zse.to(device), plain.to(device)


def with_backbone_of(zse_ref: ZseModel, tokenizer_channels, device: str) -> ZseModel:
    """A new `ZseModel` with other stem widths but `zse_ref`'s backbone weights."""
    config = ZseConfig(tokenizer_channels=tuple(tokenizer_channels), image_size=IMAGE_SIZE)
    config.backbone_config.num_hidden_layers = zse_ref.config.backbone_config.num_hidden_layers
    model = ZseModel(config).eval()
    model.encoder.backbone.load_state_dict(zse_ref.encoder.backbone.state_dict(), strict=True)
    return model.to(device)


@torch.inference_mode()
def parity_check(zse: ZseModel, plain: Dinov2Model, device: str) -> float:
    """Max abs difference of local tokens and [Ret] embeddings between the two (gate must be zero)."""
    if bool(zse.encoder.tokenizer.gate.abs().max() != 0):
        raise RuntimeError("tokenizer gate is not zero; parity with the plain model is not expected")
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    f = zse.get_image_features(x)
    hidden = plain(pixel_values=x).last_hidden_state
    err_local = (f.local_tokens - hidden[:, 1:]).abs().max().item()
    err_ret = (f.ret_embeds - F.normalize(hidden[:, 0], dim=-1)).abs().max().item()
    return max(err_local, err_ret)




# ----------------------------------------------------------------------------- flops


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs counted by `FlopCounterMode` for one call of `fn` (no element-wise ops)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn()
    return counter.get_total_flops()


def onnx_encoder_for(zse: ZseModel, threads: int):
    """Export `zse`'s encoder to a temporary ONNX file and open it on onnxruntime's CPU provider;
    raises if it disagrees with eager by more than 1e-4 of the output scale."""
    import tempfile

    from zse_hf.conversion.onnx_export import OnnxImageEncoder, export_image_encoder_onnx

    folder = tempfile.mkdtemp(prefix="zse-bench-onnx-")
    t0 = time.perf_counter()
    path = export_image_encoder_onnx(zse, Path(folder) / "encoder.onnx", image_size=IMAGE_SIZE)
    encoder = OnnxImageEncoder(path, num_threads=threads)
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.inference_mode():
        want = zse.get_image_features(x).local_tokens
    err = (encoder(x).local_tokens - want).abs().max().item()
    print(f"ONNX export {time.perf_counter() - t0:.1f} s, {path.stat().st_size / 2**20:.1f} MiB; "
          f"parity max|onnx - eager| local tokens = {err:.2e} (scale {want.abs().max().item():.2f})")
    if err > 1e-4 * want.abs().max().item():
        raise RuntimeError(f"the ONNX encoder disagrees with eager by {err}")
    return encoder


# ----------------------------------------------------------------------------- timing


def selected_call(zse: ZseModel, x: torch.Tensor, k: int, masked: bool) -> Callable[[], object]:
    """`get_image_features(x)` with `num_selected_tokens = k`: encoder-side selection, or (`masked`) the
    full backbone then the mask (asking for hidden states forces that path)."""

    def run():
        zse.config.num_selected_tokens = k
        try:
            return zse.get_image_features(x, output_hidden_states=masked)
        finally:
            zse.config.num_selected_tokens = None

    return run


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    batch: int,
    device: str,
    warmup: int,
    iters: int,
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Images/s of each callable, per round: `repeats` rounds of `iters` timed calls each.

    All callables are warmed up first, then run round-robin within every round, with the
    starting callable rotated each round, so slow phases of a shared machine hit all alike.
    `clock` is `time.perf_counter` (wall) or `time.thread_time` (CPU time of this thread).
    """
    names = list(fns)
    with torch.inference_mode():
        for name in names:
            for _ in range(warmup):
                fns[name]()
            _sync(device)
        rates: dict[str, list[float]] = {n: [] for n in names}
        for r in range(repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                _sync(device)
                t0 = clock()
                for _ in range(iters):
                    fns[name]()
                _sync(device)
                rates[name].append(batch * iters / (clock() - t0))
    return rates


def _ratios(zse_rates: list[float], plain_rates: list[float]) -> tuple[float, float]:
    """(median over rounds of the back-to-back zse/plain ratio, ratio of the best rounds)."""
    per_round = statistics.median(z / p for z, p in zip(zse_rates, plain_rates))
    return per_round, max(zse_rates) / max(plain_rates)


# ----------------------------------------------------------------------------- breakdown


def channels_last_stem(zse: ZseModel) -> ZseModel:
    """Monkeypatch one instance's tokenizer to run its stem channels-last (NHWC); same weights.

    This is the change proposed for `ZseTokenizer.forward`; `modeling_zse.py` is untouched.
    """
    tok = zse.encoder.tokenizer
    tok.stem.to(memory_format=torch.channels_last)

    def forward(pixel_values, grid_size):
        x = tok.stem(pixel_values.to(tok.gate.dtype).contiguous(memory_format=torch.channels_last))
        if tuple(x.shape[-2:]) != tuple(grid_size):
            x = F.interpolate(x, size=grid_size, mode="bilinear", align_corners=False)
        return x * tok.gate.view(1, -1, 1, 1)

    tok.forward = forward
    return zse


def breakdown(zse: ZseModel, plain: Dinov2Model, batch: int, args) -> list[tuple[str, float, float]]:
    """Time the pieces that ZSE adds at `batch`; returns rows `(name, best ms, median ms)` per call.

    - `plain Dinov2Model` / `zse get_image_features`: the two encoders.
    - `zse, hook off`: `get_image_features` with the tokenizer hook removed: the backbone plus
      the wrapper's input check (`isfinite` scan), mask and [Ret] normalisation.
    - `stem convs (NCHW)`, `stem convs (channels-last)`, each conv alone in both layouts,
      `interpolate 14->16`, `gate*stem + flatten + add`, `isfinite check`.
    """
    dev = args.device
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=dev)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    tok = zse.encoder.tokenizer
    stem_cl = copy.deepcopy(tok.stem).to(memory_format=torch.channels_last)
    patch_embed = _patch_embed(zse)
    grid = (IMAGE_SIZE // 14, IMAGE_SIZE // 14)
    with torch.inference_mode():
        stem_out = tok.stem(x)
        interp = F.interpolate(stem_out, size=grid, mode="bilinear", align_corners=False)
        patch_tokens = patch_embed(x)
    hooks = dict(patch_embed._forward_hooks)

    def hook_off():
        patch_embed._forward_hooks.clear()
        try:
            return zse.get_image_features(x)
        finally:
            patch_embed._forward_hooks.update(hooks)

    gate = tok.gate.view(1, -1, 1, 1)
    fns = {
        "plain Dinov2Model": lambda: plain(pixel_values=x),
        "zse get_image_features": lambda: zse.get_image_features(x),
        "zse, hook off": hook_off,
        "stem convs (NCHW, current)": lambda: tok.stem(x),
        "stem convs (channels-last)": lambda: stem_cl(x_cl),
        "interpolate 14->16": lambda: F.interpolate(stem_out, size=grid, mode="bilinear", align_corners=False),
        "gate*stem + flatten + add": lambda: patch_tokens + (interp * gate).flatten(2).transpose(1, 2),
        "isfinite check": lambda: bool(torch.isfinite(x).all()),
    }
    inp, inp_cl = x, x_cl
    with torch.inference_mode():
        for i in range(0, len(tok.stem), 2):
            conv, conv_cl = tok.stem[i], stem_cl[i]
            tag = f"conv{i // 2 + 1} {conv.in_channels}->{conv.out_channels} @{inp.shape[-1]}px"
            fns[f"  {tag} NCHW"] = lambda c=conv, t=inp: c(t)
            fns[f"  {tag} channels-last"] = lambda c=conv_cl, t=inp_cl: c(t)
            inp, inp_cl = tok.stem[i + 1](conv(inp)), stem_cl[i + 1](conv_cl(inp_cl))
    rates = time_interleaved(fns, 1, dev, args.warmup, _iters_for(batch, args), args.repeats, args.clock_fn)
    return [(name, 1e3 / max(r), 1e3 / statistics.median(r)) for name, r in rates.items()]


def _patch_embed(zse: ZseModel) -> torch.nn.Module:
    return zse.encoder.backbone.embeddings.patch_embeddings


def profile(zse: ZseModel, plain: Dinov2Model, depth: int, args) -> None:
    """Print the overhead breakdown and the throughput of alternative stems (same backbone)."""
    dev = args.device
    x2 = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, device=dev)
    with torch.inference_mode():
        ref = zse.encoder.tokenizer.stem(x2)
        alt = copy.deepcopy(zse.encoder.tokenizer.stem).to(memory_format=torch.channels_last)(
            x2.contiguous(memory_format=torch.channels_last)
        )
    print(f"\nchannels-last stem vs NCHW stem, same weights: max abs diff {(ref - alt).abs().max().item():.2e} "
          f"(stem output scale {ref.abs().max().item():.2e})")
    for batch in args.profile_batches:
        rows = breakdown(zse, plain, batch, args)
        base = rows[0][1]
        print(f"\n### L{depth} batch {batch}: ms per call (best round; median round), share of plain (best)\n")
        print("| piece | best ms | median ms | % of plain |")
        print("|---|---:|---:|---:|")
        for name, best, med in rows:
            print(f"| {name} | {best:.2f} | {med:.2f} | {100 * best / base:.1f}% |")

    variants: dict[str, ZseModel] = {"zse 48,96,192 (current)": zse}
    variants["zse 48,96,192 channels-last stem"] = channels_last_stem(with_backbone_of(zse, (48, 96, 192), dev))
    for spec in args.alt_channels:
        variants[f"zse {spec}"] = with_backbone_of(zse, tuple(int(c) for c in spec.split(",")), dev)
        variants[f"zse {spec} channels-last stem"] = channels_last_stem(
            with_backbone_of(zse, tuple(int(c) for c in spec.split(",")), dev)
        )
    x1 = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=dev)
    fl_plain = count_flops(lambda: plain(pixel_values=x1))
    flops = {
        name: (count_flops(lambda m=m: m.get_image_features(x1)), count_flops(lambda m=m: m.encoder.tokenizer.stem(x1)))
        for name, m in variants.items()
    }
    print(f"\n### L{depth} alternatives (built/monkeypatched in this process only; same backbone weights)\n")
    print("| variant | batch | images/s median (best) | ratio vs plain, median per round (best/best) "
          "| GFLOPs/image | stem GFLOPs |")
    print("|---|---:|---:|---:|---:|---:|")
    for batch in args.profile_batches:
        x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=dev)
        fns = {"plain": lambda: plain(pixel_values=x)}
        fns.update({name: (lambda m=m: m.get_image_features(x)) for name, m in variants.items()})
        rates = time_interleaved(fns, batch, dev, args.warmup, _iters_for(batch, args), args.repeats, args.clock_fn)
        for name, r in rates.items():
            fl, fs = (fl_plain, 0) if name == "plain" else flops[name]
            med_ratio, best_ratio = _ratios(r, rates["plain"])
            print(f"| {name} | {batch} | {statistics.median(r):.2f} ({max(r):.2f}) "
                  f"| {med_ratio:.3f} ({best_ratio:.3f}) | {fl / 1e9:.3f} | {fs / 1e9:.3f} |")


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--depths", type=int, nargs="+", default=[11], help="backbone layers (11 = shipped; 12 = full)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--image-size", type=int, default=224, help="input side (112: the shipped model's; 224)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per model and batch (default 3, quick 2)")
    p.add_argument("--iters", type=int, default=None,
                   help="timed calls per round at batch 1, scaled by 1/batch on CPU (default 4, quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds; median reported (default 9, quick 5)")
    p.add_argument("--selected", type=int, nargs="*", default=[],
                   help="token-selection rows: K kept tokens of 256 (encoder-side and masked)")
    p.add_argument("--profile", action="store_true", help="breakdown of the ZSE overhead + alternative stems")
    p.add_argument("--onnx", action="store_true",
                   help="also time the ZSE encoder exported to ONNX on onnxruntime "
                        "(CPU; needs onnxscript, onnxruntime)")
    p.add_argument("--profile-batches", type=int, nargs="+", default=[1], help="batches for --profile")
    p.add_argument("--alt-channels", nargs="*", default=["24,48,96"],
                   help="stem widths (comma-separated triples) to try with --profile")
    p.add_argument(
        "--clock", choices=["wall", "thread"], default="wall",
        help="wall: perf_counter; thread: CPU time of the calling thread, which excludes time lost to other "
        "processes on a shared machine (CPU only, needs --threads 1 so that all work runs on that thread)",
    )
    p.add_argument("--quick", action="store_true",
                   help="fewer rounds and calls (under a minute per depth on 2 idle cores; minutes on a busy machine)")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    if args.onnx and args.device != "cpu":
        p.error("--onnx times onnxruntime's CPU provider: use --device cpu")
    if args.clock == "thread" and (args.threads != 1 or args.device != "cpu"):
        p.error("--clock thread needs --device cpu --threads 1")
    args.clock_fn = time.thread_time if args.clock == "thread" else time.perf_counter
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    args.iters = args.iters if args.iters is not None else (2 if args.quick else 4)
    args.repeats = args.repeats if args.repeats is not None else (5 if args.quick else 9)
    return args


def _iters_for(batch: int, args) -> int:
    """Timed calls per round: `--iters` at batch 1, scaled down by the batch on CPU (at least 1)."""
    if args.device.startswith("cuda"):
        return args.iters * 5
    return max(1, round(args.iters / batch))


def main(argv=None) -> int:
    """Run the benchmark and print the markdown tables; exit status 0 iff every ratio >= 0.85."""
    global IMAGE_SIZE
    args = parse_args(argv)
    IMAGE_SIZE = args.image_size
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dev = args.device
    print(f"# ZSE encoder benchmark ({dev}, fp32, {IMAGE_SIZE} px, inference_mode, eval)")
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
        f"threads {torch.get_num_threads()}, clock {args.clock}, cpus {os.cpu_count()}, "
        f"load avg {os.getloadavg()[0]:.2f} at start"
        + (f", {torch.cuda.get_device_name(dev)}" if dev.startswith("cuda") else "")
    )
    print(f"warm-up {args.warmup}, rounds {args.repeats}, calls/round {[_iters_for(b, args) for b in args.batches]}")
    if dev == "cpu" and os.getloadavg()[0] > (os.cpu_count() or 1) - 0.5:
        print(
            "WARNING: the machine is busy (load average >= CPU count): wall-clock rates with several threads "
            "are unreliable; prefer the best-round figures or --threads 1 --clock thread"
        )
    t_start = time.perf_counter()
    rows, ok = [], True
    for depth in args.depths:
        zse, plain = build_models(depth, device=dev)
        err = parity_check(zse, plain, dev)
        print(f"\ndepth {depth}: parity (gate 0) max|zse - plain| = {err:.2e}")
        if err > 1e-4:
            raise RuntimeError(f"ZSE and plain encoders disagree by {err}: not the same backbone")
        x1 = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=dev)
        fl_zse = count_flops(lambda: zse.get_image_features(x1))
        fl_plain = count_flops(lambda: plain(pixel_values=x1))
        fl_stem = count_flops(lambda: zse.encoder.tokenizer.stem(x1))
        print(
            f"FLOPs/image: plain {fl_plain / 1e9:.3f} G, zse {fl_zse / 1e9:.3f} G, "
            f"stem {fl_stem / 1e9:.3f} G = {100 * fl_stem / fl_zse:.1f}% of zse "
            f"(+{100 * (fl_zse / fl_plain - 1):.1f}% over plain)"
        )
        onnx_encoder = onnx_encoder_for(zse, torch.get_num_threads()) if args.onnx else None
        for batch in args.batches:
            x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=dev)
            fns = {"plain": lambda: plain(pixel_values=x), "zse": lambda: zse.get_image_features(x)}
            if onnx_encoder is not None:
                fns["onnx"] = lambda: onnx_encoder(x)
            for k in args.selected:
                fns[f"sel{k}"] = selected_call(zse, x, k, masked=False)
                fns[f"sel{k}-masked"] = selected_call(zse, x, k, masked=True)
            rates = time_interleaved(fns, batch, dev, args.warmup, _iters_for(batch, args), args.repeats, args.clock_fn)
            med_ratio, best_ratio = _ratios(rates["zse"], rates["plain"])
            ok &= med_ratio >= TARGET_RATIO
            rows.append((f"Dinov2Model (plain) L{depth}", batch, rates["plain"], (1.0, 1.0), fl_plain))
            rows.append((f"ZseModel.get_image_features L{depth}", batch, rates["zse"], (med_ratio, best_ratio), fl_zse))
            if onnx_encoder is not None:
                rows.append((f"ZSE encoder, ONNX (onnxruntime) L{depth}", batch, rates["onnx"],
                             _ratios(rates["onnx"], rates["plain"]), fl_zse))
                onnx_vs_eager = _ratios(rates["onnx"], rates["zse"])
                print(f"  batch {batch}: onnxruntime {statistics.median(rates['onnx']):.2f} img/s = "
                      f"{onnx_vs_eager[0]:.3f} x eager ZSE ({onnx_vs_eager[1]:.3f} best/best)", flush=True)
            for k in args.selected:
                for key, how in ((f"sel{k}", "encoder-side"), (f"sel{k}-masked", "masked")):
                    fl = count_flops(selected_call(zse, x1, k, masked=how == "masked"))
                    name = f"ZSE, token selection {k} of {(IMAGE_SIZE // 14) ** 2} ({how}) L{depth}"
                    rows.append((name, batch, rates[key],
                                 _ratios(rates[key], rates["plain"]), fl))
            print(f"  batch {batch}: plain {statistics.median(rates['plain']):.2f} img/s, "
                  f"zse {statistics.median(rates['zse']):.2f} img/s, ratio {med_ratio:.3f} ({best_ratio:.3f})",
                  flush=True)
        if args.profile:
            profile(zse, plain, depth, args)
        zse = plain = onnx_encoder = None  # free the models before the next depth

    print(f"\n## Throughput ({dev}, {torch.get_num_threads()} threads; median of {args.repeats} rounds, "
          f"best round in brackets)\n")
    print("| model | batch | images/s | ratio vs plain | GFLOPs/image |")
    print("|---|---:|---:|---:|---:|")
    for name, batch, rates, (med_ratio, best_ratio), fl in rows:
        print(f"| {name} | {batch} | {statistics.median(rates):.2f} ({max(rates):.2f}) "
              f"| {med_ratio:.3f} ({best_ratio:.3f}) | {fl / 1e9:.3f} |")
    print(
        f"\nratio = median over rounds of zse/plain images/s measured back to back (best/best in brackets); "
        f"target >= {TARGET_RATIO}: {'met' if ok else 'NOT met'}. "
        f"Load avg {os.getloadavg()[0]:.2f} at end; total {time.perf_counter() - t_start:.0f} s."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
