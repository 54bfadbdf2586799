"""Experiments on top of the engine, in two rooms: testbed/ (the synthetic tasks, the shipped teacher and the
quickstart) and grid/ (the Table 1 grid runner, its report, chart and token analysis; it may import testbed/, never the
reverse). seed_stats.py is the mean ± std convention that both share."""
