"""The figures → table rows → docs/BENCHMARKS.md (templates/benchmarks.md.j2), and the ratio lines the bench
prints.  Pure: the measurements come in as data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.model import Better, Goal, Ratio, Summary, Unit
from recovery_env.errors import InputError
from recovery_env.templating import render


@dataclass(frozen=True)
class Figure:
    """One measured figure (or one that could not be measured: ``summary`` None and ``note`` says why)."""

    section: str
    name: str
    unit: Unit
    summary: Summary | None = None
    goal: Goal | None = None
    command: str = ""  # how to reproduce it
    note: str = ""

    @property
    def value(self) -> str:
        return self.summary.render(self.unit) if self.summary is not None else f"— ({self.note})"


@dataclass(frozen=True)
class Comparison:
    """asr against a peer tool on the same input."""

    section: str
    name: str  # "ISO step vs xorriso -as mkisofs"
    unit: Unit  # of the two compared figures
    better: Better  # LOWER for times, HIGHER for throughputs
    ours: Summary | None = None
    peer: Summary | None = None
    goal: Goal | None = None  # a goal on the ratio (Unit.RATIO)
    command: str = ""  # the peer's command line
    note: str = ""

    @property
    def ratio(self) -> Ratio | None:
        if self.ours is None or self.peer is None or self.peer.median == 0:
            return None
        return Ratio(self.ours, self.peer, self.better)


@dataclass(frozen=True)
class Row:
    section: str
    what: str
    value: str
    goal: str
    verdict: str
    passed: bool | None  # None: no goal, or not measured


@dataclass(frozen=True)
class BreakdownRow:
    part: str
    raw: int
    share: float  # of the raw total, in %
    compressed_estimate: int  # the raw share scaled to the compressed initramfs


@dataclass(frozen=True)
class ProfileEntry:
    function: str  # "file:line(name)"
    ncalls: int
    tottime: float
    cumtime: float


#: cProfile entries that are a thread waiting, not working.
WAITS = ("'acquire' of '_thread.lock'", "'poll' of 'select.poll'", "select.select", "time.sleep", "'wait' of")


@dataclass(frozen=True)
class Profile:
    title: str  # "make_rescue_env (cold), the step that misses build ≤ 3 s warm"
    total: float
    entries: tuple[ProfileEntry, ...]
    command: str = ""

    @property
    def dominant(self) -> str:
        """One line: the entry with the most own time and its share of the profiled total."""
        if not self.entries or self.total <= 0:
            return ""
        ranked = sorted(self.entries, key=lambda e: -e.tottime)
        waits = [e for e in ranked if any(w in e.function for w in WAITS)]
        work = [e for e in ranked if e not in waits]
        parts = []
        if waits and waits[0] is ranked[0]:  # the profiled thread mostly waited: for worker threads or children
            w = waits[0]
            parts.append(f"waiting for worker threads or child processes (`{w.function}` {w.tottime:.2f} s, "
                         f"{w.tottime * 100 / self.total:.0f} %; their own work is not in this profile)")
        if work:
            top = work[0]
            parts.append(f"`{top.function}` takes {top.tottime:.2f} s of {self.total:.2f} s "
                         f"({top.tottime * 100 / self.total:.0f} %)")
        return "; then ".join(parts)


@dataclass(frozen=True)
class Interval:
    """The time between two consecutive boot marks (the first one starts at QEMU start)."""

    start: str
    end: str
    seconds: float
    share: float  # of the time to the last mark, in %


def plan_intervals(marks: Mapping[str, Summary]) -> tuple[Interval, ...]:
    """Consecutive intervals of one boot's marks (medians), in the order given; a mark earlier than the one
    before it (medians of different runs) counts as 0 s."""
    items = list(marks.items())
    if not items:
        return ()
    total = max(s.median for _, s in items) or 1.0
    out, prev_name, prev_t = [], "QEMU start", 0.0
    for name, s in items:
        seconds = max(s.median - prev_t, 0.0)
        out.append(Interval(prev_name, name, seconds, seconds * 100 / total))
        prev_name, prev_t = name, max(prev_t, s.median)
    return tuple(out)


def plan_conditions(nproc: int, wall: float, busy: float, own: float) -> str:
    """How quiet the machine was, from CPU accounting over the whole run: ``busy`` CPU-seconds used on the
    machine (/proc/stat), ``own`` of them by the bench and its children (os.times)."""
    if wall <= 0 or nproc <= 0:
        return "not measured"
    other = max(busy - own, 0.0)
    share = other * 100 / (wall * nproc)
    verdict = "quiet machine" if share < 5 else "shared machine: timings are noisy"
    return (f"{verdict}: other processes used {other:.0f} CPU-s ({share:.1f} % of {nproc} cores) during the "
            f"{wall / 60:.1f} min run; the bench and its children used {own:.0f} CPU-s")


@dataclass(frozen=True)
class Machine:
    nproc: int
    memory_mib: int
    cpu: str
    date: str
    kernel: str
    accel: str  # "TCG (KVM not usable: ...)"
    load: str  # load average when the bench started
    conditions: str  # measured: how much CPU other processes took during the run (see plan_conditions)


@dataclass(frozen=True)
class Report:
    machine: Machine
    figures: tuple[Figure, ...]
    comparisons: tuple[Comparison, ...]
    steps: Mapping[str, Summary] = field(default_factory=dict)  # build steps, in order
    steps_title: str = ""
    initramfs_steps: Mapping[str, Summary] = field(default_factory=dict)
    breakdown: tuple[BreakdownRow, ...] = ()
    profiles: tuple[Profile, ...] = ()
    boot_marks: Mapping[str, Mapping[str, Summary]] = field(default_factory=dict)  # firmware → mark → time
    settings: Mapping[str, str] = field(default_factory=dict)  # N, data set size, ...
    notes: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()  # row order of the main table
    peer_sections: tuple[str, ...] = ()  # rows about a peer tool: shown against the goals, not counted as misses
    section_times: tuple[tuple[str, float], ...] = ()  # wall time of each bench section, in order


def plan_rows(
    figures: Iterable[Figure], comparisons: Iterable[Comparison], sections: Sequence[str] = ()
) -> list[Row]:
    """The main table: every figure and every comparison, each with its goal and verdict where it has one,
    grouped by section in the order of ``sections`` (others after them, in order of appearance)."""
    rows: list[Row] = []
    for f in figures:
        verdict, passed = _verdict(f.goal, f.summary.median if f.summary is not None else None)
        rows.append(Row(f.section, f.name, f.value, f.goal.text if f.goal else "", verdict, passed))
    for c in comparisons:
        ratio = c.ratio
        if ratio is None:
            value = f"— ({c.note or 'not measured'})"
            verdict, passed = ("not measured", None) if c.goal else ("", None)
        else:
            lo, hi = ratio.range
            value = (
                f"{ratio.value:.2f}× ({ratio.describe()}; asr {c.unit.show(ratio.ours.median)}, "
                f"peer {c.unit.show(ratio.peer.median)}; ratio range {lo:.2f}–{hi:.2f})"
            )
            verdict, passed = _verdict(c.goal, ratio.value)
        rows.append(Row(c.section, c.name, value, c.goal.text if c.goal else "", verdict, passed))
    first: dict[str, int] = {}
    for i, name in enumerate([*sections, *(r.section for r in rows)]):
        first.setdefault(name, i)
    return sorted(rows, key=lambda r: first[r.section])


def _verdict(goal: Goal | None, value: float | None) -> tuple[str, bool | None]:
    if goal is None:
        return "", None
    if value is None:
        return "not measured", None
    v = goal.check(value)
    return v.text, v.passed


def plan_breakdown(raw: Mapping[str, int], compressed_initramfs: int) -> tuple[BreakdownRow, ...]:
    """Size breakdown of the initramfs contents (the kernel, which is a separate file, excluded from the
    scaling): raw bytes per part, largest first, with its share and the compressed bytes it accounts for if
    every part compressed alike (an estimate, said so in the report)."""
    parts = {k: v for k, v in raw.items() if k != "kernel"}
    if any(v < 0 for v in parts.values()):
        raise InputError(f"size breakdown with a negative size: {dict(parts)}")
    total = sum(parts.values())
    if total == 0:
        return ()
    rows = [
        BreakdownRow(k, v, v * 100 / total, round(v * compressed_initramfs / total))
        for k, v in sorted(parts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return tuple(rows)


def summarize_steps(runs: Sequence[Sequence[tuple[str, float]]]) -> dict[str, Summary]:
    """Per-step summaries over several runs of the same pipeline, in the order of the first run.  A step
    missing from a run (the pipeline changed between runs) is an error."""
    if not runs:
        return {}
    order = [name for name, _ in runs[0]]
    samples: dict[str, list[float]] = {name: [] for name in order}
    for i, run in enumerate(runs):
        names = [name for name, _ in run]
        if sorted(names) != sorted(order):
            raise InputError(f"run {i + 1} has steps {names}, the first run had {order}")
        for name, seconds in run:
            samples[name].append(seconds)
    return {name: Summary.of(samples[name]) for name in order}


ProfileStats = Mapping[tuple[str, int, str], tuple[int, int, float, float, Any]]


def top_profile_entries(stats: ProfileStats, n: int = 15, *, strip: str = "") -> tuple[ProfileEntry, ...]:
    """The ``n`` entries of a cProfile/pstats table (``pstats.Stats(...).stats``) with the most own time
    (tottime): where the time really goes.  ``strip`` is removed from the front of file names."""
    entries = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.items():
        name = filename.removeprefix(strip) if strip else filename
        where = f"{name}:{line}({func})" if line else func  # built-ins have line 0: "{method 'compress' ...}"
        entries.append(ProfileEntry(where, ncalls, tottime, cumtime))
    entries.sort(key=lambda e: (-e.tottime, e.function))
    return tuple(entries[:n])


def render_ratio_lines(comparisons: Iterable[Comparison]) -> list[str]:
    """The ratios, one line each, as the bench prints them."""
    lines = []
    for c in comparisons:
        ratio = c.ratio
        if ratio is None:
            lines.append(f"{c.name}: not measured ({c.note or 'no samples'})")
            continue
        goal = ""
        if c.goal is not None:
            goal = f"  [{c.goal.text}: {c.goal.check(ratio.value).text}]"
        lines.append(f"{c.name}: {ratio.value:.2f}× — {ratio.describe()}{goal}")
    return lines


def render_report(report: Report) -> str:
    """docs/BENCHMARKS.md."""
    rows = plan_rows(report.figures, report.comparisons, report.sections)
    misses = [r for r in rows if r.passed is False and r.section not in report.peer_sections]
    commands = [(f.section, f.name, f.command) for f in report.figures if f.command]
    commands += [(c.section, c.name, c.command) for c in report.comparisons if c.command]
    return render(
        "benchmarks.md.j2",
        machine=report.machine,
        rows=rows,
        misses=misses,
        steps=report.steps,
        steps_title=report.steps_title,
        initramfs_steps=report.initramfs_steps,
        breakdown=report.breakdown,
        profiles=report.profiles,
        boot_marks=report.boot_marks,
        intervals={fw: plan_intervals(marks) for fw, marks in report.boot_marks.items()},
        section_times=report.section_times,
        total_time=sum(t for _, t in report.section_times),
        peer_sections=report.peer_sections,
        settings=report.settings,
        notes=report.notes,
        commands=commands,
        ratio_lines=render_ratio_lines(report.comparisons),
        seconds=Unit.SECONDS,
        mb=lambda n: f"{n / 1_000_000:.2f}",
    )
