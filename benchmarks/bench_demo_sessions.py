"""Do the demo's user sessions give their resources back? `--sessions` gradio_client sessions each
upload `--photos` photos to "My photos" (distinct JPEGs made from the bundled photos, 640 px),
search them and explain the top hit, stay until all have done so, then leave (close). The
server's resident memory (RSS) and the bytes in its temp folders (Gradio's uploads and the
explanation pictures, plus the indexes' unsaved token files) are sampled every 0.25 s and
reported before (idle, after one warm-up session of the same size came and went), at the peak,
and after the sessions left; the goal is "after" within 10% of "before".

    nice -n 19 python benchmarks/bench_demo_sessions.py                     # 20 x 50 photos
    python benchmarks/bench_demo_sessions.py --sessions 4 --photos 10 --model DIR

The server runs with `GRADIO_HEARTBEAT_INTERVAL=1` so a closed client is noticed within about a
second (Gradio's default of 15 s only delays the same clean-up), and with the index cache in
`--cache-dir` (default: the user's, so a warm bundled index loads at once).
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_demo_startup import REPO, DemoServer, demo_command, example_editor, new_client
from PIL import Image


def make_photos(folder: Path, n: int, seed: int, side: int = 640) -> list[Path]:
    """`n` distinct JPEGs: bundled photos scaled to `side` px with a seeded colour shift."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((REPO / "demo" / "gallery").glob("*.jpg"))
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        with Image.open(sources[(seed * 7 + i) % len(sources)]) as im:
            im = im.convert("RGB")
            scale = side / max(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
        shifted = np.clip(np.asarray(im, dtype=np.int16) + rng.integers(-12, 13, size=3), 0, 255).astype(np.uint8)
        path = folder / f"s{seed:02d}_{i:03d}.jpg"
        Image.fromarray(shifted).save(path, quality=88)
        paths.append(path)
    return paths


class Sampler:
    """Samples a server's RSS and temp bytes in a thread; `peak()` is the largest of each."""

    def __init__(self, server: DemoServer, every: float = 0.25):
        self.server, self.every = server, every
        self.rss, self.disk = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.rss.append(self.server.rss_bytes())
                self.disk.append(self.server.temp_bytes())
            except OSError:
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self) -> tuple[int, int]:
        """(largest RSS, largest temp bytes) sampled."""
        return max(self.rss, default=0), max(self.disk, default=0)


def session(url: str, photos: list[Path], editor) -> tuple:
    """One user: upload and index `photos`, search them, explain the top hit; returns the open
    client (the session stays until it is closed) and its indexing message."""
    from gradio_client import handle_file

    client = new_client(url)
    message, _ = client.predict([handle_file(str(p)) for p in photos], api_name="/index_photos")
    status = client.predict(editor, None, "mine", 5, "ret", 10, api_name="/search")[2]
    client.predict(1, api_name="/explain")
    if not message.startswith("Indexed") or not status.startswith("Top"):
        raise RuntimeError(f"unexpected answers: {message!r}, {status!r}")
    return client, message


def released(server: DemoServer) -> int:
    """Sessions the server has released so far (its log)."""
    return len(re.findall(r"released session \w+", server.log_text()))


def settle(server: DemoServer, expected: int, timeout: float) -> float:
    """Wait until `expected` sessions were released, then 2 s more; seconds waited."""
    start = time.perf_counter()
    while released(server) < expected and time.perf_counter() - start < timeout:
        time.sleep(0.25)
    time.sleep(2)
    return time.perf_counter() - start


