"""Contract of shared.vault against a real Vault-API server (OpenBao) with Transit.

Runs against the shared local stack (``settings`` / ``stack`` fixtures) when the project's
conftest provides them, else against the server named by ``VAULT_ADDR`` / ``VAULT_TOKEN``.
Keys created here have unique names, so rotating them never touches the pipeline's keys.
Administration (creating/rotating keys, tokens) uses ``LEDGER_TEST_VAULT_ADMIN_TOKEN``, the
stack's root token, or else ``VAULT_TOKEN`` (a dev server's root token).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import uuid
from collections.abc import AsyncIterator

import hvac
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pydantic import SecretStr

from shared.errors import Policy, VaultError, VaultUnavailable
from shared.settings import Settings
from shared.vault import BATCH_MAX, Signature, TransitSigner
from shared.vault_token import VaultToken

pytestmark = pytest.mark.integration

KEY_TYPES = ("ed25519", "ecdsa-p256")


# --- fixtures ------------------------------------------------------------------------------


def _stack(request: pytest.FixtureRequest) -> object | None:
    try:
        stack: object = request.getfixturevalue("stack")
    except pytest.FixtureLookupError:
        return None
    return stack


@pytest.fixture
def vault_settings(request: pytest.FixtureRequest) -> Settings:
    try:
        settings = request.getfixturevalue("settings")
    except pytest.FixtureLookupError:
        if not os.environ.get("VAULT_ADDR"):
            pytest.skip("no local stack fixture and VAULT_ADDR is not set")
        settings = Settings.from_env()
    assert isinstance(settings, Settings)
    return settings


@pytest.fixture
def admin_token(request: pytest.FixtureRequest, vault_settings: Settings) -> str:
    token = os.environ.get("LEDGER_TEST_VAULT_ADMIN_TOKEN", "")
    if token:
        return token
    stack = _stack(request)
    service = getattr(stack, "service", None)
    if callable(service):
        root = getattr(service("openbao"), "root_token", "")
        if isinstance(root, str) and root:
            return root
    return vault_settings.vault_token.get_secret_value()


@pytest.fixture
def admin(vault_settings: Settings, admin_token: str) -> hvac.Client:
    client = hvac.Client(url=vault_settings.vault_addr, token=admin_token, timeout=10,
                         verify=vault_settings.vault_cacert or True)
    mounts = client.sys.list_mounted_secrets_engines()
    if f"{vault_settings.vault_transit_mount}/" not in mounts.get("data", mounts):
        client.sys.enable_secrets_engine("transit", path=vault_settings.vault_transit_mount)
    return client


@pytest.fixture
def new_key(admin: hvac.Client, vault_settings: Settings):
    """Factory: create a uniquely named transit key of the given type."""

    def create(key_type: str) -> str:
        name = f"contract-{key_type}-{uuid.uuid4().hex[:8]}"
        admin.secrets.transit.create_key(
            name, key_type=key_type, mount_point=vault_settings.vault_transit_mount
        )
        return name

    return create


@pytest.fixture
async def admin_signer(vault_settings: Settings, admin_token: str) -> AsyncIterator[TransitSigner]:
    signer = TransitSigner(vault_settings.model_copy(update={"vault_token": SecretStr(admin_token)}))
    yield signer
    await signer.close()


@pytest.fixture
async def signer(vault_settings: Settings) -> AsyncIterator[TransitSigner]:
    """A signer with the signer stage's own token (the stack gives it a narrow policy)."""
    signer = TransitSigner(vault_settings,
                           token=VaultToken.for_stage(vault_settings, "signer"))
    yield signer
    await signer.close()


# --- independent local verification (not through shared.vault) ----------------------------


def _public_key_from_vault(
    admin: hvac.Client, settings: Settings, key: str, version: int
) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey:
    data = admin.secrets.transit.read_key(key, mount_point=settings.vault_transit_mount)["data"]
    text = data["keys"][str(version)]["public_key"]
    if data["type"] == "ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(text))
    loaded = serialization.load_pem_public_key(text.encode())
    assert isinstance(loaded, ec.EllipticCurvePublicKey)
    return loaded


def _verifies(
    public: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey, data: bytes, sig: bytes
) -> bool:
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(sig, data)
        else:
            public.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _check_format(sig: Signature, key: str, version: int) -> None:
    assert sig.key_name == key
    assert sig.version == version
    assert sig.vault == f"vault:v{version}:" + base64.b64encode(sig.raw).decode()


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
async def test_single_and_batch_of_200_verify_locally(
    key_type: str, admin_signer: TransitSigner, admin: hvac.Client, new_key, vault_settings
) -> None:
    key = new_key(key_type)
    assert await admin_signer.key_type(key) == key_type

    one = await admin_signer.sign(key, b"a single statement")
    _check_format(one, key, 1)
    public = _public_key_from_vault(admin, vault_settings, key, 1)
    assert _verifies(public, b"a single statement", one.raw)
    assert not _verifies(public, b"another statement", one.raw)

    inputs = [f"statement {i}".encode() for i in range(BATCH_MAX)]
    sigs = await admin_signer.sign_batch(key, inputs)
    assert len(sigs) == BATCH_MAX
    for data, sig in zip(inputs, sigs, strict=True):
        _check_format(sig, key, 1)
        assert _verifies(public, data, sig.raw)
    # the adapter's own key matches what Vault publishes
    mine = (await admin_signer.public_keys(key))[1]
    assert mine.key_type == key_type
    assert mine.der == public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def test_ed25519_is_deterministic_and_ecdsa_randomized(
    admin_signer: TransitSigner, new_key
) -> None:
    ed, ecdsa = new_key("ed25519"), new_key("ecdsa-p256")
    assert (await admin_signer.sign(ed, b"x")).raw == (await admin_signer.sign(ed, b"x")).raw
    assert (await admin_signer.sign(ecdsa, b"x")).raw != (await admin_signer.sign(ecdsa, b"x")).raw


