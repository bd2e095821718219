"""What a layer tar holds that deserves a look before it becomes part of an engine's image store.

A set can be consistent (every hash matches) and still carry a layer with device nodes (``/dev/mem`` 0666
gives a container the host's memory when run privileged), setuid or setgid files, or entry names that are
absolute or climb out with ``..``. ``TarScanner`` reads the tar headers as the decompressed layer streams
past (no extraction, nothing buffered beyond one header) and lists such entries; verify --deep and load
report them, and ``--refuse-devices`` turns device nodes into a refusal.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Any

BLOCK = 512
MAX_LISTED = 1000  # entries listed per kind and layer; the counts go on
_MAX_META = 1 << 20  # a long-name or pax header larger than this is not read (its entry is still counted)


@dataclass(frozen=True)
class ContentEntry:
    """One noteworthy entry: ``kind`` is device, setuid, setgid or path (absolute or with ``..``)."""

    layer: int
    kind: str
    name: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "kind": self.kind, "name": self.name, "detail": self.detail}


@dataclass(frozen=True)
class ContentSummary:
    entries: tuple[ContentEntry, ...] = ()
    counts: tuple[tuple[str, int], ...] = ()  # kind -> how many, listed or not

    def count(self, kind: str) -> int:
        return dict(self.counts).get(kind, 0)

    def describe(self) -> str:
        if not self.counts:
            return "layer content: no device nodes, setuid/setgid files or unsafe paths"
        words = {"device": "device node(s)", "setuid": "setuid file(s)", "setgid": "setgid file(s)",
                 "path": "absolute or '..' path(s)", "unreadable": "layer(s) not readable as tar"}
        return "layer content: " + ", ".join(f"{n} {words.get(k, k)}" for k, n in self.counts)

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "entries": [e.to_json() for e in self.entries]}


def summarize(scanners: list["TarScanner"]) -> ContentSummary:
    counts: dict[str, int] = {}
    entries: list[ContentEntry] = []
    for scanner in scanners:
        entries += scanner.entries
        for kind, n in scanner.counts.items():
            counts[kind] = counts.get(kind, 0) + n
    return ContentSummary(tuple(entries), tuple(sorted(counts.items())))


def _number(field: bytes, default: int | None = None) -> int:
    """An octal (or GNU base-256) header number; ValueError when unreadable and no ``default`` is given."""
    if field and field[0] & 0x80:  # GNU base-256 for large values
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        if default is None:
            raise
        return default


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class TarScanner:
    """Fed the bytes of one layer tar in any chunks; collects noteworthy entries."""

    def __init__(self, layer: int) -> None:
        self.layer = layer
        self.entries: list[ContentEntry] = []
        self.counts: dict[str, int] = {}
        self._buffer = b""
        self._skip = 0  # content bytes (padded) still to pass
        self._meta: tuple[bytes, int] | None = None  # (type, bytes wanted) of a long-name/pax block being read
        self._long_name: str | None = None
        self._pax_path: str | None = None
        self._ended = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view) and not self._ended:
            if self._skip:
                step = min(self._skip, len(view))
                if self._meta is not None:
                    self._buffer += bytes(view[:step])
                self._skip -= step
                view = view[step:]
                if not self._skip and self._meta is not None:
                    self._end_meta()
                continue
            want = BLOCK - len(self._buffer)
            self._buffer += bytes(view[:want])
            view = view[want:]
            if len(self._buffer) == BLOCK:
                header, self._buffer = self._buffer, b""
                self._header(header)

    def _header(self, header: bytes) -> None:
        if header == b"\0" * BLOCK:
            return  # end-of-archive blocks (two); anything after them is padding
        try:
            if _number(header[148:156]) != sum(header[:148]) + 8 * 32 + sum(header[156:]):
                raise ValueError("header checksum")
            size = _number(header[124:136])
        except ValueError:
            # Not a tar header where one should be: the engine will refuse this layer; say so, stop scanning.
            self._add("unreadable", "", "the layer is not a tar archive from here on")
            self._ended = True
            return
        kind = header[156:157]
        padded = -(-size // BLOCK) * BLOCK
        if kind in (b"L", b"x", b"K"):
            self._skip = padded
            self._meta = (kind, size) if size <= _MAX_META else None
            return
        name = self._long_name or self._pax_path or self._name(header)
        self._long_name = self._pax_path = None
        mode = _number(header[100:108], 0)
        if kind in (b"3", b"4"):
            major, minor = _number(header[329:337], 0), _number(header[337:345], 0)
            what = "character" if kind == b"3" else "block"
            self._add("device", name, f"{what} device {major}:{minor}, mode {stat.S_IMODE(mode):04o}")
        if kind in (b"0", b"\0", b"7", b"") and mode & stat.S_ISUID:
            self._add("setuid", name, f"mode {stat.S_IMODE(mode):04o}")
        elif kind in (b"0", b"\0", b"7", b"") and mode & stat.S_ISGID:
            self._add("setgid", name, f"mode {stat.S_IMODE(mode):04o}")
        if _unsafe(name):
            self._add("path", name, "absolute" if name.startswith("/") else "climbs out with ..")
        if kind == b"1":
            target = _text(header[157:257])
            if _unsafe(target):
                self._add("path", name, f"hard link to {target}")
        self._skip = padded if kind not in (b"1", b"2", b"3", b"4", b"5", b"6") else 0

    def _name(self, header: bytes) -> str:
        name = _text(header[0:100])
        if header[257:262] == b"ustar":
            prefix = _text(header[345:500])
            if prefix:
                name = prefix + "/" + name
        return name

    def _end_meta(self) -> None:
        assert self._meta is not None
        kind, size = self._meta
        data, self._buffer, self._meta = self._buffer[:size], b"", None
        if kind == b"L":
            self._long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind == b"x":
            for record in _pax_records(data):
                if record[0] == b"path":
                    self._pax_path = record[1].decode("utf-8", "surrogateescape")

    def _add(self, kind: str, name: str, detail: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= MAX_LISTED:
            self.entries.append(ContentEntry(self.layer, kind, name, detail))


def _unsafe(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/")


def _pax_records(data: bytes) -> list[tuple[bytes, bytes]]:
    """'LEN key=value\\n' records; a malformed record ends the list."""
    out = []
    while data:
        length, _, _ = data.partition(b" ")
        try:
            n = int(length)
        except ValueError:
            break
        record, data = data[:n], data[n:]
        key, _, value = record[len(length) + 1:].rstrip(b"\n").partition(b"=")
        out.append((key, value))
        if n <= 0:
            break
    return out
