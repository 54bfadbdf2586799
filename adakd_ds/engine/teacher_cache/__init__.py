"""The offline teacher's writer (adakd-cache-teacher): the teacher runs once, its top-k distributions are stored.

The store's format and reader live in data/teacher_cache.py, the loss on it in loss/cached_target.py. May import
config, data, loss, checkpoint, eval, engine's plumbing and engine.guard; never engine.recipe / engine.cli.
"""
