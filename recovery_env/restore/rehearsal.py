"""The rehearsal check: how a restored system proves, from inside, that it came up as captured.

Only when the rescue media were booted for a rehearsal (``asr.rehearsal=1`` on the kernel command line, which
`asr rehearse` adds; the disks are scratch disks), the restore plan gets one more step after the boot loader:
"install the rehearsal check".  It writes into the restored root, rendered from ``templates/rehearsal-check.*``:

- ``/etc/systemd/system/asr-rehearsal-check.service`` (``Type=exec``: it never holds the boot transaction) and a
  drop-in ``/etc/systemd/system/multi-user.target.d/asr-rehearsal-check.conf`` that wants it (a plain file: no
  symlink to make);
- ``/etc/asr-rehearsal/check.sh`` and ``/etc/asr-rehearsal/sums``: a deterministic sample of the backup set's
  MANIFEST (:func:`plan_check_sample`, ``sha256sum -c`` format).

At boot the script waits for ``systemctl is-system-running --wait``, then prints one line on ``/dev/ttyS0`` and the
console (:data:`CHECK_PREFIX` ... ``end``: systemd's state, failed units, hostname, each mount point of the
descriptor with its UUID and type as ``findmnt`` sees them, swap UUIDs, the sums result and the first bad path),
then removes every file it came with: the next boot of the restored disks is the system as restored.  A real
restore never gets the step (no ``asr.rehearsal``); a rehearsal's disks are thrown away anyway.

The harness (``builder/vm/rehearse.py``) reads the line with :func:`parse_check_line` and judges it against the
descriptor with :func:`judge_check`: one definition of the line for both sides.

Standard library only at import (this runs in the boot media); jinja2 when rendering.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from recovery_env.model.descriptor import Descriptor, FsType
from recovery_env.model.manifest import EntryType, ManifestEntry
from recovery_env.restore.newids import ID_DIRECTORIES, ID_FILES

CHECK_PREFIX = "ASR-REHEARSAL-CHECK"
UNIT_NAME = "asr-rehearsal-check.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
DROPIN_PATH = "/etc/systemd/system/multi-user.target.d/asr-rehearsal-check.conf"
CHECK_DIR = "/etc/asr-rehearsal"
SCRIPT_PATH = f"{CHECK_DIR}/check.sh"
SUMS_PATH = f"{CHECK_DIR}/sums"
#: What makes a system a systemd system (the step is skipped without it, and says so).
SYSTEMD_MARKS = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")

SAMPLE_LIMIT = 200  # files whose SHA-256 the restored system checks
SAMPLE_MAX_SIZE = 1 << 20  # larger files are left out: hashing under TCG costs boot time
STATE_WAIT_SECONDS = 600  # how long the script waits for systemd to settle

#: Paths a booting system, or the restore after the MANIFEST check, changes legitimately: never in the sample.
#: (The boot loader steps rewrite /boot/grub and the ESP; the fstab rewrite; files systemd and ldconfig refresh.)
VOLATILE_PREFIXES = (
    "/boot/grub/", "/boot/efi/", "/var/", "/tmp/", "/run/", "/proc/", "/sys/", "/dev/", CHECK_DIR + "/",
    "/etc/systemd/system/", "/boot/initrd.img", *(d + "/" for d in ID_DIRECTORIES),  # rebuilt, rewritten: new ids
)  # fmt: skip
VOLATILE_FILES = frozenset({
    "/etc/ld.so.cache", "/etc/adjtime", "/etc/resolv.conf", "/etc/machine-id", "/etc/fstab", "/etc/mtab",
    "/etc/.pwd.lock", "/etc/.updated", "/etc/blkid.tab", *ID_FILES,  # a restore with new ids rewrites ID_FILES
})  # fmt: skip
#: The root filesystem's groups (their share of the sample each); every other mounted filesystem is a group too.
ROOT_GROUPS = (("/etc/",), ("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"))
_SAFE_PATH = re.compile(r"/[\x21-\x7e]+")  # one word on a sha256sum line: no space, no control, no backslash


@dataclass(frozen=True)
class CheckFile:
    path: str  # absolute in the restored system
    text: str
    mode: int = 0o644


@dataclass(frozen=True)
class SampledFile:
    path: str
    sha256: str


def expected_mounts(descriptor: Descriptor) -> tuple[tuple[str, str, str], ...]:
    """(mount point, UUID, type) of each filesystem with files the restored system mounts at boot, in the
    descriptor's order (``noauto`` ones left out)."""
    out = []
    for m in descriptor.mounts:
        fs = next((f for f in descriptor.filesystems if f.key == m.filesystem), None)
        if fs is None or not fs.type.has_files or "noauto" in m.options.split(","):
            continue
        out.append((m.mountpoint, fs.uuid, fs.type.value))
    return tuple(out)


