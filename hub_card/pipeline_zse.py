"""`pipeline("sketch-based-image-retrieval")`: rank photos for a sketch with a ZSE-SBIR model.

```python
>>> from transformers import pipeline
>>> sbir = pipeline("sketch-based-image-retrieval", model="zse-sbir/zse-sbir-dinov2-small", trust_remote_code=True)
>>> sbir("sketch.png", photos=["cow.jpg", "bus.jpg", "pear.png"], top_k=2)
[{'score': 0.61, 'photo': 'cow.jpg', 'rank': 1, 'ret_score': 0.61}, {'score': 0.32, 'photo': 'pear.png', ...}]
```

The ranking is the model's default (`config.default_ranking`): `"ret"` sorts the photos by the
cosine of their [Ret] embeddings with the sketch's; `"rn@K"` re-ranks the best K of those by the
relation network (`ZseModel.rerank_score`). `rerank_k=` overrides K for one call (0: [Ret] only).
`photos=` is a list (paths, PIL images, arrays; encoded once per call) or a ready photo store, which
is searched with its own `search` method: a `ZseIndex` (faiss), a `ZseMilvusStore` (a Milvus
collection) from `zse_hf.retrieval`, or any object with the same `search` signature (duck-typed:
nothing here imports faiss or a database client).

This file travels with the model's Hub repo (`custom_pipelines` in `config.json`), so it may import
only its sibling files, relatively.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import Pipeline

from .configuration_zse import default_rerank_k
from .image_processing_zse import ZseImageProcessor

TASK = "sketch-based-image-retrieval"


def _check_count(name: str, value, minimum: int, allow_none: bool = True):
    """`value` if it is an int >= `minimum` (or None when allowed), else ValueError."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{none}, got {value!r}")
    return value


def _is_index(photos) -> bool:
    """True for a photo store (anything with a `search` method: `zse_hf.retrieval.ZseIndex`, `ZseMilvusStore`)."""
    return callable(getattr(photos, "search", None))


def _photo_id(item, position: int):
    """How a result names a photo of a list: its path for files, else its position in the list."""
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else position


