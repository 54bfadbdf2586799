"""What the 2-rank ZeRO-3 fused-head worker and its parent test share: the batch, the loss settings, the models."""

from __future__ import annotations

from pathlib import Path

import torch

from adakd_ds.config.schema import Divergence, LossConfig

VOCAB, B, L = 61, 4, 10
RATIO = 0.6  # LATF keeps a scattered subset of the global batch


def loss_config() -> LossConfig:
    return LossConfig(divergence=Divergence.RKL, kd_ratio=0.8, chunk_size=5)


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, targets aligned with the logits): identical on every rank; rank r takes rows r."""
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, VOCAB, (B, L), generator=g)
    mask = torch.ones_like(ids)
    mask[3, 7:] = 0  # right padding
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:]
    targets[:, :3] = -100  # the prompt
    targets[3, 6:] = -100
    return ids, mask, targets


def save_models(work: Path) -> None:
    """A teacher and two students (tied and untied head), each saved with from_pretrained-ready files."""
    from transformers import LlamaForCausalLM

    from tests.engine_fixtures import tiny_llama_config

    def make(seed: int, tied: bool) -> LlamaForCausalLM:
        torch.manual_seed(seed)
        cfg = tiny_llama_config(VOCAB, 32, 2)
        cfg.tie_word_embeddings = tied
        return LlamaForCausalLM(cfg)

    make(1, False).save_pretrained(work / "teacher")
    make(2, True).save_pretrained(work / "student_tied")
    make(3, False).save_pretrained(work / "student_untied")
