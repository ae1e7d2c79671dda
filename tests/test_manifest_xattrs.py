"""The MANIFEST against the source tree and against GNU tar, entry by entry (issue 15: a restore judged "not
recoverable" because the MANIFEST had lost a file's xattrs).

A tree on a filesystem with xattrs and ACLs (the host's ext4 /tmp) combines every case that once lost an
attribute or a time: several xattrs, binary values (NUL, newline, non-UTF-8, empty), names GNU tar percent-encodes
("=", "%") or that are not UTF-8, trusted.* and security.*, access and default ACLs beside xattrs, sparse files,
long names and long link targets (pax path/linkpath records), big ids (pax uid/gid records), hard links (their
member carries no xattrs), symlinks and a fifo with xattrs, times GNU tar writes with nine decimals or before 1970.
It is captured with the real archive writer (make_backup_set: GNU tar | zstd, the MANIFEST from the stream), then
each MANIFEST entry is compared with what getfattr, getfacl, stat and readlink report on the source, with GNU
tar's listing of the archive (``tar -tvv --xattrs --acls``) and with the tree ``tar -x`` makes of it (read back with
the same tools); and the restore side's verify_manifest finds no difference in that tree.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from recovery_env.capture.archive import ManifestLister, make_backup_set, plan_archives
from recovery_env.capture.tarstream import TarStreamParser
from recovery_env.errors import BackupSetError, ToolError
from recovery_env.model.descriptor import Compression
from recovery_env.model.fileattrs import (
    ACL_XATTRS,
    SystemNames,
    decode_posix_acl,
    decode_xattr_keyword,
    describe_xattrs,
    encode_posix_acl,
    pax_xattrs,
    whole_seconds,
)
from recovery_env.model.manifest import MANIFEST_NAME, TAR_ATTR_OPTIONS, TAR_EXTRACT_OPTIONS, EntryType, ManifestEntry
from recovery_env.restore.verify import plan_extract, read_manifest, verify_manifest
from recovery_env.run import run, run_bytes, run_feed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown, trusted.* xattrs and mknod need root")

UID, GID = 4242, 4343  # ACL qualifiers
BIG_UID, BIG_GID = 3_000_000, 2_500_000  # above ustar's 7 octal digits: pax uid/gid records
LONG_DIR = "d" * 90 + "/" + "e" * 90
LONG_FILE = LONG_DIR + "/" + "long-name-" + "x" * 150
BINARY = bytes(range(256))
ODD_NAME = os.fsdecode(b"user.odd-\xe9\xff")  # not UTF-8


def setfattr(path: Path, name: str, value: bytes) -> None:
    """setfattr on the path itself (a symlink's own attributes), the value as hex."""
    run(["setfattr", "-h", "-n", name, "-v", "0x" + value.hex(), str(path)])


def make_attr_tree(top: Path) -> None:
    top.mkdir()
    setfattr(top, "user.top", b"the root directory")
    (top / "plain").write_text("one xattr\n")
    setfattr(top / "plain", "user.one", b"1")
    multi = top / "multi"
    multi.write_text("several xattrs\n")
    for name, value in [("user.a", b"aa"), ("user.binary", BINARY), ("user.newline", b"line\nbreak\x00end"),
                        ("user.latin1", b"\xe9t\xe9"), ("user.empty", b""), ("user.a=b", b"equals in the name"),
                        ("user.pct%41", b"percent in the name"), ("trusted.t", b"trusted"),
                        ("security.asr", b"security"), (ODD_NAME, b"odd name")]:
        os.setxattr(multi, name, value)
    acl_file = top / "acl-file"
    acl_file.write_text("an ACL and an xattr\n")
    run(["setfacl", "-m", f"u:{UID}:r,g:{GID}:rw", str(acl_file)])
    setfattr(acl_file, "user.k", b"v")
    acl_dir = top / "acl-dir"
    acl_dir.mkdir()
    run(["setfacl", "-m", f"u:{UID}:rx", str(acl_dir)])
    run(["setfacl", "-d", "-m", f"u:{UID}:rwx,g:{GID}:rx", str(acl_dir)])
    setfattr(acl_dir, "user.d", b"dir")
    (acl_dir / "inherits").write_text("default ACL inherited\n")
    default_only = top / "default-only"
    default_only.mkdir()
    run(["setfacl", "-d", "-m", f"u:{UID}:rwx", str(default_only)])
    sparse = top / "sparse"
    with open(sparse, "wb") as f:
        f.seek(1 << 20)
        f.write(b"middle")
        f.truncate(4 << 20)
    setfattr(sparse, "user.s", BINARY[::-1])
    setfattr(sparse, "trusted.s", b"sparse")
    run(["setfacl", "-m", f"u:{UID}:rw", str(sparse)])
    hard = top / "hard-a"
    hard.write_text("one inode, two names, xattrs on the inode\n")
    setfattr(hard, "user.h", b"hard")
    run(["setfacl", "-m", f"g:{GID}:r", str(hard)])
    os.link(hard, top / "hard-b")
    (top / LONG_DIR).mkdir(parents=True)
    (top / LONG_FILE).write_text("a long name\n")
    setfattr(top / LONG_FILE, "user.long", b"long")
    setfattr(top / LONG_DIR, "user.long-dir", b"long dir")
    os.link(top / LONG_FILE, top / "link-to-long")
    os.symlink("plain", top / "sym")
    setfattr(top / "sym", "trusted.sy", b"on the link itself")
    os.symlink("/" + "t" * 200, top / "long-target")
    setfattr(top / "long-target", "trusted.lt", b"long target")
    big = top / "big-ids"
    big.write_text("big ids\n")
    os.chown(big, BIG_UID, BIG_GID)
    setfattr(big, "user.big", b"ids")
    late = top / "late"
    late.write_text("nine decimals\n")
    setfattr(late, "user.late", b"late")
    os.utime(late, ns=(1_700_000_000_999_999_999, 1_700_000_000_999_999_999))
    old = top / "before-1970"
    old.write_text("negative time\n")
    setfattr(old, "user.old", b"old")
    os.utime(old, ns=(-1_500_000_000, -1_500_000_000))
    os.mkfifo(top / "fifo")
    setfattr(top / "fifo", "trusted.fifo", b"fifo")
    os.chmod(top / "plain", 0o4751)


@dataclass(frozen=True)
class Facts:
    """What the tools say about one path: the MANIFEST's fields in the MANIFEST's terms."""

    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    link: str
    inode: int
    xattrs: dict[str, str]  # name → SHA-256 of the value (the ACL xattrs aside)
    acl: dict[str, str]  # "access"/"default" → getfacl's numeric entries joined by ","
    xattr_sizes: dict[str, int]  # every xattr (incl. the ACL ones) → length of its value


def _unescape(text: str) -> str:
    """getfattr's and getfacl's octal escapes (``\\075`` for "=", ``\\377``) → the name."""
    raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), text.encode("utf-8", "surrogateescape"))
    return os.fsdecode(raw)


