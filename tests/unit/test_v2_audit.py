"""``ledger audit`` and shared.checks on batches anchored in Rekor v2 (the real log and TSA
answers of tests/data/rekor_v2): the stored v2 receipt is verified against the pinned v2
trust, its column copies compared, and a missing or wrong pin is a finding."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ledger.audit import BatchChecker, BatchColumns, check_batch_record, check_online_entry
from ledger.audit.command import resolve_v2_trust
from shared import checks
from shared.errors import ConfigError
from shared.verify import RekorV2Receipt, V2Trust, load_log_key
from tests.support import v2_receipts as fx

pytestmark = pytest.mark.unit


def _columns(receipt: RekorV2Receipt, integrated_time: int | None = None) -> BatchColumns:
    return BatchColumns(receipt.uuid, receipt.log_index, receipt.log_id, integrated_time)


def test_a_genuine_v2_batch_has_no_problems() -> None:
    batch, members = fx.batch()
    assert isinstance(batch.receipt, RekorV2Receipt)
    problems = check_batch_record(batch, None, _columns(batch.receipt), v2_trust=fx.trust())
    assert problems == []
    checker = BatchChecker(batch, anchored=True)
    for m in members:
        checker.add(m, rekor_log_id=batch.receipt.uuid, rekor_index=batch.receipt.log_index)
    assert checker.finish() == [] and checker.rows == len(members) == 3


def test_a_v2_batch_without_the_v2_trust_is_a_receipt_problem() -> None:
    batch, _ = fx.batch()
    log_key = load_log_key((fx.DATA / "log-ed25519.pub.pem").read_bytes())
    (problem,) = check_batch_record(batch, log_key)
    assert problem.check == "receipt" and "--rekor-origin" in problem.detail


@pytest.mark.parametrize(("trust", "check"), [
    (lambda: fx.trust(chain="other-tsa"), "timestamp"),
    (lambda: fx.trust(origin="another.log"), "log_id"),
])
def test_a_v2_batch_against_other_pins_is_a_receipt_problem(trust: Callable[[], V2Trust],
                                                             check: str) -> None:
    batch, _ = fx.batch()
    (problem,) = check_batch_record(batch, None, v2_trust=trust())
    assert problem.check == "receipt"
    assert problem.detail.startswith(f"the stored Rekor receipt does not verify: {check}: ")


def test_a_rewritten_v2_receipt_is_found() -> None:
    batch, _ = fx.batch()
    assert isinstance(batch.receipt, RekorV2Receipt)
    forged = batch.receipt.model_copy(update={"timestamp": fx.receipt(tsa="other-tsa").timestamp})
    (problem,) = check_batch_record(replace(batch, receipt=forged), None, v2_trust=fx.trust())
    assert "timestamp: " in problem.detail


def test_the_v2_columns_are_compared_and_integrated_time_stays_null() -> None:
    batch, _ = fx.batch()
    assert isinstance(batch.receipt, RekorV2Receipt)
    (problem,) = check_batch_record(batch, None, _columns(batch.receipt, 1_700_000_000),
                                    v2_trust=fx.trust())
    assert problem.check == "receipt_columns" and "integrated_time" in problem.detail
    moved = BatchColumns("ab" * 32, batch.receipt.log_index, batch.receipt.log_id, None)
    (problem,) = check_batch_record(batch, None, moved, v2_trust=fx.trust())
    assert problem.check == "receipt_columns" and "rekor_uuid" in problem.detail


def test_a_member_pointing_elsewhere_than_the_v2_entry_is_found() -> None:
    batch, members = fx.batch()
    assert batch.receipt is not None
    checker = BatchChecker(batch, anchored=True)
    for i, m in enumerate(members):
        ref = "cd" * 32 if i == 1 else batch.receipt.uuid
        checker.add(m, rekor_log_id=ref, rekor_index=batch.receipt.log_index)
    problems = checker.finish()
    assert problems and all(p.batch_id == batch.id for p in problems)
    assert any(p.entry_id == members[1].id for p in problems)


def test_the_online_comparison_is_for_v1_entries() -> None:
    batch, _ = fx.batch()
    log_key = load_log_key((fx.DATA / "log-ed25519.pub.pem").read_bytes())
    (problem,) = check_online_entry(batch, {}, log_key)
    assert problem.check == "rekor_online" and "Rekor v2" in problem.detail


def test_receipt_problems_need_the_trust_of_the_receipts_version() -> None:
    batch, _ = fx.batch()
    assert batch.receipt is not None
    args: dict[str, Any] = {"manifest": fx.manifest(), "anchor_signature": fx.anchor_signature(),
            "anchor_public_key": fx.anchor_public_key()}
    assert checks.receipt_problems(batch.receipt, None, v2_trust=fx.trust(), **args) == []
    (problem,) = checks.receipt_problems(batch.receipt, None, **args)
    assert "no pinned v2 trust" in problem
    (problem,) = checks.receipt_problems(batch.receipt, None, v2_trust=fx.trust(),
                                         **{**args, "manifest": fx.manifest() + b" "})
    assert problem.startswith("body: digest ")
    digest = hashlib.sha256(fx.manifest()).hexdigest()
    assert digest in problem


# --- where the audit's v2 trust comes from -------------------------------------------------


def test_no_origin_and_no_chain_is_no_v2_trust() -> None:
    key = load_log_key((fx.DATA / "log-ed25519.pub.pem").read_bytes())
    assert resolve_v2_trust(key, v2_key_file=None, origin=None, tsa_chain_file=None) is None


def test_a_configured_tsa_chain_alone_is_no_v2_trust_and_no_error() -> None:
    """The local stack's environment names its TSA chain (LEDGER_TSA_CERT_CHAIN) for every
    process, and no origin unless it anchors in v2: the audit must still run."""
    key = load_log_key((fx.DATA / "log-ed25519.pub.pem").read_bytes())
    assert resolve_v2_trust(key, v2_key_file=None, origin=None, tsa_chain_file=None,
                            configured_chain=str(fx.DATA / "tsa.chain.pem")) is None


def test_the_v2_trust_from_options_or_the_environment() -> None:
    key = load_log_key((fx.DATA / "log-ed25519.pub.pem").read_bytes())
    chain = str(fx.DATA / "tsa.chain.pem")
    from_options = resolve_v2_trust(key, v2_key_file=None, origin=fx.ORIGIN,
                                    tsa_chain_file=chain)
    from_env = resolve_v2_trust(key, v2_key_file=None, origin=None, tsa_chain_file=None,
                                configured_origin=fx.ORIGIN, configured_chain=chain)
    assert from_options is not None and from_options == from_env
    assert from_options.key_id == fx.trust().key_id
    other = load_log_key((fx.DATA / "log-ecdsa.pub.pem").read_bytes())
    with_v2_key = resolve_v2_trust(other, v2_key_file=str(fx.DATA / "log-ed25519.pub.pem"),
                                   origin=fx.ORIGIN, tsa_chain_file=chain)
    assert with_v2_key is not None and with_v2_key.key_id == fx.trust().key_id


@pytest.mark.parametrize(("origin", "chain", "words"), [
    ("x.log", None, "--tsa-chain"),
    (None, "tsa.chain.pem", "--rekor-origin"),
    ("x.log", "missing.pem", "cannot read the TSA chain"),
    ("x.log", "log-ed25519.pub.pem", "not PEM certificates"),
])
def test_an_incomplete_or_unusable_v2_trust_is_a_config_error(
    origin: str | None, chain: str | None, words: str
) -> None:
    key = load_log_key((fx.DATA / "log-ed25519.pub.pem").read_bytes())
    chain_file = str(Path(fx.DATA) / chain) if chain else None
    with pytest.raises(ConfigError, match=words):
        resolve_v2_trust(key, v2_key_file=None, origin=origin, tsa_chain_file=chain_file)