async def test_more_than_one_batch_is_split_and_kept_in_order(
    admin_signer: TransitSigner, admin: hvac.Client, new_key, vault_settings
) -> None:
    key = new_key("ed25519")
    inputs = [i.to_bytes(4, "big") for i in range(2 * BATCH_MAX + 50)]
    sigs = await admin_signer.sign_batch(key, inputs)
    public = _public_key_from_vault(admin, vault_settings, key, 1)
    assert all(_verifies(public, d, s.raw) for d, s in zip(inputs, sigs, strict=True))


async def test_ecdsa_prehashed_input_signs_the_digest(
    admin_signer: TransitSigner, admin: hvac.Client, new_key, vault_settings
) -> None:
    key = new_key("ecdsa-p256")
    digest = hashlib.sha256(b"manifest").digest()
    sig = await admin_signer.sign(key, digest, prehashed_sha256=True)
    public = _public_key_from_vault(admin, vault_settings, key, 1)
    assert _verifies(public, b"manifest", sig.raw)  # a plain ECDSA-SHA256 signature


@pytest.mark.parametrize("key_type", KEY_TYPES)
async def test_rotation_new_signatures_v2_old_still_verify_with_v1(
    key_type: str, admin_signer: TransitSigner, admin: hvac.Client, new_key, vault_settings
) -> None:
    key = new_key(key_type)
    old = await admin_signer.sign(key, b"before rotation")
    assert old.version == 1
    assert set(await admin_signer.public_keys(key)) == {1}  # now cached

    admin.secrets.transit.rotate_key(key, mount_point=vault_settings.vault_transit_mount)

    # the cached signer meets v2 in Vault's answer and refreshes its keys to verify it
    new = await admin_signer.sign_batch(key, [b"after rotation", b"again"])
    assert [s.version for s in new] == [2, 2]
    assert all(s.vault.startswith("vault:v2:") for s in new)
    keys = await admin_signer.public_keys(key)
    assert set(keys) == {1, 2}
    assert keys[1].der != keys[2].der

    v1 = _public_key_from_vault(admin, vault_settings, key, 1)
    v2 = _public_key_from_vault(admin, vault_settings, key, 2)
    assert _verifies(v1, b"before rotation", old.raw)
    assert not _verifies(v2, b"before rotation", old.raw)
    assert _verifies(v2, b"after rotation", new[0].raw)
    keys[1].verify(b"before rotation", old.raw)  # the adapter's v1 key too


async def test_stage_keys_sign_with_the_stage_tokens(
    signer: TransitSigner, vault_settings: Settings
) -> None:
    ed = await signer.sign(vault_settings.vault_transit_key, b"entry statement")
    assert await signer.key_type(vault_settings.vault_transit_key) == "ed25519"
    keys = await signer.public_keys(vault_settings.vault_transit_key)
    keys[ed.version].verify(b"entry statement", ed.raw)
    assert await signer.health()
    anchorer = TransitSigner(vault_settings,
                             token=VaultToken.for_stage(vault_settings, "anchorer"))
    try:
        anchor = await anchorer.sign(vault_settings.vault_anchor_key, b"manifest")
        assert await anchorer.key_type(vault_settings.vault_anchor_key) == "ecdsa-p256"
        (await anchorer.public_keys(vault_settings.vault_anchor_key))[anchor.version].verify(
            b"manifest", anchor.raw
        )
    finally:
        await anchorer.close()


async def test_unknown_key_is_a_vault_error_naming_the_key(admin_signer: TransitSigner) -> None:
    name = f"no-such-key-{uuid.uuid4().hex[:6]}"
    with pytest.raises(VaultError, match=name) as info:
        await admin_signer.sign(name, b"data")
    assert "not found" in str(info.value)
    assert not isinstance(info.value, VaultUnavailable) and info.value.policy is Policy.RETRY


async def test_permission_denied_is_a_vault_error(
    admin: hvac.Client, new_key, vault_settings: Settings
) -> None:
    key = new_key("ed25519")
    weak = admin.auth.token.create(policies=["default"], ttl="5m")["auth"]["client_token"]
    signer = TransitSigner(vault_settings.model_copy(update={"vault_token": SecretStr(weak)}))
    try:
        with pytest.raises(VaultError, match=key) as info:
            await signer.sign(key, b"data")
        assert "permission denied" in str(info.value)
        assert weak not in str(info.value)
        assert not isinstance(info.value, VaultUnavailable)
    finally:
        await signer.close()


async def test_ed25519_refuses_prehashed(admin_signer: TransitSigner, new_key) -> None:
    key = new_key("ed25519")
    with pytest.raises(VaultError, match="pure Ed25519"):
        await admin_signer.sign(key, b"\0" * 32, prehashed_sha256=True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_vault_is_vault_unavailable(vault_settings: Settings) -> None:
    settings = vault_settings.model_copy(
        update={"vault_addr": f"http://127.0.0.1:{_closed_port()}"}
    )
    signer = TransitSigner(settings, timeout_s=2)
    try:
        with pytest.raises(VaultUnavailable) as info:
            await signer.sign("ledger-ed25519", b"data")
        assert info.value.retryable
        token = settings.vault_token.get_secret_value()
        assert token not in str(info.value) or not token
        assert not await signer.health()
    finally:
        await signer.close()


async def test_health_of_a_reachable_vault(admin_signer: TransitSigner, new_key) -> None:
    assert await admin_signer.health(new_key("ed25519"))
