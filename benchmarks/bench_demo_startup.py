"""Start-up of the Gradio demo as a user meets it: seconds from launching `zse-sbir demo` to the
page answering HTTP 200, and to the first answered search (a `gradio_client` search of an example
sketch on the bundled gallery, retried while the page says the photos are still being indexed),
with an empty index cache ("cold": the bundled photos are encoded in the background) and again
with the cache that run wrote ("warm").

    nice -n 19 python benchmarks/bench_demo_startup.py                 # hub_card, demo/gallery
    python benchmarks/bench_demo_startup.py --drop-caches --runs cold cold2 cold3 warm   # as on a new machine
    python benchmarks/bench_demo_startup.py --runs cold warm warm --model DIR --gallery DIR

Each run is a fresh process on 127.0.0.1 with its own Gradio temp folder; `$ZSE_SBIR_CACHE` is a
new empty folder for the first run and kept for the next ones (unless `--cache-dir` is given).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_command(model: str | None = None, gallery: str | None = None) -> list[str]:
    """The installed `zse-sbir demo` entry point (else `python -m zse_hf.cli demo`) with the options."""
    exe = shutil.which("zse-sbir")
    cmd = [exe, "demo"] if exe else [sys.executable, "-m", "zse_hf.cli", "demo"]
    if model:
        cmd += ["--model", model]
    if gallery:
        cmd += ["--gallery", gallery]
    return cmd


def new_client(url: str):
    """A `gradio_client.Client` with generous timeouts (a busy CPU answers slowly; the default
    20 s read timeout would also drop the session's heartbeat, ending it on the server)."""
    from gradio_client import Client

    return Client(url, verbose=False, httpx_kwargs={"timeout": 300})


def example_editor():
    """A `gr.Sketchpad` value holding the first example sketch, as `gradio_client` sends it."""
    from gradio_client import handle_file

    sketch = sorted((REPO / "demo" / "examples").glob("*.png"))[0]
    return {"background": None, "layers": [], "composite": handle_file(str(sketch)), "id": None}


class DemoServer:
    """A `zse-sbir demo` process on 127.0.0.1 with its own Gradio temp folder (`work/gradio`) and
    temp folder (`work/tmp`, where indexes keep unsaved files), stopped (SIGTERM) on exit.

    Args:
        cmd: the demo command without `--port`.
        work: a folder for the log and the temp folders.
        env: extra environment (e.g. `ZSE_SBIR_CACHE`).
    """

    def __init__(self, cmd: list[str], work: Path, env: dict | None = None, label: str = "server"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.cmd = [*cmd, "--port", str(self.port)]
        self.gradio_tmp, self.tmp = work / f"{label}-gradio", work / f"{label}-tmp"
        self.log = work / f"{label}.log"
        self.env = {**os.environ, "GRADIO_TEMP_DIR": str(self.gradio_tmp), "TMPDIR": str(self.tmp),
                    "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = None
        self.started = None

    def __enter__(self) -> DemoServer:
        self.gradio_tmp.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_text(self) -> str:
        """The server's output so far."""
        return self.log.read_text() if self.log.exists() else ""

    def wait_http(self, timeout: float) -> float:
        """Seconds from the start to the page answering HTTP 200."""
        import httpx

        deadline = self.started + timeout
        while time.perf_counter() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no HTTP 200 (exit code {self.proc.poll()}):\n{self.log_text()[-3000:]}")

    def wait_first_search(self, timeout: float) -> tuple[float, int, str]:
        """`(seconds from the start, 'still indexing' answers, status)` of the first answered
        search of an example sketch on the bundled gallery."""
        client = new_client(self.url)
        editor, waits = example_editor(), 0
        try:
            while time.perf_counter() < self.started + timeout:
                status = client.predict(editor, None, "bundled", 5, "ret", 10, api_name="/search")[2]
                if status.startswith("Top"):
                    return time.perf_counter() - self.started, waits, status
                if "Still indexing" not in status:
                    raise RuntimeError(f"unexpected answer: {status}")
                waits += 1
                time.sleep(0.5)
        finally:
            client.close()
        raise RuntimeError(f"no answered search within {timeout} s")

    def rss_bytes(self) -> int:
        """The server process's resident memory."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def temp_bytes(self, which: str = "both") -> int:
        """Bytes of the files in the server's Gradio folder (uploads, pictures), temp folder
        (the indexes' unsaved files) or `"both"`."""
        roots = {"gradio": [self.gradio_tmp], "tmp": [self.tmp], "both": [self.gradio_tmp, self.tmp]}[which]
        total = 0
        for root in roots:
            for folder, _, files in os.walk(root):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(folder, name)).st_size
                    except OSError:
                        pass
        return total


def one_run(args, cache: Path, work: Path, label: str) -> dict:
    """Launch the demo, time HTTP 200 and the first answered search; stop it."""
    with DemoServer(demo_command(args.model, args.gallery), work, {"ZSE_SBIR_CACHE": str(cache)}, label) as server:
        t_http = server.wait_http(args.timeout)
        t_search, waits, status = server.wait_first_search(args.timeout)
        text = server.log_text()
    shutil.rmtree(server.gradio_tmp, ignore_errors=True)
    shutil.rmtree(server.tmp, ignore_errors=True)
    indexed = re.search(r"indexed (\d+) bundled photos in ([\d.]+) s", text)
    return {"run": label, "http200_s": t_http, "first_search_s": t_search, "still_indexing_answers": waits,
            "index": (f"built: {indexed.group(1)} photos in {float(indexed.group(2)):.1f} s" if indexed
                      else "loaded from the cache" if "loaded the bundled gallery index" in text else "?"),
            "status": status}


def drop_disk_caches() -> None:
    """Start the next run as on a machine that has not read these files yet: delete the bytecode
    caches of the package and the demo, and drop the OS page cache (Linux, as root)."""
    for root in (REPO / "zse_hf", REPO / "demo"):
        for folder in root.rglob("__pycache__"):
            shutil.rmtree(folder, ignore_errors=True)
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as err:
        raise SystemExit(f"--drop-caches: cannot drop the page cache ({err}); run as root on Linux") from err


def fmt(seconds: float | None) -> str:
    """Seconds with one decimal, or "timed out"."""
    return "timed out" if seconds is None else f"{seconds:.1f}"


def main() -> None:
    """Run the start-ups and print a Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="passed to `zse-sbir demo --model` (default: its own choice)")
    p.add_argument("--gallery", default=None, help="passed to `zse-sbir demo --gallery`")
    p.add_argument("--runs", nargs="+", default=["cold", "warm"], help="labels; the first uses an empty cache")
    p.add_argument("--cache-dir", default=None, help="$ZSE_SBIR_CACHE for all runs (default: a new empty folder)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run")
    p.add_argument("--drop-caches", action="store_true", help="before each run labelled cold, delete the "
                   "package's bytecode caches and drop the OS page cache (root), as on a fresh machine")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="zse-bench-startup-"))
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    rows = []
    try:
        for label in args.runs:
            if args.drop_caches and label.startswith("cold"):
                drop_disk_caches()
            row = one_run(args, cache, work, label)
            rows.append(row)
            print(f"{label}: HTTP 200 after {fmt(row['http200_s'])} s, first answered search after "
                  f"{fmt(row['first_search_s'])} s ({row['index']})", flush=True)
    finally:
        if not args.cache_dir:
            shutil.rmtree(work, ignore_errors=True)
    cmd = " ".join(demo_command(args.model, args.gallery))
    print(f"\ncommand: {cmd} --port PORT (nice {os.nice(0)}, {os.cpu_count()} CPUs)\n")
    print("| run | HTTP 200 (s) | first answered search (s) | 'still indexing' answers before | bundled index |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {fmt(r['http200_s'])} | {fmt(r['first_search_s'])} | {r['still_indexing_answers']} | "
              f"{r['index']} |")


if __name__ == "__main__":
    main()
