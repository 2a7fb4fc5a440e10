"""The local stack: real Kafka, PostgreSQL, OpenBao and Rekor started as processes on loopback.

Used both by ``ledger dev`` and by the integration tests. Nothing here is imported by
``shared`` or ``services``.
"""
