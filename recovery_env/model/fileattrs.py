"""Extended attributes and POSIX ACLs of an entry, and its time, as the MANIFEST records them: one definition for
the capture (from the pax records of the tar stream) and for the verification of a restored tree (from the files).

Both sides first gather an entry's raw extended attributes (name → the value's bytes): the capture with
:func:`pax_xattrs`, the verification with :func:`read_xattrs`.  Then :func:`describe_xattrs` turns them into what
the MANIFEST holds and what is compared:

- ``xattrs``: every extended attribute except the two ACL ones → the SHA-256 of its value's bytes (user.*,
  trusted.*, security.* incl. security.capability and security.selinux);
- ``acl``: ``system.posix_acl_access`` → "access", ``system.posix_acl_default`` → "default", each decoded from the
  kernel's binary form into getfacl's numeric short text (``user::rw-,user:1000:r--,group::r--,mask::r--,
  other::r--``, the kernel's canonical entry order).

How GNU tar (``--format=pax --xattrs --xattrs-include='*' --acls --selinux``) carries them, and how each is read:

- ``SCHILY.xattr.NAME=VALUE``: the value's raw bytes (any bytes, incl. NUL, newlines, non-UTF-8); in NAME, "%" and
  "=" are written as "%25" and "%3D" (GNU tar's xattr_encode_keyword), decoded here as GNU tar does on extraction;
- ``SCHILY.acl.access`` / ``SCHILY.acl.default``: the ACL as text (acl_to_text: names where the capturing system
  knows them).  GNU tar also stores the binary ``system.posix_acl_*`` xattrs, which are exact (numeric ids) and
  preferred; the text stands in for a missing binary record (names resolved through this system's users/groups);
- ``RHT.security.selinux``: the SELinux label without its trailing NUL (security.selinux holds it with one),
  unless ``SCHILY.xattr.security.selinux`` carries the exact bytes;
- a hard link's member carries none of them: the attributes are the inode's, recorded with the first name
  (:class:`recovery_env.capture.archive.ManifestLister` copies them to the link's entry).

Standard library only (this runs in the boot media too).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

from recovery_env.errors import BackupSetError

#: The ACL xattrs and the key of each in the MANIFEST's "acl".
ACL_XATTRS: dict[str, str] = {"system.posix_acl_access": "access", "system.posix_acl_default": "default"}
#: GNU tar's text ACL records → the xattr each stands for.
PAX_ACLS: dict[str, str] = {"SCHILY.acl.access": "system.posix_acl_access",
                            "SCHILY.acl.default": "system.posix_acl_default"}
PAX_XATTR = "SCHILY.xattr."
PAX_SELINUX = "RHT.security.selinux"
SELINUX_XATTR = "security.selinux"

# The kernel's posix_acl xattr: a little-endian u32 version (2), then 8-byte entries (u16 tag, u16 perm, u32 id),
# sorted by tag then id (include/uapi/linux/posix_acl_xattr.h, posix_acl_valid()).
ACL_VERSION = 2
ACL_HEADER = struct.Struct("<I")
ACL_ENTRY = struct.Struct("<HHI")
ACL_UNDEFINED_ID = 0xFFFFFFFF
#: tag → (getfacl's word, whether the entry names a user/group id); the table's order is the canonical order.
ACL_TAGS: dict[int, tuple[str, bool]] = {
    0x01: ("user", False),  # ACL_USER_OBJ
    0x02: ("user", True),  # ACL_USER
    0x04: ("group", False),  # ACL_GROUP_OBJ
    0x08: ("group", True),  # ACL_GROUP
    0x10: ("mask", False),  # ACL_MASK
    0x20: ("other", False),  # ACL_OTHER
}
TAG_OF: dict[tuple[str, bool], int] = {v: k for k, v in ACL_TAGS.items()}
PERMS = "rwx"
PAX_TIME = re.compile(r"([+-]?[0-9]+)(?:\.([0-9]*))?")


def xattr_digest(value: bytes) -> str:
    """How the MANIFEST records an extended attribute's value."""
    return hashlib.sha256(value).hexdigest()


def describe_xattrs(raw: Mapping[str, bytes], where: str) -> tuple[dict[str, str], dict[str, str]]:
    """Raw extended attributes → (xattrs: name → digest of the value, without the ACL ones; acl: "access" /
    "default" → the ACL's text).  The one normalisation both sides use.  BackupSetError for a malformed ACL."""
    xattrs: dict[str, str] = {}
    acl: dict[str, str] = {}
    if not raw:
        return xattrs, acl
    for name, value in sorted(raw.items()):
        if name in ACL_XATTRS:
            acl[ACL_XATTRS[name]] = decode_posix_acl(value, f"{where}: {name}")
        else:
            xattrs[name] = xattr_digest(value)
    return xattrs, acl


def read_xattrs(path: Path | str) -> dict[str, bytes]:
    """The extended attributes of ``path`` itself (a symlink's own), name → value; {} where the filesystem has
    none (vfat)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile
    return out


def pax_xattrs(pax: Mapping[str, str], where: str, *, resolve: NameResolver | None = None) -> dict[str, bytes]:
    """A member's pax records → its raw extended attributes (what GNU tar sets on extraction).  Values are the
    records' bytes: :mod:`recovery_env.capture.tarstream` decodes them with surrogate escapes, undone here."""
    out: dict[str, bytes] = {}
    for key, value in pax.items():
        if key.startswith(PAX_XATTR):
            out[decode_xattr_keyword(key[len(PAX_XATTR):])] = value.encode("utf-8", "surrogateescape")
    if PAX_SELINUX in pax and SELINUX_XATTR not in out:
        out[SELINUX_XATTR] = pax[PAX_SELINUX].rstrip("\0").encode("utf-8", "surrogateescape") + b"\0"
    for key, name in PAX_ACLS.items():
        if key in pax and name not in out and pax[key].strip():
            acl = encode_posix_acl(pax[key], f"{where}: {key}", resolve or SystemNames())
            if name != "system.posix_acl_access" or len(acl) > ACL_HEADER.size + 3 * ACL_ENTRY.size:
                out[name] = acl  # an access ACL of the 3 base entries is the mode bits: no xattr holds it
    return out