def read_tool_facts(path: Path) -> Facts:
    """getfattr, getfacl, stat, readlink: independent tools, not the code under test."""
    out = run_bytes(["getfattr", "-d", "-m", "-", "-h", "--absolute-names", "-e", "hex", str(path)])
    values: dict[str, bytes] = {}
    for line in out.decode("utf-8", "surrogateescape").splitlines():
        if not line or line.startswith("# file:"):
            continue
        name, _, value = line.partition("=")
        values[_unescape(name)] = bytes.fromhex(value[2:]) if value.startswith("0x") else b""
    acl: dict[str, str] = {}
    if not stat.S_ISLNK(os.lstat(path).st_mode):
        lines = run(["getfacl", "-n", "-c", "-E", "-P", str(path)]).stdout.split()
        entries = {"access": [x for x in lines if not x.startswith("default:")],
                   "default": [x.removeprefix("default:") for x in lines if x.startswith("default:")]}
        acl = {kind: ",".join(entries[kind]) for name, kind in ACL_XATTRS.items() if name in values}
    f = run(["stat", "-c", "%a %u %g %Y %s %i", str(path)]).stdout.split()
    is_link = run(["stat", "-c", "%F", str(path)]).stdout.strip() == "symbolic link"
    link = run(["readlink", str(path)]).stdout.rstrip("\n") if is_link else ""
    return Facts(int(f[0], 8), int(f[1]), int(f[2]), int(f[3]), int(f[4]), link, int(f[5]),
                 {k: hashlib.sha256(v).hexdigest() for k, v in values.items() if k not in ACL_XATTRS}, acl,
                 {k: len(v) for k, v in values.items()})


