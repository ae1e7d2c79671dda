"""The resize solver (recovery_env/restore/resize.py): property tests (hypothesis) and examples.

Properties, for any layout and any target size: the result fits the target's usable space, no partition goes below
its least size (a growable one below the space its data needs), every start that moved and every resized size is
a whole MiB, order and numbers are kept, fixed items keep their size, an extended partition spans its logical
ones, and the same input gives the same output.  A target smaller than :func:`minimum_disk_bytes` is refused with
DataDoesNotFitError; one at it is accepted.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recovery_env.errors import DataDoesNotFitError
from recovery_env.model.descriptor import Disk, TableType
from recovery_env.restore.resize import (
    SWAP_CAP_BYTES,
    Item,
    ItemKind,
    minimum_disk_bytes,
    solve,
    usable_end,
)

MIB = 1 << 20
GIB = 1 << 30
GRAIN = MIB // 512


@pytest.fixture(autouse=True)
def _pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_FORBID_SUBPROCESS", "1")


@st.composite
def layouts(draw: st.DrawFn) -> tuple[Disk, tuple[Item, ...]]:
    """A disk of aligned partitions: fixed, swap and growable items (MBR: some of them logical, in an extended
    partition with 1 MiB EBR gaps), gaps of free space between them."""
    table = draw(st.sampled_from([TableType.GPT, TableType.MBR]))
    kinds = draw(st.lists(st.sampled_from([ItemKind.FIXED, ItemKind.SWAP, ItemKind.GROWABLE]), min_size=1,
                          max_size=6))
    # MBR: the items from ``logical_from`` on are logical partitions (5, 6, ...) in an extended partition
    logical_from = (draw(st.integers(1, min(3, len(kinds) - 1))) if table is TableType.MBR and len(kinds) > 1
                    and draw(st.booleans()) else None)
    if table is TableType.MBR and logical_from is None:
        kinds = kinds[:4]
    items: list[Item] = []
    pos = GRAIN
    ext_start = 0
    for i, kind in enumerate(kinds):
        logical = logical_from is not None and i >= logical_from
        if logical and i == logical_from:
            ext_start = pos
        pos += GRAIN if logical else draw(st.sampled_from([0, 0, GRAIN, 7 * GRAIN]))
        number = 5 + i - logical_from if logical and logical_from is not None else i + 1
        size = draw(st.integers(1, 3000)) * GRAIN
        least = size if kind is not ItemKind.GROWABLE else draw(st.integers(1, size // GRAIN)) * GRAIN
        items.append(Item(number, pos, size, kind, f"item{number}", least,
                          "fixed: test" if kind is ItemKind.FIXED else ""))
        pos += size
    if logical_from is not None:
        tail = draw(st.sampled_from([0, GRAIN]))
        items.append(Item(logical_from + 1, ext_start, pos + tail - ext_start, ItemKind.EXTENDED, "ext"))
        pos += tail
    free_tail = draw(st.integers(0, 100)) * GRAIN
    size_bytes = (pos + free_tail + 34) * 512
    disk = Disk("disk1", size_bytes, 512, 512, table, "0x1234abcd" if table is TableType.MBR else "x", True)
    return disk, tuple(items)


def _check(disk: Disk, items: tuple[Item, ...], target: int) -> None:
    r = solve(disk, items, target)
    assert r == solve(disk, items, target)  # deterministic
    by = {it.number: it for it in items}
    assert [p.number for p in r.partitions] == sorted(by)
    end = usable_end(disk, target)
    placed = sorted((p for p in r.partitions if by[p.number].kind is not ItemKind.EXTENDED), key=lambda p: p.start)
    assert [by[p.number].start for p in placed] == sorted(by[p.number].start for p in placed)  # order kept
    for a, b in itertools.pairwise(placed):
        assert a.start + a.size <= b.start, (a, b)  # apart
    for p in r.partitions:
        it = by[p.number]
        assert p.start + p.size <= end  # fits the target's usable space
        if it.kind is ItemKind.EXTENDED:
            inside = [q for q in placed if it.start <= by[q.number].start < it.end]
            assert p.start < inside[0].start and p.start + p.size >= inside[-1].start + inside[-1].size
            continue
        assert p.start % GRAIN == 0 or p.start == it.start  # a moved start is aligned
        assert p.size % GRAIN == 0 or not p.resized  # a resized size is whole MiB
        if it.kind is ItemKind.FIXED:
            assert p.size == it.size and p.reason.startswith("fixed:")
        elif it.kind is ItemKind.GROWABLE:
            assert p.size >= it.minimum  # never below what its data needs
        else:
            assert p.size >= min(it.size, SWAP_CAP_BYTES // 512)
        if target >= disk.size_bytes and it.kind is not ItemKind.EXTENDED:
            assert p.size >= it.size  # a larger disk shrinks nothing


@settings(max_examples=120, deadline=None)
@given(layouts(), st.integers(0, 10_000))
def test_the_solution_always_fits_and_respects_every_minimum(layout: tuple[Disk, tuple[Item, ...]],
                                                             permille: int) -> None:
    disk, items = layout
    least = minimum_disk_bytes(disk, items)
    target = max(least, disk.size_bytes * permille // 1000 // 512 * 512)
    _check(disk, items, target)


@settings(max_examples=80, deadline=None)
@given(layouts())
def test_the_least_disk_is_accepted_and_one_sector_less_refused(layout: tuple[Disk, tuple[Item, ...]]) -> None:
    disk, items = layout
    least = minimum_disk_bytes(disk, items)
    assert least <= disk.size_bytes  # the original disk always holds its own data
    _check(disk, items, least)
    _check(disk, items, disk.size_bytes)
    with pytest.raises(DataDoesNotFitError, match=r"does not fit on a disk of .* missing"):
        solve(disk, items, least - 512)


@settings(max_examples=80, deadline=None)
@given(layouts())
def test_the_same_space_keeps_every_start_and_size(layout: tuple[Disk, tuple[Item, ...]]) -> None:
    disk, items = layout
    r = solve(disk, items, disk.size_bytes)
    assert all((p.start, p.size) == (p.original_start, p.original_size) for p in r.partitions)


def _gpt(*items: Item, size: int) -> tuple[Disk, tuple[Item, ...]]:
    return Disk("disk1", size, 512, 512, TableType.GPT, "x", True, device="/dev/sda"), items


def test_growth_is_shared_in_proportion_and_fixed_items_keep_their_size() -> None:
    disk, items = _gpt(
        Item(1, 2048, 512 * GRAIN, ItemKind.FIXED, "/boot/efi", 512 * GRAIN, "fixed: ESP"),
        Item(2, 526336, 3072 * GRAIN, ItemKind.GROWABLE, "/", 1024 * GRAIN),
        Item(3, 526336 + 3072 * GRAIN, 1024 * GRAIN, ItemKind.GROWABLE, "/home", 10 * GRAIN),
        Item(4, 526336 + 4096 * GRAIN, 1024 * GRAIN, ItemKind.SWAP, "swap", 1024 * GRAIN),
        size=(526336 + 5121 * GRAIN) * 512,  # no free space after the last partition (1 MiB for the backup GPT)
    )
    size = disk.size_bytes
    r = solve(disk, items, size + 4 * GIB)  # 4 GiB more: / takes 3 of them, /home 1
    assert [(p.number, p.size // GRAIN) for p in r.partitions] == [(1, 512), (2, 3072 + 3072), (3, 1024 + 1024),
                                                                   (4, 1024)]
    assert [p.reason for p in r.partitions] == [
        "fixed: ESP",
        "grows: / takes 75% of the 4.0 GiB added, in proportion to its size",
        "grows: /home takes 25% of the 4.0 GiB added, in proportion to its size",
        "fixed: swap keeps its size (memory sets it, not the disk)",
    ]
    small = solve(disk, items, size - 2 * GIB)  # 2 GiB less: both growables give up in proportion (3:1)
    assert [(p.number, p.size // GRAIN) for p in small.partitions] == [(1, 512), (2, 3072 - 1536), (3, 1024 - 512),
                                                                       (4, 1024)]
    assert small.of(2).reason.startswith("shrinks to fit: gives up 1.5 GiB in proportion to its size")
    tight = solve(disk, items, size - 3000 * MIB)  # / reaches its minimum, /home gives the rest, then swap to its cap
    assert (tight.of(2).size, tight.of(3).size) == (1024 * GRAIN, 72 * GRAIN)
    assert tight.of(2).reason.startswith("shrinks to fit, to the least")
    with pytest.raises(DataDoesNotFitError) as e:
        solve(disk, items, size - 3584 * MIB, target="/dev/vdb (QEMU HARDDISK, 1.8 GiB)")
    assert str(e.value).startswith("the data of disk1 (was /dev/sda, 5.3 GiB) does not fit on /dev/vdb (QEMU "
                                   "HARDDISK, 1.8 GiB): 521.0 MiB (546324992 bytes) missing; ")
    assert "/ 1.0 GiB" in str(e.value) and "/boot/efi 512.0 MiB (fixed: ESP)" in str(e.value)


def test_swap_is_capped_only_when_the_growables_are_at_their_minimum() -> None:
    disk, items = _gpt(
        Item(1, 2048, 2048 * GRAIN, ItemKind.GROWABLE, "/", 2048 * GRAIN),  # no used bytes: never smaller
        Item(2, 2048 + 2048 * GRAIN, 4096 * GRAIN, ItemKind.SWAP, "swap", 4096 * GRAIN),
        size=7 * GIB,
    )
    r = solve(disk, items, 4 * GIB)
    assert r.of(1).size == 2048 * GRAIN and r.of(2).size < 4096 * GRAIN
    assert minimum_disk_bytes(disk, items) == (2048 + (2048 + 1024) * GRAIN + 33) * 512
    assert solve(disk, items, minimum_disk_bytes(disk, items)).of(2).reason == "swap capped at 1.0 GiB to fit"


def test_grow_last_no_keeps_every_size_and_refuses_what_does_not_fit() -> None:
    disk, items = _gpt(Item(1, 2048, 1024 * GRAIN, ItemKind.GROWABLE, "/", 8 * GRAIN), size=2 * GIB)
    disk = replace(disk, grow_last=False)
    assert solve(disk, items, 4 * GIB).of(1).size == 1024 * GRAIN
    with pytest.raises(DataDoesNotFitError, match="as captured"):
        solve(disk, items, 512 * MIB)