def decode_xattr_keyword(keyword: str) -> str:
    """GNU tar's xattr_decode_keyword: "%3D" → "=", "%25" → "%", anything else as it is."""
    if "%" not in keyword:
        return keyword
    out, i = [], 0
    while i < len(keyword):
        if keyword.startswith(("%3D", "%25"), i):
            out.append("=" if keyword[i + 1] == "3" else "%")
            i += 3
        else:
            out.append(keyword[i])
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------------- ACLs


def decode_posix_acl(value: bytes, where: str) -> str:
    """The kernel's binary ACL → getfacl's numeric short text, entries in the order stored."""
    if len(value) < ACL_HEADER.size or (len(value) - ACL_HEADER.size) % ACL_ENTRY.size:
        raise BackupSetError(f"{where}: {len(value)} bytes is not a POSIX ACL (4 + 8 × entries)")
    (version,) = ACL_HEADER.unpack_from(value)
    if version != ACL_VERSION:
        raise BackupSetError(f"{where}: POSIX ACL version {version}, expected {ACL_VERSION}")
    entries = []
    for tag, perm, ident in ACL_ENTRY.iter_unpack(value[ACL_HEADER.size:]):
        if tag not in ACL_TAGS or perm > 7:
            raise BackupSetError(f"{where}: bad POSIX ACL entry (tag {tag:#x}, permissions {perm:#o})")
        word, named = ACL_TAGS[tag]
        bits = "".join(c if perm & (4 >> i) else "-" for i, c in enumerate(PERMS))
        entries.append(f"{word}:{ident if named else ''}:{bits}")
    return ",".join(entries)


def encode_posix_acl(text: str, where: str, resolve: NameResolver) -> bytes:
    """An ACL's text as acl_to_text writes it (entries separated by newlines or commas, ``tag:qualifier:perms``,
    qualifiers as names or numbers) → the kernel's binary form in canonical order."""
    entries: list[tuple[int, int, int]] = []
    for item in text.replace("\n", ",").split(","):
        item = item.split("#", 1)[0].strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in ("user", "group", "mask", "other", "u", "g", "m", "o"):
            raise BackupSetError(f"{where}: {item!r} is not an ACL entry (tag:qualifier:permissions)")
        word = {"u": "user", "g": "group", "m": "mask", "o": "other"}.get(parts[0], parts[0])
        qualifier, bits = parts[1], parts[2]
        if len(bits) != 3 or any(c not in (p, "-") for c, p in zip(bits, PERMS, strict=True)):
            raise BackupSetError(f"{where}: {item!r}: permissions {bits!r} are not like 'rwx' / 'r--'")
        perm = sum(4 >> i for i, c in enumerate(bits) if c != "-")
        named = bool(qualifier) and word in ("user", "group")
        ident = (resolve.uid(qualifier, where) if word == "user" else resolve.gid(qualifier, where)) if named \
            else ACL_UNDEFINED_ID
        entries.append((TAG_OF[(word, named)], perm, ident))
    entries.sort(key=lambda e: (e[0], e[2]))
    return ACL_HEADER.pack(ACL_VERSION) + b"".join(ACL_ENTRY.pack(*e) for e in entries)


class NameResolver:
    """User and group names of an ACL's text → ids."""

    def __init__(self, users: Callable[[str], int], groups: Callable[[str], int]) -> None:
        self._users, self._groups = users, groups

    def uid(self, name: str, where: str) -> int:
        return self._id(name, self._users, "user", where)

    def gid(self, name: str, where: str) -> int:
        return self._id(name, self._groups, "group", where)

    @staticmethod
    def _id(name: str, lookup: Callable[[str], int], what: str, where: str) -> int:
        if name.isdigit():
            return int(name)
        try:
            return lookup(name)
        except KeyError:
            raise BackupSetError(f"{where}: the ACL names {what} {name!r}, unknown on this system") from None


class SystemNames(NameResolver):
    """This system's users and groups (those tar's acl_to_text named when it wrote the archive)."""

    def __init__(self) -> None:
        import grp
        import pwd

        super().__init__(lambda n: pwd.getpwnam(n).pw_uid, lambda n: grp.getgrnam(n).gr_gid)


# ---------------------------------------------------------------------------------------------------- times


def whole_seconds(text: str, where: str) -> int:
    """A pax time ("1764118923.999999999", "-1.5") → whole seconds, rounded down as ``stat -c %Y`` and
    ``st_mtime_ns // 10**9`` do (exact: a float would round .999999999 up to the next second)."""
    sec, _, frac = text.partition(".")
    if sec.isascii() and sec.isdigit() and ((frac.isascii() and frac.isdigit()) or not frac):
        return int(sec)  # the common case, at or after 1970
    m = PAX_TIME.fullmatch(text)
    if m is None:
        raise BackupSetError(f"{where}: time {text!r} is not a number")
    whole = int(m.group(1))
    return whole - 1 if text.startswith("-") and (m.group(2) or "").strip("0") else whole


def whole_seconds_ns(ns: int) -> int:
    """A file's time in nanoseconds (st_mtime_ns) → whole seconds, rounded down."""
    return ns // 1_000_000_000
