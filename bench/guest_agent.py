"""Runs in the rescue environment as ``python3.11 -m recovery_env`` (build_media's agent_override): the restore
throughput harness.  Not imported on the host; bench/guest.py reads this file's source.

/dev/vda: ext4 holding bench.json and the archive (read-only).  /dev/vdb: scratch disk, a fresh ext4 for each
round.  Each round extracts the same archive into the fresh ext4, either with the agent's extraction
(recovery_env.restore.verify.extract_archive: recovery_env.run.run_feed as the executor's extraction step calls it,
zstd -d reading the archive file itself | tar -x with the restore's options, progress polled every 0.5 s; the
archive's SHA-256 is checked once before the rounds, as check_backup_set does in a restore, and not timed) or plain
``tar -x --zstd``; caches are dropped before and the time includes the final sync.
The verdict is one line on the console: ``ASR-BENCH {json}``; then /init powers off (exit 21).
"""

import json
import os
import sys
import time
from pathlib import Path

from recovery_env.model.descriptor import Compression
from recovery_env.model.manifest import sha256_file
from recovery_env.restore.verify import extract_archive
from recovery_env.run import run

SRC, DST = "/run/bench/src", "/run/bench/dst"


def wait_for(path: str, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    return os.path.exists(path)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def count_files(root: str) -> tuple[int, int]:
    files = size = 0
    for top, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(top, name))
            files += 1
            size += st.st_size
    return files, size


def one_round(method: str, archive: str) -> dict[str, object]:
    run(["mkfs.ext4", "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", "/dev/vdb"])
    os.makedirs(DST, exist_ok=True)
    run(["mount", "-t", "ext4", "/dev/vdb", DST])
    try:
        drop_caches()
        started = time.monotonic()
        if method == "agent":
            seen: list[int] = []
            extract_archive(Path(archive), Path(DST), Compression.ZSTD, on_progress=seen.append)
            if not seen or seen[-1] != os.stat(archive).st_size:
                raise RuntimeError(f"progress reports {seen[-3:]}: not the whole archive")
        else:
            run(["tar", "-x", "--zstd", "-f", archive, "-C", DST])
        os.sync()
        seconds = time.monotonic() - started
        files, size = count_files(DST)
    finally:
        run(["umount", DST])
    return {"method": method, "seconds": seconds, "files": files, "bytes": size}


def main() -> int:
    result: dict[str, object] = {"ok": False}
    try:
        for path in ("/run/asr/modules-loaded", "/dev/vda", "/dev/vdb"):
            if not wait_for(path):
                raise RuntimeError(f"{path} did not appear")
        os.makedirs(SRC, exist_ok=True)
        run(["mount", "-t", "ext4", "-o", "ro", "/dev/vda", SRC])
        with open(f"{SRC}/bench.json", encoding="utf-8") as f:
            config = json.load(f)
        actual = sha256_file(Path(SRC) / config["archive"])  # what check_backup_set does before a restore
        if actual != config["sha256"]:
            raise RuntimeError(f"{config['archive']}: SHA-256 {actual}, expected {config['sha256']}")
        with open("/proc/meminfo", encoding="utf-8") as f:
            result["mem_total_kib"] = int(f.readline().split()[1])
        rounds = []
        for method in config["rounds"]:
            rounds.append(one_round(method, f"{SRC}/{config['archive']}"))
            print(f"ASR-BENCH-ROUND {json.dumps(rounds[-1])}", flush=True)
        result = {**result, "ok": True, "rounds": rounds}
    except Exception as e:  # the verdict line says what failed
        result["error"] = f"{type(e).__name__}: {e}"
    print("ASR-BENCH " + json.dumps(result, sort_keys=True), flush=True)
    return 21  # /init: power off


sys.exit(main())
