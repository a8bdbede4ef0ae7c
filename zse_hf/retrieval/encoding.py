"""Turning images into features for an index: photos in batches (decoded ahead on threads,
unreadable ones reported, not raised) and sketches."""

from __future__ import annotations

import concurrent.futures
from typing import Iterator, Sequence

import torch

from ..loading import image_processor_of
from ..modeling_zse import ZseImageFeatures
from .model_binding import model_device_dtype


def encode_photos(model, processor, items: Sequence, selected: Sequence[int], batch_size: int = 32,
                  num_workers: int = 0, progress: bool = True
                  ) -> Iterator[tuple[list[int], ZseImageFeatures | None, list[tuple[int, str]]]]:
    """Encode `items[p]` for `p` in `selected`, `batch_size` at a time, in eval mode.

    Yields per batch `(kept, features, failed)`: the positions encoded, their features
    (`ret_embeds [B, D]`, `local_tokens [B, N, D]`, `token_mask [B, N]`, `grid_size`; None
    when none was readable) and `(position, reason)` of the items that could not be read.
    `num_workers` threads decode the next batch while the model runs. Use it in a `with
    contextlib.closing(...)` block so the threads stop when the caller stops early.
    """
    from tqdm.auto import tqdm

    dev, dtype = model_device_dtype(model)
    ip = image_processor_of(processor)

    def load(p):
        try:
            return ip([items[p]], modality="photo", return_tensors="pt")["pixel_values"]
        except (ValueError, TypeError, OSError) as err:
            return err

    batches = [list(selected[s:s + batch_size]) for s in range(0, len(selected), batch_size)]
    pool = concurrent.futures.ThreadPoolExecutor(num_workers) if num_workers > 0 else None
    submit = (lambda b: [pool.submit(load, p) for p in b]) if pool else (lambda b: b)
    fetch = (lambda f: f.result()) if pool else load
    was_training = model.training
    model.eval()
    try:
        pending = submit(batches[0]) if batches else None
        with tqdm(total=len(selected), desc="indexing photos", unit="img", disable=not progress) as bar:
            for b, batch in enumerate(batches):
                loaded = [fetch(x) for x in pending]
                if b + 1 < len(batches):
                    pending = submit(batches[b + 1])
                failed = [(p, str(out)) for p, out in zip(batch, loaded) if isinstance(out, Exception)]
                kept = [p for p, out in zip(batch, loaded) if not isinstance(out, Exception)]
                feats = None
                if kept:
                    with torch.inference_mode():
                        pixels = torch.cat([out for out in loaded if not isinstance(out, Exception)])
                        feats = model.get_image_features(pixels.to(dev, dtype))
                bar.update(len(batch))
                yield kept, feats, failed
    finally:
        model.train(was_training)
        if pool:
            pool.shutdown(cancel_futures=True)


def encode_sketches(model, processor, sketches, batch_size: int = 32) -> ZseImageFeatures:
    """Features of one sketch or a list (paths, PIL images, arrays, tensors): `ret_embeds [Q, D]`
    float32, `local_tokens [Q, N, D]`, `token_mask [Q, N]`, `grid_size`."""
    items = list(sketches) if isinstance(sketches, (list, tuple)) else [sketches]
    if not items:
        raise ValueError("no sketches given")
    ip = image_processor_of(processor)
    dev, dtype = model_device_dtype(model)
    parts = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(items), batch_size):
                pixels = ip(items[s:s + batch_size], modality="sketch", return_tensors="pt")["pixel_values"]
                parts.append(model.get_image_features(pixels.to(dev, dtype)))
    finally:
        model.train(was_training)
    return ZseImageFeatures(ret_embeds=torch.cat([p.ret_embeds for p in parts]).float(),
                            local_tokens=torch.cat([p.local_tokens for p in parts]),
                            token_mask=torch.cat([p.token_mask for p in parts]), grid_size=parts[0].grid_size)
