"""The AdaKD loss: token difficulty, LATF selection and ratio control, IDTS temperatures, rank-global statistics,
the chunked gradient, and the base divergences (divergences/, one per file). May import config only."""
