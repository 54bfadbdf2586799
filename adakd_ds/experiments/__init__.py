"""Experiments on top of the engine: the quickstart, its pipeline, the grid runner and its report, the embedded
synthetic tasks and tokenizer training."""
