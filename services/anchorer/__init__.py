"""The anchorer stage: batches signed entries, anchors each batch in Rekor, emits receipts.

Layout (where does X happen?):

* ``batcher``     — when to cut a batch (N entries or T ms) in front of the Kafka consumer;
* ``building``    — leaves, Merkle tree, manifest and ``ledger.anchored`` events (pure);
* ``store``       — the SQL: atomic claims, pending batches, completion, checkpoints, pins;
* ``anchoring``   — one batch end to end: claim → sign → persist → Rekor → verify → complete;
* ``trust``       — the pinned Rekor log key;
* ``checkpoints`` — the log only grows (consistency proofs between stored checkpoints);
* ``sweeper``     — re-drives pending batches and never-batched entries;
* ``app``         — the stage and its process (:func:`run_anchorer`; ``ledger anchorer`` runs it).
"""

from .app import AnchorerProcess, run_anchorer

__all__ = ["AnchorerProcess", "run_anchorer"]
