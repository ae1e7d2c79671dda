"""The one subprocess choke point of asr, on the host and inside the boot media.

Every external command goes through :func:`run`: it logs the command line (``shlex.join``), runs it, and raises
:class:`~recovery_env.errors.ToolError` carrying argv, exit code, stdout and stderr when it fails.

Unit tests can forbid subprocesses entirely with ``ASR_FORBID_SUBPROCESS=1`` (planners must be pure).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import queue
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from recovery_env.errors import InternalError, ToolError, ToolMissingError

log = logging.getLogger("asr.run")


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    input: bytes | str | None = None,
    capture: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return the completed process (text mode).  Raise ToolError on a non-zero exit."""
    args = _checked_argv(argv, env)
    log.debug("+ %s", shlex.join(args))
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        args,
        input=data,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout.decode(errors="replace") if capture and proc.stdout is not None else ""
    err = proc.stderr.decode(errors="replace") if capture and proc.stderr is not None else ""
    if check and proc.returncode != 0:
        raise ToolError(args, proc.returncode, out, err)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def run_bytes(argv: Sequence[str | os.PathLike[str]], *, input: bytes | None = None) -> bytes:
    """Run ``argv`` and return its stdout as bytes (for binary output).  Raise ToolError on failure."""
    args = _checked_argv(argv)
    log.debug("+ %s", shlex.join(args))
    proc = subprocess.run(args, input=input, capture_output=True, check=False)
    if proc.returncode != 0:
        raise ToolError(args, proc.returncode, "", proc.stderr.decode(errors="replace"))
    return proc.stdout


def _search_path(env: Mapping[str, str] | None) -> str | None:
    if env is not None and "PATH" in env:
        return env["PATH"]
    return None


# --------------------------------------------------------------------------------------------------------------
# Streaming pipelines (archives).  Capture: the producer's bytes pass through Python (counted, parsed, hashed:
# memoryviews of one reused buffer, no copies), the filter writes the archive file itself.  Restore: the first
# command reads the archive file itself; Python only watches how far it got.
# --------------------------------------------------------------------------------------------------------------

PIPE_SIZE = 1 << 20  # bytes (F_SETPIPE_SZ): fewer, larger reads and writes than the default 64 KiB


@dataclass(frozen=True)
class StreamResult:
    in_bytes: int  # bytes the producer wrote (before the filter)
    out_bytes: int  # bytes of the sink file (after the filter)
    sha256: str  # of the sink file
    returncode: int  # the producer's exit code (one of ok_codes)
    stderr: str  # the producer's stderr (warnings when returncode != 0)


