"""faiss plumbing: the automatic factory choice, index construction with row-number ids, the
core index under wrappers, and default / applied search parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    import faiss
except ImportError as _err:  # pragma: no cover
    raise ImportError("zse_hf.retrieval needs faiss: pip install 'zse-sbir[faiss]' (or faiss-gpu)") from _err

FLAT_MAX = 50_000  # automatic factory: exact search below this many photos
IVF_SQ_MAX = 5_000_000  # ... IVF + 8-bit scalar quantizer below this, IVF-PQ above
DEFAULT_TRAIN_SIZE = 262_144  # at most this many embeddings train IVF/PQ (64 per list at IVF4096)


def auto_factory(n: int, dim: int) -> str:
    """The faiss factory string used when none is given, for `n` photos of width `dim`.

    - `n < 50k`: `"Flat"` (exact; 4*dim bytes/photo; removal supported).
    - `n < 5M`: `"IVF{nlist},SQ8"` with `nlist ~ 4 sqrt(n)` (a power of two): 8-bit scalar
      quantizer, ~dim + 16 bytes/photo, removal supported; hits are re-scored exactly from the
      stored embeddings. `nprobe` defaults to nlist/64 (16 below nlist 1024).
    - larger: `"IVF{nlist},PQ{dim/8}"` (~dim/8 + 16 B/photo), re-scored the same way from a 4x
      larger candidate list.

    On clustered synthetic embeddings (dim 384, `benchmarks/bench_retrieval.py`, 2 busy CPU
    cores) IVF4096,SQ8 at 1M photos gave recall@100 0.989 at 4 ms/query, 398 B/photo, built in
    3.5 min; HNSW32 took 8 min to build and reached only 0.84 at efSearch 256; IVF4096,PQ32
    (47 B/photo) 0.92 with 8x refinement at 12 ms. HNSW also cannot remove photos; pass
    `index_factory="HNSW32"` to use it anyway.
    """
    if n < FLAT_MAX:
        return "Flat"
    nlist = ivf_lists(n)
    if n < IVF_SQ_MAX:
        return f"IVF{nlist},SQ8"
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return f"IVF{nlist},PQ{m}"


def ivf_lists(n: int) -> int:
    return int(min(65536, max(64, 2 ** round(np.log2(4 * np.sqrt(max(n, 1)))))))



def new_faiss_index(factory: str, dim: int):
    """A faiss index for `factory` with inner-product metric that accepts `add_with_ids`:
    IVF indexes keep their own ids, everything else is wrapped in `IDMap2`."""
    try:
        base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(f"invalid faiss index factory string {factory!r}: {str(err).splitlines()[-1]}") from None
    if faiss.try_extract_index_ivf(base) is None and not isinstance(base, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        base = faiss.index_factory(dim, "IDMap2," + factory, faiss.METRIC_INNER_PRODUCT)
    core = core_index(base)
    if isinstance(core, (faiss.IndexIVFPQ, faiss.IndexPQ)):
        core.do_polysemous_training = False  # slow, and only serves Hamming-filtered search
    return base


def core_index(index):
    """The innermost index under IDMap / PreTransform / Refine wrappers."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform, faiss.IndexRefine)):
        index = faiss.downcast_index(index.base_index if isinstance(index, faiss.IndexRefine) else index.index)
    return index


def is_exact(index) -> bool:
    """True when the index stores full float vectors (its scores are exact cosines)."""
    return isinstance(core_index(index), (faiss.IndexFlat, faiss.IndexHNSWFlat, faiss.IndexIVFFlat))


def default_search_params(index) -> dict:
    core = core_index(index)
    params: dict[str, Any] = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        params["nprobe"] = max(1, min(ivf.nlist, ivf.nlist // 64 if ivf.nlist >= 1024 else 16))
    if isinstance(core, faiss.IndexHNSW):
        params["efSearch"] = 128
    if not is_exact(index):
        params["refine"] = 4 if isinstance(core, (faiss.IndexPQ, faiss.IndexIVFPQ)) else 1
    return params

