"""Archives, MANIFEST and their verification, on real trees with GNU tar and zstd (no mounts needed)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shlex
import shutil
import stat
import tarfile
from fractions import Fraction
from pathlib import Path

import pytest

from recovery_env.capture.archive import (
    ManifestLister,
    ReadChange,
    make_backup_record,
    make_backup_set,
    member_path,
    parse_tar_changes,
    plan_archives,
    plan_tar_argv,
    unquote_tar_name,
)
from recovery_env.capture.tarstream import TarStreamParser
from recovery_env.errors import BackupSetError, ToolError
from recovery_env.model.descriptor import Compression
from recovery_env.model.fileattrs import decode_posix_acl
from recovery_env.model.manifest import (
    MANIFEST_NAME,
    TAR_ATTR_OPTIONS,
    TAR_TYPES,
    EntryType,
    ManifestEntry,
    sha256_file,
)
from recovery_env.restore.verify import check_backup_set, extract_archive, read_manifest, verify_manifest
from recovery_env.run import run, run_bytes

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown and mknod need root")


def make_tree(top: Path) -> None:
    """Owners, modes, xattrs, an ACL, hard links, symlinks, a sparse file, a device node, a fifo."""
    (top / "etc").mkdir(parents=True)
    (top / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (top / "etc/shadow").write_text("root:*:1::::::\n")
    os.chmod(top / "etc/shadow", 0o640)
    os.chown(top / "etc/shadow", 0, 42)
    (top / "home/user").mkdir(parents=True)
    (top / "home/user/notes").write_text("mine\n")
    os.chown(top / "home/user", 1000, 1000)
    os.chown(top / "home/user/notes", 1000, 1000)
    os.chmod(top / "home/user/notes", 0o600)
    (top / "usr/bin").mkdir(parents=True)
    (top / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(top / "usr/bin/tool", 0o4755)
    os.link(top / "usr/bin/tool", top / "usr/bin/tool-again")
    os.symlink("tool", top / "usr/bin/tool-link")
    os.symlink("/nonexistent/target", top / "usr/bin/dangling")
    with open(top / "var.sparse", "wb") as f:
        f.seek(64 << 20)
        f.write(b"end")
    (top / "dev").mkdir()
    os.mknod(top / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(top / "dev/loop9", 0o660 | stat.S_IFBLK, os.makedev(7, 9))
    os.mkfifo(top / "fifo")
    os.setxattr(top / "etc/passwd", "user.asr.test", b"value\x00\xff binary")
    os.setxattr(top / "home/user", "trusted.asr", b"t")
    run(["setfacl", "-m", "u:1000:r,g:42:rw", str(top / "etc/shadow")])
    run(["setfacl", "-d", "-m", "u:1000:rwx", str(top / "home/user")])
    (top / "cache").mkdir()
    (top / "cache/big.tmp").write_text("excluded\n")
    (top / "cache/keep").write_text("kept\n")
    os.utime(top / "etc/passwd", (1_700_000_000, 1_700_000_000))


@pytest.fixture(scope="module")
def backup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    if os.geteuid() != 0:
        pytest.skip("chown and mknod need root")
    base = tmp_path_factory.mktemp("bset")
    root, efi, dest = base / "root", base / "efi", base / "dest"
    make_tree(root)
    (root / "boot/efi").mkdir(parents=True)
    (efi / "EFI/debian").mkdir(parents=True)
    (efi / "EFI/debian/grubx64.efi").write_bytes(os.urandom(4096))
    dest.mkdir()
    jobs = plan_archives([("fs2", "/", str(root), 64 << 20), ("fs1", "/boot/efi", str(efi), 4096)],
                         excludes=["*.tmp"])
    seen: list[tuple[int, int]] = []
    result = make_backup_set(jobs, dest, progress=lambda d, t: seen.append((d, t)))
    assert [a.file for a in result.archives] == ["fs2.tar.zst", "fs1.tar.zst"]
    assert seen and seen[-1][0] == result.raw_bytes and all(d <= t for d, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    record = make_backup_record(result, path="/asr/test")
    (dest / "record.json").write_text(json.dumps({"sha": record.manifest_sha256,
                                                  "archives": [a.__dict__ for a in record.archives]}))
    return root, efi, dest


def restore(dest: Path, target: Path) -> None:
    target.mkdir()
    extract_archive(dest / "fs2.tar.zst", target, Compression.ZSTD)
    extract_archive(dest / "fs1.tar.zst", target / "boot/efi", Compression.ZSTD)


def test_archives_restore_and_every_entry_matches(backup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, _, dest = backup
    target = tmp_path / "restored"
    restore(dest, target)
    assert verify_manifest(target, dest / MANIFEST_NAME) == []
    # and what verify checked is really there
    assert os.stat(target / "usr/bin/tool").st_ino == os.stat(target / "usr/bin/tool-again").st_ino
    assert stat.S_IMODE(os.stat(target / "usr/bin/tool").st_mode) == 0o4755
    assert os.readlink(target / "usr/bin/dangling") == "/nonexistent/target"
    st = os.stat(target / "dev/null", follow_symlinks=False)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.lstat(target / "dev/loop9").st_mode)
    assert stat.S_ISFIFO(os.lstat(target / "fifo").st_mode)
    assert (os.stat(target / "home/user").st_uid, os.stat(target / "etc/shadow").st_gid) == (1000, 42)
    assert os.getxattr(target / "etc/passwd", "user.asr.test") == b"value\x00\xff binary"
    assert "user:1000:r--" in run(["getfacl", "-n", str(target / "etc/shadow")]).stdout
    assert "default:user:1000:rwx" in run(["getfacl", "-n", str(target / "home/user")]).stdout
    sp = os.stat(target / "var.sparse")
    assert sp.st_size == (64 << 20) + 3 and sp.st_blocks * 512 < 1 << 20  # the hole stayed a hole
    assert (target / "boot/efi/EFI/debian/grubx64.efi").read_bytes() == (
        root.parent / "efi/EFI/debian/grubx64.efi").read_bytes()
    assert not (target / "cache/big.tmp").exists() and (target / "cache/keep").exists()


def test_manifest_lists_every_entry_with_its_facts(backup: tuple[Path, Path, Path]) -> None:
    root, _, dest = backup
    entries = {e.path: e for e in read_manifest(dest / MANIFEST_NAME)}
    walked = {"/" + str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(".tmp")}
    assert walked | {"/"} <= set(entries)
    assert "/cache/big.tmp" not in entries
    assert "/boot/efi/EFI/debian/grubx64.efi" in entries
    pw = entries["/etc/passwd"]
    assert (pw.type, pw.mode, pw.uid, pw.mtime, pw.size) == (EntryType.FILE, 0o644, 0, 1_700_000_000, 26)
    assert pw.sha256 == sha256_file(root / "etc/passwd")
    assert set(pw.xattrs) == {"user.asr.test"}
    assert entries["/etc/shadow"].acl == {"access": "user::rw-,user:1000:r--,group::r--,group:42:rw-,mask::rw-,"
                                                    "other::---"} and not entries["/etc/shadow"].xattrs
    assert entries["/home/user"].acl == {"default": "user::rwx,user:1000:rwx,group::r-x,mask::rwx,other::r-x"}
    tools = [entries["/usr/bin/tool"], entries["/usr/bin/tool-again"]]
    assert sorted(t.type for t in tools) == [EntryType.FILE, EntryType.HARDLINK]
    hard = next(t for t in tools if t.type is EntryType.HARDLINK)
    assert hard.link in ("/usr/bin/tool", "/usr/bin/tool-again") and hard.sha256 == tools[0].sha256 == tools[1].sha256
    assert (entries["/dev/null"].type, entries["/dev/null"].major, entries["/dev/null"].minor) == (EntryType.CHR, 1, 3)
    assert entries["/usr/bin/tool-link"].link == "tool"
    assert entries["/var.sparse"].sparse and entries["/var.sparse"].size == (64 << 20) + 3
    assert entries["/fifo"].type is EntryType.FIFO


def test_archives_are_real_zstd_tar(backup: tuple[Path, Path, Path]) -> None:
    _, _, dest = backup
    record = json.loads((dest / "record.json").read_text())
    for a in record["archives"]:
        assert sha256_file(dest / a["file"]) == a["sha256"] and (dest / a["file"]).stat().st_size == a["size"]
        run(["zstd", "-t", "-q", str(dest / a["file"])])
        listing = run(["tar", "--zstd", "-tvf", str(dest / a["file"])]).stdout.splitlines()
        assert len(listing) == a["entries"]
    assert sha256_file(dest / MANIFEST_NAME) == record["sha"]


def test_differences_are_reported(backup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, _, dest = backup
    target = tmp_path / "restored"
    restore(dest, target)
    (target / "etc/passwd").write_text("root:x:0:0::/root:/bin/bash\n")
    os.chmod(target / "etc/shadow", 0o644)
    os.chown(target / "home/user/notes", 0, 0)
    (target / "usr/bin/tool-again").unlink()
    shutil.copy(target / "usr/bin/tool", target / "usr/bin/tool-again")
    os.remove(target / "fifo")
    os.removexattr(target / "etc/passwd", "user.asr.test")
    whats = {(d.path, d.what) for d in verify_manifest(target, dest / MANIFEST_NAME)}
    assert {("/etc/passwd", "size"), ("/etc/shadow", "mode"), ("/home/user/notes", "uid"),
            ("/home/user/notes", "gid"), ("/fifo", "missing"), ("/etc/passwd", "xattrs")} <= whats
    assert ("/usr/bin/tool-again", "hardlink") in whats or ("/usr/bin/tool", "hardlink") in whats


def test_tampered_or_missing_archive_is_refused(backup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, _, dest = backup
    from recovery_env.model.descriptor import Archive, BackupSet

    rec = json.loads((dest / "record.json").read_text())
    bset = BackupSet("", "", "/asr/test", Compression.ZSTD, MANIFEST_NAME, rec["sha"], 0,
                     tuple(Archive(**a) for a in rec["archives"]))
    copy = tmp_path / "copy"
    shutil.copytree(dest, copy)
    check_backup_set(copy, bset)
    with open(copy / "fs1.tar.zst", "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    (copy / "fs2.tar.zst").unlink()
    with pytest.raises(BackupSetError) as ei:
        check_backup_set(copy, bset)
    assert "fs1.tar.zst: SHA-256" in str(ei.value) and "fs2.tar.zst: missing" in str(ei.value)
    with pytest.raises((ToolError, BackupSetError)):
        t = tmp_path / "t"
        t.mkdir()
        extract_archive(copy / "fs1.tar.zst", t, Compression.ZSTD, expected_sha256=rec["archives"][1]["sha256"])


def test_manifest_errors_say_where(tmp_path: Path) -> None:
    m = tmp_path / "MANIFEST"
    m.write_text('{"format": "asr-manifest", "version": 1}\n{"path": "/x"}\n')
    with pytest.raises(BackupSetError, match=r"MANIFEST line 2: not a manifest entry"):
        read_manifest(m)
    m.write_text('{"format": "other"}\n')
    with pytest.raises(BackupSetError, match=r"line 1: header"):
        read_manifest(m)


def test_tar_argv_plan() -> None:
    argv = plan_tar_argv("/mnt/sys/boot/efi", "/boot/efi", ["/boot/efi/EFI/old", "/var/cache", "*.swp"],
                         ["/boot/efi/asr"])
    assert argv[:2] == ("tar", "--create") and "--one-file-system" in argv and "--directory=/mnt/sys/boot/efi" in argv
    assert {"--format=pax", "--numeric-owner", "--xattrs", "--acls", "--selinux", "--sparse"} <= set(argv)
    i = argv.index("--anchored")
    assert argv[i:i + 4] == ("--anchored", "--exclude=./EFI/old", "--exclude=./asr", "--no-anchored")
    assert "--exclude=*.swp" in argv and not any("var/cache" in a for a in argv)
    assert argv[-1] == "."
    assert member_path("/boot/efi", ".") == "/boot/efi" and member_path("/", "./etc/x") == "/etc/x"
    assert member_path("/", ".") == "/" and member_path("/var", "./log/") == "/var/log"


@needs_root
def test_uncompressed_set_and_tar_failure(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    res = make_backup_set(plan_archives([("fs1", "/", str(src), 2)], compression=Compression.NONE), dest)
    assert res.archives[0].file == "fs1.tar" and res.file_count == 2
    run(["tar", "-tf", str(dest / "fs1.tar")])
    with pytest.raises(ToolError, match="tar --create"):
        make_backup_set(plan_archives([("fs1", "/", str(tmp_path / "absent"), 1)]), dest)


# ------------------------------------------------------------------------------------------------------------
# The incremental tar parser against Python's tarfile, on archives of every flavour
# ------------------------------------------------------------------------------------------------------------


def reference_entries(data: bytes, fs: str, mountpoint: str) -> list[ManifestEntry]:
    """The MANIFEST entries as tarfile reads the archive (the parser the capture used before TarStreamParser)."""
    contents: dict[str, tuple[int, str]] = {}
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|", encoding="utf-8", errors="surrogateescape") as tf:
        for ti in tf:
            etype = TAR_TYPES[ti.type]
            sha, size = "", ti.size
            if etype is EntryType.HARDLINK:
                size, sha = contents.get(ti.linkname, (0, ""))
            if etype is EntryType.FILE:
                f = tf.extractfile(ti)
                assert f is not None
                sha = hashlib.sha256(f.read()).hexdigest()
                contents[ti.name] = (size, sha)
            xattrs, acl = {}, {}
            for key, value in ti.pax_headers.items():  # GNU tar's "%3D"/"%25" in names: none in these trees
                raw = value.encode("utf-8", "surrogateescape")
                if key in ("SCHILY.xattr.system.posix_acl_access", "SCHILY.xattr.system.posix_acl_default"):
                    acl[key.rsplit("_", 1)[1]] = decode_posix_acl(raw, key)
                elif key.startswith("SCHILY.xattr."):
                    xattrs[key[13:]] = hashlib.sha256(raw).hexdigest()
                elif key == "RHT.security.selinux":
                    xattrs["security.selinux"] = hashlib.sha256(raw.rstrip(b"\0") + b"\0").hexdigest()
            link = ti.linkname if etype is EntryType.SYMLINK else (
                member_path(mountpoint, ti.linkname) if etype is EntryType.HARDLINK else "")
            dev = etype in (EntryType.CHR, EntryType.BLK)
            out.append(ManifestEntry(
                path=member_path(mountpoint, ti.name), fs=fs, type=etype, mode=ti.mode & 0o7777, uid=ti.uid,
                gid=ti.gid, mtime=math.floor(Fraction(ti.pax_headers.get("mtime", ti.mtime))),
                size=size if etype.has_content else 0, sha256=sha, link=link, major=ti.devmajor if dev else 0,
                minor=ti.devminor if dev else 0, sparse=ti.sparse is not None, xattrs=xattrs, acl=acl))
    return out


def parse_in_chunks(data: bytes, sizes: list[int]) -> list[ManifestEntry]:
    entries: list[ManifestEntry] = []
    parser = TarStreamParser(ManifestLister("fs9", "/srv", entries.append).add)
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        parser.feed(memoryview(data)[pos:pos + n])
        pos, i = pos + n, i + 1
    parser.close()
    return entries


def make_odd_tree(top: Path) -> None:
    """What stresses a tar parser: long and non-UTF-8 names, sizes around block boundaries, big ids and times,
    sparse files with several holes, binary xattrs, hard links to long names, long symlink targets."""
    make_tree(top)
    deep = top / ("d" * 90) / ("e" * 90) / ("f" * 90)
    deep.mkdir(parents=True)
    (deep / ("long-name-" + "x" * 150)).write_bytes(b"deep\n" * 300)
    os.link(deep / ("long-name-" + "x" * 150), top / "link-to-deep")
    os.symlink("/" + "t" * 200, top / "long-target")
    (top / "ünïcödé ✓").write_text("utf-8 name\n")
    (top / os.fsdecode(b"latin1-\xe9\xff")).write_bytes(b"raw bytes in the name\n")
    for n in (0, 1, 511, 512, 513, 10240, 10241, 65536 + 7):
        (top / f"size-{n}").write_bytes(bytes(range(256)) * (n // 256) + bytes(n % 256))
    os.chown(top / "size-1", 3_000_000, 2_500_000)  # above the ustar 7-digit octal limit
    os.utime(top / "size-511", (10**10, 10**10))  # after 2242: above 11 octal digits
    os.utime(top / "size-512", (-86400, -86400))
    with open(top / "holes", "wb") as f:
        for off in (8192, 1 << 20, 5 << 20):
            f.seek(off)
            f.write(os.urandom(3000))
        f.truncate(9 << 20)  # ends in a hole
    with open(top / "all-hole", "wb") as f:
        f.truncate(1 << 20)
    os.setxattr(top / "size-0", "user.bin", bytes(range(256)))
    os.setxattr(top / "size-0", "user.empty", b"")


FORMATS: dict[str, tuple[str, ...]] = {
    "pax": ("--format=pax", *TAR_ATTR_OPTIONS[1:]),
    "pax-sparse-0.1": ("--format=pax", "--sparse", "--sparse-version=0.1", "--numeric-owner"),
    "pax-sparse-0.0": ("--format=pax", "--sparse", "--sparse-version=0.0", "--numeric-owner"),
    "gnu": ("--format=gnu", "--sparse", "--numeric-owner"),
}


@needs_root
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_parser_matches_tarfile_on_gnu_tar_archives(fmt: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_odd_tree(src)
    data = run_bytes(["tar", "--create", "--file=-", *FORMATS[fmt], f"--directory={src}", "."])
    expected = reference_entries(data, "fs9", "/srv")
    assert len(expected) >= 39 and sum(e.sparse for e in expected) >= 3
    assert any(e.xattrs for e in expected) == ("--xattrs" in FORMATS[fmt])
    for sizes in ([1 << 20], [512], [1, 511, 513, 7, 4096], [10240, 3]):
        assert parse_in_chunks(data, sizes) == expected, sizes


def test_parser_matches_tarfile_on_python_archives() -> None:
    """ustar (name prefix), GNU (long names, base-256), pax with a global header, v7 (directories as "name/")."""
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        glob = {"SCHILY.xattr.user.everywhere": "g"} if fmt == tarfile.PAX_FORMAT else {}
        with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=glob) as tf:
            for i, (name, typ, size) in enumerate([
                    ("./" + "p" * 120 + "/" + "n" * 90, tarfile.REGTYPE, 700), ("./dir/", tarfile.DIRTYPE, 0),
                    ("./" + "q" * 97, tarfile.REGTYPE, 0), ("./fifo", tarfile.FIFOTYPE, 0),
                    ("./hard", tarfile.LNKTYPE, 0), ("./dev", tarfile.CHRTYPE, 0)]):
                ti = tarfile.TarInfo(name)
                ti.type, ti.size, ti.mode, ti.mtime = typ, size, 0o640, 1_700_000_000 + i
                ti.uid = 5_000_000 if fmt != tarfile.USTAR_FORMAT else 1000
                ti.linkname = "./" + "q" * 97 if typ == tarfile.LNKTYPE else ""
                ti.devmajor, ti.devminor = 8, 1
                tf.addfile(ti, io.BytesIO(os.urandom(size)) if size else None)
        data = buf.getvalue()
        expected = reference_entries(data, "fs9", "/srv")
        assert len(expected) == 6
        assert parse_in_chunks(data, [1]) == parse_in_chunks(data, [1 << 16]) == expected, fmt
    v7 = io.BytesIO()
    with tarfile.open(fileobj=v7, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        ti = tarfile.TarInfo("./olddir/")
        ti.type = tarfile.AREGTYPE
        tf.addfile(ti)
    entries = parse_in_chunks(v7.getvalue(), [100])
    assert entries == reference_entries(v7.getvalue(), "fs9", "/srv") and entries[0].type is EntryType.DIR


@needs_root
def test_parser_refuses_damaged_and_truncated_archives(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(3000))
    (src / "b").write_text("b\n")
    data = run_bytes(["tar", "--create", "--file=-", *TAR_ATTR_OPTIONS, f"--directory={src}", "."])
    parse_in_chunks(data, [4096])
    with pytest.raises(BackupSetError, match="truncated"):
        parse_in_chunks(data[:4096], [512])
    damaged = bytearray(data)
    damaged[512 * 2 + 10] ^= 0x20  # the name in the header of "./" (after its pax header and the pax data)
    with pytest.raises(BackupSetError, match="bad checksum"):
        parse_in_chunks(bytes(damaged), [4096])
    damaged = bytearray(data)
    damaged[512 + 1] ^= 0x20  # in the pax data: the record length "30" becomes "3\x10"
    with pytest.raises(BackupSetError, match="pax"):
        parse_in_chunks(bytes(damaged), [4096])


# ------------------------------------------------------------------------------------------------------------
# A running system: files that change while tar reads them
# ------------------------------------------------------------------------------------------------------------

# Run by tar at each checkpoint (every record, through sh -c): what it does depends on the file tar has open at
# that moment (/proc/<tar>/fd), so each file changes exactly while it is being read.
CHANGE_WHILE_READ = r"""
tar=$PPID
while [ "$(cat /proc/$tar/comm)" != tar ]; do tar=$(cut -d' ' -f4 /proc/$tar/stat); done
open=$(ls -l /proc/$tar/fd 2>/dev/null)
case "$open" in
  *1-grows.log*) echo "one more line" >> 1-grows.log ;;
  *2-rewritten.bin*) head -c 4096 /dev/urandom | dd of=2-rewritten.bin bs=4096 seek=3 conv=notrunc status=none ;;
  *3-shrinks.bin*) truncate -s 1000 3-shrinks.bin ;;
  *4-dir/0-big.bin*) rm -f 4-dir/gone-a 4-dir/gone-b ;;
