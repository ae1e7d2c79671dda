"""The bench's own pure logic: statistics, goals, ratios, the memory search, table rows and the rendered report,
the data set plan, the peers' command lines and the guest verdict.  No timing is asserted anywhere."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import dataset, guest, peers
from bench.model import (
    GOAL_F2_TCG,
    GOAL_ISO_SIZE,
    GOAL_MEMORY,
    GOAL_THROUGHPUT,
    Better,
    Ratio,
    Summary,
    Unit,
    bisect_min,
    throughput,
)
from bench.report import (
    Comparison,
    Figure,
    Machine,
    Profile,
    ProfileEntry,
    Report,
    plan_breakdown,
    plan_conditions,
    plan_intervals,
    plan_rows,
    render_ratio_lines,
    render_report,
    summarize_steps,
    top_profile_entries,
)
from recovery_env.errors import InputError

# ------------------------------------------------------------------------------------------------- statistics


def test_summary_median_min_max() -> None:
    s = Summary.of([3.0, 1.0, 2.0, 10.0])
    assert (s.n, s.median, s.min, s.max) == (4, 2.5, 1.0, 10.0)
    assert Summary.of([5.0]).render(Unit.SECONDS) == "5.00 s (n=1)"
    assert Summary.of([0.5, 0.25, 0.75]).render(Unit.SECONDS) == "0.500 s (0.250 s – 0.750 s, n=3)"


@pytest.mark.parametrize("bad", [[], [1.0, -0.1], [float("nan")]])
def test_summary_refuses_broken_samples(bad: list[float]) -> None:
    with pytest.raises(InputError):
        Summary.of(bad)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=30))
def test_summary_median_lies_between_min_and_max(samples: list[float]) -> None:
    s = Summary.of(samples)
    assert s.min <= s.median <= s.max
    assert s.min == min(samples) and s.max == max(samples)


# ---------------------------------------------------------------------------------------------------- goals


def test_goal_pass_and_miss_say_by_how_much() -> None:
    assert GOAL_ISO_SIZE.check(24_000_000).passed
    miss = GOAL_ISO_SIZE.check(25_165_824)
    assert not miss.passed
    assert miss.text == "miss by 0.17 MB (0.7 %)"
    assert GOAL_F2_TCG.check(6.0).passed  # "≤ 6 s": exactly 6 passes
    assert GOAL_F2_TCG.check(7.5).text == "miss by 1.50 s (25.0 %)"
    assert GOAL_MEMORY.check(384).text.startswith("pass")
    assert GOAL_THROUGHPUT.check(0.95).passed and not GOAL_THROUGHPUT.check(0.59).passed
    assert GOAL_THROUGHPUT.check(0.59).text == "miss by 0.31 (34.4 %)"


def test_ratio_of_medians_and_range() -> None:
    ours, peer = Summary.of([1.0, 2.0, 3.0]), Summary.of([4.0, 4.0, 8.0])
    r = Ratio(ours, peer, Better.LOWER)
    assert r.value == 0.5
    assert r.range == (1.0 / 8.0, 3.0 / 4.0)
    assert r.describe() == "asr 2.00× faster"
    assert Ratio(peer, ours, Better.LOWER).describe() == "asr 100 % slower"
    assert Ratio(Summary.of([90.0]), Summary.of([100.0]), Better.HIGHER).describe() == (
        "asr at 90 % of the peer's throughput"
    )
    with pytest.raises(InputError):
        _ = Ratio(ours, Summary.of([0.0]), Better.LOWER).value


def test_throughput_in_mib_per_second() -> None:
    assert throughput(512 << 20, 2.0) == 256.0
    with pytest.raises(InputError):
        throughput(1, 0.0)


# ------------------------------------------------------------------------------------------- memory search


def _search(lo: int, hi: int, step: int, threshold: int | None) -> tuple[int | None, list[int]]:
    tried: dict[int, bool] = {}
    order = []
    while True:
        nxt, answer = bisect_min(lo, hi, step, tried)
        if nxt is None:
            return answer, order
        assert nxt not in tried, "the search tried a value twice"
        assert lo <= nxt <= hi and nxt % step == 0
        order.append(nxt)
        tried[nxt] = threshold is not None and nxt >= threshold


@pytest.mark.parametrize("threshold", [128, 160, 192, 352, 512, 1000, 1024])
def test_bisect_finds_the_smallest_working_value(threshold: int) -> None:
    answer, order = _search(128, 1024, 32, threshold)
    expected = -(-threshold // 32) * 32  # the first multiple of the step at or above the threshold
    assert answer == expected
    assert len(order) <= 7  # 1024 first, then a binary search over 28 steps


def test_bisect_reports_none_when_even_the_top_fails() -> None:
    answer, order = _search(128, 1024, 32, None)
    assert answer is None and order == [1024]


@given(st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=41))
def test_bisect_is_exact_for_any_monotonic_predicate(steps: int, k: int) -> None:
    lo, step = 64, 16
    hi = lo + (steps - 1) * step
    threshold = lo + k * step
    answer, _ = _search(lo, hi, step, threshold)
    assert answer == (threshold if threshold <= hi else None)


def test_bisect_refuses_bad_bounds() -> None:
    with pytest.raises(InputError):
        bisect_min(100, 1024, 32, {})


# -------------------------------------------------------------------------------------------- rows, report


def _machine() -> Machine:
    return Machine(2, 24105, "AMD EPYC", "2024-01-01 00:00 UTC", "6.1.0", "TCG", "0.10 0.20 0.30", "quiet")


def test_rows_carry_goals_verdicts_and_section_order() -> None:
    figures = [
        Figure("Rehearsal", "whole rehearsal", Unit.SECONDS, note="not available yet: no asr rehearse"),
        Figure("Sizes", "ISO", Unit.BYTES, Summary.of([25_165_824]), GOAL_ISO_SIZE, "asr build --json"),
        Figure("Boot", "F2 BIOS", Unit.SECONDS, Summary.of([5.0, 5.5, 7.0]), GOAL_F2_TCG),
    ]
    comparisons = [
        Comparison("Media build", "ISO vs xorriso", Unit.SECONDS, Better.LOWER, Summary.of([0.05]),
                   Summary.of([0.1]), None, "xorriso -as mkisofs ..."),
        Comparison("Restore", "guest", Unit.MIB_PER_S, Better.HIGHER, goal=GOAL_THROUGHPUT, note="needs capture"),
    ]
    rows = plan_rows(figures, comparisons, ["Media build", "Sizes", "Boot", "Restore", "Rehearsal"])
    assert [r.section for r in rows] == ["Media build", "Sizes", "Boot", "Restore", "Rehearsal"]
    by_what = {r.what: r for r in rows}
    assert by_what["ISO"].passed is False and by_what["ISO"].verdict == "miss by 0.17 MB (0.7 %)"
    assert by_what["F2 BIOS"].passed is True and "5.50 s (5.00 s – 7.00 s, n=3)" == by_what["F2 BIOS"].value
    assert by_what["whole rehearsal"].passed is None and "not available yet" in by_what["whole rehearsal"].value
    assert by_what["guest"].verdict == "not measured" and by_what["guest"].passed is None
    assert by_what["ISO vs xorriso"].value.startswith("0.50× (asr 2.00× faster")


def test_ratio_lines_name_the_goal() -> None:
    c = Comparison("Capture", "capture vs tar | zstd", Unit.MIB_PER_S, Better.HIGHER, Summary.of([60.0]),
                   Summary.of([100.0]), GOAL_THROUGHPUT)  # fmt: skip
    (line,) = render_ratio_lines([c])
    assert line.startswith("capture vs tar | zstd: 0.60× — asr at 60 % of the peer's throughput")
    assert "miss by 0.30" in line
    (missing,) = render_ratio_lines([Comparison("Restore", "guest", Unit.MIB_PER_S, Better.HIGHER, note="why")])
    assert missing == "guest: not measured (why)"


def test_breakdown_shares_add_up() -> None:
    rows = plan_breakdown({"kernel": 8_000_000, "python": 3_000_000, "kernel modules": 6_000_000, "agent": 1_000_000},
                          5_000_000)  # fmt: skip
    assert [r.part for r in rows] == ["kernel modules", "python", "agent"]  # largest first; the kernel is no part
    assert sum(r.share for r in rows) == pytest.approx(100.0)
    assert sum(r.compressed_estimate for r in rows) == pytest.approx(5_000_000, abs=3)
    assert plan_breakdown({}, 10) == ()
    with pytest.raises(InputError):
        plan_breakdown({"x": -1}, 10)


def test_steps_summarized_in_pipeline_order() -> None:
    runs = [[("read", 0.1), ("iso", 1.0)], [("read", 0.3), ("iso", 2.0)], [("read", 0.2), ("iso", 3.0)]]
    steps = summarize_steps(runs)
    assert list(steps) == ["read", "iso"]
    assert steps["read"].median == 0.2 and steps["iso"].max == 3.0
    with pytest.raises(InputError, match="run 2"):
        summarize_steps([[("read", 0.1)], [("other", 0.1)]])


def test_intervals_between_boot_marks() -> None:
    marks = {"a": Summary.of([2.0]), "b": Summary.of([1.5]), "c": Summary.of([4.0])}
    got = [(i.start, i.end, i.seconds, i.share) for i in plan_intervals(marks)]
    assert got == [("QEMU start", "a", 2.0, 50.0), ("a", "b", 0.0, 0.0), ("b", "c", 2.0, 50.0)]
    assert plan_intervals({}) == ()


def test_conditions_from_cpu_accounting() -> None:
    quiet = plan_conditions(2, 600.0, busy=700.0, own=690.0)
    assert quiet.startswith("quiet machine: other processes used 10 CPU-s (0.8 % of 2 cores) during the 10.0 min")
    noisy = plan_conditions(2, 600.0, busy=1100.0, own=500.0)
    assert noisy.startswith("shared machine") and "(50.0 % of 2 cores)" in noisy
    assert plan_conditions(2, 0.0, busy=1.0, own=1.0) == "not measured"


def test_profile_names_its_dominant_entry() -> None:
    p = Profile("t", 10.0, (ProfileEntry("f", 1, 2.0, 3.0), ProfileEntry("g", 1, 6.0, 6.0)))
    assert p.dominant == "`g` takes 6.00 s of 10.00 s (60 %)"
    assert Profile("t", 0.0, ()).dominant == ""
    waited = Profile("t", 10.0, (ProfileEntry("<method 'acquire' of '_thread.lock' objects>", 5, 7.0, 7.0),
                                 ProfileEntry("g", 1, 2.0, 2.0)))  # fmt: skip
    assert waited.dominant == ("waiting for worker threads or child processes (`<method 'acquire' of "
                               "'_thread.lock' objects>` 7.00 s, 70 %; their own work is not in this profile); "
                               "then `g` takes 2.00 s of 10.00 s (20 %)")


def test_profile_entries_by_own_time() -> None:
    stats = {
        ("/repo/builder/x.py", 10, "slow"): (1, 1, 5.0, 6.0, {}),
        ("~", 0, "<method 'compress' of 'zstd' objects>"): (3, 3, 9.0, 9.0, {}),
        ("/repo/builder/y.py", 20, "fast"): (100, 100, 0.1, 0.2, {}),
    }
    top = top_profile_entries(stats, 2, strip="/repo/")
    assert [e.function for e in top] == ["<method 'compress' of 'zstd' objects>", "builder/x.py:10(slow)"]
    assert top[1].ncalls == 1 and top[1].cumtime == 6.0


def test_report_renders_every_part() -> None:
    report = Report(
        machine=_machine(),
        figures=(Figure("Sizes", "ISO", Unit.BYTES, Summary.of([25_165_824]), GOAL_ISO_SIZE, "asr build --json"),),
        comparisons=(Comparison("Capture", "capture", Unit.MIB_PER_S, Better.HIGHER, Summary.of([50.0]),
                                Summary.of([100.0]), GOAL_THROUGHPUT, "tar -c -C $WORK/d . | zstd -T0"),),
        steps={"make_iso": Summary.of([0.05, 0.06])},
        steps_title="cold",
        breakdown=plan_breakdown({"python": 10, "agent": 30}, 20),
        settings={"data set": "64 MiB"},
        notes=("a note",),
        sections=("Sizes", "Capture", "Peer"),
        peer_sections=("Peer",),
        section_times=(("build", 60.0), ("capture", 30.0)),
        boot_marks={"BIOS CD": {"init started": Summary.of([4.0]), "F2 prompt": Summary.of([5.0])}},
    )
    report = replace(report, figures=(*report.figures, Figure("Peer", "peer ISO", Unit.BYTES,
                                                             Summary.of([99_000_000]), GOAL_ISO_SIZE)))
    text = render_report(report)
    assert "| cores (`nproc`) | 2 |" in text and "| data set | 64 MiB |" in text
    assert "| Sizes | ISO | 25.17 MB (24.00 MiB) (n=1) | ISO ≤ 25 MB | **miss by 0.17 MB (0.7 %)** |" in text
    misses = text.split("Goals asr misses", 1)[1].split("\n\n", 2)[1]
    assert misses.splitlines() == [
        "- Sizes: ISO: 25.17 MB (24.00 MiB) (n=1), miss by 0.17 MB (0.7 %) (goal ISO ≤ 25 MB)",
        "- Capture: capture: 0.50× (asr at 50 % of the peer's throughput; asr 50.0 MiB/s, peer 100.0 MiB/s; "
        "ratio range 0.50–0.50), miss by 0.40 (44.4 %) (goal ≥ 90 % of plain tar's throughput)",
    ]  # the peer's row is shown against the goal but is no miss of asr
    assert "| Peer | peer ISO | 99.00 MB" in text
    assert "| bench wall time | 1.5 min (build 60 s, capture 30 s) |" in text
    assert "| init started | 4.00 s (n=1) | 4.00 s (from QEMU start) | 80 % |" in text
    assert "| F2 prompt | 5.00 s (n=1) | 1.00 s (from init started) | 20 % |" in text
    assert "| make_iso | 0.055 s (0.050 s – 0.060 s, n=2) |" in text
    assert "| agent | 0.00 | 75.0 % | 0.00 |" in text
    assert r"`tar -c -C $WORK/d . \| zstd -T0`" in text  # a | in a table cell is escaped
    assert "- a note" in text
    assert not re.search(r"\{\{|\{%", text)


# ----------------------------------------------------------------------------------------------- data set


def test_dataset_plan_is_deterministic_and_exact() -> None:
    a, b = dataset.plan_dataset(64 << 20), dataset.plan_dataset(64 << 20)
    assert a == b and a.total == 64 << 20
    large = [f for f in a.files if f.path.startswith("large/")]
    assert len(large) == dataset.LARGE_FILES
    assert sum(f.size for f in large) == int((64 << 20) * dataset.LARGE_SHARE)
    small = [f for f in a.files if f.path.startswith("small/")]
    assert a.small_count == len(small) > 500
    assert all(f.size <= dataset.SMALL_MAX for f in small)
    assert len({f.path for f in a.files}) == len(a.files)
    assert dataset.plan_dataset(64 << 20, seed=7) != a
    with pytest.raises(InputError):
        dataset.plan_dataset(1000)


def test_dataset_size_from_the_environment() -> None:
    assert dataset.read_size_mib({}) == 1024
    assert dataset.read_size_mib({"ASR_BENCH_DATA_MB": "64"}) == 64
    for bad in ("lots", "0", "-5"):
        with pytest.raises(InputError, match="ASR_BENCH_DATA_MB"):
            dataset.read_size_mib({"ASR_BENCH_DATA_MB": bad})


def test_dataset_content_is_reproducible(tmp_path: Path) -> None:
    plan = dataset.DataSet((dataset.DataFile("a/b.bin", 200_000, 1), dataset.DataFile("c.bin", 10, 2)), seed=3)
    pools = dataset.Pools(random=random.Random(1).randbytes(1 << 20), text=b"word " * 100_000)
    first = b"".join(dataset.iter_content(plan.files[0], pools))
    assert first == b"".join(dataset.iter_content(plan.files[0], pools)) and len(first) == 200_000
    assert len(b"".join(dataset.iter_content(plan.files[1], pools))) == 10


# ------------------------------------------------------------------------------------------------- peers


def test_xorriso_has_the_options_make_iso_uses() -> None:
    argv = peers.plan_xorriso_argv(Path("/t"), Path("/o.iso"), volume_id="ASR_RECOVERY", isohdpfx=Path("/m.bin"))
    assert argv[:3] == ["xorriso", "-as", "mkisofs"] and argv[-1] == "/t"
    text = " ".join(argv)
    for part in ("-iso-level 3", "-J", "-R", "-b isolinux/isolinux.bin", "-c isolinux/boot.cat",
                 "-boot-load-size 4", "-boot-info-table", "-eltorito-alt-boot -e boot/efi.img -no-emul-boot",
                 "-isohybrid-mbr /m.bin", "-isohybrid-gpt-basdat", "-V ASR_RECOVERY"):  # fmt: skip
        assert part in text, part


def test_peer_pipelines_quote_paths() -> None:
    p = peers.plan_cpio_zstd(Path("/tmp/a b"), Path("/tmp/o.zst"))
    assert p.argv[:2] == ["sh", "-c"]
    assert "cd '/tmp/a b'" in p.text and "cpio -o -H newc" in p.text and "zstd -19 -T1" in p.text
    assert "zstd -T0" in peers.plan_tar_zstd(Path("/d"), Path("/o")).text
    mf, mc = peers.plan_mtools_floppy(Path("/f.img"), [Path("/x/ASR.SIF")], label="ASR DISK")
    assert mf[0] == "mformat" and "1440" in mf and mc == ["mcopy", "-i", "/f.img", "/x/ASR.SIF", "::"]


# ------------------------------------------------------------------------------------------------- guest


def test_rounds_alternate_abba() -> None:
    assert guest.plan_rounds(1) == ("agent", "plain")
    assert guest.plan_rounds(2) == ("agent", "plain", "plain", "agent")
    with pytest.raises(InputError):
        guest.plan_rounds(0)


def test_guest_verdict_parsed_and_checked() -> None:
    serial = (
        "asr: starting the agent\n"
        'ASR-BENCH-ROUND {"method": "agent"}\n'
        'ASR-BENCH {"ok": true, "mem_total_kib": 480000, "rounds": ['
        '{"method": "agent", "seconds": 4.0, "files": 10, "bytes": 100}, '
        '{"method": "plain", "seconds": 3.0, "files": 10, "bytes": 100}]}\n'
    )
    v = guest.parse_verdict(serial, expect_files=10, expect_bytes=100)
    assert v.seconds("agent") == [4.0] and v.seconds("plain") == [3.0] and v.mem_total_kib == 480000
    with pytest.raises(guest.GuestBenchError, match="restored 10 files, the data set has 11"):
        guest.parse_verdict(serial, expect_files=11)
    with pytest.raises(guest.GuestBenchError, match="no ASR-BENCH verdict"):
        guest.parse_verdict("kernel panic\n")
    with pytest.raises(guest.GuestBenchError, match="OSError: /dev/vdb did not appear"):
        guest.parse_verdict('ASR-BENCH {"ok": false, "error": "OSError: /dev/vdb did not appear"}\n')


def test_guest_agent_uses_the_standard_library_and_recovery_env_only() -> None:
    source = guest.read_guest_agent().decode()
    compile(source, "guest_agent.py", "exec")
    imported = set(re.findall(r"^(?:from|import) ([a-z_.]+)", source, re.MULTILINE))
    assert imported <= {"json", "os", "sys", "time", "pathlib", "recovery_env.model.manifest",
                        "recovery_env.restore.verify", "recovery_env.model.descriptor", "recovery_env.run"}  # fmt: skip
