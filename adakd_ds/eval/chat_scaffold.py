"""The text a chat template writes around an assistant's answer, so a chat-trained model is scored on its answer alone.

Why: training renders a {messages} record as (prompt = the conversation with the generation prompt, response = what the
template writes after it for the last assistant turn). Some templates put more than the content there: Qwen3's writes
an empty ``<think>\\n\\n</think>\\n\\n`` block first, others an end-of-turn marker that is not the tokenizer's EOS.
A student trained that way generates the same scaffold, and ROUGE-L against the bare reference would count it as
wrong words. The scaffold is found by rendering the conversation through the training code with a sentinel as the
answer; what stands before and after the sentinel is removed from the generated text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adakd_ds.config.schema import DataFormat
from adakd_ds.data.formats import ASSISTANT, render_example

SENTINEL = "ADAKDSENTINELANSWER"


def response_scaffold(record: Mapping[str, Any], fmt: DataFormat, tokenizer: Any) -> tuple[str, str]:
    """(prefix, suffix) the template writes around the last assistant turn's content; ("", "") for other formats."""
    if fmt is not DataFormat.MESSAGES:
        return "", ""
    messages = list(record["messages"])
    last = max(i for i, m in enumerate(messages) if m["role"] == ASSISTANT)
    probe = {"messages": [*messages[:last], {"role": ASSISTANT, "content": SENTINEL}]}
    _, response = render_example(probe, DataFormat.MESSAGES, tokenizer)
    if SENTINEL not in response:
        return "", ""
    before, after = response.split(SENTINEL, 1)
    return before.strip(), after.strip()


def strip_scaffold(text: str, scaffold: tuple[str, str]) -> str:
    """The generated text without the template's scaffold (each part removed only where it is present)."""
    prefix, suffix = scaffold
    out = text.strip()
    if prefix and out.startswith(prefix):
        out = out[len(prefix) :].strip()
    if suffix and out.endswith(suffix):
        out = out[: -len(suffix)].strip()
    return out
