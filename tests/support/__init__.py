"""Test helpers shared by integration tests (fault injection in front of real services)."""
