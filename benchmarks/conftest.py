"""Benchmark session: the same local stack as the integration tests.

``tests/conftest.py`` is loaded as a plugin, so its hooks start the stack after collection
(when a selected item is marked ``integration``) and stop it at session end, and its
``stack`` / ``settings`` fixtures are available here. Every benchmark module is marked both
``bench`` (what ``make bench`` selects) and ``integration`` (what makes the stack start);
``make test`` only collects ``tests/``, so it never runs a benchmark.

Run from the repository root: ``.venv/bin/python -m pytest -m bench -s benchmarks``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.harness import ResultsFile

pytest_plugins = ["tests.conftest"]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def results() -> ResultsFile:
    """The session's ``.bench/results-<timestamp>.json`` (rewritten after every benchmark)."""
    return ResultsFile(REPO / ".bench")