class ZseSketchRetrievalPipeline(Pipeline):
    r"""Sketch-based image retrieval: rank photos for each sketch.

    `pipe(sketch, photos=[...], top_k=10)` returns the best `top_k` photos as dicts, best first:

    - `"photo"`: the photo's path (file inputs) or position in `photos` (other inputs); for a
      `ZseIndex`, the photo's id (by default the same: its path, or its position when built).
    - `"score"`: what the ranking sorted by: the [Ret] cosine, or for re-ranked photos the re-rank
      key `relation_score + rerank_ret_weight * ret_score` (the relation score itself with the
      default weight 0).
    - `"ret_score"`: cosine of the [Ret] embeddings, in [-1, 1].
    - `"relation_score"`: relation-network score in (0, 1), only on re-ranked photos.
    - `"rank"`: 1 for the best photo.

    With `rerank_k=K` and `top_k > K`, the K re-ranked photos come first (sorted by re-rank key)
    and the rest follow in [Ret] order (sorted by cosine): the ranking of `"rn@K"`.

    Call arguments:
        sketches: one sketch (path, PIL image, array) or a list of them (then one list of results each).
        photos: a list of photos (paths, PIL images, arrays), encoded once per call; or a photo store
            to search, a `ZseIndex` or `ZseMilvusStore` (it encodes the sketch with its own model; one
            opened without a model gets this pipeline's).
        top_k: results per sketch (default 10; all the photos when there are fewer).
        rerank_k: re-rank this many of the best [Ret] candidates with the relation network
            (0: none); default: the model's `config.default_ranking` (`"ret"`: 0, `"rn@K"`: K).
        rerank_ret_weight: weight of the [Ret] cosine in the re-rank key (default: the model's
            `config.rerank_ret_weight`).
        batch_size: photos of a list encoded per forward pass (default 32, or the pipeline's
            `batch_size`); sketches are encoded one at a time.
    """

    _load_processor = False
    _load_image_processor = None  # loaded with the model when it has one, else made from its config (__init__)
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.image_processor is None:  # a model object given without its processor
            self.image_processor = ZseImageProcessor.from_model_config(self.model.config)
        # pipeline(..., batch_size=B) batches the photos' encoding; sketches go one by one
        self._photo_batch_size = _check_count("batch_size", self._batch_size or 32, 1)
        self._batch_size = None

    def __call__(self, sketches, photos=None, batch_size: int | None = None, **kwargs) -> list:
        """Rank `photos` for each of `sketches` (see the class docstring).

        Returns: for one sketch, a list of `top_k` result dicts, best first; for a list of
        sketches, one such list per sketch.
        """
        if photos is None:
            raise ValueError("pass photos=[...] (paths or images) or photos=<ZseIndex> to search")
        batch_size = _check_count("batch_size", self._photo_batch_size if batch_size is None else batch_size, 1)
        if _is_index(photos):
            gallery = photos
            if getattr(gallery, "model", False) is None and callable(getattr(gallery, "attach_model", None)):
                gallery.attach_model(self.model)  # an index loaded without a model searches with this one
        else:
            gallery = self.encode_photos(photos, batch_size=batch_size)
        return super().__call__(sketches, gallery=gallery, **kwargs)

    def _sanitize_parameters(self, gallery=None, top_k=None, rerank_k=None, rerank_ret_weight=None, **kwargs):
        """Split the call arguments into `(preprocess, forward, postprocess)` parameters, checked."""
        preprocess_params, forward_params = {}, {}
        if gallery is not None:
            preprocess_params["gallery"] = gallery
            forward_params["gallery"] = gallery
        if top_k is not None:
            forward_params["top_k"] = _check_count("top_k", top_k, 1)
        if rerank_k is not None:
            forward_params["rerank_k"] = _check_count("rerank_k", rerank_k, 0)
        if rerank_ret_weight is not None:
            forward_params["rerank_ret_weight"] = rerank_ret_weight
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)}; see help(type(pipe))")
        return preprocess_params, forward_params, {}

    # ------------------------------------------------------------------ photos

    def encode_photos(self, photos, batch_size: int = 32):
        """Encode a list of photos once for all the sketches of a call.

        Args:
            photos: one photo or a list (paths, PIL images, arrays, tensors) of P photos.
            batch_size: photos per forward pass.

        Returns: dict with `"features"` (`ZseImageFeatures`: `ret_embeds [P, D]`,
        `local_tokens [P, N, D]`, `token_mask [P, N]`, `grid_size`) and `"ids"` (P photo names,
        see `_photo_id`).
        """
        if isinstance(photos, (str, os.PathLike)) or not isinstance(photos, (list, tuple)):
            photos = [photos]
        if len(photos) == 0:
            raise ValueError("photos is an empty list")
        ret, tokens, masks, grid = [], [], [], None
        with self.device_placement(), torch.no_grad():
            for start in range(0, len(photos), batch_size):
                chunk = photos[start:start + batch_size]
                try:
                    pixels = self.image_processor(chunk, modality="photo", return_tensors="pt")["pixel_values"]
                except (ValueError, TypeError) as err:
                    raise type(err)(f"photos[{start}:{start + len(chunk)}]: {err}") from err
                feats = self.model.get_image_features(pixels.to(self.device, self.dtype), return_dict=True)
                ret.append(feats.ret_embeds)
                tokens.append(feats.local_tokens)
                masks.append(feats.token_mask)
                grid = feats.grid_size
        features = type(feats)(ret_embeds=torch.cat(ret), local_tokens=torch.cat(tokens),
                               token_mask=torch.cat(masks), grid_size=grid)
        return {"features": features, "ids": [_photo_id(p, i) for i, p in enumerate(photos)]}

    # ------------------------------------------------------------------ one sketch

    def preprocess(self, sketch, gallery=None) -> dict[str, Any]:
        """A sketch as `{"pixel_values": [1, 3, S, S]}`; kept as given when an index encodes it."""
        if _is_index(gallery):
            return {"sketch": sketch}
        pixels = self.image_processor(sketch, modality="sketch", return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels.to(self.dtype)}

    def _forward(self, model_inputs, gallery=None, top_k: int = 10, rerank_k: int | None = None,
                 rerank_ret_weight=None):
        """Rank the gallery for one sketch (`pixel_values [1, 3, S, S]`, or the raw sketch for an
        index): [Ret] cosines `[P]` with the gallery's `ret_embeds [P, D]`, then relation scores of
        the best `depth` candidates (`score_indexed_pairs`, `[depth]`) when re-ranking."""
        if gallery is None:
            raise ValueError("no photos: call the pipeline with photos=[...] or photos=<ZseIndex>")
        if _is_index(gallery):
            return self._search_index(gallery, model_inputs["sketch"], top_k, rerank_k, rerank_ret_weight)
        sketch = self.model.get_image_features(model_inputs["pixel_values"], return_dict=True)
        photos, ids = gallery["features"], gallery["ids"]
        ret = (sketch.ret_embeds.float() @ photos.ret_embeds.float().T)[0]  # [P]
        n = ret.shape[0]
        k = min(top_k, n)
        depth = min(self._rerank_depth(rerank_k), n)
        order = torch.sort(ret.cpu(), descending=True, stable=True).indices[: max(k, depth)].tolist()
        relation = {}
        if depth:
            head = order[:depth]
            rel = self.model.score_indexed_pairs(sketch, photos, torch.zeros(depth, dtype=torch.long),
                                                 torch.tensor(head)).float().cpu()
            key = self.model.rerank_score(rel, ret.cpu()[head], rerank_ret_weight)
            # by re-rank key, ties in [Ret] order (as ZseIndex.search)
            ranked = sorted(range(depth), key=lambda j: (-float(key[j]), j))
            relation = {head[j]: (float(rel[j]), float(key[j])) for j in range(depth)}
            order = [head[j] for j in ranked] + order[depth:]
        results = []
        for row in order[:k]:
            hit = {"score": float(ret[row]), "photo": ids[row], "rank": len(results) + 1, "ret_score": float(ret[row])}
            if row in relation:
                hit["relation_score"], hit["score"] = relation[row]
            results.append(hit)
        return {"results": results}

    def _rerank_depth(self, rerank_k: int | None) -> int:
        """Candidates to re-rank: `rerank_k`, else K of the model's `default_ranking` (0 for `"ret"`)."""
        if rerank_k is not None:
            return rerank_k
        return default_rerank_k(getattr(self.model.config, "default_ranking", "ret"))

    def _search_index(self, index, sketch, top_k, rerank_k, rerank_ret_weight) -> dict:
        """Results of `index.search` for one sketch (the index encodes it with its model), ranked as
        this pipeline's model says (its `default_ranking` and `rerank_ret_weight` unless given); an
        index without stored tokens is not re-ranked by default."""
        if rerank_k is None:
            rerank_k = self._rerank_depth(None) if getattr(index, "store_local_tokens", True) else 0
        if rerank_ret_weight is None:
            rerank_ret_weight = getattr(self.model.config, "rerank_ret_weight", 0.0)
        hits = index.search([sketch], k=top_k, rerank_k=rerank_k, rerank_ret_weight=rerank_ret_weight)[0]
        results = []
        for hit in hits:
            out = {"score": float(hit.ret_score), "photo": hit.id, "rank": int(hit.rank),
                   "ret_score": float(hit.ret_score)}
            if hit.relation_score is not None:
                out["relation_score"] = float(hit.relation_score)
                out["score"] = float(self.model.rerank_score(out["relation_score"], out["ret_score"],
                                                             rerank_ret_weight))
            results.append(out)
        return {"results": results}

    def postprocess(self, model_outputs) -> list[dict[str, Any]]:
        """The result dicts of one sketch, best first."""
        return model_outputs["results"]


__all__ = ["TASK", "ZseSketchRetrievalPipeline"]