def run_pipe(
    producer: Sequence[str | os.PathLike[str]],
    filter: Sequence[str | os.PathLike[str]] | None,
    sink: Path,
    *,
    on_data: Callable[[memoryview], None] | None = None,
    ok_codes: Sequence[int] = (0,),
    chunk_size: int = 1 << 20,
    env: Mapping[str, str] | None = None,
) -> StreamResult:
    """``producer | filter > sink``, with Python in the middle: every chunk of the producer's output goes to the
    filter's stdin and then to ``on_data`` (count, parse, hash: a memoryview valid during the call only).  The
    filter writes the file ``sink`` itself; a thread hashes the file (SHA-256) as it grows.  ``filter=None``
    writes the producer's output to the sink as it is.  Raise ToolError when the producer exits with a code
    outside ``ok_codes`` or the filter fails; an exception of ``on_data`` stops both and propagates.  ``env``:
    variables added to the producer's environment (as :func:`run`'s)."""
    pargs = _checked_argv(producer, env)
    fargs = _checked_argv(filter) if filter is not None else None
    log.debug("+ %s%s > %s", shlex.join(pargs), f" | {shlex.join(fargs)}" if fargs else "", sink)
    in_bytes = 0
    worker = ChunkWorker(on_data, chunk_size)
    with tempfile.TemporaryFile() as perr, tempfile.TemporaryFile() as ferr, open(sink, "wb") as out:
        follower = FileDigest(sink)
        prod = subprocess.Popen(pargs, stdout=subprocess.PIPE, stderr=perr,
                                env=None if env is None else {**os.environ, **env})
        try:
            filt = subprocess.Popen(fargs, stdin=subprocess.PIPE, stdout=out, stderr=ferr) if fargs else None
        except BaseException:
            prod.kill()
            prod.wait()
            follower.finish()
            raise
        try:
            assert prod.stdout is not None
            src = prod.stdout.fileno()
            dst = out.fileno()
            _grow_pipe(src)
            if filt is not None:
                assert filt.stdin is not None
                dst = filt.stdin.fileno()
                _grow_pipe(dst)
            follower.start()
            worker.start()
            while True:
                worker.check()
                buf = worker.take()
                n = os.readv(src, [buf])
                if not n:
                    worker.put_back(buf)
                    break
                try:
                    _write_all(dst, memoryview(buf)[:n])
                except BrokenPipeError:  # the filter died: its exit code tells why
                    worker.put_back(buf)
                    prod.kill()
                    break
                in_bytes += n
                worker.give(buf, n)
            worker.finish()
        except BaseException:
            prod.kill()
            if filt is not None:
                filt.kill()
            worker.finish(check=False)
            raise
        finally:
            if filt is not None and filt.stdin is not None:
                try:
                    filt.stdin.close()
                except BrokenPipeError:
                    pass
            prc = prod.wait()
            frc = filt.wait() if filt is not None else 0
            if prod.stdout is not None:
                prod.stdout.close()
            digest, out_bytes = follower.finish()
        perr.seek(0)
        ferr.seek(0)
        ptext = perr.read().decode(errors="replace")
        if frc != 0 and fargs is not None:
            raise ToolError(fargs, frc, "", ferr.read().decode(errors="replace"))
        if prc not in ok_codes:
            raise ToolError(pargs, prc, "", ptext)
        size = os.fstat(out.fileno()).st_size
    if size != out_bytes:
        raise InternalError(f"{sink}: hashed {out_bytes} bytes but the file has {size}")
    return StreamResult(in_bytes, out_bytes, digest, prc, ptext)


class ChunkWorker:
    """Runs ``on_data`` in a thread of its own over the chunks the I/O loop hands it (a pool of reused buffers),
    so that moving bytes from one process to the other does not wait while Python parses and hashes them (those
    release the GIL for large buffers).  ``on_data=None``: the buffers just cycle."""

    def __init__(self, on_data: Callable[[memoryview], None] | None, chunk_size: int, buffers: int = 8) -> None:
        self.on_data = on_data
        self.free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self.full: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        for _ in range(buffers if on_data is not None else 1):
            self.free.put(bytearray(chunk_size))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="stream worker")
        self.running = False

    def start(self) -> None:
        if self.on_data is not None:
            self.running = True
            self.thread.start()

    def take(self) -> bytearray:
        return self.free.get()

    def put_back(self, buf: bytearray) -> None:
        self.free.put(buf)

    def give(self, buf: bytearray, n: int) -> None:
        if self.running:
            self.full.put((buf, n))
        else:
            self.free.put(buf)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        assert self.on_data is not None
        while (item := self.full.get()) is not None:
            buf, n = item
            if self.error is None:
                try:
                    with memoryview(buf) as view:
                        self.on_data(view[:n])
                except BaseException as e:  # raised in the I/O loop (check) or by finish
                    self.error = e
            self.free.put(buf)

    def finish(self, check: bool = True) -> None:
        """Wait until every chunk handed over is processed; raise what ``on_data`` raised (``check``)."""
        if self.running:
            self.running = False
            self.full.put(None)
            self.thread.join()
        if check:
            self.check()


class FileDigest:
    """SHA-256 of a file that another process is still writing: a thread reads what is there and waits for more
    until :meth:`finish` says the writer is done, then reads to the end."""

    def __init__(self, path: Path, chunk_size: int = 1 << 20) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.done = threading.Event()
        self.h = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None
        self.buf = bytearray(chunk_size)
        self.thread = threading.Thread(target=self._follow, daemon=True, name=f"sha256 {path.name}")
        self.started = False

    def start(self) -> None:
        self.started = True
        self.thread.start()

    def _follow(self) -> None:
        view = memoryview(self.buf)
        try:
            while True:
                done = self.done.is_set()
                n = os.readv(self.fd, [self.buf])
                if n:
                    self.h.update(view[:n])
                    self.size += n
                elif done:
                    return
                else:
                    self.done.wait(0.01)
        except BaseException as e:  # reported by finish()
            self.error = e

    def finish(self) -> tuple[str, int]:
        """The writer is done: (SHA-256, bytes) of the whole file."""
        self.done.set()
        try:
            if not self.started:
                self._follow()
            else:
                self.thread.join()
        finally:
            os.close(self.fd)
        if self.error is not None:
            raise self.error
        return self.h.hexdigest(), self.size


