"""Evaluation data formats: turn the benchmark files of the MiniLLM / DistiLLM / AdaKD protocol into samples.

The formats, their keys and how they are detected are those of the one table, ``adakd_ds.data.format_table`` (training
reads it too, so both accept the same files; docs/formats.md prints it). This module turns the evaluation sets' shapes
(Dolly, Self-Instruct's several instances per instruction, Vicuna questions without reference, S-NI / UnNI with several
references) into samples, each mapped to a training-format record ({instruction, input} or {prompt}) and rendered by
``adakd_ds.data.formats.render_prompt``, so the prompt is exactly the one training used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adakd_ds.config.schema import DataFormat
from adakd_ds.data.errors import DataError
from adakd_ds.data.format_table import BY_EVAL, EvalFormat, Role, detect
from adakd_ds.data.formats import ASSISTANT, check_record

__all__ = ["EvalFormat", "EvalFormatError", "EvalSample", "describe_samples", "load_eval_samples", "read_records"]


# A prompt that already holds the training template (e.g. MiniLLM's preprocessed files) is used verbatim, never
# wrapped a second time. The markers are the template's own section headers.
TEMPLATE_MARKERS = ("### Instruction:", "### Response:")


class EvalFormatError(ValueError):
    """A bad evaluation file; the message names the file, the line and the key at fault."""


@dataclass
class EvalSample:
    """One prompt to answer. ``record`` is in a training format (``fmt``) so ``render_prompt`` renders it."""

    index: int
    record: dict[str, Any]
    fmt: DataFormat
    references: list[str] = field(default_factory=list)
    task: str | None = None
    where: str = ""  # file:line, for error messages
    verbatim: bool = False  # the prompt already held the template, so it is used as it is
    question_only: bool = False  # a Vicuna question or a chat ending on a user turn: no reference is expected


def read_records(path: str) -> list[tuple[int, Any]]:
    """(line number, record) pairs of a .jsonl file, or of a .json file holding a list (line = 1-based position)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise EvalFormatError(f"{path}: cannot read the evaluation data: {exc.strerror}") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EvalFormatError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        if not isinstance(data, list):
            raise EvalFormatError(f"{path}: a .json evaluation file must hold a list of records")
        return list(enumerate(data, 1))
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise EvalFormatError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
    return out


def detect_eval_format(record: Mapping[str, Any]) -> EvalFormat:
    """The format the keys of a record say it has: format_table.detect, the same rule training uses."""
    try:
        return detect(record).evaluation
    except DataError as exc:
        raise EvalFormatError(str(exc)) from None


def _names(fmt: EvalFormat, role: Role) -> tuple[str, ...]:
    return BY_EVAL[fmt].field(role).names


def _spec(fmt: EvalFormat, role: Role) -> tuple[tuple[str, ...], bool]:
    """(key names, required in evaluation) of a field of the table."""
    f = BY_EVAL[fmt].field(role)
    return f.names, f.eval_required


def _where(path: str, lineno: int) -> str:
    return f"{path}:{lineno}"


def _string(rec: Mapping[str, Any], names: tuple[str, ...], required: bool, where: str) -> str | None:
    for name in names:
        value = rec.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise EvalFormatError(f"{where}: key '{name}' must be a string, got {type(value).__name__}")
        return value
    if required:
        raise EvalFormatError(f"{where}: missing field {' or '.join(repr(n) for n in names)}")
    return None


def _references(rec: Mapping[str, Any], names: tuple[str, ...], required: bool, where: str) -> list[str]:
    """A string or a list of strings under the first present key; references are kept only if non-empty."""
    for name in names:
        value = rec.get(name)
        if value is None:
            continue
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise EvalFormatError(f"{where}: key '{name}' must be a string or a list of strings")
        return [v for v in values if v.strip()]
    if required:
        raise EvalFormatError(f"{where}: missing field {' or '.join(repr(n) for n in names)}")
    return []


def _task(rec: Mapping[str, Any]) -> str | None:
    for name in ("task", "category", "Task"):
        if isinstance(rec.get(name), str):
            return rec[name]
    return None


def holds_template(text: str) -> bool:
    """Whether a prompt was already rendered with the instruction template (both of its section headers)."""
    return all(marker in text for marker in TEMPLATE_MARKERS)


def _instruction_sample(
    instruction: str, inp: str | None, refs: list[str], rec: Mapping[str, Any], where: str
) -> EvalSample:
    """An instruction sample, or the text itself when it already holds the template (never templated twice)."""
    if holds_template(instruction):  # such files put the input inside the rendered prompt already
        return EvalSample(0, {"prompt": instruction}, DataFormat.PROMPT_RESPONSE, refs, _task(rec), where, True)
    record = {"instruction": instruction, "input": inp or ""}
    return EvalSample(0, record, DataFormat.INSTRUCTION, refs, _task(rec), where)


def _parse_dolly(rec: Mapping[str, Any], where: str) -> list[EvalSample]:
    inst = _string(rec, *_spec(EvalFormat.DOLLY, Role.PROMPT), where)
    inp = _string(rec, *_spec(EvalFormat.DOLLY, Role.INPUT), where)
    refs = _references(rec, *_spec(EvalFormat.DOLLY, Role.RESPONSE), where)
    return [_instruction_sample(inst, inp, refs, rec, where)]


