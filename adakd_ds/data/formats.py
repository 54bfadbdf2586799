"""Record formats for training: how a record becomes (prompt text, response text), by the keys of format_table.py.

Training and evaluation both call `render_prompt`, so the student is scored on exactly the prompt format it was
trained on. The instruction template is the Alpaca one without its preamble (MiniLLM/AdaKD train Dolly on Alpaca-style
prompts); it ends in a newline rather than a space, because a trailing space tokenises badly with BPE and
SentencePiece vocabularies when the response is tokenised on its own:

    ### Instruction:
    {instruction}

    ### Input:
    {input}

    ### Response:

(the Input block is left out when the input is empty or absent). PROMPT_RESPONSE uses the prompt as it is; MESSAGES
goes through the tokenizer's chat template.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adakd_ds.config.schema import DataFormat
from adakd_ds.data.errors import DataError
from adakd_ds.data.format_table import BY_TRAINING, FORMATS, Role, detect, first_value, present_keys

INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
INSTRUCTION_TEMPLATE_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"

ASSISTANT = "assistant"


def detect_format(record: Mapping[str, Any]) -> DataFormat:
    """The training format a record's keys say it has (format_table.detect, as evaluation detects it); a DataError
    naming the keys when none fits, or when the format is one that only evaluation reads."""
    row = detect(record)
    if row.training is None:
        trainable = ", ".join(f"'{r.training.value}'" for r in FORMATS if r.training is not None)
        raise DataError(
            f"keys {sorted(present_keys(record))} are the evaluation-only format '{row.name}' ({row.note}); "
            f"training reads {trainable} (see docs/formats.md)"
        )
    return row.training


def resolve_format(fmt: DataFormat, first_record: Mapping[str, Any]) -> DataFormat:
    """AUTO becomes the detected format; an explicit format stays as it is."""
    return detect_format(first_record) if fmt is DataFormat.AUTO else fmt


def _get(record: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    return first_value(record, names)[1]


def _response(record: Mapping[str, Any], fmt: DataFormat) -> str:
    """The text to train on: the response, or the first of a list of references (the table's rule)."""
    value = _get(record, BY_TRAINING[fmt].field(Role.RESPONSE).names)
    return value[0] if isinstance(value, list) else value


def check_record(record: Any, fmt: DataFormat) -> str | None:
    """What is wrong with one record for `fmt` (a short phrase), or None when it is usable."""
    if not isinstance(record, Mapping):
        return f"expected a JSON object, got {type(record).__name__}"
    for f in BY_TRAINING[fmt].fields:
        name, value = first_value(record, f.names)
        if value is None:
            if f.train_required:
                return f"missing field {f.label()}"
            continue
        if f.role is Role.MESSAGES:
            problem = _check_messages(value)
            if problem:
                return problem
        elif f.role is Role.RESPONSE and isinstance(value, list):
            if not value or not all(isinstance(v, str) for v in value):
                return f"field '{name}' must be a string or a non-empty list of strings"
        elif not isinstance(value, str):
            return f"field '{name}' must be a string, got {type(value).__name__}"
    return None


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "field 'messages' must be a non-empty list of {role, content}"
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"messages[{i}] must be an object with 'role' and 'content'"
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                return f"messages[{i}] is missing field '{key}' (or it is not a string)"
    if not any(m["role"] == ASSISTANT for m in messages):
        return f"field 'messages' has no '{ASSISTANT}' message to train on"
    return None


def _last_assistant(messages: list[Mapping[str, Any]]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == ASSISTANT)


def _clean_messages(messages: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # Arrow fills keys that only some messages have with None; drop them so templates see the original dicts.
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def _chat_template_owner(tokenizer: Any) -> Any:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DataError("format 'messages' needs a tokenizer with a chat_template (set tokenizer.chat_template)")
    return tokenizer


def _render_chat_prompt(messages: list[dict[str, Any]], tokenizer: Any) -> str:
    tok = _chat_template_owner(tokenizer)
    return tok.apply_chat_template(messages[: _last_assistant(messages)], tokenize=False, add_generation_prompt=True)


def render_prompt(record: Mapping[str, Any], fmt: DataFormat, tokenizer: Any = None) -> str:
    """The prompt text of a record, exactly as training sees it (MESSAGES needs the tokenizer's chat template)."""
    fmt = resolve_format(fmt, record)
    if fmt is DataFormat.INSTRUCTION:
        row = BY_TRAINING[fmt]
        instruction = _get(record, row.field(Role.PROMPT).names)
        extra = _get(record, row.field(Role.INPUT).names) or ""
        if extra.strip():
            return INSTRUCTION_TEMPLATE.format(instruction=instruction, input=extra)
        return INSTRUCTION_TEMPLATE_NO_INPUT.format(instruction=instruction)
    if fmt is DataFormat.PROMPT_RESPONSE:
        return _get(record, BY_TRAINING[fmt].field(Role.PROMPT).names)
    if fmt is DataFormat.MESSAGES:
        return _render_chat_prompt(_clean_messages(record["messages"]), tokenizer)
    raise DataError(f"unsupported data format {fmt!r}")


def render_example(record: Mapping[str, Any], fmt: DataFormat, tokenizer: Any = None) -> tuple[str, str]:
    """(prompt text, response text) of a record: what the trainer tokenises and what evaluation scores against.

    For MESSAGES the response is what the chat template writes after the generation prompt for the last assistant
    turn (its end-of-turn marker included, trailing whitespace removed), so the student learns to close its turn.
    """
    fmt = resolve_format(fmt, record)
    if fmt in (DataFormat.INSTRUCTION, DataFormat.PROMPT_RESPONSE):
        return render_prompt(record, fmt), _response(record, fmt)
    if fmt is DataFormat.MESSAGES:
        messages = _clean_messages(record["messages"])
        prompt = _render_chat_prompt(messages, tokenizer)
        full = tokenizer.apply_chat_template(messages[: _last_assistant(messages) + 1], tokenize=False)
        if not full.startswith(prompt):
            raise DataError(
                "the chat template does not render the prompt (with add_generation_prompt=True) as a prefix of the "
                "conversation, so the response cannot be separated from it"
            )
        return prompt, full[len(prompt) :].rstrip()
    raise DataError(f"unsupported data format {fmt!r}")
