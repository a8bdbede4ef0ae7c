"""Writing encoded photos into a [`ZseIndex`]'s segments: one new segment per `add`, its tokens
stored as float16 or as token-codec codes (the codec trained on the first photos when asked for),
then registered and added to faiss, all rolled back when anything fails."""

from __future__ import annotations

import contextlib
import uuid

import numpy as np
from tqdm.auto import tqdm

from .encoding import encode_photos
from .records import Skipped
from .token_codec import TokenCodec, new_codec, training_sample
from .token_store import CODE_DTYPE, NpyWriter, Segment, SegmentWriter, open_file


class SegmentIngest:
    """The segment-writing half of [`ZseIndex`] (a mixin: it reads and sets the index's state)."""

    def _encode(self, items, item_ids, item_paths, selected, base, batch_size, device, num_workers, progress):
        """Encode `items[p]` for `p` in `selected` into one new segment; returns the skipped items."""
        if device is not None:
            self.model.to(device)
        skipped: list[Skipped] = []
        writer = None
        ok_ids, ok_paths, ok_pos = [], [], []
        try:
            with contextlib.closing(encode_photos(self.model, self.processor, items, selected, batch_size, num_workers,
                                                  progress)) as batches:
                for kept, feats, failed in batches:
                    skipped += [Skipped(base + p, item_ids[p], item_paths[p], reason) for p, reason in failed]
                    if feats is None:
                        continue
                    if writer is None:
                        writer = self._open_segment(feats.ret_embeds.shape[1], tuple(feats.local_tokens.shape[1:]),
                                                    feats.grid_size)
                    tok = mask = proj = None
                    if self.store_local_tokens:
                        tok = feats.local_tokens.float().clamp(-65504, 65504).cpu().numpy()
                        mask = feats.token_mask.cpu().numpy()
                    if self.store_projections:
                        proj = self._project(tok, mask, feats.grid_size)
                    writer.append(feats.ret_embeds.float().cpu().numpy(), self._stored_tokens(writer, tok), mask,
                                  grid_size=feats.grid_size, proj=proj)
                    ok_ids += [item_ids[p] for p in kept]
                    ok_paths += [item_paths[p] for p in kept]
                    ok_pos += [base + p for p in kept]
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            self._commit_segment(writer, ok_ids, ok_paths, ok_pos, progress)
        return skipped

    def _open_segment(self, dim: int, token_shape, grid_size) -> SegmentWriter:
        """A writer for one new segment. With a trained token codec it takes codes (see
        [`_stored_tokens`]); with one still to train, float16 tokens that `_commit_segment` encodes."""
        if self.dim is not None and dim != self.dim:
            raise ValueError(f"embedding width {dim} does not match the index ({self.dim})")
        code_size = None
        if self.store_local_tokens and token_shape is not None:
            if self.token_codec is not None:
                if self.token_codec.dim != token_shape[-1]:
                    raise ValueError(f"the token codec {self.token_codec.name!r} is for tokens of width "
                                     f"{self.token_codec.dim}, these are {token_shape[-1]} wide")
                code_size = self.token_codec.code_size
            elif self._codec_request is not None:
                new_codec(self._codec_request[1], token_shape[-1])  # an invalid codec fails before any encoding
        return SegmentWriter(self._work_dir(), dim, token_shape if self.store_local_tokens else None, grid_size,
                             self.token_shape, self.grid_size, projections=self.store_projections, code_size=code_size)

    def _stored_tokens(self, writer: SegmentWriter, tokens):
        """What `writer` stores for tokens `[m, N, D]`: codes `[m, N, C]` uint8 when it takes codes."""
        if tokens is None or not writer.code_size:
            return tokens
        return self.token_codec.encode(tokens)

    def _encode_segment(self, seg: Segment, progress: bool) -> Segment:
        """`seg` with its float16 tokens replaced by codes of the token codec, trained first (on a
        seeded sample of these tokens, see `token_codec.training_sample`) when there is none yet."""
        stored = seg.arrays["tokens"]
        if self.token_codec is None:
            name, factory = self._codec_request
            sample = training_sample(stored.array, seg.array("mask"))
            with tqdm(total=1, desc=f"training token codec {factory} on {len(sample)} tokens", disable=not progress,
                      leave=False) as bar:
                self.token_codec = TokenCodec.train(name, factory, sample)
                bar.update(1)
        codec = self.token_codec
        n_tok = stored.array.shape[1]
        writer = NpyWriter(self._work_dir() / f"tokens-{uuid.uuid4().hex[:12]}.npy", CODE_DTYPE,
                           (n_tok, codec.code_size))
        step = max(1, (1 << 22) // max(1, n_tok * codec.dim))  # ~16 MB of float32 per chunk
        try:
            for s in tqdm(range(0, seg.n, step), desc=f"encoding tokens ({codec.name})", unit="chunk",
                          disable=not progress or seg.n <= step, leave=False):
                writer.append(codec.encode(stored.array[s:s + step]))
            writer.close()
        except BaseException:
            writer.abort()
            raise
        stored.path.unlink(missing_ok=True)  # the float16 spill
        return seg.with_array("tokens", open_file(writer.path, "tokens", (seg.n, n_tok, codec.code_size), CODE_DTYPE))

    def _commit_segment(self, writer: SegmentWriter, ids, paths, positions, progress: bool = False) -> None:
        """Register a finished segment and add its rows to faiss (training it first if needed); float16
        tokens of an index with a token codec are encoded first (`progress`: show bars for that)."""
        seg = writer.close()
        if seg is None:
            return
        had_codec = self.token_codec is not None
        try:
            if len(ids) != seg.n or len(set(ids)) != len(ids) or any(i in self._row_of for i in ids):
                raise ValueError("ids must be unique (within the batch and against the index)")
            if self._codec_request is not None and seg.arrays["tokens"] is not None and not writer.code_size:
                seg = self._encode_segment(seg, progress)
        except BaseException:
            for stored in seg.arrays.values():
                if stored is not None:
                    stored.path.unlink(missing_ok=True)
            if not had_codec:
                self.token_codec = None
            raise
        if self.dim is None:
            self.dim, self.grid_size = writer.dim, writer.grid_size
            self.token_shape = writer.token_shape
        start, had_index = self.num_rows, self._index is not None
        self._segments.append(seg)
        self._starts = np.append(self._starts, start + seg.n)
        for r, i in enumerate(ids):
            self._row_of[i] = start + r
        self._ids += list(ids)
        self._paths += list(paths)
        self._positions += [int(p) for p in positions]
        try:
            self._add_rows_to_faiss(np.arange(start, start + seg.n, dtype=np.int64))
        except BaseException:  # roll back, so the index stays consistent
            del self._segments[-1], self._ids[start:], self._paths[start:], self._positions[start:]
            self._starts = self._starts[:-1]
            for i in ids:
                self._row_of.pop(i, None)
            if not had_index:
                self._index, self.factory, self.search_params = None, None, {}
            if not had_codec:
                self.token_codec = None
            raise