def compare(e: ManifestEntry, facts: Facts, what: str) -> list[str]:
    """Every field of the MANIFEST entry against the tools' facts; the differences as text."""
    got: dict[str, object] = {"xattrs": dict(e.xattrs), "acl": dict(e.acl or {}), "uid": e.uid, "gid": e.gid,
                              "mtime": e.mtime}
    want: dict[str, object] = {"xattrs": facts.xattrs, "acl": facts.acl, "uid": facts.uid, "gid": facts.gid,
                               "mtime": facts.mtime}
    if e.type is not EntryType.SYMLINK:
        got["mode"], want["mode"] = oct(e.mode), oct(facts.mode)
    if e.type.has_content:
        got["size"], want["size"] = e.size, facts.size
    if e.type is EntryType.SYMLINK:
        got["link"], want["link"] = e.link, facts.link
    return [f"{e.path}: {k} is {got[k]!r} in the MANIFEST, {want[k]!r} by {what}" for k in got if got[k] != want[k]]


# ------------------------------------------------------------------------------------------------ GNU tar's view


@dataclass(frozen=True)
class TarView:
    mode: str  # ls-style, without the type letter
    uid: int
    gid: int
    size: int
    target: str  # symlink target or hard link target (member name)
    xattr_sizes: dict[str, int]
    acl: dict[str, str]


LISTING = re.compile(r"(?P<mode>\S{10})[*+]? +(?P<uid>\d+)/(?P<gid>\d+) +(?P<size>\d+) \S+ \S+ +(?P<rest>.*)")


def _numeric_acl(text: str) -> dict[str, str]:
    """tar's "a:" line (acl_to_text: names where this host knows them) → the MANIFEST's form."""
    def number(word: str, q: str) -> str:
        if not q or q.isdigit():
            return q
        return str(pwd.getpwnam(q).pw_uid if word == "user" else grp.getgrnam(q).gr_gid)

    parts: dict[str, list[str]] = {"access": [], "default": []}
    for item in text.split(","):
        kind = "default" if item.startswith("default:") else "access"
        word, q, perms = item.removeprefix("default:").split(":")
        parts[kind].append(f"{word}:{number(word, q)}:{perms}")
    if len(parts["access"]) == 3:  # user::, group::, other:: only: the mode bits, which no ACL xattr holds
        parts["access"] = []
    return {k: ",".join(v) for k, v in parts.items() if v}


def read_tar_view(archive: Path) -> dict[str, TarView]:
    """GNU tar's own listing of the archive: member name → what it says."""
    listing = run_bytes(["tar", "--zstd", "-tvv", "--full-time", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                         "--acls", "-f", str(archive)]).decode("utf-8", "surrogateescape")
    out: dict[str, TarView] = {}
    current = ""
    for line in listing.splitlines():
        if line.startswith("  x: "):
            size, _, name = line[5:].partition(" ")
            out[current].xattr_sizes[name] = int(size)
        elif line.startswith("  a: "):
            out[current].acl.update(_numeric_acl(line[5:]))
        else:
            m = LISTING.fullmatch(line)
            assert m, line
            rest = m["rest"]
            name, target = rest, ""
            for sep in (" -> ", " link to "):
                if sep in rest:
                    name, target = rest.split(sep, 1)
            current = name.rstrip("/") if name != "./" else "."
            out[current] = TarView(m["mode"][1:], int(m["uid"]), int(m["gid"]), int(m["size"]), target, {}, {})
    return out