def run_feed(
    chain: Sequence[Sequence[str | os.PathLike[str]]],
    source: Path,
    *,
    on_progress: Callable[[int], None] | None = None,
    interval: float = 0.5,
) -> int:
    """``chain[0] < source | chain[1] | ...`` (e.g. ``zstd -dc | tar -x``): the first command reads the file
    itself.  Every ``interval`` seconds ``on_progress`` gets how far it has read (the offset of the open file it
    shares with this process).  Return the bytes read; raise ToolError for the first failing command (one killed
    by SIGPIPE only when no other failed: its reader's error is the cause).  The last command's stdout is
    discarded."""
    argvs = [_checked_argv(a) for a in chain]
    log.debug("+ %s < %s", " | ".join(shlex.join(a) for a in argvs), source)
    errs = [tempfile.TemporaryFile() for _ in argvs]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(source, "rb", buffering=0) as src:
            fd = src.fileno()
            prev: IO[bytes] = src
            for i, a in enumerate(argvs):
                last = i == len(argvs) - 1
                p = subprocess.Popen(a, stdin=prev, stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                                     stderr=errs[i])
                if i:
                    prev.close()  # the child holds it now
                procs.append(p)
                if p.stdout is not None:
                    _grow_pipe(p.stdout.fileno())
                    prev = p.stdout

            def tick() -> None:
                if on_progress is not None:
                    on_progress(os.lseek(fd, 0, os.SEEK_CUR))

            _wait_ticking(procs[-1], interval, tick)
            codes = [p.wait() for p in procs]
            done = os.lseek(fd, 0, os.SEEK_CUR)
        # the command that failed first in the chain, unless it only died of a broken pipe (its reader failed)
        failed = [i for i, rc in enumerate(codes) if rc != 0]
        for i in [i for i in failed if codes[i] != -signal.SIGPIPE] + failed:
            errs[i].seek(0)
            raise ToolError(argvs[i], codes[i], "", errs[i].read().decode(errors="replace"))
        if on_progress is not None:
            on_progress(done)
        return done
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        raise
    finally:
        for e in errs:
            e.close()


def _wait_ticking(proc: subprocess.Popen[bytes], interval: float, tick: Callable[[], object]) -> None:
    """Wait for ``proc`` to exit, calling ``tick`` every ``interval`` seconds meanwhile (a pidfd wakes the wait
    when it exits; without pidfd support, Popen.wait's own polling)."""
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except (OSError, AttributeError):
        pidfd = None
    try:
        while proc.poll() is None:
            if pidfd is not None:
                select.select([pidfd], [], [], interval)
            else:
                try:
                    proc.wait(timeout=interval)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                tick()
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _grow_pipe(fd: int) -> None:
    """Make a pipe PIPE_SIZE bytes large when the kernel allows it (else it keeps its size)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError):
        pass


def start(argv: Sequence[str | os.PathLike[str]], **popen: Any) -> subprocess.Popen[bytes]:
    """Start a long-running process (QEMU) through the same checks and log line as :func:`run`; the caller owns
    the process (its pipes, its wait)."""
    args = _checked_argv(argv, popen.get("env"))
    log.debug("+ %s &", shlex.join(args))
    return subprocess.Popen(args, **popen)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _checked_argv(argv: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None = None) -> list[str]:
    """The argv as strings, after the two checks every command passes: subprocesses allowed here (planners run
    with ASR_FORBID_SUBPROCESS=1 in tests), and the program exists (ToolMissingError names it)."""
    args = [os.fspath(a) for a in argv]
    if os.environ.get("ASR_FORBID_SUBPROCESS") == "1":
        raise InternalError(f"subprocess forbidden in this context: {shlex.join(args)}")
    if shutil.which(args[0], path=_search_path(env)) is None and not Path(args[0]).is_file():
        raise ToolMissingError(args[0])
    return args
