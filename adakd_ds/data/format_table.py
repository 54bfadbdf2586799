"""The one table of record formats: which keys each format has, how it is detected, what training and evaluation do
with it. Training (data/formats.py) and evaluation (eval/formats.py) both read it, and docs/formats.md prints it.

Why one table: the two readers had drifted (a Dolly file in {prompt, answer} form was scored by `adakd-eval` but refused
by training, issue 25). Here every format lists its keys once; a key is found by exact name, the first of its
names whose value is not null wins, and the formats are tried in the table's order, by the keys a record has.

docs/formats.md is printed from this table by ``python -m adakd_ds.data.format_doc`` (a test checks that it matches).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adakd_ds.config.schema import DataFormat
from adakd_ds.data.errors import DataError


class EvalFormat(str, enum.Enum):
    """The `adakd-eval --format` names (one per row of the table, plus auto)."""

    AUTO = "auto"  # detected from the first record's keys
    CHAT = "chat"
    DOLLY = "dolly"
    SELF_INST = "self_inst"
    VICUNA = "vicuna"
    SNI = "sni"
    PROMPT_RESPONSE = "prompt_response"

    @classmethod
    def _missing_(cls, value: object) -> EvalFormat | None:
        # The training name of a format means the same format here: --format instruction / messages.
        for row in FORMATS:
            if row.training is not None and row.training.value == value:
                return row.evaluation
        return None


class Role(str, enum.Enum):
    """What a key holds."""

    PROMPT = "prompt"  # the instruction, question or rendered prompt
    INPUT = "input"  # the optional extra input of an instruction
    RESPONSE = "response"  # the text to train on; the reference(s) to score against
    MESSAGES = "messages"  # a conversation [{role, content}], rendered by the tokenizer's chat template
    INSTANCES = "instances"  # several (input, output) instances of one instruction


@dataclass(frozen=True)
class Field:
    """One field of a format: the key names it may have (first non-null wins) and when it is required.

    A RESPONSE may be a string or a list of strings (several references): evaluation scores against all of them and
    training learns the first."""

    role: Role
    names: tuple[str, ...]
    train_required: bool = True
    eval_required: bool = True

    def label(self) -> str:
        return " or ".join(f"'{n}'" for n in self.names)


@dataclass(frozen=True)
class Detect:
    """A record is of this format when it has every key of all_of and at least one of any_of (non-null values)."""

    all_of: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()

    def matches(self, keys: set[str]) -> bool:
        return set(self.all_of) <= keys and (not self.any_of or bool(keys & set(self.any_of)))

    def describe(self) -> str:
        parts = [f"`{k}`" for k in self.all_of]
        if len(self.any_of) == 1:
            parts.append(f"`{self.any_of[0]}`")
        elif self.any_of:
            parts.append("one of " + ", ".join(f"`{k}`" for k in self.any_of))
        return " and ".join(parts)


@dataclass(frozen=True)
class RecordFormat:
    """One row of the table."""

    evaluation: EvalFormat
    training: DataFormat | None  # None: evaluation only (why: in `note`)
    detect: tuple[Detect, ...]
    fields: tuple[Field, ...]
    example: dict[str, Any]
    prompt: str  # what the prompt is, in words
    note: str = ""
    instance_fields: tuple[Field, ...] = ()  # the fields of each of `instances`

    def field(self, role: Role) -> Field:
        return next(f for f in self.fields + self.instance_fields if f.role is role)

    def has(self, role: Role) -> bool:
        return any(f.role is role for f in self.fields + self.instance_fields)

    @property
    def name(self) -> str:
        return self.training.value if self.training is not None else self.evaluation.value


INSTRUCTION_PROMPT = "the instruction template (`### Instruction:` ... `### Response:`)"
ANSWERS = ("output", "response", "answer", "outputs")

# In detection order: the first row whose rule fits the first record's keys is the format.
FORMATS: tuple[RecordFormat, ...] = (
    RecordFormat(
        EvalFormat.CHAT,
        DataFormat.MESSAGES,
        (Detect(("messages",)),),
        (Field(Role.MESSAGES, ("messages",)),),
        {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]},
        "the tokenizer's chat template, up to the last assistant turn (with the generation prompt)",
        "the last assistant turn is the response; in evaluation a chat that ends on a user turn is a question",
    ),
    RecordFormat(
        EvalFormat.SELF_INST,
        None,
        (Detect(("instances",)),),
        (Field(Role.PROMPT, ("instruction",)), Field(Role.INSTANCES, ("instances",))),
        {"instruction": "Add the numbers.", "instances": [{"input": "2 3", "output": "5"}]},
        INSTRUCTION_PROMPT,
        "Self-Instruct's user-oriented set: one sample per instance",
        (Field(Role.INPUT, ("input",), False, False), Field(Role.RESPONSE, ("output", "outputs"))),
    ),
    RecordFormat(
        EvalFormat.SNI,
        None,
        (Detect(("definition",)), Detect(("prompt", "input"), ("output", "outputs"))),
        (
            Field(Role.PROMPT, ("definition", "prompt", "instruction")),
            Field(Role.INPUT, ("input",), False, False),
            Field(Role.RESPONSE, ("outputs", "output")),
        ),  # fmt: skip
        {"definition": "Answer yes or no.", "input": "Is ice cold?", "outputs": ["yes", "Yes"]},
        INSTRUCTION_PROMPT,
        "S-NI / UnNI (several references)",
    ),
    RecordFormat(
        EvalFormat.DOLLY,
        DataFormat.INSTRUCTION,
        (Detect(("instruction",)),),
        (
            Field(Role.PROMPT, ("instruction",)),
            Field(Role.INPUT, ("input", "context"), False, False),
            Field(Role.RESPONSE, ANSWERS),
        ),  # fmt: skip
        {"instruction": "Name a colour.", "context": "", "response": "Red."},
        INSTRUCTION_PROMPT,
        "Alpaca, Dolly (`category` is kept as the task)",
    ),
    RecordFormat(
        EvalFormat.PROMPT_RESPONSE,
        DataFormat.PROMPT_RESPONSE,
        (Detect(("prompt",), ("response", "completion", "answer")),),
        (Field(Role.PROMPT, ("prompt",)), Field(Role.RESPONSE, ("response", "completion", "answer"), True, False)),
        {"prompt": "### Instruction:\nName a colour.\n\n### Response:\n", "answer": "Red."},
        "the prompt as it is (verbatim)",
        "Dolly in {prompt, answer} form, MiniLLM's preprocessed files",
    ),
    RecordFormat(
        EvalFormat.VICUNA,
        None,
        (Detect(any_of=("text", "turns", "question_id", "prompt")),),
        (
            Field(Role.PROMPT, ("turns", "text", "prompt", "instruction")),
            Field(Role.RESPONSE, ("reference", "output", "response", "answer"), False, False),
        ),  # fmt: skip
        {"question_id": 1, "text": "Name a colour."},
        INSTRUCTION_PROMPT + "; `turns`: the first one",
        "Vicuna questions, usually without a reference: generated, not scored",
    ),
)

BY_EVAL: dict[EvalFormat, RecordFormat] = {row.evaluation: row for row in FORMATS}
BY_TRAINING: dict[DataFormat, RecordFormat] = {row.training: row for row in FORMATS if row.training is not None}


def present_keys(record: Mapping[str, Any]) -> set[str]:
    """The keys with a value (Arrow fills the keys that only other records have with None)."""
    return {k for k, v in record.items() if v is not None}


def detect(record: Mapping[str, Any]) -> RecordFormat:
    """The row whose keys the record has (in the table's order); a DataError naming the keys when none fits."""
    keys = present_keys(record)
    for row in FORMATS:
        if any(rule.matches(keys) for rule in row.detect):
            return row
    known = sorted({k for row in FORMATS for rule in row.detect for k in rule.all_of + rule.any_of})
    raise DataError(
        f"cannot detect the data format from keys {sorted(keys)} (a format needs one of: {', '.join(known)}; "
        "see docs/formats.md)"
    )


def first_value(record: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str | None, Any]:
    """(key, value) of the first of `names` with a non-null value, or (None, None)."""
    for name in names:
        value = record.get(name)
        if value is not None:
            return name, value
    return None, None
