"""The demo under many users: N concurrent `gradio_client` users, each doing `--rounds` rounds of
a search (an example sketch on the bundled gallery, the model's default ranking) followed by an
explanation of the top hit, for each N in `--users`. Reports requests per second, p50/p95
latency of each request (submit to result, queue wait included), the largest queue position a
user was shown (the model runs one event at a time, the others wait in Gradio's queue and see
their place) and the server's peak resident memory.

    nice -n 19 python benchmarks/bench_demo_load.py --users 1 4 12
    python benchmarks/bench_demo_load.py --users 4 --rounds 5 --model DIR

The server is one `zse-sbir demo` process on 127.0.0.1 with the index cache in `--cache-dir`
(default: the user's, so a warm bundled index loads at once).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from bench_demo_sessions import Sampler
from bench_demo_startup import REPO, DemoServer, demo_command, new_client


def timed(client, *args, api_name: str, timeout: float) -> tuple[float, int, object]:
    """`(seconds, largest queue position shown (1 = next), result)` of one request."""
    from gradio_client.utils import Status

    start = time.perf_counter()
    job = client.submit(*args, api_name=api_name)
    rank = 0
    while not job.done():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{api_name} took over {timeout} s")
        status = job.status()
        if status.code == Status.IN_QUEUE and status.rank is not None:
            rank = max(rank, int(status.rank) + 1)  # the server counts from 0
        time.sleep(0.05)
    result = job.result()
    return time.perf_counter() - start, rank, result


def user(url: str, sketches: list[str], rounds: int, timeout: float, out: dict, lock: threading.Lock) -> None:
    """One user: `rounds` x (search, explain #1); latencies and queue positions go to `out`."""
    from gradio_client import handle_file

    client = new_client(url)
    try:
        for i in range(rounds):
            editor = {"background": None, "layers": [], "composite": handle_file(sketches[i % len(sketches)]),
                      "id": None}
            seconds, rank, result = timed(client, editor, None, "bundled", 10, "ret", 10, api_name="/search",
                                          timeout=timeout)
            if not result[2].startswith("Top"):
                raise RuntimeError(f"search answered {result[2]!r}")
            with lock:
                out["search"].append(seconds)
                out["rank"] = max(out["rank"], rank)
            seconds, rank, result = timed(client, 1, api_name="/explain", timeout=timeout)
            if not str(result[-1]).startswith("**Why #1"):
                raise RuntimeError(f"explain answered {result[-1]!r}")
            with lock:
                out["explain"].append(seconds)
                out["rank"] = max(out["rank"], rank)
    finally:
        client.close()


def run_level(server: DemoServer, n: int, rounds: int, timeout: float) -> dict:
    """N users at once; their numbers."""
    sketches = [str(p) for p in sorted((REPO / "demo" / "examples").glob("*.png"))]
    out, lock, errors = {"search": [], "explain": [], "rank": 0}, threading.Lock(), []

    def run(i):
        try:
            user(server.url, sketches[i % len(sketches):] + sketches[:i % len(sketches)], rounds, timeout, out, lock)
        except Exception as err:  # noqa: BLE001 - reported in the table
            errors.append(f"{type(err).__name__}: {err}")

    with Sampler(server) as sampler:
        start = time.perf_counter()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    requests = len(out["search"]) + len(out["explain"])
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    return {"users": n, "requests": requests, "wall": wall, "rps": requests / wall,
            "search_p50": pct(out["search"], 50), "search_p95": pct(out["search"], 95),
            "explain_p50": pct(out["explain"], 50), "explain_p95": pct(out["explain"], 95),
            "max_rank": out["rank"], "rss_peak": sampler.peak()[0], "errors": errors}


def main() -> None:
    """Run each level and print a Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, nargs="+", default=[1, 4, 12])
    p.add_argument("--rounds", type=int, default=3, help="search + explain rounds per user")
    p.add_argument("--model", default=None, help="passed to `zse-sbir demo --model`")
    p.add_argument("--cache-dir", default=None, help="$ZSE_SBIR_CACHE of the server (default: the user's)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per request (and for the start)")
    args = p.parse_args()

    env = {"ZSE_SBIR_CACHE": args.cache_dir} if args.cache_dir else {}
    rows = []
    with DemoServer(demo_command(args.model), Path(tempfile.mkdtemp(prefix="zse-bench-load-")), env) as server:
        server.wait_http(args.timeout)
        server.wait_first_search(args.timeout)
        idle_rss = server.rss_bytes()
        for n in args.users:
            row = run_level(server, n, args.rounds, args.timeout)
            rows.append(row)
            print(f"{n} users: {row['requests']} requests in {row['wall']:.1f} s"
                  + (f"; errors: {row['errors'][:3]}" if row["errors"] else ""), flush=True)
    print(f"\nserver: {' '.join(demo_command(args.model))}; idle RSS {idle_rss / 2**20:.0f} MB; "
          f"{args.rounds} rounds of search + explain per user\n")
    print("| users | requests | wall (s) | requests/s | search p50 / p95 (s) | explain p50 / p95 (s) | "
          "largest queue position shown | server RSS peak (MB) | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['users']} | {r['requests']} | {r['wall']:.1f} | {r['rps']:.2f} | "
              f"{r['search_p50']:.2f} / {r['search_p95']:.2f} | {r['explain_p50']:.2f} / {r['explain_p95']:.2f} | "
              f"{r['max_rank']} | {r['rss_peak'] / 2**20:.0f} | {len(r['errors'])} |")


if __name__ == "__main__":
    main()
