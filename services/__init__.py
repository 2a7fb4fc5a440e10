"""The three pipeline stages; each imports only ``shared``, never another stage."""
