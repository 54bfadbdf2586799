"""Where a step's training sequences come from: the dataset, the student's own samples (gkd, distillm), the replay
buffer, and the trainer's held-out evaluation. May import config, data, eval, loss and engine's plumbing (models), never
the recipe or the CLI."""
