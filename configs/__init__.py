"""Shipped configurations and prompt sets (installed as `facelock_pl.configs`)."""
