# asr: Automated System Recovery for Linux.  `make demo` and `make test` do all their own set-up.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ASR := $(VENV)/bin/asr
STAMP := $(VENV)/.installed
APT_PACKAGES := qemu-system-x86 qemu-utils ovmf mtools dosfstools xorriso genisoimage e2fsprogs fdisk \
	zstd fakeroot grub-common cpio xz-utils acl attr xfsprogs btrfs-progs python3-venv cryptsetup-bin lvm2 pciutils debootstrap

.PHONY: all setup deps venv test test-fast lint demo bench clean

all: test

deps:
	@bash scripts/ensure-deps.sh $(APT_PACKAGES)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

setup: deps venv

lint: venv
	$(VENV)/bin/ruff check builder recovery_env bench tests
	$(VENV)/bin/mypy

# two test files at a time: a VM test keeps one core busy with QEMU (TCG is single-threaded), the other core runs
# the next file; each file stays on one worker (--dist loadfile), so its module fixtures are made once
TEST_JOBS ?= 2

test: setup lint
	$(VENV)/bin/pytest -v -n $(TEST_JOBS) --dist loadfile --durations=25

test-fast: setup lint
	$(VENV)/bin/pytest -m 'not vm' -q

demo: setup
	$(ASR) demo

# measure build, boot, capture and restore against peer tools; writes docs/BENCHMARKS.md (< 15 min on 2 cores)
bench: setup
	$(PY) -m bench

clean:
	rm -rf out tests/artifacts
