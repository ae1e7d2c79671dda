"""The one subprocess choke point of asr, on the host and inside the boot media.

Every external command goes through :func:`run`: it logs the command line (``shlex.join``), runs it, and raises
:class:`~recovery_env.errors.ToolError` carrying argv, exit code, stdout and stderr when it fails.

Unit tests can forbid subprocesses entirely with ``ASR_FORBID_SUBPROCESS=1`` (planners must be pure).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

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
# Streaming pipelines (archives): bytes flow through Python so that they can be counted, hashed and teed.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamResult:
    in_bytes: int  # bytes the producer wrote (before the filter)
    out_bytes: int  # bytes written to the sink (after the filter)
    sha256: str  # of the bytes written to the sink
    returncode: int  # the producer's exit code (one of ok_codes)
    stderr: str  # the producer's stderr (warnings when returncode != 0)


def run_pipe(
    producer: Sequence[str | os.PathLike[str]],
    filter: Sequence[str | os.PathLike[str]] | None,
    sink: BinaryIO,
    *,
    on_chunk: Callable[[bytes], None] | None = None,
    ok_codes: Sequence[int] = (0,),
    chunk_size: int = 1 << 20,
) -> StreamResult:
    """``producer | filter > sink``, with Python in the middle: every chunk of the producer's output goes to
    ``on_chunk`` (count, tee, parse) and to the filter's stdin; the filter's output is written to ``sink`` and
    hashed (SHA-256).  ``filter=None`` writes the producer's output to the sink as it is.  Raise ToolError when
    the producer exits with a code outside ``ok_codes`` or the filter fails."""
    pargs = _checked_argv(producer)
    fargs = _checked_argv(filter) if filter is not None else None
    log.debug("+ %s%s", shlex.join(pargs), f" | {shlex.join(fargs)}" if fargs else "")
    digest = hashlib.sha256()
    out_bytes = 0
    in_bytes = 0
    with tempfile.TemporaryFile() as perr, tempfile.TemporaryFile() as ferr:
        prod = subprocess.Popen(pargs, stdout=subprocess.PIPE, stderr=perr)
        filt = (
            subprocess.Popen(fargs, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=ferr)
            if fargs is not None
            else None
        )
        drain_error: list[BaseException] = []

        def drain() -> None:
            nonlocal out_bytes
            assert filt is not None and filt.stdout is not None
            try:
                while chunk := filt.stdout.read(chunk_size):
                    sink.write(chunk)
                    digest.update(chunk)
                    out_bytes += len(chunk)
            except BaseException as e:  # reported by the main thread
                drain_error.append(e)
                while filt.stdout.read(chunk_size):
                    pass

        drainer = threading.Thread(target=drain, daemon=True) if filt is not None else None
        if drainer is not None:
            drainer.start()
        assert prod.stdout is not None
        try:
            while chunk := prod.stdout.read(chunk_size):
                in_bytes += len(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
                if filt is not None:
                    assert filt.stdin is not None
                    try:
                        filt.stdin.write(chunk)
                    except BrokenPipeError:  # the filter died: its exit code tells why
                        prod.kill()
                        break
                else:
                    sink.write(chunk)
                    digest.update(chunk)
                    out_bytes += len(chunk)
        except BaseException:
            prod.kill()
            if filt is not None:
                filt.kill()
            raise
        finally:
            if filt is not None and filt.stdin is not None:
                try:
                    filt.stdin.close()
                except BrokenPipeError:
                    pass
            prc = prod.wait()
            frc = filt.wait() if filt is not None else 0
            if drainer is not None:
                drainer.join()
        if drain_error:
            raise drain_error[0]
        perr.seek(0)
        ferr.seek(0)
        ptext = perr.read().decode(errors="replace")
        if frc != 0 and fargs is not None:
            raise ToolError(fargs, frc, "", ferr.read().decode(errors="replace"))
        if prc not in ok_codes:
            raise ToolError(pargs, prc, "", ptext)
    return StreamResult(in_bytes, out_bytes, digest.hexdigest(), prc, ptext)


def run_feed(
    chain: Sequence[Sequence[str | os.PathLike[str]]],
    source: BinaryIO,
    *,
    on_chunk: Callable[[bytes], None] | None = None,
    chunk_size: int = 1 << 20,
) -> str:
    """Feed ``source`` into ``chain[0] | chain[1] | ...`` (e.g. ``zstd -dc | tar -x``), calling ``on_chunk`` for
    every chunk fed (progress).  Return the SHA-256 of what was fed; raise ToolError for the first failing
    command.  The last command's stdout is discarded."""
    argvs = [_checked_argv(a) for a in chain]
    log.debug("+ %s", " | ".join(shlex.join(a) for a in argvs))
    digest = hashlib.sha256()
    errs = [tempfile.TemporaryFile() for _ in argvs]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        prev: IO[bytes] | None = None
        for i, a in enumerate(argvs):
            last = i == len(argvs) - 1
            p = subprocess.Popen(
                a,
                stdin=subprocess.PIPE if prev is None else prev,
                stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                stderr=errs[i],
            )
            if prev is not None:
                prev.close()  # the child holds it now
            prev = p.stdout
            procs.append(p)
        head = procs[0].stdin
        assert head is not None
        try:
            while chunk := source.read(chunk_size):
                digest.update(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
                head.write(chunk)
        except BrokenPipeError:
            pass  # a command died early: its exit code tells why
        finally:
            try:
                head.close()
            except BrokenPipeError:
                pass
        codes = [p.wait() for p in procs]
        for a, rc, err in zip(argvs, codes, errs, strict=True):
            if rc != 0:
                err.seek(0)
                raise ToolError(a, rc, "", err.read().decode(errors="replace"))
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        raise
    finally:
        for e in errs:
            e.close()
    return digest.hexdigest()


def _checked_argv(argv: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None = None) -> list[str]:
    """The argv as strings, after the two checks every command passes: subprocesses allowed here (planners run
    with ASR_FORBID_SUBPROCESS=1 in tests), and the program exists (ToolMissingError names it)."""
    args = [os.fspath(a) for a in argv]
    if os.environ.get("ASR_FORBID_SUBPROCESS") == "1":
        raise InternalError(f"subprocess forbidden in this context: {shlex.join(args)}")
    if shutil.which(args[0], path=_search_path(env)) is None and not Path(args[0]).is_file():
        raise ToolMissingError(args[0])
    return args
