"""The one subprocess choke point of asr, on the host and inside the boot media.

Every external command goes through :func:`run`: it logs the command line (``shlex.join``), runs it, and raises
:class:`~recovery_env.errors.ToolError` carrying argv, exit code, stdout and stderr when it fails.

Unit tests can forbid subprocesses entirely with ``ASR_FORBID_SUBPROCESS=1`` (planners must be pure).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

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
    args = [os.fspath(a) for a in argv]
    if os.environ.get("ASR_FORBID_SUBPROCESS") == "1":
        raise InternalError(f"subprocess forbidden in this context: {shlex.join(args)}")
    if shutil.which(args[0], path=_search_path(env)) is None and not Path(args[0]).is_file():
        raise ToolMissingError(args[0])
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
    args = [os.fspath(a) for a in argv]
    if os.environ.get("ASR_FORBID_SUBPROCESS") == "1":
        raise InternalError(f"subprocess forbidden in this context: {shlex.join(args)}")
    if shutil.which(args[0]) is None and not Path(args[0]).is_file():
        raise ToolMissingError(args[0])
    log.debug("+ %s", shlex.join(args))
    proc = subprocess.run(args, input=input, capture_output=True, check=False)
    if proc.returncode != 0:
        raise ToolError(args, proc.returncode, "", proc.stderr.decode(errors="replace"))
    return proc.stdout


def _search_path(env: Mapping[str, str] | None) -> str | None:
    if env is not None and "PATH" in env:
        return env["PATH"]
    return None