def compare_tar(e: ManifestEntry, view: TarView, target_view: TarView | None) -> list[str]:
    """The MANIFEST entry against GNU tar's listing of its member (a hard link: against its target's member,
    which carries the inode's xattrs and ACLs)."""
    attrs = target_view if e.type is EntryType.HARDLINK and target_view is not None else view
    problems = []
    names = {n for n in attrs.xattr_sizes if n not in ACL_XATTRS}
    if names != set(e.xattrs):
        problems.append(f"{e.path}: xattrs {sorted(e.xattrs)} in the MANIFEST, {sorted(names)} by tar -tvv")
    if attrs.acl != dict(e.acl or {}):
        problems.append(f"{e.path}: acl {dict(e.acl or {})} in the MANIFEST, {attrs.acl} by tar -tvv")
    if e.type is not EntryType.SYMLINK and stat.filemode(e.mode)[1:] != view.mode:
        problems.append(f"{e.path}: mode {stat.filemode(e.mode)[1:]} in the MANIFEST, {view.mode} by tar -tvv")
    if (e.uid, e.gid) != (view.uid, view.gid):
        problems.append(f"{e.path}: owner {e.uid}/{e.gid} in the MANIFEST, {view.uid}/{view.gid} by tar -tvv")
    if e.type is EntryType.FILE and e.size != view.size:
        problems.append(f"{e.path}: size {e.size} in the MANIFEST, {view.size} by tar -tvv")
    if e.type is EntryType.SYMLINK and e.link != view.target:
        problems.append(f"{e.path}: link {e.link!r} in the MANIFEST, {view.target!r} by tar -tvv")
    if e.type is EntryType.HARDLINK and e.link != "/" + view.target.removeprefix("./"):
        problems.append(f"{e.path}: link {e.link!r} in the MANIFEST, {view.target!r} by tar -tvv")
    return problems


# ------------------------------------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[ManifestEntry]]:
    base = tmp_path_factory.mktemp("xattrs")
    probe = base / "probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.probe", b"1")
        run(["setfacl", "-m", f"u:{UID}:r", str(probe)])
    except (OSError, ToolError) as e:
        pytest.skip(f"{base} is on a filesystem without user xattrs or ACLs: {e}")
    src, dest = base / "src", base / "dest"
    make_attr_tree(src)
    dest.mkdir()
    make_backup_set(plan_archives([("fs1", "/", str(src), 1 << 20)]), dest)
    return src, dest, list(read_manifest(dest / MANIFEST_NAME))


def test_every_entry_equals_what_the_tools_say_of_the_source(captured: tuple[Path, Path, list[ManifestEntry]]
                                                            ) -> None:
    src, _, entries = captured
    walked = {"/" + str(p.relative_to(src)) for p in src.rglob("*")} | {"/"}
    assert {e.path for e in entries} == walked
    by_path = {e.path: e for e in entries}
    problems: list[str] = []
    for e in entries:
        facts = read_tool_facts(src / e.path.lstrip("/"))
        problems += compare(e, facts, "getfattr/getfacl/stat of the source")
        if e.type is EntryType.HARDLINK:
            other = read_tool_facts(src / e.link.lstrip("/"))
            if other.inode != facts.inode:
                problems.append(f"{e.path}: link {e.link} in the MANIFEST is not the same inode in the source")
            if by_path[e.link].type is not EntryType.FILE:
                problems.append(f"{e.path}: link {e.link} is not a file entry")
    assert not problems, "\n".join(problems)
    # the tree does hold every case (a test that cannot fail would prove nothing)
    assert len(by_path["/multi"].xattrs) == 10 and "user.a=b" in by_path["/multi"].xattrs
    assert ODD_NAME in by_path["/multi"].xattrs and "user.pct%41" in by_path["/multi"].xattrs
    assert set(by_path["/acl-dir"].acl or {}) == {"access", "default"}
    assert set(by_path["/default-only"].acl or {}) == {"default"} and not by_path["/default-only"].xattrs
    assert by_path["/sparse"].sparse and by_path["/sparse"].acl and len(by_path["/sparse"].xattrs) == 2
    assert {by_path["/hard-a"].type, by_path["/hard-b"].type} == {EntryType.FILE, EntryType.HARDLINK}
    assert all(by_path[p].xattrs and by_path[p].acl for p in ("/hard-a", "/hard-b"))
    assert by_path["/" + LONG_FILE].xattrs == by_path["/link-to-long"].xattrs != {}
    assert by_path["/late"].mtime == 1_700_000_000 and by_path["/before-1970"].mtime == -2
    assert by_path["/sym"].xattrs and by_path["/fifo"].xattrs and by_path["/big-ids"].uid == BIG_UID


