"""The measurement behind the choice of vector database (not a test): each candidate engine stores `--rows`
rows shaped like a zse-sbir photo (a 384-d unit [Ret] vector and its sq6 token codes of the shipped model,
64 x 288 bytes plus the 8-byte mask, as 24,576 base64 characters) and answers the two queries a store makes:

- top-10 by inner product, ids only (a [Ret]-only search);
- top-100 with the token payload (what a re-ranked search reads back).

Engines: Milvus Lite (the embedded `.db` file of `milvus-lite`), a Milvus standalone server (the `milvus`
package's 2.3.x binary, started here), and Qdrant's local mode (`qdrant-client`'s embedded engine; there is no
Qdrant server binary on the package registries). An engine whose package is missing is skipped.

    python benchmarks/bench_vector_engines.py                 # 10k rows
    python benchmarks/bench_vector_engines.py --rows 20k --queries 50
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_retrieval import parse_size  # noqa: E402
from bench_vector_store import du, server_bytes  # noqa: E402

DIM, PAYLOAD_BYTES, BATCH = 384, 64 * 288 + 8, 256


def data(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    payload = [base64.b64encode(rng.integers(0, 256, PAYLOAD_BYTES, dtype=np.uint8).tobytes()).decode()
               for _ in range(n)]
    return x, payload


def milvus_engine(uri: str):
    from pymilvus import DataType, MilvusClient

    from zse_hf.retrieval.milvus_schema import _unchecked_strings

    client = MilvusClient(uri=uri, timeout=600)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("ret", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("tokens", DataType.VARCHAR, max_length=65_535)
    params = client.prepare_index_params()
    params.add_index(field_name="ret", index_type="FLAT", metric_type="IP")
    client.create_collection("bench", schema=schema, index_params=params, consistency_level="Session")

    def insert(ids, x, payload):
        with _unchecked_strings():
            client.insert("bench", [{"id": int(i), "ret": v.tolist(), "tokens": p} for i, v, p in zip(ids, x, payload)])

    def search(q, k, with_payload):
        out = client.search("bench", data=[q.tolist()], anns_field="ret", limit=k,
                            output_fields=["tokens"] if with_payload else [], search_params={"metric_type": "IP"})
        return [h["id"] for h in out[0]]

    return insert, search, lambda: client.flush("bench"), client.close


def qdrant_engine(path: str):
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=path)
    client.create_collection("bench", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT))

    def insert(ids, x, payload):
        client.upsert("bench", points=models.Batch(ids=[int(i) for i in ids], vectors=x.tolist(),
                                                   payloads=[{"tokens": p} for p in payload]))

    def search(q, k, with_payload):
        out = client.query_points("bench", query=q.tolist(), limit=k, with_payload=with_payload)
        return [p.id for p in out.points]

    return insert, search, lambda: None, client.close


def measure(label, engine, folder: Path, x, payload, queries, server=None) -> dict:
    insert, search, flush, close = engine
    n = len(x)
    start = time.perf_counter()
    for s in range(0, n, BATCH):
        insert(range(s, min(n, s + BATCH)), x[s:s + BATCH], payload[s:s + BATCH])
    flush()
    ingest = n / (time.perf_counter() - start)
    truth = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    times = {10: [], 100: []}
    recall = []
    for k, with_payload in ((10, False), (100, True)):
        search(queries[0], k, with_payload)
        for i, q in enumerate(queries):
            start = time.perf_counter()
            got = search(q, k, with_payload)
            times[k].append(time.perf_counter() - start)
            if k == 10:
                recall.append(len(set(got) & set(truth[i].tolist())) / 10)
    if server:
        wait = time.monotonic() + 300  # until the sealed segments' index files are written
        while time.monotonic() < wait and not server_bytes(folder)[0]:
            time.sleep(1.0)
    close()
    # a server: its segment files (its RocksMQ log, kept 3 days by default, comes on top)
    size = server_bytes(folder)[0] if server else du(folder)
    return {"engine": label, "rows": n, "ingest": ingest, "p50_10": 1000 * np.median(times[10]),
            "p50_100": 1000 * np.median(times[100]), "bytes": size / n, "recall": float(np.mean(recall))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=parse_size, default=10_000)
    p.add_argument("--queries", type=int, default=30)
    args = p.parse_args(argv)
    x, payload = data(args.rows)
    queries = data(args.queries, seed=1)[0]
    work = Path(tempfile.mkdtemp(prefix="zse-vector-engines-"))
    rows = []
    try:
        try:
            rows.append(measure("Milvus Lite (embedded .db)", milvus_engine(str(work / "lite.db")), work / "lite.db",
                                x, payload, queries))
        except ImportError as err:
            print(f"skipped Milvus Lite: {err}")
        try:
            from zse_hf.retrieval.milvus_local import LocalMilvusServer

            with LocalMilvusServer(work / "server") as server:
                rows.append(measure("Milvus 2.3 standalone server", milvus_engine(server.uri), work / "server", x,
                                    payload, queries, server=True))
        except ImportError as err:
            print(f"skipped the Milvus server: {err}")
        try:
            rows.append(measure("Qdrant local mode (embedded)", qdrant_engine(str(work / "qdrant")), work / "qdrant",
                                x, payload, queries))
        except ImportError as err:
            print(f"skipped Qdrant: {err}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.rows:,} rows: 384-d [Ret] vector + {PAYLOAD_BYTES:,} bytes of token codes as base64; "
          f"{args.queries} queries; exact search everywhere")
    print("| engine | ingest rows/s | top-10 p50 ms | top-100 + tokens p50 ms | bytes per row on disk | recall@10 |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['engine']} | {r['ingest']:,.0f} | {r['p50_10']:.1f} | {r['p50_100']:.1f} | {r['bytes']:,.0f} | "
              f"{r['recall']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
