"""The streaming pipelines of recovery_env.run with real processes: what passes, what is hashed, progress, and
which failure is reported."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest

from recovery_env.errors import InternalError, ToolError, ToolMissingError
from recovery_env.run import run_feed, run_pipe, start


def test_pipe_passes_every_byte_to_the_filter_and_to_on_data(tmp_path: Path) -> None:
    payload = os.urandom(3 << 20) + b"end"
    src = tmp_path / "payload"
    src.write_bytes(payload)
    seen = bytearray()
    res = run_pipe(["cat", str(src)], ["gzip", "-1", "-c"], tmp_path / "out.gz", on_data=seen.extend,
                   chunk_size=1 << 16)
    out = (tmp_path / "out.gz").read_bytes()
    assert bytes(seen) == payload and res.in_bytes == len(payload) and res.returncode == 0
    assert (res.out_bytes, res.sha256) == (len(out), hashlib.sha256(out).hexdigest())
    assert gzip.decompress(out) == payload
    plain = run_pipe(["cat", str(src)], None, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == payload and plain.sha256 == hashlib.sha256(payload).hexdigest()


def test_pipe_failures_are_named(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="gzip"):
        run_pipe(["printf", "x"], ["gzip", "--no-such-option"], tmp_path / "a")
    with pytest.raises(ToolError) as e:
        run_pipe(["sh", "-c", "printf x; echo oops >&2; exit 3"], ["cat"], tmp_path / "b")
    assert e.value.returncode == 3 and "oops" in e.value.stderr
    res = run_pipe(["sh", "-c", "printf x; echo changed >&2; exit 1"], ["cat"], tmp_path / "c", ok_codes=(0, 1))
    assert (res.returncode, res.stderr.strip(), (tmp_path / "c").read_bytes()) == (1, "changed", b"x")

    def refuse(chunk: memoryview) -> None:
        raise ValueError("parser says no")

    with pytest.raises(ValueError, match="parser says no"):
        run_pipe(["head", "-c", "50000000", "/dev/zero"], ["cat"], tmp_path / "d", on_data=refuse)


def test_feed_reads_the_file_in_the_child_and_reports_progress(tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.write_bytes(os.urandom(1 << 20))
    reports: list[int] = []
    # the reader takes 64 KiB, pauses, then the rest: progress is seen in between
    chain = [["sh", "-c", "head -c 65536 >/dev/null; sleep 0.6; cat"], ["sha256sum"]]
    assert run_feed(chain, src, on_progress=reports.append, interval=0.1) == 1 << 20
    assert reports == sorted(reports) and reports[-1] == 1 << 20
    assert any(0 < r < 1 << 20 for r in reports), reports


def test_feed_names_the_failing_command_not_the_one_with_a_broken_pipe(tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.write_bytes(os.urandom(8 << 20))
    with pytest.raises(ToolError) as e:
        run_feed([["cat"], ["sh", "-c", "head -c 10 >/dev/null; echo disk full >&2; exit 2"]], src)
    assert e.value.returncode == 2 and "disk full" in e.value.stderr
    with pytest.raises(ToolError) as e:
        run_feed([["sh", "-c", "echo bad data >&2; exit 1"], ["cat"]], src)
    assert e.value.argv[0] == "sh" and "bad data" in e.value.stderr


def test_long_running_processes_pass_the_same_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU is started through run.start: a missing program is named, and the test guard refuses it."""
    proc = start(["sh", "-c", "exit 3"])
    assert proc.wait() == 3
    with pytest.raises(ToolMissingError):
        start(["asr-no-such-program"])
    monkeypatch.setenv("ASR_FORBID_SUBPROCESS", "1")
    with pytest.raises(InternalError, match="subprocess forbidden"):
        start(["true"])
