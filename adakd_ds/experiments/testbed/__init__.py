"""The testbed: synthetic task families, their tokenizer, the shipped 3.7M teacher (teacher/), and the quickstart
that distils it. May import every layer below experiments and experiments.seed_stats, never experiments.grid."""
