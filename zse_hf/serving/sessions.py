"""Per-user sessions of a server: each one's uploaded gallery, last query and results, and the files
it brought (uploads) or made (explanation pictures), capped ([`default_limits`]) and deleted when
the session ends ([`SessionRegistry.release`]), when it has been idle for `SESSION_TTL_S`, or, for
uploads no session claims, after `ORPHAN_UPLOAD_AGE_S`.

What the web framework keeps of its own (where pictures are served from, its cached copies of
bundled files, its lists of received files) reaches the registry through a [`FileHost`].
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..retrieval import ZseIndex
from .runtime import PICTURE_PREFIX, ModelThread, env_number, trim_memory
from .uploads import UploadLimits, in_upload_area, remove_uploads, upload_roots

log = logging.getLogger("zse_demo")

# one user's "My photos": at most this many files, megapixels (from the headers) and megabytes
MAX_USER_PHOTOS = int(env_number("ZSE_DEMO_MAX_PHOTOS", 300))
MAX_USER_MEGAPIXELS = env_number("ZSE_DEMO_MAX_MEGAPIXELS", 1000)
MAX_USER_MEGABYTES = env_number("ZSE_DEMO_MAX_MEGABYTES", 200)
SESSION_TTL_S = 6 * 3600  # a session's state (and files) are dropped after this long without use
ORPHAN_UPLOAD_AGE_S = 600  # uploads no session has used for this long are deleted
KEPT_PICTURE_SETS = 2  # explanation picture sets kept per session (the newest)
KEPT_SKETCHES = 20  # uploaded sketches and drawings kept per session (the newest)
PICTURE_KEYS = ("correspondence", "attention", "synthesis", "kernel")
IDLE_SWEEP_S = 60  # idle sessions are looked for at most this often


def default_limits() -> UploadLimits:
    """Caps on one user's photos: `$ZSE_DEMO_MAX_PHOTOS` (300), `$ZSE_DEMO_MAX_MEGAPIXELS` (1000),
    `$ZSE_DEMO_MAX_MEGABYTES` (200), read at import."""
    return UploadLimits(MAX_USER_PHOTOS, MAX_USER_MEGAPIXELS, MAX_USER_MEGABYTES)


@dataclass
class Session:
    """One user's data: their uploaded gallery, last query and results, and the files they
    brought (uploads) or made (explanation pictures), deleted when the session ends."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    user_index: ZseIndex | None = None
    user_paths: dict = field(default_factory=dict)  # id -> uploaded file path
    sketch: Image.Image | None = None
    hits: list = field(default_factory=list)  # dicts, best first
    key: str | None = None  # the front end's session key (Gradio's session hash)
    photo_files: set = field(default_factory=set)  # uploaded photos in use
    sketch_files: dict = field(default_factory=dict)  # uploaded sketches and drawings, newest last
    picture_sets: list = field(default_factory=list)  # explanation pictures written, oldest first
    picture_count: int = 0
    last_used: float = field(default_factory=time.monotonic)
    released: bool = False

    def files(self) -> set:
        """The uploaded files (real paths) this session uses."""
        return self.photo_files | set(self.sketch_files)


class FileHost:
    """What a front end keeps of its own files, as the registry needs it. This default (no web
    framework) writes pictures under the upload folder and has nothing to protect or forget."""

    def picture_dir(self) -> Path:
        """The folder explanation pictures are written under (a front end serves them from there)."""
        return upload_roots()[0]

    def protected(self) -> set[str]:
        """Real paths of files never deleted (e.g. the framework's cached copies of bundled files)."""
        return set()

    def forget(self, paths: set[str]) -> None:
        """`paths` (real paths) were deleted: drop them from the front end's own lists."""

    def uploads(self) -> set[str]:
        """The front end's (mutable) set of files it received; gone ones are discarded from it and
        old ones no session uses are deleted."""
        return set()


