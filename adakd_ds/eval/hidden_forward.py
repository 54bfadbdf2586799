"""Run a causal LM up to its last hidden state (the final norm included) for the fused head, or to its logits.

Why a forward hook and `logits_to_keep`: the model still runs through its own (DeepSpeed engine) forward, so ZeRO-3's
module hooks, gradient checkpointing and the engine's bookkeeping all see the usual call; `logits_to_keep` set to no
position makes the lm_head project zero rows, and the hook on the base model takes the hidden states it returned,
which are exactly what the lm_head would have read. Lives in eval (not engine) so that the held-out eval loss can use
it too; the engine imports it from here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from adakd_ds.config.schema import FusedHead
from adakd_ds.loss.fused_head import HeadInput

# model types whose logits are exactly lm_head(last_hidden_state): no logit scaling or soft-capping after the head
# (Gemma 2, Cohere and Granite have one, so they stay unfused)
FUSED_HEAD_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2"})


def _module(model: Any) -> nn.Module:
    """The HF module inside a DeepSpeed engine (or the model itself)."""
    return getattr(model, "module", model)


def fused_head_problem(model: Any) -> str | None:
    """Why this model cannot run fused (None when it can)."""
    m = _module(model)
    kind = getattr(getattr(m, "config", None), "model_type", None)
    if kind not in FUSED_HEAD_FAMILIES:
        return f"model type {kind!r} is not one of {sorted(FUSED_HEAD_FAMILIES)}"
    head = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        return f"its output head is {type(head).__name__}, not an nn.Linear"
    if "logits_to_keep" not in inspect.signature(m.forward).parameters:
        return "its forward takes no logits_to_keep"
    if getattr(m, "base_model", m) is m:
        return "it has no base model to take the hidden states from"
    return None


def resolve_fused_head(mode: FusedHead | str, *models: Any) -> bool:
    """loss.fused_head: auto = fused when every model allows it; true = fused, or one clear error naming the model."""
    mode = FusedHead(str(getattr(mode, "value", mode)).lower())
    if mode is FusedHead.FALSE:
        return False
    problems = [(m, fused_head_problem(m)) for m in models if m is not None]
    bad = [(m, why) for m, why in problems if why]
    if mode is FusedHead.TRUE and bad:
        m, why = bad[0]
        name = getattr(getattr(_module(m), "config", None), "name_or_path", "") or "<model>"
        raise ValueError(f"loss.fused_head: true, but model {name} cannot run fused: {why} (use auto or false)")
    return not bad


def head_input(model: Any, input_ids: Tensor, attention_mask: Tensor | None) -> HeadInput:
    """The model's last hidden states [B, L, H] and its lm_head (weight, bias), from one forward of the model."""
    m = _module(model)
    captured: dict[str, Tensor] = {}

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        captured["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = m.base_model.register_forward_hook(hook)
    try:
        none = torch.zeros(0, dtype=torch.long, device=input_ids.device)
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=none)
    finally:
        handle.remove()
    head = m.get_output_embeddings()
    return HeadInput(captured["hidden"], head.weight, head.bias)


def call_loss(
    model: Any,
    loss_fn: Callable[..., tuple[Tensor, Any]],
    student: Tensor | HeadInput,
    teacher: Tensor | HeadInput | None,
    labels: Tensor,
    **kwargs: Any,
) -> tuple[Tensor, Any]:
    """loss_fn(student, teacher, labels, **kwargs); with a fused student, run as its lm_head module's forward.

    Why: under ZeRO-3 autograd must see the head weight whole when it accumulates the weight's gradient. Running the
    loss as the head module's forward lets ZeRO-3's module hooks gather the weight for the forward and for the
    backward (and release it after), as they do for a plain lm_head; without ZeRO-3 it is a plain call.
    """
    if not isinstance(student, HeadInput):
        return loss_fn(student, teacher, labels, **kwargs)
    head = _module(model).get_output_embeddings()
    out: dict[str, Any] = {}

    def forward(hidden: Tensor) -> Tensor:  # the hidden states as ZeRO-3's pre-forward hook handed them on
        loss, out["stats"] = loss_fn(HeadInput(hidden, head.weight, head.bias), teacher, labels, **kwargs)
        return loss

    own = head.__dict__.get("forward")  # an instance-level forward (e.g. an accelerate hook) is put back after
    head.forward = forward
    try:
        loss = head(student.hidden)
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own
    return loss, out["stats"]


def model_output(model: Any, input_ids: Tensor, attention_mask: Tensor | None, fused: bool) -> Tensor | HeadInput:
    """What the loss takes: the HeadInput (fused) or the logits [B, L, V]."""
    if fused:
        return head_input(model, input_ids, attention_mask)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


__all__ = ["FUSED_HEAD_FAMILIES", "call_loss", "fused_head_problem", "head_input", "model_output", "resolve_fused_head"]
