"""adakd-ds: token-adaptive knowledge distillation (AdaKD) for LLMs under DeepSpeed ZeRO-3. The folders are the layers,
top to bottom: experiments -> engine (policy/, guard/) -> slurm / eval -> loss / data / checkpoint -> config."""
