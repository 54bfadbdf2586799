"""Tokenizer, student and teacher construction under ZeRO-3, and the vocabulary check between them.

transformers finds the DeepSpeed config through ONE module-global weakref to the most recently created
HfDeepSpeedConfig. While it resolves to a live stage-3 config, from_pretrained/from_config build the model
inside zero.Init (params born partitioned) and generate() turns on synced_gpus. So each model keeps its own
HfDeepSpeedConfig alive as an attribute, and building the teacher restores the student's global afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adakd_ds.config.schema import DType, ModelConfig
from adakd_ds.engine.ds_config import assert_no_auto, check_student_config, fill_bucket_sizes

TORCH_DTYPES: dict[DType, torch.dtype] = {DType.FP32: torch.float32, DType.BF16: torch.bfloat16}
HF_DS_CONFIG_ATTR = "_adakd_hf_ds_config"


def torch_dtype(dtype: DType | torch.dtype) -> torch.dtype:
    return dtype if isinstance(dtype, torch.dtype) else TORCH_DTYPES[DType(dtype)]


def tokenizer_source(model_cfg: ModelConfig) -> str:
    """model.tokenizer, else the student, else the teacher, else the student_config's directory."""
    for src in (model_cfg.tokenizer, model_cfg.student, model_cfg.teacher):
        if src:
            return src
    if model_cfg.student_config:
        path = model_cfg.student_config
        return os.path.dirname(path) if os.path.isfile(path) else path
    raise ValueError("no tokenizer source: set model.tokenizer, model.student or model.teacher")


def load_tokenizer(model_cfg: ModelConfig) -> Any:
    """AutoTokenizer (fast or sentencepiece); a missing pad token becomes eos (or unk) so batches can pad."""
    from transformers import AutoTokenizer

    src = tokenizer_source(model_cfg)
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load a tokenizer from {src!r}: {exc}") from None
    if tok.pad_token is None:
        fallback = tok.eos_token if tok.eos_token is not None else tok.unk_token
        if fallback is None:
            raise ValueError(f"tokenizer {src!r} has no pad, eos or unk token to pad with")
        tok.pad_token = fallback
    return tok


def _hf_ds_config(ds_config: dict[str, Any]) -> Any:
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)  # sets the module-global weakref to itself


def _finish(model: nn.Module, hf_cfg: Any, gradient_checkpointing: bool) -> nn.Module:
    setattr(model, HF_DS_CONFIG_ATTR, hf_cfg)  # lives exactly as long as the model
    model.config.use_cache = False  # training forwards never reuse a KV cache
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_student(model_cfg: ModelConfig, ds_config: dict[str, Any], dtype: DType | torch.dtype) -> nn.Module:
    """The student, partitioned at birth: from model.student, or freshly initialised from model.student_config.

    `ds_config` must be filled (fill_auto); pass the same dict to deepspeed.initialize afterwards.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    check_student_config(ds_config)
    assert_no_auto(ds_config, "student DeepSpeed config")
    hf_cfg = _hf_ds_config(ds_config)
    dt = torch_dtype(dtype)
    if model_cfg.student:
        model = AutoModelForCausalLM.from_pretrained(model_cfg.student, dtype=dt)
    elif model_cfg.student_config:
        config = AutoConfig.from_pretrained(model_cfg.student_config)
        model = AutoModelForCausalLM.from_config(config, dtype=dt)
    else:
        raise ValueError("set model.student (a model to load) or model.student_config (to build one)")
    return _finish(model, hf_cfg, model_cfg.gradient_checkpointing)


def hidden_size_of(path: str) -> int:
    """The hidden size TRL's bucket formula needs (max of hidden_sizes for models that list several)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    text = getattr(cfg, "text_config", None) or cfg
    sizes = getattr(text, "hidden_sizes", None)
    size = max(sizes) if sizes else getattr(text, "hidden_size", None)
    if not size:
        raise ValueError(f"{path}: its config has no hidden_size to size the ZeRO-3 buckets; set them in the JSON")
    return int(size)


