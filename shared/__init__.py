"""Code shared by the three stages: settings, errors, telemetry, adapters and offline verification.

``shared`` never imports ``services``, ``deploy`` or ``ledger``.
"""
