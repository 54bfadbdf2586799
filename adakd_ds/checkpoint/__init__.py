"""Checkpoints: crash-safe sharded saves and resume, re-sharding to another world size, and HF export. May import config only."""