def build_teacher(model_cfg: ModelConfig, teacher_ds_config: dict[str, Any], dtype: DType | torch.dtype) -> Any:
    """The frozen teacher as its own DeepSpeed engine (TRL's prepare_deepspeed pattern), in eval mode.

    Every rank must run every teacher forward, in the same order (ZeRO-3 gathers are collectives).
    """
    import deepspeed
    from transformers import AutoModelForCausalLM
    from transformers.integrations import deepspeed as hf_ds

    if not model_cfg.teacher:
        raise ValueError("model.teacher is required to build a teacher")
    cfg = fill_bucket_sizes(teacher_ds_config, hidden_size_of(model_cfg.teacher))
    assert_no_auto(cfg, "teacher DeepSpeed config")
    previous = hf_ds._hf_deepspeed_config_weak_ref  # the student's, if built first
    hf_cfg = _hf_ds_config(cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_cfg.teacher, dtype=torch_dtype(dtype))
    finally:
        if previous is not None and previous() is not None:
            hf_ds.set_hf_deepspeed_config(previous())
    model.requires_grad_(False)
    model = _finish(model, hf_cfg, gradient_checkpointing=False)
    engine, *_ = deepspeed.initialize(model=model, config=cfg)
    engine.eval()
    return engine


def unwrap(model: Any) -> nn.Module:
    """The HF module inside a DeepSpeed engine (or the model itself)."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    return model.module if isinstance(model, DeepSpeedEngine) else model


def _rows(param: torch.Tensor) -> int:
    shape = getattr(param, "ds_shape", None)  # a ZeRO-3 param's local shape is empty; ds_shape is the full one
    return int((shape if shape is not None else param.shape)[0])


def vocab_sizes(model: Any) -> tuple[int, int]:
    """(input embedding rows, output logits width) of a possibly partitioned model."""
    m = unwrap(model)
    emb = _rows(m.get_input_embeddings().weight)
    out = m.get_output_embeddings()
    return emb, (_rows(out.weight) if out is not None else emb)


def _name(model: Any) -> str:
    cfg = getattr(unwrap(model), "config", None)
    return getattr(cfg, "name_or_path", "") or "<built from a config>"


@dataclass(frozen=True)
class VocabAlignment:
    """How the logits of teacher and student line up for the loss; `note` is the one line the run logs about it."""

    student_width: int | None = None  # cut the student's logits to this many ids (a padded student); None: keep all
    note: str | None = None


def check_vocab(student: Any, teacher: Any | None, tokenizer: Any) -> VocabAlignment:
    """Fail before training when token ids cannot line up between tokenizer, student and teacher.

    Sizes only: that the two models share ONE tokenizer is checked before they are built (tokenizer_match). A teacher
    wider than the student (padded vocab) has its extra logits sliced by the loss; a student wider than the teacher
    (a padded student) has its extra logits cut off before the loss. Both are fine as long as the tokenizer never
    emits an id beyond either model.
    """
    s_emb, s_out = vocab_sizes(student)
    n_tok = len(tokenizer)
    tok_name = getattr(tokenizer, "name_or_path", "") or "<tokenizer>"
    if n_tok > s_emb or n_tok > s_out:
        raise ValueError(
            f"tokenizer {tok_name} has {n_tok} tokens but the student {_name(student)} has only "
            f"{min(s_emb, s_out)} vocab entries (embedding rows / logits)"
        )
    if teacher is None:
        return VocabAlignment()
    t_emb, t_out = vocab_sizes(teacher)
    if n_tok > t_emb or n_tok > t_out:
        raise ValueError(
            f"tokenizer {tok_name} has {n_tok} tokens but the teacher {_name(teacher)} has only "
            f"{min(t_emb, t_out)} vocab entries (embedding rows / logits)"
        )
    if t_out > s_out:
        return VocabAlignment(
            None, f"vocab: the teacher's logits are sliced from {t_out} to {s_out} (tokenizer {n_tok})"
        )
    if t_out < s_out:
        return VocabAlignment(
            t_out, f"vocab: the student's logits are sliced from {s_out} to {t_out} for the loss (tokenizer {n_tok})"
        )
    return VocabAlignment()
