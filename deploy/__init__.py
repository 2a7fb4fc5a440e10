"""Deployment: the local stack (``deploy.local``), the Dockerfile and compose helpers."""