def expected_swaps(descriptor: Descriptor) -> tuple[str, ...]:
    return tuple(f.uuid for m in descriptor.mounts for f in descriptor.filesystems
                 if f.key == m.filesystem and f.type is FsType.SWAP
                 and "noauto" not in m.options.split(","))  # fmt: skip


def _spread(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()


def plan_check_sample(entries: Iterable[ManifestEntry], descriptor: Descriptor, *, limit: int = SAMPLE_LIMIT,
                      max_size: int = SAMPLE_MAX_SIZE) -> tuple[SampledFile, ...]:  # fmt: skip
    """Up to ``limit`` regular files of the MANIFEST whose SHA-256 the restored system checks: the root
    filesystem's /etc, /usr/bin and /usr/sbin and each other mounted filesystem, an equal share each, picked by the
    SHA-256 of their path (spread over the tree, the same every time); volatile paths, files over ``max_size``
    and paths that are not one printable word are left out.  The visible entry of a path is its last.  Pure."""
    mounted = {fs_key: mp for mp, fs_key in ((m.mountpoint, m.filesystem) for m in descriptor.mounts)}
    root_fs = next((k for k, mp in mounted.items() if mp == "/"), "")
    latest: dict[str, ManifestEntry] = {}
    for e in entries:
        latest[e.path] = e
    groups: dict[tuple[str, ...], list[ManifestEntry]] = {g: [] for g in ROOT_GROUPS}
    for e in latest.values():
        if e.type is not EntryType.FILE or e.size > max_size or not e.sha256 or e.fs not in mounted:
            continue
        if not _SAFE_PATH.fullmatch(e.path) or e.path in VOLATILE_FILES or e.path.startswith(VOLATILE_PREFIXES):
            continue
        if e.fs == root_fs:
            group = next((g for g in ROOT_GROUPS if e.path.startswith(g)), None)
            if group is not None:
                groups[group].append(e)
        else:
            groups.setdefault((mounted[e.fs],), []).append(e)
    filled = [g for g in groups.values() if g]
    if not filled or limit <= 0:
        return ()
    share = max(1, limit // len(filled))
    picked: list[SampledFile] = []
    for g in filled:
        picked += [SampledFile(e.path, e.sha256) for e in sorted(g, key=lambda e: _spread(e.path))[:share]]
    return tuple(sorted(picked[:limit], key=lambda s: s.path))


def render_check_files(descriptor: Descriptor, sample: Sequence[SampledFile]) -> tuple[CheckFile, ...]:
    """The files the step writes (templates/rehearsal-check.*), rendered for this descriptor and sample."""
    from recovery_env.templating import render

    ctx = {"prefix": CHECK_PREFIX, "unit": UNIT_NAME, "unit_path": UNIT_PATH, "dropin_path": DROPIN_PATH,
           "check_dir": CHECK_DIR, "script": SCRIPT_PATH, "sums": SUMS_PATH, "wait": STATE_WAIT_SECONDS,
           "mountpoints": [mp for mp, _, _ in expected_mounts(descriptor)]}  # fmt: skip
    return (
        CheckFile(SCRIPT_PATH, render("rehearsal-check.sh.j2", **ctx), 0o755),
        CheckFile(SUMS_PATH, "".join(f"{s.sha256}  {s.path}\n" for s in sample)),
        CheckFile(UNIT_PATH, render("rehearsal-check.service.j2", **ctx)),
        CheckFile(DROPIN_PATH, render("rehearsal-check.conf.j2", **ctx)),
    )


# ------------------------------------------------------------------------------------------ the harness's side


@dataclass(frozen=True)
class CheckLine:
    """What the restored system said about itself."""

    state: str  # systemctl is-system-running
    failed_units: tuple[str, ...]
    hostname: str
    mounts: tuple[tuple[str, str, str], ...]  # (mount point, UUID, type) as findmnt saw them ("-" / "none" if not)
    swaps: tuple[str, ...]
    sums_ok: int
    sums_total: int
    first_bad: str  # "" when every sum matched
    line: str


_LINE_RE = re.compile(
    CHECK_PREFIX + r" state=(?P<state>\S+) failed=(?P<failed>\S+) host=(?P<host>\S+) mounts=(?P<mounts>\S*) "
    r"swap=(?P<swap>\S+) sums=(?P<ok>\d+)/(?P<total>\d+) bad=(?P<bad>\S+) end"
)
#: The whole line as it appears on serial (for a harness waiting for it).
LINE_PATTERN = CHECK_PREFIX + r" state=[^\r\n]* end"


def _words(value: str) -> tuple[str, ...]:
    return () if value == "-" else tuple(w for w in value.split(",") if w)


def parse_check_line(text: str) -> CheckLine | None:
    """The first check line in ``text`` (serial console), or None.  Pure."""
    m = _LINE_RE.search(text)
    if m is None:
        return None
    mounts = []
    for item in _words(m.group("mounts")):
        mp, _, rest = item.rpartition(":")  # mp:uuid:type; a FAT UUID has no colon, a mount point may
        mp, _, uuid = mp.rpartition(":")
        mounts.append((mp, uuid, rest))
    return CheckLine(m.group("state"), _words(m.group("failed")), m.group("host"), tuple(mounts),
                     _words(m.group("swap")), int(m.group("ok")), int(m.group("total")),
                     "" if m.group("bad") == "-" else m.group("bad"), m.group(0))  # fmt: skip


def judge_check(check: CheckLine, descriptor: Descriptor) -> tuple[str, ...]:
    """What differs between the restored system's own account and the descriptor: systemd not ``running`` (with
    the failed units), another hostname, a mount point missing or with another UUID or type, a swap not active,
    a checksum that does not match.  Empty: the check passed.  Pure."""
    problems = []
    if check.state != "running":
        failed = f" (failed units: {', '.join(check.failed_units)})" if check.failed_units else ""
        problems.append(f"systemd says {check.state!r}, not 'running'{failed}")
    if check.hostname != descriptor.system.hostname:
        problems.append(f"hostname {check.hostname!r}, captured {descriptor.system.hostname!r}")
    seen = {mp: (uuid, fstype) for mp, uuid, fstype in check.mounts}
    for mp, uuid, fstype in expected_mounts(descriptor):
        got = seen.get(mp)
        if got is None or got[1] in ("", "none"):
            problems.append(f"{mp} is not mounted (captured: {fstype} {uuid})")
        elif (got[0].lower(), got[1]) != (uuid.lower(), fstype):
            problems.append(f"{mp} is {got[1]} {got[0]}, captured {fstype} {uuid}")
    active = {s.lower() for s in check.swaps}
    for uuid in expected_swaps(descriptor):
        if uuid.lower() not in active:
            problems.append(f"swap {uuid} is not active")
    if check.sums_total == 0:
        problems.append("no file checksum was checked (empty sample)")
    elif check.sums_ok != check.sums_total:
        problems.append(f"{check.sums_total - check.sums_ok} of {check.sums_total} file checksums differ "
                        f"(first: {check.first_bad})")  # fmt: skip
    return tuple(problems)
