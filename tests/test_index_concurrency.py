"""Concurrent readers and one writer on one saved index, with real processes.

Two versions A and B of an index (same sizes, same file names, different ids, embeddings and
tokens) are saved alternately over one directory by a writer process while two reader
processes load and search it in a loop. Each load is checked for self-consistency (ids,
embeddings, tokens and the faiss index all from one version), and a few loaded indexes are
kept and checked again after later saves (a loaded index must never start reading the new
files). Counted: loads, mixed-version loads, failed loads, failed saves.

The test runs a bounded number of saves; for the full figure run this file as a script:

    PYTHONPATH=. python tests/test_index_concurrency.py --saves 300
    PYTHONPATH=. python tests/test_index_concurrency.py --saves 300 --two-renames --swap-delay 0.02
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

N, DIM, TOKENS = 48, 16, 4


def _version(tag: str):
    """Features of version `tag` ("a" or "b"): ids, embeddings [N, DIM], tokens [N, TOKENS, DIM]."""
    rng = np.random.default_rng(0 if tag == "a" else 1)
    emb = rng.standard_normal((N, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    marker = 1.0 if tag == "a" else 2.0
    tokens = np.full((N, TOKENS, DIM), marker, dtype=np.float32) + np.arange(N, dtype=np.float32)[:, None, None] / 64
    return [f"{tag}{i:03d}" for i in range(N)], emb, tokens


def _build(tag: str, work_dir: str):
    from zse_hf.retrieval import ZseIndex

    ids, emb, tokens = _version(tag)
    return ZseIndex.from_features(emb, tokens, grid_size=(2, 2), ids=ids, index_factory="Flat", work_dir=work_dir)


def _consistent(index, refs) -> bool:
    """True when every part of `index` comes from the one version its ids name (a read that
    fails after a successful load counts as inconsistent)."""
    try:
        return _same_version(index, refs)
    except Exception:  # noqa: BLE001 - e.g. a data file that vanished under a lazily opened index
        return False


def _same_version(index, refs) -> bool:
    tag = index.ids[0][0]
    if tag not in refs or any(i[0] != tag for i in index.ids):
        return False
    ids, emb, tokens = refs[tag]
    if index.ids != ids or not np.array_equal(index.embeddings(), emb):
        return False
    stored = index.local_tokens([ids[0], ids[-1]]).local_tokens.float().numpy()
    if not np.allclose(stored, tokens[[0, -1]], atol=1e-2):
        return False
    scores, rows = index.ann_search(emb[[5, 17]], k=1)
    return rows[:, 0].tolist() == [5, 17] and bool(np.allclose(scores[:, 0], 1, atol=1e-4))


def reader(target: str, stop: str, out: str) -> None:
    """Load and check `target` until the file `stop` exists; write counts to `out`."""
    from zse_hf.retrieval import ZseIndex

    refs = {t: _version(t) for t in "ab"}
    counts = {"loads": 0, "mixed": 0, "failed": 0, "rechecks": 0, "mixed_later": 0, "errors": []}
    kept = []
    while not os.path.exists(stop):
        try:
            index = ZseIndex.load(target, verify=counts["loads"] % 2 == 0)  # half with checksums, half sizes only
        except Exception as err:  # noqa: BLE001 - counted and reported
            counts["failed"] += 1
            counts["errors"].append(f"{type(err).__name__}: {err}"[:300])
            continue
        counts["loads"] += 1
        if not _consistent(index, refs):
            counts["mixed"] += 1
        kept.append(index)
        if len(kept) > 4:  # checked again after later saves replaced its directory
            old = kept.pop(0)
            counts["rechecks"] += 1
            counts["mixed_later"] += not _consistent(old, refs)
    Path(out).write_text(json.dumps(counts))


def writer(target: str, saves: int, swap_delay: float, two_renames: bool, out: str) -> None:
    """Save versions A and B alternately `saves` times; write counts to `out`."""
    from zse_hf.retrieval import persistence

    work = str(Path(target).parent)
    versions = [_build("a", work), _build("b", work)]
    persistence.use_rename_exchange = not two_renames
    if swap_delay:
        persistence.save_hook = lambda name: time.sleep(swap_delay) if name == "swap" else None
    counts = {"saves": 0, "failed_saves": 0, "errors": []}
    t0 = time.perf_counter()
    for n in range(saves):
        try:
            versions[(n + 1) % 2].save(target)
            counts["saves"] += 1
        except Exception as err:  # noqa: BLE001 - counted and reported
            counts["failed_saves"] += 1
            counts["errors"].append(f"{type(err).__name__}: {err}"[:300])
        time.sleep(0.002)
    counts["seconds"] = round(time.perf_counter() - t0, 2)
    Path(out).write_text(json.dumps(counts))


def _child(role: str, *args) -> None:
    import faiss

    faiss.omp_set_num_threads(1)  # forked from a process that may have used OpenMP
    (reader if role == "reader" else writer)(*args)


def run(folder: Path, saves: int, readers: int = 2, swap_delay: float = 0.0, two_renames: bool = False,
        timeout: float = 120.0) -> dict:
    """Run one writer and `readers` readers (forked processes) on `folder/idx`; returns the summed counts."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # real processes without re-importing torch in each
    folder.mkdir(parents=True, exist_ok=True)
    target, stop = folder / "idx", folder / "stop"
    stop.unlink(missing_ok=True)
    _build("a", str(folder)).save(target)
    procs = [ctx.Process(target=_child, args=("reader", str(target), str(stop), str(folder / f"r{i}.json")))
             for i in range(readers)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.2)
        args = ("writer", str(target), saves, swap_delay, two_renames, str(folder / "w.json"))
        w = ctx.Process(target=_child, args=args)
        w.start()
        w.join(timeout)
        if w.is_alive():
            w.kill()
        assert w.exitcode == 0, f"writer exit code {w.exitcode}"
    finally:
        stop.write_text("")
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
                p.join()
    result = json.loads((folder / "w.json").read_text())
    for i in range(readers):
        r = json.loads((folder / f"r{i}.json").read_text())
        for key, value in r.items():
            result[key] = result.get(key, 0 if not isinstance(value, list) else []) + value
    result["leftovers"] = sorted(p.name for p in folder.iterdir() if p.name.startswith(".idx."))
    return result