def test_every_entry_equals_gnu_tars_view_of_the_archive(captured: tuple[Path, Path, list[ManifestEntry]],
                                                        tmp_path: Path) -> None:
    """tar -tvv's listing, and the tree tar -x makes read back with the same tools; then the restore side's
    verification of that tree finds nothing."""
    _, dest, entries = captured
    views = read_tar_view(dest / "fs1.tar.zst")
    assert len(views) == len(entries)
    problems: list[str] = []
    for e in entries:
        name = "." if e.path == "/" else "./" + e.path.lstrip("/")
        view = views[name]
        problems += compare_tar(e, view, views.get(view.target) if e.type is EntryType.HARDLINK else None)
    out = tmp_path / "extracted"
    out.mkdir()
    run_feed(plan_extract(dest / "fs1.tar.zst", out, Compression.ZSTD), dest / "fs1.tar.zst")
    for e in entries:
        problems += compare(e, read_tool_facts(out / e.path.lstrip("/")), "getfattr/getfacl/stat after tar -x")
    assert not problems, "\n".join(problems)
    assert verify_manifest(out, dest / MANIFEST_NAME) == []
    os.setxattr(out / "hard-b", "user.h", b"changed")
    os.removexattr(out / "multi", "user.a=b")
    run(["setfacl", "-m", f"u:{UID}:rwx", str(out / "acl-file")])
    found = {(d.path, d.what) for d in verify_manifest(out, dest / MANIFEST_NAME)}
    assert {("/hard-b", "xattrs"), ("/hard-a", "xattrs"), ("/multi", "xattrs"), ("/acl-file", "acl")} <= found


@pytest.mark.parametrize("version", ["0.0", "0.1", "1.0"])
def test_the_parser_reads_every_gnu_sparse_format_alike(captured: tuple[Path, Path, list[ManifestEntry]],
                                                       version: str) -> None:
    """The capture's tar options with each of GNU's pax sparse formats: the same MANIFEST entries."""
    src, _, entries = captured
    data = run_bytes(["tar", "--create", "--file=-", *TAR_ATTR_OPTIONS, f"--sparse-version={version}",
                      f"--directory={src}", "."])
    parsed: list[ManifestEntry] = []
    parser = TarStreamParser(ManifestLister("fs1", "/", parsed.append).add)
    for pos in range(0, len(data), 4096 + 7):
        parser.feed(data[pos:pos + 4096 + 7])
    parser.close()
    assert parsed == entries
    assert (b"GNU.sparse.map" in data) == (version == "0.1") and (b"GNU.sparse.offset" in data) == (version == "0.0")


