"""What keeps a run safe: preflight input checks, the run lock, the NaN guard, signals and preemption, the launcher
watch and the adakd-launch supervisor, the tokenizer check. May import config, data, loss, checkpoint and engine's
plumbing (models, ds_config), never the recipe or the CLI."""
