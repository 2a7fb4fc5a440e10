"""Deployment: the local development/test stack (``deploy.local``), the Dockerfile and compose helpers."""
