"""Shared pytest fixtures.  Each helper keeps its fixtures in its own clearly marked block."""

from __future__ import annotations

import pytest

# ---- rescue environment (helper A: builder/media/) -------------------------------------------------------------------
from builder.media.packages import PackageSet, fetch_packages


@pytest.fixture(scope="session")
def package_set() -> PackageSet:
    """Every package of packages.lock, verified, in the usual cache (downloaded once if missing)."""
    return fetch_packages()


# ---- end of rescue environment block ---------------------------------------------------------------------------