class SessionRegistry:
    """The live sessions by key, and everything that frees them.

    Args:
        run: the [`ModelThread`]; a session's index is closed there (not while a search reads it).
        host: the front end's files (default [`FileHost`]).
    """

    def __init__(self, run: ModelThread, host: FileHost | None = None):
        self.run = run
        self.host = host or FileHost()
        self.by_key: dict[str, Session] = {}
        self._lock = threading.RLock()
        self._last_idle_sweep = time.monotonic()
        self._picture_root: Path | None = None

    def attach(self, host: FileHost) -> None:
        """Use `host` from now on (e.g. once the page is built); the picture folder follows it."""
        self.host, self._picture_root = host, None

    # ------------------------------------------------------------------ lifecycle

    def get(self, key: str | None = None, value: Session | None = None) -> Session:
        """The session registered under `key`, else `value` (a page's own copy), else a new one
        (registered when there is a key); marks it used and releases idle sessions."""
        with self._lock:
            session = self.by_key.get(key) if key else None
            if session is None:
                session = value if isinstance(value, Session) else Session()
                session.released = False  # a page that came back after its session was released
                if key:
                    session.key = key
                    self.by_key[key] = session
            session.last_used = time.monotonic()
        self._release_idle()
        return session

    def live(self) -> int:
        """Number of registered (not yet released) sessions."""
        with self._lock:
            return len(self.by_key)

    def end(self, key: str | None, why: str = "page closed") -> None:
        """Release the session registered under `key`, if any."""
        with self._lock:
            session = self.by_key.get(key) if key else None
        if session is not None:
            self.release(session, why)

    def release_later(self, session, why: str = "state expired") -> None:
        """Release `session` (when it is a live [`Session`]) in a new thread: for callers that must not wait."""
        if isinstance(session, Session) and not session.released:
            threading.Thread(target=self.release, args=(session, why), daemon=True).start()

    def _release_idle(self) -> None:
        """Release sessions unused for `SESSION_TTL_S` (checked at most every `IDLE_SWEEP_S`): a
        bound even when the front end never reports a session's end."""
        now = time.monotonic()
        if now - self._last_idle_sweep < IDLE_SWEEP_S:
            return
        self._last_idle_sweep = now
        with self._lock:
            idle = [s for s in self.by_key.values() if now - s.last_used > SESSION_TTL_S]
        for session in idle:
            self.release(session, "idle")

    def release(self, session: Session, why: str = "ended") -> None:
        """Free a session: close (and delete) its photo index, delete its uploads that no other
        session uses, its explanation pictures, and forget its query and results."""
        with self._lock:
            if session.key and self.by_key.get(session.key) is session:
                del self.by_key[session.key]
            session.released = True
            index, session.user_index = session.user_index, None
            files = session.files()
            session.photo_files, session.sketch_files = set(), {}
            pictures = {p for paths in session.picture_sets for p in paths}
            session.picture_sets = []
            n_photos = len(session.user_paths)
            session.user_paths, session.hits, session.sketch = {}, [], None
        if index is not None:
            self.run(index.close)  # not while a search reads it
        n_files, n_bytes = self.drop_files(files)
        shutil.rmtree(self.picture_root() / session.id, ignore_errors=True)
        self._forget(pictures)
        n_orphans, _ = self.sweep_orphans()
        trim_memory()
        log.info("released session %s (%s): its index of %d photos, %d uploaded files (%.0f KB), its pictures%s; "
                 "%d live sessions", session.id, why, n_photos, n_files, n_bytes / 1024,
                 f", {n_orphans} unused uploads" if n_orphans else "", self.live())

    # ------------------------------------------------------------------ files

    def files_in_use(self) -> set:
        """Uploaded files (real paths) some live session uses."""
        with self._lock:
            return set().union(*(s.files() for s in self.by_key.values()))

    def drop_files(self, files) -> tuple[int, int]:
        """Delete those of `files` (real paths) that no live session uses; `(files, bytes)` removed."""
        unused = set(files) - self.files_in_use()
        if not unused:
            return 0, 0
        removed = remove_uploads(unused, keep=self.host.protected())
        self._forget(unused)
        return removed

    def _forget(self, paths) -> None:
        if paths:
            self.host.forget({os.path.realpath(p) for p in paths})

    def sweep_orphans(self) -> tuple[int, int]:
        """Delete uploads older than `ORPHAN_UPLOAD_AGE_S` that no session uses (uploaded and
        never passed to a handler, e.g. by a client that left); `(files, bytes)` removed."""
        now, old = time.time(), set()
        received = self.host.uploads()
        for path in list(received):
            try:
                st = os.stat(path)
            except OSError:
                received.discard(path)
                continue
            if now - max(st.st_mtime, st.st_ctime) > ORPHAN_UPLOAD_AGE_S:
                old.add(os.path.realpath(path))
        return self.drop_files(old) if old else (0, 0)

    def track(self, session: Session, kind: str, *paths) -> None:
        """Record uploaded files (`kind` "photo" or "sketch") as used by `session`; files outside
        the upload folder are ignored, and a session keeps its `KEPT_SKETCHES` newest sketches."""
        real = [os.path.realpath(p) for p in paths if p and in_upload_area(p)]
        if not real:
            return
        dropped = set()
        with self._lock:
            if kind == "photo":
                session.photo_files.update(real)
                return
            for p in real:  # newest last
                session.sketch_files.pop(p, None)
                session.sketch_files[p] = None
            while len(session.sketch_files) > KEPT_SKETCHES:
                oldest = next(iter(session.sketch_files))
                del session.sketch_files[oldest]
                dropped.add(oldest)
        if dropped:
            self.drop_files(dropped - set(real))

    def set_user_gallery(self, session: Session, index: ZseIndex | None, mapping: dict, files: set) -> bool:
        """Make `index` (photo id -> file in `mapping`, uploads `files`) the session's gallery;
        the previous index is closed and files no longer used are deleted.

        Returns:
            bool: False (and nothing kept) when the session was released meanwhile.
        """
        with self._lock:
            if session.released:
                to_close, to_drop, kept = index, set(files), False
            else:
                to_close = session.user_index if session.user_index is not index else None
                to_drop = session.photo_files - set(files)
                session.user_index, session.user_paths, session.photo_files = index, mapping, set(files)
                kept = True
        if to_close is not None:
            self.run(to_close.close)
        self.drop_files(to_drop)
        return kept

    # ------------------------------------------------------------------ pictures

    def picture_root(self) -> Path:
        """`<host's picture folder>/zse-demo-<pid>`: explanation pictures, one folder per session;
        removed at exit."""
        if self._picture_root is None:
            self._picture_root = Path(self.host.picture_dir()) / f"{PICTURE_PREFIX}{os.getpid()}"
            atexit.register(shutil.rmtree, self._picture_root, True)
        return self._picture_root

    def write_pictures(self, session: Session, pictures: dict[str, Image.Image]) -> list[str]:
        """Save the four explanation pictures (`PICTURE_KEYS`) as PNGs in the session's folder;
        older sets than the newest `KEPT_PICTURE_SETS` are deleted.

        Returns:
            list[str]: the four PNG paths, in `PICTURE_KEYS` order.
        """
        folder = self.picture_root() / session.id
        folder.mkdir(parents=True, exist_ok=True)
        session.picture_count += 1
        paths = []
        for key in PICTURE_KEYS:
            path = folder / f"{session.picture_count:04d}-{key}.png"
            pictures[key].save(path)
            paths.append(str(path))
        with self._lock:
            session.picture_sets.append(paths)
            old = session.picture_sets[:-KEPT_PICTURE_SETS]
            del session.picture_sets[:-KEPT_PICTURE_SETS]
            released = session.released
        if released:  # the session ended while this was drawn
            shutil.rmtree(folder, ignore_errors=True)
        stale = {p for paths_ in old for p in paths_}
        for p in stale:
            Path(p).unlink(missing_ok=True)
        self._forget(stale)
        return paths


__all__ = ["FileHost", "KEPT_PICTURE_SETS", "MAX_USER_MEGABYTES", "MAX_USER_MEGAPIXELS", "MAX_USER_PHOTOS",
           "ORPHAN_UPLOAD_AGE_S", "PICTURE_KEYS", "SESSION_TTL_S", "Session", "SessionRegistry", "default_limits"]
