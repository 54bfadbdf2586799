"""Evaluation: eval-set formats, generation, ROUGE-L / exact match, held-out loss, and the `adakd-eval` entry. May import config, data and loss."""
