"""Two-stage sketch retrieval with faiss: ANN search on [Ret] embeddings, then a
relation-network re-rank of the top K from a memory-mapped token store.

```python
>>> import zse_hf
>>> from transformers import AutoModel, AutoProcessor
>>> from zse_hf.retrieval import ZseIndex
>>> model = AutoModel.from_pretrained("path/to/zse-model").eval()
>>> processor = AutoProcessor.from_pretrained("path/to/zse-model")
>>> index = ZseIndex.build(model, processor, "photos/")      # a folder, or a list of paths/images
>>> index.save("photos.zse-index")
>>> hits = index.search("sketch.png", k=10, rerank_k=50)[0]  # list[Hit], best first
```

A saved index is a directory (format version 1; 2 with stored projections, 3 with a token codec):

    manifest.json            format version, model name and weight hash, sizes, counts, factory,
                             search parameters, size + sha256 of every other file
    index.faiss              the faiss index (inner product); its ids are row numbers
    rows.json                per row: id (null once removed), path, position; skipped items
    embeddings-NNNN.npy      [n, D] float32 [Ret] embeddings (merge, rebuild, exact re-scoring)
    tokens-NNNN.npy          encoder local tokens (re-ranking), memory-mapped: [n, N, C] uint8 codes
                             of the token codec (new indexes: LOSSY sq6), decoded row by row; or
                             [n, N, D] float16 (token_codec="fp16", exact)
    mask-NNNN.npy            [n, N] bool token-selection masks
    token_codec.faiss        the trained faiss token codec (faiss.serialize_index), when one is used

Rows are appended in segments (one per `build`/`add` call); segment files are never modified
after they are written, so saving hard-links them instead of copying when it can. The manifest
is confined to its directory: file names only, and every file listed with its size and sha256.
Any malformed or tampered file is a one-line `ValueError` naming it. No pickle is used anywhere.

Saving is atomic (a complete sibling directory swapped in, see `persistence`); loading opens
the directory once, verifies and memory-maps every file, so a loaded index is immutable and
self-consistent. Any number of processes may load and search while one process saves.

Modules (each one concern):

    index.py          ZseIndex: build, add, remove, search, re-rank
    encoding.py       photos (batched, threaded decoding, unreadable ones reported) and sketches to features
    token_store.py    the segment files (.npy writers, memory-mapped readers)
    token_codec.py    compressed tokens: faiss standalone codecs (sq8, sq4, pqM, rqM, ...; LOSSY)
    faiss_index.py    faiss factory choice, construction, search parameters
    manifest.py       the manifest format: read, validate, build
    persistence.py    save (atomic swap) and load (checksummed), stale-directory clean-up
    sharding.py       I/N shards and merging saved indexes
    model_binding.py  the model an index is bound to (weights fingerprint, processor)
    quantization.py   the lossy int8 pair head for CPU re-ranking (`search(..., int8=True)`)
    inputs.py         folders / lists of images and their ids
    records.py        Hit, Skipped
    ranking.py        the relation re-rank of each query's candidates and the hit order (shared by every store)
    milvus_store.py   ZseMilvusStore: the same gallery in a Milvus collection (embedded file or server), open_store
    milvus_ingest.py  its writing: build, add, upsert, the resumable ingest, the store's creation
    milvus_schema.py  its URIs, its record beside the collection, the token codes as base64 text
    milvus_local.py   a local Milvus server process from the `milvus` package (tests, benchmarks)
    cli.py            zse-sbir index / merge-index / search (a faiss folder or a store URI)

The same gallery can live in a vector database instead of an index folder (`pip install
'zse-sbir[milvus]'`; see docs/retrieval.md#vector-database-store-milvus):

```python
>>> from zse_hf.retrieval import ZseMilvusStore, open_store
>>> store = ZseMilvusStore.build(model, processor, "photos/", uri="photos.db")   # or uri="http://host:19530"
>>> store = open_store("photos.db", model, processor)                           # a folder gives a ZseIndex
>>> hits = store.search("sketch.png", k=10, filter='folder == "animals"')[0]
```
"""

from ..modeling_zse import ZseImageFeatures
from .cli import index_main, merge_main, search_main
from .faiss_index import DEFAULT_TRAIN_SIZE, FLAT_MAX, IVF_SQ_MAX, auto_factory, faiss  # noqa: F401 (faiss re-exported)
from .index import ZseIndex
from .inputs import IMAGE_EXTENSIONS, list_images
from .manifest import FORMAT_NAME, FORMAT_VERSION, read_manifest
from .milvus_store import StoreAddress, ZseMilvusStore, is_store_uri, open_store, parse_store_uri
from .model_binding import model_fingerprint
from .records import Hit, Skipped
from .token_codec import TokenCodec, load_token_codec
from .token_store import remove_stale_work_dirs

__all__ = ["DEFAULT_TRAIN_SIZE", "FLAT_MAX", "FORMAT_NAME", "FORMAT_VERSION", "Hit", "IMAGE_EXTENSIONS", "IVF_SQ_MAX",
           "Skipped", "StoreAddress", "TokenCodec", "ZseImageFeatures", "ZseIndex", "ZseMilvusStore", "auto_factory",
           "index_main", "is_store_uri", "list_images", "load_token_codec", "merge_main", "model_fingerprint",
           "open_store", "parse_store_uri", "read_manifest", "remove_stale_work_dirs", "search_main"]
