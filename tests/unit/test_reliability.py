"""The consumer-group settings, the chaos schedule and the reliability page's sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import schedule
from benchmarks.faults import DEPENDENCY_FAULTS, STAGE_FAULTS
from benchmarks.reliability_doc import replace_section
from shared.errors import ConfigError
from shared.settings import Settings


def test_consumer_group_defaults_detect_a_dead_member_within_seconds() -> None:
    s = Settings()
    assert s.consumer_session_timeout_ms == 3000
    assert s.consumer_heartbeat_interval_ms * 3 <= s.consumer_session_timeout_ms
    assert s.consumer_instance_id == ""


def test_a_heartbeat_too_slow_for_the_session_is_refused_by_name() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"LEDGER_CONSUMER_SESSION_TIMEOUT_MS": "3000",
                           "LEDGER_CONSUMER_HEARTBEAT_INTERVAL_MS": "1500",
                           "VAULT_TOKEN": "s.do-not-print"})
    assert "LEDGER_CONSUMER_HEARTBEAT_INTERVAL_MS" in str(err.value)
    assert "do-not-print" not in str(err.value)


def test_an_instance_id_must_be_a_plain_name() -> None:
    assert Settings.from_env({"LEDGER_CONSUMER_INSTANCE_ID": "signer-0"}).consumer_instance_id
    with pytest.raises(ConfigError, match="LEDGER_CONSUMER_INSTANCE_ID"):
        Settings.from_env({"LEDGER_CONSUMER_INSTANCE_ID": "signer 0\n"})


def test_the_chaos_schedule_is_seeded_and_tries_every_fault() -> None:
    first = schedule(9, 50_000, 5)
    assert first == schedule(9, 50_000, 5)
    assert first != schedule(10, 50_000, 5)
    names = [name for _, name in first]
    assert set(names) == {*DEPENDENCY_FAULTS, *STAGE_FAULTS}
    assert len(names) == len(DEPENDENCY_FAULTS) + len(STAGE_FAULTS) + 5
    points = [n for n, _ in first]
    assert points == sorted(points)
    assert points[0] >= 2_500 and points[-1] <= 42_500


def test_a_measured_section_replaces_only_itself(tmp_path: Path) -> None:
    page = tmp_path / "reliability.md"
    page.write_text("# Title\n\n<!-- BEGIN chaos -->\nold\n<!-- END chaos -->\n\nafter\n")
    replace_section(page, "chaos", "new table\n")
    assert page.read_text() == (
        "# Title\n\n<!-- BEGIN chaos -->\nnew table\n<!-- END chaos -->\n\nafter\n")
    replace_section(page, "recovery", "figures")
    assert page.read_text().endswith("<!-- BEGIN recovery -->\nfigures\n<!-- END recovery -->\n")
