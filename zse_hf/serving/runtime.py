"""The serving process: one thread for every model call, glibc heap tuning, and clean-ups of what
a killed server left behind.

- [`ModelThread`] runs model calls one at a time on one dedicated thread (one heap arena, one
  OpenMP team) and hands freed heap back after each ([`trim_memory`]);
- [`tune_heap`] caps glibc's heap arenas and fixes its mmap threshold;
- [`remove_stale_picture_dirs`] deletes explanation-picture folders of processes that are gone;
- [`exit_on_signal`]: a SIGTERM handler that exits through the clean-ups.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from ..retrieval.token_store import pid_alive

PICTURE_PREFIX = "zse-demo-"  # `<upload folder>/zse-demo-<pid>`: one serving process's pictures
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc mallopt parameters


def env_number(name: str, default: float) -> float:
    """`$name` as a positive number (float), else `default`."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library (loaded once), or None where there is no `libc.so.6`."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def trim_memory() -> None:
    """Give freed heap memory back to the system (glibc `malloc_trim`; nothing elsewhere). Each
    thread allocates in its own heap arena, which otherwise keeps its high-water mark."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def tune_heap(arenas: int = 2, mmap_threshold: int = 1 << 20) -> bool:
    """Cap glibc's heap arenas at `arenas` and serve blocks of `mmap_threshold` bytes and more
    (image and activation buffers) from mmap, given back the moment they are freed; a fixed
    threshold also stops glibc raising it after each large free, which left later buffers on the
    heap. Environment variables `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` win.

    Returns:
        bool: False off glibc (nothing changed).
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, int(arenas))
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
    return True


class ModelThread:
    """Runs every model call on one dedicated thread, one call at a time. It serialises them as a
    lock would, and keeps the tensors' heap arena and torch's OpenMP team on that one thread
    instead of one per web-server worker thread (each keeps its own high-water mark)."""

    def __init__(self, name: str = "zse-model"):
        from concurrent.futures import ThreadPoolExecutor

        self._ident: int | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=self._started)

    def _started(self) -> None:
        self._ident = threading.get_ident()

    def __call__(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)` on the model thread; returns its result or raises its error.
        A call made from the model thread itself runs in place."""
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        try:
            return self._pool.submit(fn, *args, **kwargs).result()
        finally:
            trim_memory()


def remove_stale_picture_dirs(root: str | os.PathLike) -> list[Path]:
    """Delete `root/zse-demo-<pid>` folders (explanation pictures) whose process is gone.

    Returns:
        list[Path]: the folders removed.
    """
    removed = []
    try:
        entries = list(Path(root).iterdir())
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name[len(PICTURE_PREFIX):]
        if entry.name.startswith(PICTURE_PREFIX) and pid.isdigit() and int(pid) != os.getpid() \
                and not pid_alive(int(pid)) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def exit_on_signal(signum, frame) -> None:
    """SIGTERM handler: exit (code 128 + `signum`) through the clean-ups; a second signal during
    them is ignored, not raised inside an atexit callback (SIGKILL still ends the process)."""
    signal.signal(signum, signal.SIG_IGN)
    sys.exit(128 + signum)


__all__ = ["ModelThread", "PICTURE_PREFIX", "env_number", "exit_on_signal", "remove_stale_picture_dirs",
           "trim_memory", "tune_heap"]