def test_acls_carried_only_as_text_are_recorded_as_tar_restores_them(tmp_path: Path) -> None:
    """An archive whose ACLs are only GNU tar's text records (no system.posix_acl_* xattr records; names where this
    host knows the ids): the MANIFEST's ACLs equal what tar -x sets, read back with getfacl."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("text ACL\n")
    run(["setfacl", "-m", f"u:0:r,u:{UID}:rw,g:{GID}:r,g:0:rw", str(src / "f")])
    (src / "d").mkdir()
    run(["setfacl", "-d", "-m", f"u:{UID}:rwx,u:0:rx", str(src / "d")])
    data = run_bytes(["tar", "--create", "--file=-", *TAR_ATTR_OPTIONS, "--xattrs-exclude=system.*",
                      f"--directory={src}", "."])
    assert b"SCHILY.acl.access=user::rw-\nuser:root:r--" in data and b"SCHILY.xattr.system" not in data
    entries: list[ManifestEntry] = []
    parser = TarStreamParser(ManifestLister("fs1", "/", entries.append).add)
    parser.feed(data)
    parser.close()
    out = tmp_path / "out"
    out.mkdir()
    run(["tar", "--extract", "--file=-", *TAR_EXTRACT_OPTIONS, f"--directory={out}"], input=data)
    problems: list[str] = []
    for e in entries:
        problems += compare(e, read_tool_facts(out / e.path.lstrip("/")), "getfattr/getfacl/stat after tar -x")
    assert not problems, "\n".join(problems)
    by_path = {e.path: e for e in entries}
    assert by_path["/f"].acl == {"access": f"user::rw-,user:0:r--,user:{UID}:rw-,group::r--,group:0:rw-,"
                                           f"group:{GID}:r--,mask::rw-,other::r--"}
    assert set(by_path["/d"].acl or {}) == {"default"}  # its access ACL text is the mode bits: no xattr


def test_bad_acls_times_and_names_are_named_errors() -> None:
    where = "archive entry './x'"
    with pytest.raises(BackupSetError, match=r"'./x'.*: 5 bytes is not a POSIX ACL"):
        describe_xattrs({"system.posix_acl_access": b"\x02\0\0\0\x01"}, where)
    with pytest.raises(BackupSetError, match=r"POSIX ACL version 3, expected 2"):
        decode_posix_acl(b"\x03\0\0\0" + bytes(8), where)
    with pytest.raises(BackupSetError, match=r"bad POSIX ACL entry \(tag 0x40"):
        decode_posix_acl(b"\x02\0\0\0\x40\0\x07\0\0\0\0\0", where)
    with pytest.raises(BackupSetError, match=r"SCHILY.acl.access: the ACL names user 'no-such-user-asr', unknown"):
        pax_xattrs({"SCHILY.acl.access": "user::rw-\nuser:no-such-user-asr:r--\ngroup::r--\nmask::r--\nother::r--\n"},
                   where)
    with pytest.raises(BackupSetError, match=r"'rwz' are not like"):
        pax_xattrs({"SCHILY.acl.default": "user::rwz\n"}, where)
    with pytest.raises(BackupSetError, match=r"'./x': time '17e9' is not a number"):
        whole_seconds("17e9", where)
    assert [whole_seconds(t, where) for t in ("1700000000.999999999", "-1.5", "-2", "0.0", "12")] == [
        1_700_000_000, -2, -2, 0, 12]
    assert decode_xattr_keyword("user.a%3Db%25c%41%3d") == "user.a=b%c%41%3d"
    # the text form is what the kernel's binary form decodes to, entries in canonical order
    text = "u::rw-,g:0:r--,u:7:r-x,m::rwx,o::---,g::r--"
    assert decode_posix_acl(encode_posix_acl(text, where, SystemNames()), where) == (
        "user::rw-,user:7:r-x,group::r--,group:0:r--,mask::rwx,other::---")


def test_a_version_1_manifest_is_still_verified(tmp_path: Path) -> None:
    """Sets made before "acl" kept the ACLs' digests among the xattrs: a restore of one still verifies."""
    root = tmp_path / "root"
    root.mkdir()
    f = root / "f"
    f.write_text("v1\n")
    run(["setfacl", "-m", f"u:{UID}:r", str(f)])
    setfattr(f, "user.v", b"1")
    st = os.stat(f)
    digests = {n: hashlib.sha256(os.getxattr(f, n)).hexdigest() for n in os.listxattr(f)}
    assert "system.posix_acl_access" in digests
    entry = {"path": "/f", "fs": "fs1", "type": "file", "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
             "gid": st.st_gid, "mtime": st.st_mtime_ns // 10**9, "size": 3,
             "sha256": hashlib.sha256(b"v1\n").hexdigest(), "xattrs": digests}
    manifest = tmp_path / MANIFEST_NAME
    manifest.write_text(json.dumps({"format": "asr-manifest", "version": 1}) + "\n" + json.dumps(entry) + "\n")
    (e,) = read_manifest(manifest)
    assert e.acl is None
    assert verify_manifest(root, manifest) == []
    run(["setfacl", "-m", f"g:{GID}:r", str(f)])  # the mask stays r--: the mode too
    assert [(d.path, d.what) for d in verify_manifest(root, manifest)] == [("/f", "xattrs")]
    manifest.write_text(json.dumps({"format": "asr-manifest", "version": 3}) + "\n")
    with pytest.raises(BackupSetError, match=r"line 1: header .* \(versions 1, 2 are read\)"):
        read_manifest(manifest)
