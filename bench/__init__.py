"""`make bench`: measure build, boot, capture and restore against peer tools, and write docs/BENCHMARKS.md.

    model.py    what a figure is: samples → Summary (median, min, max), goals with pass/miss, ratios (pure)
    report.py   the figures → rows → docs/BENCHMARKS.md through templates/benchmarks.md.j2 (pure)
    peers.py    the peer tools' command lines (xorriso, mformat + mcopy, find | cpio | zstd, tar | zstd) (pure)
    dataset.py  the deterministic data set for capture and restore (plan pure, write thin)
    guest.py    the restore-throughput harness inside the rescue environment (agent override, serial verdict)
    rear.py     Relax-and-Recover, the peer recovery tool (private config dir, mkrescue, boot)
    run.py      the measurements, in order; `python -m bench`
"""
