"""A btrfs filesystem's subvolumes, read from its top level (``subvolid=5``) mounted read-only in a private place.

Pure parsers of ``btrfs subvolume list -p`` and ``btrfs subvolume get-default`` output, the subvolume a mount's
options select (:func:`mount_subvolume`), where a path of the captured system lies in the top level
(:func:`top_level_path`), and thin readers: :func:`mount_top_level`, :func:`read_subvolumes`.

Why the top level: subvolumes are directories of it, nested ones too, so ONE archive of the top level holds every
subvolume, snapshots included, each once (the system's fstab may mount several of them, ``subvol=@`` at / and
``subvol=@home`` at /home; archiving those mounts would miss the unmounted ones and could archive one twice).

Standard library only: this module also runs inside the boot media (offline capture).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from recovery_env.errors import LayoutError, ToolError
from recovery_env.model.descriptor import BTRFS_TOP_LEVEL, Mount, Subvolume
from recovery_env.run import run

# ``btrfs subvolume list -p``: "ID 259 gen 7 parent 258 top level 258 path @snapshots/1/snapshot"
_LIST_RE = re.compile(r"^ID (\d+) gen \d+ (?:cgen \d+ )?parent (\d+) top level \d+ path (.*)$")
# ``btrfs subvolume get-default``: "ID 256 gen 7 top level 5 path @" or "ID 5 (FS_TREE)"
_DEFAULT_RE = re.compile(r"^ID (\d+)\b")

COMPRESSION_XATTR = "btrfs.compression"  # the btrfs property "compression" of an inode, as an xattr


@dataclass(frozen=True)
class ListedSubvolume:
    id: int
    parent: int
    path: str


def parse_subvolume_list(text: str, where: str = "btrfs subvolume list") -> tuple[ListedSubvolume, ...]:
    """``btrfs subvolume list -p TOP`` (run on the top level: paths relative to it) → subvolumes, in id order."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LIST_RE.match(line)
        if m is None:
            raise LayoutError(f"{where} line {n}: cannot read {line!r}")
        path = m.group(3)
        if path.startswith("<FS_TREE>/"):
            path = path[len("<FS_TREE>/"):]
        out.append(ListedSubvolume(int(m.group(1)), int(m.group(2)), path))
    return tuple(sorted(out, key=lambda s: s.id))


def parse_default(text: str, where: str = "btrfs subvolume get-default") -> int:
    m = _DEFAULT_RE.match(text.strip())
    if m is None:
        raise LayoutError(f"{where}: cannot read {text.strip()!r}")
    return int(m.group(1))


def make_subvolumes(fs_key: str, listed: Sequence[ListedSubvolume], readonly: Iterable[int],
                    compression: Mapping[int, str]) -> tuple[Subvolume, ...]:  # fmt: skip
    """The descriptor's records of one filesystem's subvolumes.  Pure."""
    ro = set(readonly)
    return tuple(Subvolume(fs_key, s.path, s.id, s.parent, s.id in ro, compression.get(s.id, "")) for s in listed)


def mount_subvolume(options: str, subvolumes: Sequence[Subvolume], default: int) -> str | None:
    """The path (relative to the top level, "" for the top level itself) of the subvolume a mount with these
    fstab ``options`` shows: ``subvol=``, else ``subvolid=``, else the default subvolume.  None when the options
    name a subvolume that is not listed.  Pure."""
    opts = dict(o.partition("=")[::2] for o in options.split(",") if o)
    if "subvol" in opts:
        path = opts["subvol"].strip("/")
        return path if path == "" or any(s.path == path for s in subvolumes) else None
    wanted = int(opts["subvolid"]) if opts.get("subvolid", "").isdigit() else default
    if wanted in (BTRFS_TOP_LEVEL, 0):
        return ""
    return next((s.path for s in subvolumes if s.id == wanted), None)


def top_level_path(path: str, mounts: Sequence[Mount], subvolumes: Sequence[Subvolume], default: int) -> str | None:
    """Where an absolute path of the captured system lies in the top level of the filesystem these ``mounts``
    (its fstab lines) mount: through the deepest mount point that holds it ("/home/u" with ``subvol=@home`` at
    /home → "@home/u"; "" is the top level itself).  None when no mount of this filesystem holds it.  Pure."""
    best: tuple[int, str] | None = None
    for m in mounts:
        mp = m.mountpoint.rstrip("/") or "/"
        if path != mp and not path.startswith(mp.rstrip("/") + "/"):
            continue
        sub = mount_subvolume(m.options, subvolumes, default)
        if sub is None:
            continue
        rel = path[len(mp):].strip("/")
        where = "/".join(p for p in (sub, rel) if p)
        if best is None or len(mp) > best[0]:
            best = (len(mp), where)
    return best[1] if best else None


def mount_top_level(device: str, already_mounted: bool) -> Path:
    """Mount the top level of the btrfs on ``device`` read-only in a new private directory; return it.
    ``rescue=nologreplay`` (nothing written, not even a log replay; kernels since 5.9) only when the filesystem is
    not mounted yet: the kernel refuses it on a second mount of a mounted btrfs."""
    top = Path(tempfile.mkdtemp(prefix="asr-btrfs-top-"))
    opts = "ro,subvolid=5" if already_mounted else "ro,rescue=nologreplay,subvolid=5"
    try:
        run(["mount", "-t", "btrfs", "-o", opts, device, str(top)])
    except (ToolError, OSError):
        os.rmdir(top)
        raise
    return top


def unmount_top_level(top: Path) -> None:
    run(["umount", str(top)], check=False)
    try:
        os.rmdir(top)
    except OSError:
        pass


@dataclass(frozen=True)
class BtrfsFacts:
    subvolumes: tuple[Subvolume, ...]
    default: int


def read_subvolumes(top: Path, fs_key: str) -> BtrfsFacts:
    """Every subvolume of the filesystem whose top level is mounted at ``top``: ids, parents, paths (``btrfs
    subvolume list -p``), read-only flags (``-r``), the compression property (the ``btrfs.compression`` xattr of
    its root directory), and the default subvolume (``get-default``)."""
    listed = parse_subvolume_list(run(["btrfs", "subvolume", "list", "-p", str(top)]).stdout)
    readonly = [s.id for s in parse_subvolume_list(run(["btrfs", "subvolume", "list", "-p", "-r", str(top)]).stdout)]
    compression: dict[int, str] = {}
    for s in listed:
        try:
            value = os.getxattr(top / s.path, COMPRESSION_XATTR, follow_symlinks=False)
        except OSError:
            continue
        compression[s.id] = value.decode("ascii", "replace").rstrip("\0")
    default = parse_default(run(["btrfs", "subvolume", "get-default", str(top)]).stdout)
    return BtrfsFacts(make_subvolumes(fs_key, listed, readonly, compression), default)
