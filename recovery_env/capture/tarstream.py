"""An incremental tar stream parser: fed an archive's bytes chunk by chunk, it reports each member's header facts
and the SHA-256 of its content without copying the content (memoryview slices go straight to hashlib, which
releases the GIL for large updates).

It reads what GNU tar writes with ``--format=pax`` (pax 'x' and global 'g' headers, xattrs as ``SCHILY.xattr.*``,
SELinux labels as ``RHT.security.selinux``, sparse files in the pax formats 1.0, 0.1 and 0.0) and the GNU and
ustar variants (GNU long names 'L'/'K', base-256 numbers, old GNU sparse 'S', the ustar name prefix), with the
semantics of Python's :mod:`tarfile`: names decoded as UTF-8 with undecodable bytes as surrogate escapes, a
member's fields replaced by its pax records, the content of a sparse file in its expanded form (holes read as
zeros).  Unlike :mod:`tarfile`, a damaged header is an error, never a silent end of the archive.

Standard library only (the capture runs in the boot media too).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from recovery_env.errors import BackupSetError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
ZEROS = memoryview(bytes(1 << 20))  # fed to the digest for the holes of sparse files

PAX_TYPES = frozenset({b"x", b"X"})  # a pax header for the next member (X: Solaris)
PAX_GLOBAL = b"g"
GNU_LONGNAME = b"L"
GNU_LONGLINK = b"K"
GNU_SPARSE = b"S"
DIRTYPE = b"5"
REGULAR = frozenset({b"0", b"\0", b"7", GNU_SPARSE})  # the types whose content follows the header
KNOWN = REGULAR | {b"1", b"2", b"3", b"4", DIRTYPE, b"6"}
DEVICES = frozenset({b"3", b"4"})
MAX_SIZE = (1 << 63) - 1  # off_t: no file is larger, so no member's size is either
MAX_EXTENSION = 64 << 20  # a pax header or GNU long name is held in memory: larger is damage, not metadata


@dataclass(frozen=True, slots=True)
class TarMember:
    """One archive member, its fields as :mod:`tarfile` presents them."""

    name: str
    type: bytes  # the type flag; b"5" for a directory (also for an old-style "name/" regular entry)
    mode: int
    uid: int
    gid: int
    size: int  # of the content (a sparse file: its real size)
    mtime: str  # the pax record when there is one (fractional seconds), else the header's whole seconds
    linkname: str
    devmajor: int
    devminor: int
    sparse: bool
    sha256: str  # of the content of a regular member (holes as zeros); "" for the other types
    pax: dict[str, str]  # every pax record that applies to it (global, then its own)


def decode_name(raw: bytes) -> str:
    """A name, a pax keyword or value: UTF-8, undecodable bytes as surrogate escapes (what tarfile gives with
    errors="surrogateescape", also for pax values, hdrcharset=BINARY or not): ``.encode("utf-8",
    "surrogateescape")`` gives the bytes back."""
    return raw.decode("utf-8", "surrogateescape")


def nts(raw: bytes) -> bytes:
    """A NUL-terminated field's bytes."""
    i = raw.find(0)
    return raw if i < 0 else raw[:i]


def nti(raw: bytes) -> int:
    """A number field: octal digits (NUL/space padded), or GNU base-256 (first byte 0x80, or 0xff: negative)."""
    try:
        return int(raw.rstrip(b"\0 ") or b"0", 8)  # the common case, "0000644\0"
    except ValueError:
        pass
    first = raw[0]
    if first == 0o200:
        return int.from_bytes(raw[1:], "big")
    if first == 0o377:
        return int.from_bytes(raw[1:], "big") - (1 << (8 * (len(raw) - 1)))
    digits = nts(raw).strip()
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        raise BackupSetError(f"tar header: {raw!r} is not a number (a damaged archive)") from None


