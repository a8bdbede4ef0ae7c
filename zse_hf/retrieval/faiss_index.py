"""faiss plumbing: the automatic factory choice, index construction with row-number ids, the
core index under wrappers, and default / applied search parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    import faiss
except ImportError as _err:  # pragma: no cover
    raise ModuleNotFoundError("zse_hf.retrieval needs faiss: pip install 'zse-sbir[faiss]' (or faiss-gpu)",
                              name="faiss") from _err

FLAT_MAX = 50_000  # automatic factory: exact search below this many photos
IVF_SQ_MAX = 5_000_000  # ... IVF + 8-bit scalar quantizer below this, IVF-PQ above
DEFAULT_TRAIN_SIZE = 262_144  # at most this many embeddings train IVF/PQ (64 per list at IVF4096)
SEARCH_PARAM_NAMES = ("nprobe", "efSearch", "refine")


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



def check_search_params(params: dict) -> dict:
    """`params` when its keys are among `nprobe`, `efSearch`, `refine` and each is an int >= 1."""
    if not isinstance(params, dict):
        raise ValueError(f"search_params must be a dict, got {type(params).__name__}")
    unknown = sorted(set(params) - set(SEARCH_PARAM_NAMES))
    if unknown:
        raise ValueError(f"unknown search parameter(s) {unknown}; use {list(SEARCH_PARAM_NAMES)}")
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"search parameter {key} must be an integer >= 1, got {value!r}")
    return params


def set_search_params(index, on_gpu: bool, params: dict, k: int) -> None:
    """Apply `nprobe` (IVF) and `efSearch` (HNSW, at least `k`) to a CPU or GPU faiss index."""
    if "nprobe" in params:
        if on_gpu:
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", int(params["nprobe"]))
        else:
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is not None:
                ivf.nprobe = int(params["nprobe"])
    core = core_index(index)
    if isinstance(core, faiss.IndexHNSW):
        core.hnsw.efSearch = max(int(params.get("efSearch", 128)), k)


def read_index_bytes(data: bytes, where, dim: int, live_rows: np.ndarray):
    """The faiss index serialised in `data` (read from `where`), checked to be an inner-product
    index of width `dim` holding the vectors of `live_rows` `[M]` (sorted row numbers; checked
    exactly for ID-mapped indexes, by count for IVF); ValueError naming `where` otherwise."""
    ntotal = len(live_rows)
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except (RuntimeError, ValueError, TypeError, MemoryError) as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ValueError(f"index file {where} is not a faiss index this faiss can read: {reason}") from None
    if index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT or index.ntotal != ntotal:
        raise ValueError(f"index file {where} does not match its manifest: faiss index of width {index.d} holding "
                         f"{index.ntotal} vectors (metric {index.metric_type}), expected an inner-product index "
                         f"of width {dim} holding {ntotal}")
    inner = faiss.downcast_index(index)
    if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        ids = faiss.vector_to_array(inner.id_map)
        if not np.array_equal(np.sort(ids), live_rows):
            raise ValueError(f"index file {where} does not match rows.json: its ids are not the rows of the photos")
    return index
