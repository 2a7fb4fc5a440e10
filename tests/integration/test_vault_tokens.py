"""Least privilege, renewal and rejection of the stages' Vault tokens, on the real OpenBao.

The local stack gives each stage its own token (``deploy/local/openbao.py``): the signer's
may sign only with the entry key, the anchorer's only with the anchor key, and the reader's
(ingest's health) may sign with none. Tokens renew themselves at half their TTL; a revoked
token pauses the work (policy *retry*) until a new one is read from the token file.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import hvac
import pytest

from deploy.local.openbao import STAGE_POLICIES, OpenBao
from shared.errors import ConfigError, Policy, VaultUnavailable
from shared.settings import Settings
from shared.vault import TransitSigner
from shared.vault_errors import REJECTED_HINT, VaultForbidden, VaultTokenRejected
from shared.vault_token import VaultToken
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def openbao(stack: Any) -> OpenBao:
    service = stack.require("openbao")
    assert isinstance(service, OpenBao)
    return service


@pytest.fixture
def admin(settings: Settings, openbao: OpenBao) -> hvac.Client:
    return hvac.Client(url=settings.vault_addr, token=openbao.root_token, timeout=10,
                       verify=settings.vault_cacert or True)


def _token(admin: hvac.Client, policy: str, **options: Any) -> str:
    created = admin.auth.token.create_orphan(policies=[policy], **options)
    return str(created["auth"]["client_token"])


@pytest.fixture
async def signers(settings: Settings, openbao: OpenBao) -> AsyncIterator[dict[str, TransitSigner]]:
    """One adapter per stage token, as the stages build them."""
    made = {stage: TransitSigner(settings, token=VaultToken(openbao.stage_token(stage)))
            for stage in STAGE_POLICIES}
    yield made
    for signer in made.values():
        await signer.close()


async def test_stage_tokens_come_from_the_stack_environment(
    settings: Settings, openbao: OpenBao
) -> None:
    assert VaultToken.for_stage(settings, "signer").value == openbao.stage_token("signer")
    assert VaultToken.for_stage(settings, "anchorer").value == openbao.stage_token("anchorer")
    # ingest (no stage file) holds the read-only token
    assert VaultToken.for_stage(settings, "ingest").value == openbao.stage_token("reader")
    assert settings.vault_token.get_secret_value() == openbao.stage_token("reader")


async def test_each_stage_token_signs_only_with_its_own_key(
    settings: Settings, signers: dict[str, TransitSigner]
) -> None:
    entry, anchor = settings.vault_transit_key, settings.vault_anchor_key
    signed = await signers["signer"].sign(entry, b"entry statement")
    (await signers["signer"].public_keys(entry))[signed.version].verify(
        b"entry statement", signed.raw)
    signed = await signers["anchorer"].sign(anchor, b"manifest")
    (await signers["anchorer"].public_keys(anchor))[signed.version].verify(
        b"manifest", signed.raw)

    refusals = [("signer", anchor), ("anchorer", entry), ("reader", entry), ("reader", anchor)]
    for stage, key in refusals:
        with pytest.raises(VaultForbidden) as info:
            await signers[stage].sign(key, b"not mine")
        # Vault's 403, told apart from a revoked token: the token is valid, the path is not
        assert not isinstance(info.value, VaultTokenRejected), (stage, key)
        assert "permission denied" in str(info.value) and key in str(info.value)
        assert info.value.policy is Policy.RETRY
    # the reader still reads what ingest's health needs
    assert set(await signers["reader"].public_keys(entry))
    assert set(await signers["reader"].public_keys(anchor))
    assert await signers["signer"].health(entry)
    assert not await signers["signer"].health(anchor)


@pytest.mark.timeout(120)
async def test_a_short_lived_token_keeps_signing_past_its_ttl(
    settings: Settings, admin: hvac.Client, caplog: pytest.LogCaptureFixture
) -> None:
    period_s = 4
    token = _token(admin, STAGE_POLICIES["signer"], period=f"{period_s}s")
    signer = TransitSigner(settings, token=VaultToken(token))
    started = time.monotonic()
    signatures = 0
    try:
        with caplog.at_level(logging.INFO, logger="ledger.vault"):

            async def three_periods_of_signing() -> bool:
                nonlocal signatures
                await signer.sign(settings.vault_transit_key, b"still signing")  # raises if not
                signatures += 1
                return time.monotonic() - started > 3 * period_s

            await wait_for(three_periods_of_signing, within=60, every=0.5,
                           what="three token periods of signing")
        renewals = [r for r in caplog.records if r.getMessage() == "vault token renewed"]
        assert len(renewals) >= 3  # at about half of each period
        looked = admin.auth.token.lookup(token)["data"]
        assert 0 < looked["ttl"] <= period_s
        assert signatures > 3 * period_s
        assert token not in caplog.text
    finally:
        await signer.close()


async def test_a_revoked_token_pauses_and_a_new_one_in_the_file_resumes(
    settings: Settings, admin: hvac.Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "signer.token"
    old = _token(admin, STAGE_POLICIES["signer"], period="1h")
    token_file.write_text(old + "\n")
    stage_settings = settings.model_copy(update={"signer_vault_token_file": str(token_file)})
    token = VaultToken.for_stage(stage_settings, "signer")
    signer = TransitSigner(stage_settings, token=token)
    key = settings.vault_transit_key
    try:
        await signer.sign(key, b"before")
        admin.auth.token.revoke(old)
        with caplog.at_level(logging.ERROR, logger="ledger.vault"):
            for _ in range(2):  # said once in the log, raised at every attempt
                with pytest.raises(VaultTokenRejected) as info:
                    await signer.sign(key, b"during")
        assert str(info.value) == REJECTED_HINT
        assert info.value.policy is Policy.RETRY and not isinstance(info.value,
                                                                     VaultUnavailable)
        assert [r.getMessage() for r in caplog.records] == [REJECTED_HINT]
        assert old not in caplog.text

        new = _token(admin, STAGE_POLICIES["signer"], period="1h")
        token_file.write_text(new + "\n")  # what an operator does to rotate
        with pytest.raises(VaultForbidden, match="new token was read"):
            await signer.sign(key, b"the attempt that reads the file")
        assert token.value == new
        signed = await signer.sign(key, b"after")
        assert signed.key_name == key
    finally:
        await signer.close()


async def test_a_token_file_that_is_missing_is_a_config_error(
    settings: Settings, tmp_path: Path
) -> None:
    missing = tmp_path / f"{uuid.uuid4().hex}.token"
    with pytest.raises(ConfigError, match="empty or unreadable") as info:
        VaultToken.for_stage(settings.model_copy(
            update={"anchorer_vault_token_file": str(missing)}), "anchorer")
    assert str(missing) in str(info.value) and info.value.policy is Policy.STOP
