"""A small reader of Qt binary resource files (``.rcc``), with no Qt needed.

Layout (as written by Qt's ``rcc -binary``; all numbers big-endian):

* **Header**: magic ``b"qres"``, format version (u32, 1-3), then the offsets (u32) of the
  tree, data and names sections; version 3 adds a u32 of overall flags (``1``: some entries
  are zlib-compressed, ``4``: some are zstd-compressed).
* **Tree**: fixed-size nodes, 14 bytes (version 1) or 22 bytes (version 2+, with a u64
  last-modified time in ms). Node 0 is the root. Each node holds the offset of its name
  (u32) and flags (u16: ``1`` zlib, ``2`` directory, ``4`` zstd); a directory then holds its
  child count (u32) and the index of its first child (u32), a file its territory (u16),
  language (u16) and the offset of its data (u32).
* **Names**: at a name offset, the length in UTF-16 code units (u16), a hash (u32), then
  the name in UTF-16BE.
* **Data**: at a data offset, the stored length (u32) then the stored bytes. A zlib entry is
  ``qCompress`` output (the uncompressed length as u32, then a zlib stream); a zstd entry is
  a zstd frame (read only if the ``zstandard`` package is installed).

[`RccFile.paths`] walks the tree and the names only and never reads an entry's data;
[`RccFile.read`] reads one entry.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"qres"
FLAG_COMPRESSED = 0x01
FLAG_DIRECTORY = 0x02
FLAG_COMPRESSED_ZSTD = 0x04


class RccError(ValueError):
    """The file is not a readable ``.rcc`` file, or an entry is missing."""


@dataclass(frozen=True)
class RccEntry:
    """One file entry of an ``.rcc`` file (no data).

    Attributes:
        path: resource path, ``/``-separated, without the leading ``:/``.
        flags: node flags (``FLAG_COMPRESSED``, ``FLAG_COMPRESSED_ZSTD``).
        data_offset: offset of the entry's data record inside the data section.
    """

    path: str
    flags: int
    data_offset: int

    @property
    def compression(self) -> str:
        """``"zlib"``, ``"zstd"`` or ``"none"``."""
        if self.flags & FLAG_COMPRESSED_ZSTD:
            return "zstd"
        return "zlib" if self.flags & FLAG_COMPRESSED else "none"


class RccFile:
    """Read-only access to one ``.rcc`` file.

    Listing ([`paths`], [`entries`]) reads the header, the tree and the names only; the bytes
    of an entry are read by [`read`] alone.

    Args:
        path: the ``.rcc`` file.

    Raises:
        RccError: bad magic, unknown version, or a section outside the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(24)
        if len(head) < 20 or head[:4] != MAGIC:
            raise RccError(f"{self.path}: not a Qt resource file (no 'qres' magic)")
        self.version, self.tree_offset, self.data_offset, self.names_offset = struct.unpack(">4I", head[4:20])
        if self.version not in (1, 2, 3):
            raise RccError(f"{self.path}: unsupported .rcc format version {self.version}")
        if self.version >= 3:
            if len(head) < 24:
                raise RccError(f"{self.path}: truncated header")
            self.overall_flags = struct.unpack(">I", head[20:24])[0]
        else:
            self.overall_flags = 0
        for name, off in (("tree", self.tree_offset), ("data", self.data_offset), ("names", self.names_offset)):
            if off >= self._size:
                raise RccError(f"{self.path}: {name} section offset {off} is past the end ({self._size} bytes)")
        self._node_size = 14 if self.version == 1 else 22
        self._entries: dict[str, RccEntry] | None = None

    # -- reading structure (never data) ---------------------------------------------------------

    def _read_at(self, f, offset: int, n: int) -> bytes:
        f.seek(offset)
        b = f.read(n)
        if len(b) != n:
            raise RccError(f"{self.path}: truncated at offset {offset}")
        return b

    def _name(self, f, offset: int) -> str:
        (length,) = struct.unpack(">H", self._read_at(f, self.names_offset + offset, 2))
        return self._read_at(f, self.names_offset + offset + 6, 2 * length).decode("utf-16-be")

    def _node(self, f, index: int) -> tuple[int, int, int, int]:
        """``(name_offset, flags, a, b)``: for a directory ``a`` = child count and ``b`` = first child
        index; for a file ``a`` = locale (territory << 16 | language) and ``b`` = data offset."""
        raw = self._read_at(f, self.tree_offset + index * self._node_size, 14)
        name_off, flags = struct.unpack(">IH", raw[:6])
        if flags & FLAG_DIRECTORY:
            count, first = struct.unpack(">II", raw[6:14])
            return name_off, flags, count, first
        territory, language, data_off = struct.unpack(">HHI", raw[6:14])
        return name_off, flags, territory << 16 | language, data_off

    def entries(self) -> dict[str, RccEntry]:
        """All file entries by resource path (tree order); no entry data is read."""
        if self._entries is None:
            out: dict[str, RccEntry] = {}
            with open(self.path, "rb") as f:
                _, flags, count, first = self._node(f, 0)
                if not flags & FLAG_DIRECTORY:
                    raise RccError(f"{self.path}: the root node is not a directory")
                stack = [("", count, first)]
                seen = 0
                while stack:
                    prefix, count, first = stack.pop()
                    for i in range(first, first + count):
                        seen += 1
                        if seen > self._size:  # a cyclic tree in a corrupt file
                            raise RccError(f"{self.path}: corrupt tree")
                        name_off, flags, a, b = self._node(f, i)
                        path = prefix + self._name(f, name_off)
                        if flags & FLAG_DIRECTORY:
                            stack.append((path + "/", a, b))
                        else:
                            out.setdefault(path, RccEntry(path, flags, b))
            self._entries = dict(sorted(out.items()))
        return self._entries

    def paths(self) -> list[str]:
        """All file resource paths (sorted, no leading ``:/``); no entry data is read."""
        return list(self.entries())

    def __contains__(self, path: str) -> bool:
        return path.lstrip(":/") in self.entries()

    # -- reading data ---------------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        """The uncompressed bytes of the entry at resource ``path`` (``:/`` prefix optional).

        Raises:
            RccError: no such entry, a corrupt record, or a zstd entry without ``zstandard``.
        """
        entry = self.entries().get(path.lstrip(":/"))
        if entry is None:
            raise RccError(f"{self.path}: no resource {path!r}")
        with open(self.path, "rb") as f:
            (stored,) = struct.unpack(">I", self._read_at(f, self.data_offset + entry.data_offset, 4))
            blob = self._read_at(f, self.data_offset + entry.data_offset + 4, stored)
        if entry.flags & FLAG_COMPRESSED_ZSTD:
            try:
                import zstandard
            except ImportError as err:
                raise RccError(f"{path!r} is zstd-compressed: install the `zstandard` package") from err
            return zstandard.ZstdDecompressor().decompress(blob, max_output_size=1 << 30)
        if entry.flags & FLAG_COMPRESSED:
            if len(blob) < 4:
                raise RccError(f"{self.path}: truncated zlib record for {path!r}")
            (expected,) = struct.unpack(">I", blob[:4])  # qCompress: uncompressed size first
            try:
                data = zlib.decompress(blob[4:])
            except zlib.error as err:
                raise RccError(f"{self.path}: corrupt zlib data for {path!r}: {err}") from err
            if len(data) != expected:
                raise RccError(f"{self.path}: {path!r} decompressed to {len(data)} bytes, header says {expected}")
            return data
        return blob


__all__ = ["FLAG_COMPRESSED", "FLAG_COMPRESSED_ZSTD", "FLAG_DIRECTORY", "RccEntry", "RccError", "RccFile"]
