"""The training engine: the distillation recipe (ZeRO-3 student + ZeRO-3 inference teacher) and its DeepSpeed plumbing
(models, configs, the process group, the lr schedule, metrics, the `adakd-distill` CLI). Its two rooms: policy/ (where
training sequences come from) and guard/ (what keeps a run safe)."""