esac
"""


def test_files_changed_while_read_are_named_and_the_manifest_has_what_was_archived(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "4-dir").mkdir(parents=True)
    (src / "1-grows.log").write_text("a log line\n" * 8000)
    original = os.urandom(200_000)
    for name in ("2-rewritten.bin", "3-shrinks.bin", "4-dir/0-big.bin"):
        (src / name).write_bytes(original)
    for name in ("4-dir/gone-a", "4-dir/gone-b", "5-stays"):
        (src / name).write_text(f"{name}\n")
    (job,) = plan_archives([("fs2", "/srv", str(src), 600_000)])
    script = tmp_path / "change-while-read.sh"
    script.write_text(f"cd {shlex.quote(str(src))}\n{CHANGE_WHILE_READ}")
    argv = list(job.tar_argv)
    argv[1:1] = ["--sort=name", "--checkpoint=1", f"--checkpoint-action=exec=sh {script}"]
    dest = tmp_path / "set"
    dest.mkdir()
    res = make_backup_set([dataclasses.replace(job, tar_argv=tuple(argv))], dest)

    changed = {(c.path, c.fs, c.change) for c in res.changed}
    assert {("/srv/1-grows.log", "fs2", ReadChange.CHANGED), ("/srv/2-rewritten.bin", "fs2", ReadChange.CHANGED),
            ("/srv/3-shrinks.bin", "fs2", ReadChange.SHRANK), ("/srv/4-dir/gone-a", "fs2", ReadChange.REMOVED),
            ("/srv/4-dir/gone-b", "fs2", ReadChange.REMOVED)} <= changed  # fmt: skip
    assert not {p for p, _, _ in changed} & {"/srv/5-stays", "/srv/4-dir/0-big.bin"}
    for c in res.changed:  # one named warning per file, tar's own words in it
        assert [w for w in res.warnings if w.startswith(f"{c.path} (fs2) {c.change.value} while read")] == [
            c.describe()], res.warnings
    assert "file changed as we read it" in next(c.tar_says for c in res.changed if c.path == "/srv/1-grows.log")
    assert not [w for w in res.warnings if "tar exit" in w]  # nothing else was said

    # the MANIFEST has the sums of what was archived, as GNU tar itself extracts it
    entries = {e.path: e for e in read_manifest(dest / MANIFEST_NAME)}
    archive = dest / res.archives[0].file
    for name in ("1-grows.log", "2-rewritten.bin", "3-shrinks.bin", "5-stays"):
        content = run_bytes(["tar", "--zstd", "-xOf", str(archive), f"./{name}"])
        assert (entries[f"/srv/{name}"].size, entries[f"/srv/{name}"].sha256) == (
            len(content), hashlib.sha256(content).hexdigest()), name
    shrunk = run_bytes(["tar", "--zstd", "-xOf", str(archive), "./3-shrinks.bin"])
    kept = shrunk.rstrip(b"\0")  # what tar read before the file shrank, then zeros up to the size it first saw
    assert len(shrunk) == 200_000 and len(kept) < 100_000 and original.startswith(kept)
    assert "/srv/4-dir/gone-a" not in entries and "/srv/4-dir/gone-b" not in entries
    # and the set restores to exactly its MANIFEST
    record = make_backup_record(res, path="/set")
    check_backup_set(dest, record)
    target = tmp_path / "restored"
    (target / "srv").mkdir(parents=True)
    extract_archive(archive, target / "srv", Compression.ZSTD)
    assert verify_manifest(target, dest / MANIFEST_NAME) == []


def test_tar_change_lines_are_parsed_with_tars_quoting() -> None:
    stderr = "\n".join([
        r"tar: ./\351raw: file changed as we read it",
        r"tar: ./nl\nx: file changed as we read it",
        r"tar: ./a\:b: File shrank by 1 byte; padding with zeros",
        r"tar: ./back\\slash: File removed before we read it",
        r"tar: ./caf\303\251: file changed as we read it",
        r"tar: .: file changed as we read it",
        "tar: ./sock: socket ignored",
        "tar: Exiting with failure status due to previous errors",
    ])  # fmt: skip
    changes, other = parse_tar_changes(stderr, "fs1", "/")
    assert [(c.path, c.change) for c in changes] == [
        ("/\udce9raw", ReadChange.CHANGED), ("/nl\nx", ReadChange.CHANGED), ("/a:b", ReadChange.SHRANK),
        ("/back\\slash", ReadChange.REMOVED), ("/café", ReadChange.CHANGED), ("/", ReadChange.CHANGED),
    ]  # fmt: skip
    assert other == ("tar: ./sock: socket ignored",)
    assert unquote_tar_name(r"./x\1y\\") == "./x\x01y\\"
    assert changes[2].to_json() == {"path": "/a:b", "fs": "fs1", "change": "shrank",
                                    "tar": r"./a\:b: File shrank by 1 byte; padding with zeros"}  # fmt: skip