def _parse_self_inst(rec: Mapping[str, Any], where: str) -> list[EvalSample]:
    inst = _string(rec, *_spec(EvalFormat.SELF_INST, Role.PROMPT), where)
    instances = rec.get("instances")
    if not isinstance(instances, list) or not instances:
        raise EvalFormatError(f"{where}: key 'instances' must be a non-empty list of {{input, output}}")
    out = []
    for j, instance in enumerate(instances):
        at = f"{where} instances[{j}]"
        if not isinstance(instance, Mapping):
            raise EvalFormatError(f"{at}: expected an object with 'input' and 'output'")
        inp = _string(instance, *_spec(EvalFormat.SELF_INST, Role.INPUT), at)
        refs = _references(instance, *_spec(EvalFormat.SELF_INST, Role.RESPONSE), at)
        out.append(_instruction_sample(inst, inp, refs, rec, at))
    return out


def _parse_vicuna(rec: Mapping[str, Any], where: str) -> list[EvalSample]:
    turns = rec.get("turns")
    if turns is not None:
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise EvalFormatError(f"{where}: key 'turns' must be a non-empty list of strings")
        question = turns[0]  # single-turn protocol: the first question only
    else:
        question = _string(rec, tuple(n for n in _names(EvalFormat.VICUNA, Role.PROMPT) if n != "turns"), True, where)
    refs = _references(rec, *_spec(EvalFormat.VICUNA, Role.RESPONSE), where)
    sample = _instruction_sample(question, None, refs, rec, where)
    sample.question_only = not refs
    return [sample]


def _parse_sni(rec: Mapping[str, Any], where: str) -> list[EvalSample]:
    definition = _string(rec, *_spec(EvalFormat.SNI, Role.PROMPT), where)
    inp = _string(rec, *_spec(EvalFormat.SNI, Role.INPUT), where)
    refs = _references(rec, *_spec(EvalFormat.SNI, Role.RESPONSE), where)
    return [_instruction_sample(definition, inp, refs, rec, where)]


def _parse_prompt_response(rec: Mapping[str, Any], where: str) -> list[EvalSample]:
    prompt = _string(rec, *_spec(EvalFormat.PROMPT_RESPONSE, Role.PROMPT), where)
    refs = _references(rec, *_spec(EvalFormat.PROMPT_RESPONSE, Role.RESPONSE), where)
    return [EvalSample(0, {"prompt": prompt}, DataFormat.PROMPT_RESPONSE, refs, _task(rec), where, verbatim=True)]


def _parse_chat(rec: Mapping[str, Any], where: str) -> list[EvalSample]:
    """The conversation up to its last assistant turn is the prompt; that turn's content is the reference.

    A conversation that ends on another turn is a question without reference: an empty assistant turn is appended
    so that the prompt is rendered by the training code (everything before the last assistant turn, with the
    generation prompt).
    """
    messages = rec.get("messages")
    question_only = False
    if isinstance(messages, list) and messages and all(isinstance(m, Mapping) for m in messages):
        if messages[-1].get("role") != ASSISTANT:
            messages, question_only = [*messages, {"role": ASSISTANT, "content": ""}], True
    record = {"messages": messages}
    problem = check_record(record, DataFormat.MESSAGES)
    if problem:
        raise EvalFormatError(f"{where}: {problem}")
    last = max(i for i, m in enumerate(messages) if m["role"] == ASSISTANT)
    refs = [messages[last]["content"]] if messages[last]["content"].strip() else []
    return [EvalSample(0, record, DataFormat.MESSAGES, refs, _task(rec), where, question_only=question_only)]


PARSERS: dict[EvalFormat, Callable[[Mapping[str, Any], str], list[EvalSample]]] = {
    EvalFormat.CHAT: _parse_chat,
    EvalFormat.DOLLY: _parse_dolly,
    EvalFormat.SELF_INST: _parse_self_inst,
    EvalFormat.VICUNA: _parse_vicuna,
    EvalFormat.SNI: _parse_sni,
    EvalFormat.PROMPT_RESPONSE: _parse_prompt_response,
}


def load_eval_samples(
    path: str, fmt: EvalFormat | str = EvalFormat.AUTO, max_samples: int | None = None
) -> tuple[list[EvalSample], EvalFormat]:
    """All samples of an evaluation file (the first ``max_samples`` if given) and the format used."""
    fmt = EvalFormat(fmt)
    records = read_records(path)
    if not records:
        raise EvalFormatError(f"{path}: the evaluation file holds no record")
    samples: list[EvalSample] = []
    for lineno, rec in records:
        where = _where(path, lineno)
        if not isinstance(rec, Mapping):
            raise EvalFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        if fmt is EvalFormat.AUTO:
            try:
                fmt = detect_eval_format(rec)
            except EvalFormatError as exc:
                raise EvalFormatError(f"{where}: {exc}") from None
        samples.extend(PARSERS[fmt](rec, where))
        if max_samples is not None and len(samples) >= max_samples:
            samples = samples[:max_samples]
            break
    for i, sample in enumerate(samples):
        sample.index = i
    if not any(s.references for s in samples) and not all(s.question_only for s in samples):
        raise EvalFormatError(
            f"{path}: format '{fmt.value}' should carry references, but none of its {len(samples)} samples has one "
            "(an empty reference counts as none); nothing could be scored"
        )
    return samples, fmt


def describe_samples(path: str, samples: list[EvalSample], fmt: EvalFormat, requested: EvalFormat | str) -> str:
    """One line for the log: the format (detected or given), the sample count, how many have references."""
    how = "detected" if EvalFormat(requested) is EvalFormat.AUTO else "given"
    n_ref = sum(1 for s in samples if s.references)
    verbatim = sum(1 for s in samples if s.verbatim)
    line = f"data {path}: format {fmt.value} ({how}), {len(samples)} samples, {n_ref} with references"
    if verbatim:
        line += f", {verbatim} prompts used verbatim (no template added)"
    return line
