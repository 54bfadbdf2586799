"""generation_config.json for an exported model: the student's own, with the run tokenizer's EOS and pad ids.

Why: without it, `generate()` and serving stacks fall back to the model config's ids, which need not be the tokenizer
the student was trained with (a chat model stops on its end-of-turn token, not on the base model's EOS), and they warn
about a missing pad id on every call. The student's file (when its source directory has one) keeps its sampling
defaults; otherwise one is derived from the model config. The tokenizer's EOS is put first and the model's others kept.
"""

from __future__ import annotations

import os
from typing import Any

GENERATION_CONFIG = "generation_config.json"


def build_generation_config(model_config: Any, source_dir: str | None, tokenizer: Any = None) -> Any:
    """A GenerationConfig from `source_dir`'s file (else from `model_config`), with the tokenizer's EOS / pad / BOS."""
    from transformers import GenerationConfig

    if source_dir and os.path.isfile(os.path.join(source_dir, GENERATION_CONFIG)):
        gen = GenerationConfig.from_pretrained(source_dir)
    else:
        gen = GenerationConfig.from_model_config(model_config)
    if tokenizer is not None:
        eos = tokenizer.eos_token_id
        if eos is not None:
            old = gen.eos_token_id
            others = [e for e in (old if isinstance(old, (list, tuple)) else [old]) if e is not None and e != eos]
            gen.eos_token_id = [eos, *others] if others else eos
        if tokenizer.pad_token_id is not None:
            gen.pad_token_id = tokenizer.pad_token_id
        if gen.bos_token_id is None and tokenizer.bos_token_id is not None:
            gen.bos_token_id = tokenizer.bos_token_id
    gen._from_model_config = False  # an explicit file: transformers must not regenerate it from config.json
    return gen


def write_generation_config(out_dir: str, model_config: Any, source_dir: str | None, tokenizer: Any = None) -> None:
    build_generation_config(model_config, source_dir, tokenizer).save_pretrained(out_dir)
