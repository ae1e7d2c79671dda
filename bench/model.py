"""What a benchmark figure is: samples summarised as median, min and max; the issue's goals with pass/miss and by
how much; ratios against a peer tool.  Pure: no clock, no I/O (the measurements are in run.py)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from recovery_env.errors import InputError

MB = 1_000_000
MiB = 1 << 20


class Unit(StrEnum):
    """How a value is measured, and how it is written in the table."""

    SECONDS = "s"
    BYTES = "bytes"
    MIB_PER_S = "MiB/s"
    RATIO = "×"
    MIB_RAM = "MiB RAM"

    def show(self, value: float) -> str:
        if self is Unit.SECONDS:
            return f"{value:.3f} s" if value < 1 else f"{value:.2f} s"
        if self is Unit.BYTES:
            return f"{value / MB:.2f} MB ({value / MiB:.2f} MiB)"
        if self is Unit.MIB_PER_S:
            return f"{value:.1f} MiB/s"
        if self is Unit.RATIO:
            return f"{value:.2f}×"
        return f"{value:.0f} MiB"

    def show_delta(self, delta: float) -> str:
        """An absolute difference in this unit ("0.17 MB", "1.4 s")."""
        if self is Unit.BYTES:
            return f"{delta / MB:.2f} MB"
        if self is Unit.RATIO:
            return f"{delta:.2f}"
        return self.show(delta)


@dataclass(frozen=True)
class Summary:
    """n samples of one figure: their median, min and max."""

    n: int
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise InputError("a figure needs at least one sample")
        if any(s != s or s < 0 for s in samples):  # NaN or negative: a broken measurement
            raise InputError(f"samples must be non-negative numbers: {list(samples)}")
        return cls(len(samples), float(statistics.median(samples)), float(min(samples)), float(max(samples)))

    def render(self, unit: Unit) -> str:
        if self.n == 1 or self.min == self.max:
            return f"{unit.show(self.median)} (n={self.n})"
        return f"{unit.show(self.median)} ({unit.show(self.min)} – {unit.show(self.max)}, n={self.n})"


class Better(StrEnum):
    """Which way a figure improves; decides pass/miss against a goal's limit."""

    LOWER = "lower"
    HIGHER = "higher"

    @property
    def sign(self) -> str:
        return "≤" if self is Better.LOWER else "≥"

    def passes(self, value: float, limit: float) -> bool:
        return value <= limit if self is Better.LOWER else value >= limit


@dataclass(frozen=True)
class Verdict:
    passed: bool
    text: str  # "pass (by 0.4 s)" / "miss by 0.17 MB (0.7 %)"


@dataclass(frozen=True)
class Goal:
    """One goal of the issue: ``value {≤|≥} limit``, in ``unit``."""

    text: str  # as the issue says it: "ISO ≤ 25 MB"
    limit: float
    better: Better
    unit: Unit

    def check(self, value: float) -> Verdict:
        delta = abs(value - self.limit)
        rel = f" ({delta / self.limit * 100:.1f} %)" if self.limit else ""
        if self.better.passes(value, self.limit):
            return Verdict(True, f"pass (margin {self.unit.show_delta(delta)}{rel})")
        return Verdict(False, f"miss by {self.unit.show_delta(delta)}{rel}")


@dataclass(frozen=True)
class Ratio:
    """asr against a peer on the same input: the ratio of the medians (and the extreme ratios of the ranges).

    For times (Better.LOWER) the ratio is asr / peer: 0.5 means asr took half as long.  For throughputs
    (Better.HIGHER) it is asr / peer too: 0.9 means asr reached 90 % of the peer's throughput."""

    ours: Summary
    peer: Summary
    better: Better

    @property
    def value(self) -> float:
        if self.peer.median == 0:
            raise InputError("the peer's median is 0: no ratio")
        return self.ours.median / self.peer.median

    @property
    def range(self) -> tuple[float, float]:
        if self.peer.min == 0:
            raise InputError("the peer's minimum is 0: no ratio range")
        return self.ours.min / self.peer.max, self.ours.max / self.peer.min

    def describe(self) -> str:
        """In words: "asr 2.10× faster", "asr 35 % slower", "asr at 93 % of the peer's throughput"."""
        r = self.value
        if self.better is Better.HIGHER:
            return f"asr at {r * 100:.0f} % of the peer's throughput"
        if r <= 1:
            return f"asr {1 / r:.2f}× faster" if r > 0 else "asr infinitely faster"
        return f"asr {(r - 1) * 100:.0f} % slower"


# The goals of issue 6, as the figures are read against them.
GOAL_ISO_SIZE = Goal("ISO ≤ 25 MB", 25 * MB, Better.LOWER, Unit.BYTES)
GOAL_F2_TCG = Goal("F2 prompt ≤ 6 s under TCG", 6.0, Better.LOWER, Unit.SECONDS)
GOAL_MEMORY = Goal("boots (and restores) in 512 MiB", 512, Better.LOWER, Unit.MIB_RAM)
GOAL_BUILD_WARM = Goal("build ≤ 3 s warm", 3.0, Better.LOWER, Unit.SECONDS)
GOAL_ISO_VS_XORRISO = Goal("ISO step no slower than xorriso", 1.0, Better.LOWER, Unit.RATIO)
GOAL_THROUGHPUT = Goal("≥ 90 % of plain tar's throughput", 0.9, Better.HIGHER, Unit.RATIO)


def throughput(nbytes: int, seconds: float) -> float:
    """MiB/s; InputError for a zero or negative duration."""
    if seconds <= 0:
        raise InputError(f"throughput of {nbytes} bytes over {seconds} s: the duration must be positive")
    return nbytes / MiB / seconds


def bisect_min(lo: int, hi: int, step: int, works: dict[int, bool]) -> tuple[int | None, int | None]:
    """One step of the binary search for the smallest value in [lo, hi] (multiples of ``step``) that works,
    assuming "works" is monotonic.  ``works`` holds the values tried so far.  Return (next value to try, None)
    while searching, then (None, answer) — answer None when even ``hi`` does not work."""
    if lo % step or hi % step or lo > hi or step <= 0:
        raise InputError(f"bisect_min: bounds {lo}..{hi} must be multiples of step {step}, lo ≤ hi")
    good = min((v for v, ok in works.items() if ok and lo <= v <= hi), default=None)
    bad = max((v for v, ok in works.items() if not ok and lo <= v <= hi and (good is None or v < good)),
              default=None)  # fmt: skip
    if good is None:
        if hi not in works:
            return hi, None
        return None, None
    low = lo - step if bad is None else bad  # lo - step: "known" to fail, so that lo itself gets tried
    if good - low <= step:
        return None, good
    return (low + good) // 2 // step * step, None
