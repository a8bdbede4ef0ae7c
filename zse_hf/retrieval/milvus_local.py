"""A local Milvus standalone server from the `milvus` package on PyPI (Milvus 2.3.x, with embedded
etcd and RocksMQ), for tests and benchmarks: a real server process that can be stopped, killed
and restarted on its data folder.

```python
>>> from zse_hf.retrieval.milvus_local import LocalMilvusServer
>>> with LocalMilvusServer("/tmp/milvus-data") as server:
...     store = ZseMilvusStore.build(model, processor, "photos/", uri=server.uri)
```

Command line (runs until Ctrl+C): `python -m zse_hf.retrieval.milvus_local DATA_DIR`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# faster recovery after a kill: the dead process' session lease expires sooner (default 30 s)
DEFAULT_CONFIG = {"common.session.ttl": 10}


def _milvus():
    try:
        import milvus
    except ImportError as err:
        raise ModuleNotFoundError("a local Milvus server needs the `milvus` package (Linux and macOS): "
                                  "pip install 'zse-sbir[milvus]'", name="milvus") from err
    return milvus


class LocalMilvusServer:
    """One Milvus standalone process on `data_dir` (its binaries, configuration, logs and data).

    Args:
        data_dir: the server's folder; a restarted server finds its collections there.
        start_timeout: seconds to wait for the server to answer its health check.
        config: extra `milvus.yaml` settings by dotted key (default: a 10 s session lease).

    Attributes:
        uri: `http://127.0.0.1:PORT` while running; pid: the server's process id.
    """

    def __init__(self, data_dir: str | os.PathLike, start_timeout: float = 180.0, config: dict | None = None):
        self.data_dir = Path(data_dir).absolute()
        self.start_timeout = float(start_timeout)
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.server_proc is not None

    @property
    def pid(self) -> int | None:
        return self._server.server_proc.pid if self.running else None

    @property
    def uri(self) -> str:
        if not self.running:
            raise ValueError("the Milvus server is not running")
        return f"http://127.0.0.1:{self._server.listen_port}"

    def start(self, attempts: int = 2) -> LocalMilvusServer:
        """Start the server and wait until it is healthy (a failed start, e.g. a port taken in
        the meantime, is retried once). Returns self."""
        milvus = _milvus()
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            config = milvus.MilvusServerConfig(data_dir=str(self.data_dir))
            for key, value in self.config.items():
                config.set(key, value)
            server = milvus.MilvusServer(config, wait_for_started=False)
            try:
                server.start()
                self._server = server
                self._wait_healthy(server)
                return self
            except (RuntimeError, TimeoutError, OSError) as err:
                self._forget(kill=True)
                if attempt + 1 == attempts:
                    log = self.data_dir / "logs" / "milvus-stderr.log"
                    raise RuntimeError(f"Milvus server in {self.data_dir} did not start: {err} (see {log})") from None
                time.sleep(2.0)
        return self

    def _wait_healthy(self, server) -> None:
        """Until the server's health check says OK; RuntimeError when the process exits first,
        TimeoutError after `start_timeout`."""
        url = f"http://127.0.0.1:{server.webservice_port}/healthz"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if server.server_proc.poll() is not None:
                raise RuntimeError(f"the process exited with code {server.server_proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if b"OK" in resp.read():
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"no healthy answer in {self.start_timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL after `timeout` seconds)."""
        if not self.running:
            return
        proc = self._server.server_proc
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        self._forget()

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is flushed or closed)."""
        if not self.running:
            return
        proc = self._server.server_proc
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self._forget()

    def restart(self) -> LocalMilvusServer:
        """Start a new server process on the same data folder (after `stop` or `kill`)."""
        self._forget(kill=True)
        return self.start()

    def _forget(self, kill: bool = False) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        proc = server.server_proc
        if kill and proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        server.server_proc = None  # so its own stop() (also run by __del__) has nothing left to do
        for fd in server.proc_fds.values():
            fd.close()
        server.proc_fds.clear()

    def __enter__(self) -> LocalMilvusServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zse_hf.retrieval.milvus_local",
                                description="Run a local Milvus standalone server (the `milvus` package) until Ctrl+C.")
    p.add_argument("data_dir")
    args = p.parse_args(argv)
    server = LocalMilvusServer(args.data_dir).start()
    print(f"Milvus {_milvus().__version__} serving at {server.uri} (pid {server.pid}, data {server.data_dir})")
    try:
        while server.running and server._server.server_proc.poll() is None:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
