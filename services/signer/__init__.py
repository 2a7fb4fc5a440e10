"""The signer stage: ``ledger.append`` → Vault Ed25519 → ``ledger.entries`` → ``ledger.signed``.

:func:`run_signer` runs it as a process (``ledger signer``); :class:`SignerStage` is the stage
itself (see ``stage.py``), run by the shared consumer loop (``shared/consumer.py``).
"""

from services.signer.app import run_signer
from services.signer.stage import SignerStage

__all__ = ["SignerStage", "run_signer"]
