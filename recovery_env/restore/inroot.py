"""Paths under the target root, resolved as if the root were ``/`` (``openat2(RESOLVE_IN_ROOT)`` semantics).

A restored filesystem is data from a backup: its symlinks (``/target/boot -> /elsewhere``, ``etc -> ../../..``)
must never send a later step (a mount, an extraction, the fstab rewrite, the run's log) outside the target.
Python has no openat2 wrapper, so the walk is done here, one component at a time, on directory descriptors
opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to the previous one: a symlink is read with ``readlink`` and
its target walked in turn, an absolute target from the root, ``..`` never above the root.  Whatever the links
say, every directory opened is inside the root.  A loop, a chain longer than the kernel's 40 links, a file where
a directory is needed: :class:`~recovery_env.errors.TargetPathError`, naming the path and the symlink.

Standard library only (this runs in the boot media).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from recovery_env.errors import TargetPathError

MAX_SYMLINKS = 40  # as the kernel (ELOOP after 40 links in one lookup)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _relative(root: str, path: str) -> str:
    """``path`` (absolute under ``root``, or relative to it) as a path relative to the root."""
    root = os.path.normpath(root)
    if not os.path.isabs(path):
        return path
    if path.rstrip("/") != root and not path.startswith(root.rstrip("/") + "/"):  # not normalised: ".." is walked
        raise TargetPathError(f"{path} is not under the target root {root}", path=path)
    return path[len(root):].lstrip("/")


@contextmanager
def walk_in_root(root: str, path: str, *, create: bool = False) -> Iterator[tuple[int, str, str]]:
    """Walk ``path`` inside ``root``: yield ``(dirfd, name, resolved)``: an open descriptor of the directory that
    holds the last component, that component's name (``"."`` when the path is a directory all the way, as the
    root itself) and the resolved absolute path.  The last component may be missing or a file; a symlink there is
    followed too.  ``create``: missing directories on the way are made (mode 0755), inside the root."""
    root = os.path.normpath(root)
    parts = [p for p in _relative(root, path).split("/") if p not in ("", ".")]
    if create:
        os.makedirs(root, exist_ok=True)  # the root itself (the rescue system's /target) is trusted
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    names: list[str] = []
    hops = 0
    link = ""  # the last symlink followed, for the error message

    def here() -> str:
        return os.path.join(root, *names)

    def fail(what: str) -> TargetPathError:
        via = f" (through the symlink {link})" if link else ""
        return TargetPathError(f"{path}: {what}{via}; refused: it must resolve inside {root}", path=path, symlink=link)

    try:
        while parts:
            name = parts.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if names:  # never above the root
                    names.pop()
                    os.close(fds.pop())
                continue
            last = all(p in ("", ".") for p in parts)
            try:
                st: os.stat_result | None = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                hops += 1
                target = os.readlink(name, dir_fd=fds[-1])
                link = f"{os.path.join(here(), name)} -> {target}"
                if hops > MAX_SYMLINKS:
                    raise fail(f"more than {MAX_SYMLINKS} symlinks (a loop)")
                if target.startswith("/"):  # absolute: from the root, not from /
                    while names:
                        names.pop()
                        os.close(fds.pop())
                parts[:0] = target.split("/")
                continue
            if last and (st is None or not stat.S_ISDIR(st.st_mode)) and not create:
                yield fds[-1], name, os.path.join(here(), name)
                return
            if st is None:
                if not create:
                    raise fail(f"{os.path.join(here(), name)} does not exist")
                try:
                    os.mkdir(name, 0o755, dir_fd=fds[-1])
                except FileExistsError:
                    pass
            elif not stat.S_ISDIR(st.st_mode):
                raise fail(f"{os.path.join(here(), name)} is not a directory")
            try:
                fds.append(os.open(name, _DIR_FLAGS, dir_fd=fds[-1]))
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):  # changed under us
                    raise fail(f"{os.path.join(here(), name)} changed while it was resolved") from e
                raise
            names.append(name)
        yield fds[-1], ".", here()
    finally:
        for fd in fds:
            os.close(fd)


def resolve_in_root(root: str, path: str, *, create: bool = False) -> str:
    """The real path of ``path`` with every symlink resolved inside ``root`` (see :func:`walk_in_root`); with
    ``create`` the directory is made (inside the root) when missing."""
    with walk_in_root(root, path, create=create) as (_, _, resolved):
        return resolved


def read_in_root(root: str, path: str) -> str:
    """The text of a file under ``root``, every symlink on the way resolved inside it."""
    with walk_in_root(root, path) as (dirfd, name, _):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        with os.fdopen(fd, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()


def write_in_root(root: str, path: str, text: str, *, mode: int = 0o644, create_dirs: bool = False) -> str:
    """Write ``text`` to a file under ``root`` (every symlink on the way resolved inside it, a symlink at the end
    too): through a temporary file in the same directory and a rename, so the file is whole or untouched.
    Returns the path written."""
    if create_dirs:
        resolve_in_root(root, os.path.dirname(os.path.join(root, _relative(root, path))), create=True)
    with walk_in_root(root, path) as (dirfd, name, resolved):
        if name == ".":
            raise TargetPathError(f"{path} is a directory, not a file", path=path)
        try:
            mode = stat.S_IMODE(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)  # keep the file's mode
        except FileNotFoundError:
            pass
        tmp = name + ".asr-new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dirfd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
                os.fchmod(f.fileno(), mode)
                f.write(text)
            os.replace(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dirfd)
            except OSError:
                pass
            raise
        return resolved