def main() -> None:
    """Run the sessions and print a Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--photos", type=int, default=50, help="photos each session uploads")
    p.add_argument("--parallel", type=int, default=4, help="sessions uploading at the same time")
    p.add_argument("--model", default=None, help="passed to `zse-sbir demo --model`")
    p.add_argument("--cache-dir", default=None, help="$ZSE_SBIR_CACHE of the server (default: the user's)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the sessions; later rounds show whether memory keeps growing or levels off")
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="zse-bench-sessions-"))
    env = {"GRADIO_HEARTBEAT_INTERVAL": "1", "ZSE_DEMO_MAX_PHOTOS": str(max(300, args.photos))}
    if args.cache_dir:
        env["ZSE_SBIR_CACHE"] = args.cache_dir
    editor = example_editor()
    try:
        measured = measure(args, work, env, editor)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, *measured)


def measure(args, work: Path, env: dict, editor) -> tuple:
    """Start the server, run the warm-up and the sessions; the numbers for `report`."""
    with DemoServer(demo_command(args.model), work, env) as server:
        server.wait_http(args.timeout)
        server.wait_first_search(args.timeout)  # the bundled index is in
        start_rss, start_disk = server.rss_bytes(), server.temp_bytes()
        settle(server, 1, 60)  # the client that waited for the first search left too
        base = released(server)
        # one session of the same size first: the baseline then includes what the first one
        # allocates for good (the model's kernels for these batch shapes, Gradio's caches)
        warm, _ = session(server.url, make_photos(work / "warmup", args.photos, seed=99), editor)
        warm.close()
        settle(server, base + 1, 60)
        base = released(server)
        before = server.rss_bytes(), server.temp_bytes()
        rounds, peaks = [], []
        for r in range(args.rounds):
            sets = [make_photos(work / f"r{r}user{i:02d}", args.photos, seed=i + 100 * r) for i in range(args.sessions)]
            t0 = time.perf_counter()
            with Sampler(server) as sampler:
                with ThreadPoolExecutor(args.parallel) as pool:
                    done = list(pool.map(lambda photos: session(server.url, photos, editor), sets))
                all_in = time.perf_counter() - t0
                time.sleep(2)
                with_all = server.rss_bytes(), server.temp_bytes(), server.temp_bytes("tmp")  # all in, none working
                for client, _ in done:
                    client.close()
                waited = settle(server, base + args.sessions * (r + 1), 120)
            after = server.rss_bytes(), server.temp_bytes()
            peaks.append(sampler.peak())
            rounds.append((after, all_in, with_all, waited))
        live = re.findall(r"(\d+) live sessions", server.log_text())
        n_released = released(server) - base
    return start_rss, start_disk, before, rounds, peaks, live, n_released


def report(args, start_rss, start_disk, before, rounds, peaks, live, n_released) -> None:
    """Print the table."""
    mb = lambda n: f"{n / 2**20:.1f}"  # noqa: E731
    total = args.sessions * len(rounds)
    print(f"\n{len(rounds)} round(s) of {args.sessions} sessions x {args.photos} photos ({args.parallel} at a time); "
          f"indexed in {', '.join(f'{r[1]:.0f} s' for r in rounds)}; released {n_released} of {total} sessions "
          f"within {max(r[3] for r in rounds):.1f} s of leaving; last log: {live[-1] if live else '?'} live sessions\n")
    print("| when | server RSS (MB) | temp disk (MB) |")
    print("|---|---|---|")
    print(f"| after start (bundled index loaded) | {mb(start_rss)} | {mb(start_disk)} |")
    print(f"| before (idle, after a warm-up session of {args.photos} photos) | {mb(before[0])} | {mb(before[1])} |")
    for i, ((after, _, with_all, _), peak) in enumerate(zip(rounds, peaks, strict=True)):
        tag = f"round {i + 1}: " if len(rounds) > 1 else ""
        print(f"| {tag}peak (sampled every 0.25 s while {args.parallel} sessions at a time indexed) | {mb(peak[0])} | "
              f"{mb(peak[1])} |")
        print(f"| {tag}all {args.sessions} sessions in, idle | {mb(with_all[0])} | {mb(with_all[1])} (of which index "
              f"files {mb(with_all[2])}) |")
        print(f"| {tag}after (all left) | {mb(after[0])} | {mb(after[1])} |")
    after = rounds[-1][0]
    rss_change, disk_change = after[0] / before[0] - 1, (after[1] - before[1]) / max(before[1], 1)
    print(f"\nafter vs before: RSS {rss_change:+.1%}, temp disk {disk_change:+.1%} "
          f"(goal: within 10%: {'met' if rss_change <= 0.10 and disk_change <= 0.10 else 'NOT met'})")
    if len(rounds) > 1:
        steps = [rounds[0][0][0] - before[0]] + [b[0][0] - a[0][0] for a, b in zip(rounds, rounds[1:])]
        print("RSS added by each round: " + ", ".join(f"{mb(d)} MB" for d in steps))


if __name__ == "__main__":
    main()
