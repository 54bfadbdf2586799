"""The experiment grid: base divergence x AdaKD variant x seed cells, their statistics, report, chart and the token
analysis. May import experiments.testbed (it trains on the testbed) and every layer below experiments."""