def parse_pax(buf: bytes) -> dict[str, str]:
    """pax records ``"%d %s=%s\\n"`` → {keyword: value}; repeated keywords (pax sparse 0.0's GNU.sparse.offset
    and GNU.sparse.numbytes) are joined with commas."""
    out: dict[str, str] = {}
    pos, end = 0, len(buf)
    while pos < end:
        space = buf.find(b" ", pos, pos + 24)
        try:
            length = int(buf[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        eq = buf.find(b"=", space + 1, pos + length)
        if length <= 0 or eq < 0 or pos + length > end or buf[pos + length - 1] != 0x0A:
            if not buf[pos:].strip(b"\0"):
                break  # padding
            raise BackupSetError(f"tar pax header: bad record at byte {pos}: {bytes(buf[pos:pos + 40])!r}")
        key = buf[space + 1 : eq].decode("utf-8", "surrogateescape")
        value = buf[eq + 1 : pos + length - 1].decode("utf-8", "surrogateescape")
        if key in out and (key == "GNU.sparse.offset" or key == "GNU.sparse.numbytes"):
            value = out[key] + "," + value
        out[key] = value
        pos += length
    return out


class SparseDigest:
    """The SHA-256 of a sparse file's expanded content, fed its stored data segments one after the other."""

    __slots__ = ("h", "index", "left", "name", "pos", "realsize", "segments")

    def __init__(self, segments: list[tuple[int, int]], realsize: int, name: str) -> None:
        self.h = hashlib.sha256()
        self.segments = [s for s in segments if s[1] > 0]
        self.index = 0
        self.left = 0  # bytes left in the current segment
        self.pos = 0  # in the expanded file
        self.realsize = realsize
        self.name = name

    def _zeros(self, upto: int) -> None:
        while self.pos < upto:
            n = min(upto - self.pos, len(ZEROS))
            self.h.update(ZEROS[:n])
            self.pos += n

    def update(self, data: memoryview) -> None:
        while len(data):
            if self.left == 0:
                if self.index >= len(self.segments):
                    raise BackupSetError(f"archive entry {self.name!r}: more sparse data than its map describes")
                offset, self.left = self.segments[self.index]
                self.index += 1
                if offset < self.pos:
                    raise BackupSetError(f"archive entry {self.name!r}: overlapping sparse map")
                self._zeros(offset)
            n = min(self.left, len(data))
            self.h.update(data[:n])
            self.pos += n
            self.left -= n
            data = data[n:]

    def hexdigest(self) -> str:
        self._zeros(self.realsize)
        return self.h.hexdigest()


class _Header:
    """A member's header being completed (sparse map) or its content being hashed."""

    __slots__ = (
        "devmajor",
        "devminor",
        "gid",
        "linkname",
        "mode",
        "mtime",
        "name",
        "pax",
        "size",
        "sparse",
        "stored",
        "type",
        "uid",
    )

    def __init__(self, name: str, typ: bytes, mode: int, uid: int, gid: int, size: int, mtime: str, linkname: str,
                 devmajor: int, devminor: int, pax: dict[str, str], sparse: list[tuple[int, int]] | None,
                 stored: int) -> None:
        self.name, self.type, self.mode, self.uid, self.gid, self.size = name, typ, mode, uid, gid, size
        self.mtime, self.linkname, self.devmajor, self.devminor = mtime, linkname, devmajor, devminor
        self.pax, self.sparse, self.stored = pax, sparse, stored

    def member(self, sha256: str) -> TarMember:
        return TarMember(self.name, self.type, self.mode, self.uid, self.gid, self.size, self.mtime, self.linkname,
                         self.devmajor, self.devminor, self.sparse is not None, sha256, self.pax)


# parser states: what the next bytes are
HEADER = 0  # a header block
CONTENT = 1  # a member's content (hashed)
SKIP = 2  # padding up to the next block
EXTENSION = 3  # the data of a pax header or GNU long name (collected, then parsed)
SPARSE_MAP = 4  # the blocks of a pax 1.0 sparse map (in the member's data)
GNU_SPARSE_EXT = 5  # the extension blocks of an old GNU sparse header
END = 6  # after the end-of-archive block


class TarStreamParser:
    """Push parser: ``feed(chunk)`` as an archive's bytes arrive, ``close()`` at the end.  Every member goes to
    ``emit`` as soon as its content is hashed.  BackupSetError for a damaged or truncated archive."""

    def __init__(self, emit: Callable[[TarMember], None]) -> None:
        self.emit = emit
        self.state = HEADER
        self.block = bytearray()  # a block split across chunks
        self.want = 0  # bytes left of CONTENT, SKIP or EXTENSION
        self.pad = 0  # padding after CONTENT
        self.ext = bytearray()
        self.ext_size = 0
        self.ext_type = b""
        self.glob: dict[str, str] = {}  # global pax records
        self.local: dict[str, str] = {}  # the pax records for the next member
        self.longname: bytes | None = None
        self.longlink: bytes | None = None
        self.header: _Header | None = None
        self.digest: hashlib._Hash | SparseDigest | None = None
        self.map = bytearray()
        self.members = 0

    def feed(self, data: memoryview | bytes) -> None:
        mv = data if isinstance(data, memoryview) else memoryview(data)
        pos, end = 0, len(mv)
        while pos < end:
            state = self.state
            if state == CONTENT:
                n = self.want if self.want < end - pos else end - pos
                self.digest.update(mv[pos : pos + n])  # type: ignore[union-attr]
                pos += n
                self.want -= n
                if not self.want:
                    self._content_done()
            elif state == HEADER or state == SPARSE_MAP or state == GNU_SPARSE_EXT:
                if not self.block and end - pos >= BLOCK:
                    block = bytes(mv[pos : pos + BLOCK])
                    pos += BLOCK
                else:
                    n = min(BLOCK - len(self.block), end - pos)
                    self.block += mv[pos : pos + n]
                    pos += n
                    if len(self.block) < BLOCK:
                        return
                    block = bytes(self.block)
                    self.block.clear()
                if state == HEADER:
                    self._header(block)
                elif state == SPARSE_MAP:
                    self._map_block(block)
                else:
                    self._gnu_sparse_block(block)
            elif state == SKIP:
                n = self.want if self.want < end - pos else end - pos
                pos += n
                self.want -= n
                if not self.want:
                    self.state = HEADER
            elif state == EXTENSION:
                n = self.want if self.want < end - pos else end - pos
                self.ext += mv[pos : pos + n]
                pos += n
                self.want -= n
                if not self.want:
                    self.state = HEADER
                    self._extension_done(bytes(self.ext[: self.ext_size]))
                    self.ext.clear()
            else:  # END: the zero blocks that pad tar's last record
                return

    def close(self) -> None:
        """The stream ended: it must have reached tar's end-of-archive block."""
        if self.state != END:
            raise BackupSetError(f"the tar stream ends inside the archive, after {self.members} members: truncated")

    # ---------------------------------------------------------------------------------------------- headers

    def _header(self, block: bytes) -> None:
        if block == ZERO_BLOCK:
            self.state = END
            return
        if not _checksum_ok(block):
            raise BackupSetError(f"tar header after {self.members} members: bad checksum (a damaged archive)")
        typ = block[156:157]
        size = _checked_size(nti(block[124:136]), f"tar header after {self.members} members")
        if typ in PAX_TYPES or typ == PAX_GLOBAL or typ == GNU_LONGNAME or typ == GNU_LONGLINK:
            if size > MAX_EXTENSION:
                raise BackupSetError(f"tar header after {self.members} members: a {size}-byte extended header "
                                     f"(more than {MAX_EXTENSION}; a damaged archive)")
            self.ext_type, self.ext_size = typ, size
            self.want = size + (-size % BLOCK)
            self.ext.clear()
            if self.want:
                self.state = EXTENSION
            else:
                self._extension_done(b"")
            return
        name = decode_name(nts(block[0:100]))
        linkname = decode_name(nts(block[157:257])) if block[157] else ""
        if typ == b"\0" and name.endswith("/"):
            typ = DIRTYPE  # the old V7 way of writing a directory
        if typ == DIRTYPE:
            name = name.rstrip("/")
        prefix = nts(block[345:500]) if block[345] else b""
        sparse: list[tuple[int, int]] | None = None
        realsize = size
        extended = False
        if typ == GNU_SPARSE:
            sparse, realsize, extended = _gnu_sparse_header(block)
            realsize = _checked_size(realsize, f"tar header after {self.members} members (sparse real size)")
        elif prefix and block[257:263] == b"ustar\0":  # POSIX ustar: a long name split into prefix/name
            name = decode_name(prefix) + "/" + name
        if self.longname is not None:
            name = decode_name(nts(self.longname))
            if typ == DIRTYPE:
                name = name.removesuffix("/")
            self.longname = None
        if self.longlink is not None:
            linkname = decode_name(nts(self.longlink))
            self.longlink = None
        uid, gid = nti(block[108:116]), nti(block[116:124])
        pax = self.local
        if self.glob:
            pax = {**self.glob, **pax}
        mtime = pax["mtime"] if "mtime" in pax else str(nti(block[136:148]))
        if pax:
            self.local = {}
            if "path" in pax:
                name = pax["path"].rstrip("/")
            if "GNU.sparse.name" in pax:
                name = pax["GNU.sparse.name"]
            if typ == DIRTYPE:
                name = name.rstrip("/")
            linkname = pax.get("linkpath", linkname)
            uid = _pax_int(pax, "uid", uid)
            gid = _pax_int(pax, "gid", gid)
            if "size" in pax:
                size = realsize = _pax_size(pax, "size", name)
            if "GNU.sparse.map" in pax:  # pax sparse 0.1
                nums = _ints(pax["GNU.sparse.map"], name)
                sparse = list(zip(nums[::2], nums[1::2], strict=False))
            elif "GNU.sparse.offset" in pax:  # 0.0
                sparse = list(zip(_ints(pax["GNU.sparse.offset"], name), _ints(pax.get("GNU.sparse.numbytes", ""),
                                                                                  name), strict=False))
            if "GNU.sparse.size" in pax:
                realsize = _pax_size(pax, "GNU.sparse.size", name)
            if "GNU.sparse.realsize" in pax:
                realsize = _pax_size(pax, "GNU.sparse.realsize", name)
        if typ not in KNOWN:
            raise BackupSetError(f"archive entry {name!r}: unsupported tar type {typ!r}")
        dev = typ in DEVICES
        h = _Header(name, typ, nti(block[100:108]), uid, gid, realsize, mtime, linkname,
                    nti(block[329:337]) if dev else 0, nti(block[337:345]) if dev else 0, pax, sparse, size)
        if typ not in REGULAR:
            self.members += 1
            self.emit(h.member(""))
            return
        self.header = h
        if extended:
            self.state = GNU_SPARSE_EXT
        elif pax and pax.get("GNU.sparse.major") == "1" and pax.get("GNU.sparse.minor") == "0":
            h.sparse = []
            self.map.clear()
            self.pad = -size % BLOCK
            self.state = SPARSE_MAP
        else:
            self._start_content(h, size)

    def _extension_done(self, buf: bytes) -> None:
        typ = self.ext_type
        if typ == PAX_GLOBAL:
            self.glob.update(parse_pax(buf))
        elif typ == GNU_LONGNAME:
            self.longname = buf
        elif typ == GNU_LONGLINK:
            self.longlink = buf
        else:
            self.local = parse_pax(buf)

    def _map_block(self, block: bytes) -> None:
        """A block of a pax 1.0 sparse map, in the member's data before the content: decimal lines, the number of
        segments then an offset and a size for each."""
        h = self.header
        assert h is not None and h.sparse is not None
        h.stored -= BLOCK
        self.map += block
        lines = self.map.split(b"\n")
        try:
            count = int(lines[0]) if len(lines) > 1 else -1
            complete = count >= 0 and len(lines) >= 2 + 2 * count
            nums = [int(x) for x in lines[1 : 1 + 2 * count]] if complete else []
        except ValueError:
            raise BackupSetError(f"archive entry {h.name!r}: bad sparse map") from None
        if not complete:
            if h.stored <= 0:
                raise BackupSetError(f"archive entry {h.name!r}: sparse map longer than the member")
            return
        h.sparse += zip(nums[::2], nums[1::2], strict=True)
        self.map.clear()
        if h.stored < 0:
            raise BackupSetError(f"archive entry {h.name!r}: sparse map longer than the member")
        self._start_content(h, h.stored)

    def _gnu_sparse_block(self, block: bytes) -> None:
        """An old GNU sparse extension block: 21 offset/size pairs and a continuation flag."""
        h = self.header
        assert h is not None and h.sparse is not None
        for i in range(0, 21 * 24, 24):
            offset, size = block[i : i + 12], block[i + 12 : i + 24]
            if not (offset[0] & 0x80 or nts(offset).strip()) or not (size[0] & 0x80 or nts(size).strip()):
                break
            o, s = nti(offset), nti(size)
            if o and s:
                h.sparse.append((o, s))
        if not block[504]:
            self._start_content(h, h.stored)

    # ---------------------------------------------------------------------------------------------- content

    def _start_content(self, h: _Header, stored: int) -> None:
        self.header = h
        self.digest = hashlib.sha256() if h.sparse is None else SparseDigest(h.sparse, h.size, h.name)
        self.pad = -stored % BLOCK
        if stored:
            self.want = stored
            self.state = CONTENT
        else:
            self._content_done()

    def _content_done(self) -> None:
        h, digest = self.header, self.digest
        assert h is not None and digest is not None
        self.header = self.digest = None
        if self.pad:
            self.want, self.pad = self.pad, 0
            self.state = SKIP
        else:
            self.state = HEADER
        self.members += 1
        self.emit(h.member(digest.hexdigest()))


def _checksum_ok(block: bytes) -> bool:
    """The header checksum: the sum of its bytes with the checksum field counted as spaces, unsigned (POSIX) or
    signed (some old tars).  First compared modulo 65521 through zlib's Adler-32 (whose low half is 1 + the sum
    of the bytes modulo 65521; 20 times faster than sum()), exactly when that differs."""
    want = nti(block[148:156])
    field = sum(block[148:156])
    if ((zlib.adler32(block) & 0xFFFF) - 1 - field + 8 * 0x20 - want) % 65521 == 0:
        return True
    unsigned = sum(block) - field + 8 * 0x20
    if want == unsigned:
        return True
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    return want == signed


def _gnu_sparse_header(block: bytes) -> tuple[list[tuple[int, int]], int, bool]:
    """The old GNU sparse header: up to 4 offset/size pairs, the continuation flag, the real size."""
    structs = []
    for i in range(386, 386 + 4 * 24, 24):
        offset, size = block[i : i + 12], block[i + 12 : i + 24]
        if not (offset[0] & 0x80 or nts(offset).strip()) or not (size[0] & 0x80 or nts(size).strip()):
            break
        structs.append((nti(offset), nti(size)))
    return structs, nti(block[483:495]), bool(block[482])


def _pax_int(pax: dict[str, str], key: str, default: int) -> int:
    """A numeric pax record (tarfile takes a malformed one as 0)."""
    value = pax.get(key)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        return 0


def _checked_size(n: int, what: str) -> int:
    """A size from a header: never negative (base-256 allows it) nor beyond any file, which would make the parser
    step backwards or wait for ever."""
    if not 0 <= n <= MAX_SIZE:
        raise BackupSetError(f"{what}: size {n} is " + ("negative" if n < 0 else "larger than any file")
                             + " (a damaged archive)")
    return n


def _pax_size(pax: dict[str, str], key: str, name: str) -> int:
    """A size record of a pax header: decimal digits only (unlike uid/gid, a wrong one cannot be read as 0: the
    stream's framing depends on it)."""
    value = pax[key]
    if not (value.isascii() and value.isdigit()):
        raise BackupSetError(f"archive entry {name!r}: pax record {key}={value[:40]!r} is not a size "
                             "(a damaged archive)")
    return _checked_size(int(value), f"archive entry {name!r}, pax record {key}")


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise BackupSetError(f"archive entry {name!r}: bad sparse map {text[:80]!r}") from None
