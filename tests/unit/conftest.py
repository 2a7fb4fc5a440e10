"""Every unit test runs with the network guard on (``tests/support/no_network.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import no_network


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    with no_network.guard():
        yield
