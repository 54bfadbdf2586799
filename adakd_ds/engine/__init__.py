"""The training engine: the distillation recipe (ZeRO-3 student + ZeRO-3 inference teacher), models, DeepSpeed
configs, the process group, the lr schedule, metrics, preemption, and the `adakd-distill` entry point."""