def _assert_clean(result: dict) -> None:
    assert result["failed_saves"] == 0, result["errors"][:3]
    assert result["failed"] == 0, result["errors"][:3]
    assert result["mixed"] == 0 and result["mixed_later"] == 0
    assert result["loads"] >= 10 and result["rechecks"] >= 1
    assert result["leftovers"] == []


def test_readers_and_a_writer(tmp_path):
    """renameat2 exchange: every load is one version, even re-checked after later saves."""
    _assert_clean(run(tmp_path, saves=int(os.environ.get("ZSE_CONCURRENCY_SAVES", 60))))


def test_readers_and_a_writer_two_renames_wide_window(tmp_path):
    """The two-rename fallback with 20 ms between the renames: readers wait, never move files."""
    saves = int(os.environ.get("ZSE_CONCURRENCY_SAVES", 40))
    _assert_clean(run(tmp_path, saves=saves, swap_delay=0.02, two_renames=True))


if __name__ == "__main__":
    import tempfile

    p = argparse.ArgumentParser(description="concurrent load/save figures")
    p.add_argument("--saves", type=int, default=300)
    p.add_argument("--readers", type=int, default=2)
    p.add_argument("--swap-delay", type=float, default=0.0, help="seconds to pause at the swap (widens the window)")
    p.add_argument("--two-renames", action="store_true", help="the fallback swap instead of renameat2")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = run(Path(tmp), a.saves, a.readers, a.swap_delay, a.two_renames, timeout=3600)
    res["errors"] = res["errors"][:5]
    print(json.dumps({"saves_asked": a.saves, "readers": a.readers, "swap_delay_s": a.swap_delay,
                      "two_renames": a.two_renames, **res}, indent=1))
