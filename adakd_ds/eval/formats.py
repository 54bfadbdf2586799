"""Evaluation data formats: turn the benchmark files of the MiniLLM / DistiLLM / AdaKD protocol into samples.

Why a separate reader from the training data: the evaluation sets come in several shapes (Dolly, Self-Instruct's
user-oriented file with several instances per instruction, Vicuna questions without reference, S-NI / UnNI with several
references), and each sample must be rendered with the SAME prompt template as training. So every sample is mapped to a
training-format record ({instruction, input} or {prompt}) and rendered by ``adakd_ds.data.formats.render_prompt``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adakd_ds.config import DataFormat


class EvalFormat(str, enum.Enum):
    AUTO = "auto"  # detected from the first record's keys
    DOLLY = "dolly"  # {instruction, context|input, response|output}
    SELF_INST = "self_inst"  # {instruction, instances: [{input, output}]}: one sample per instance
    VICUNA = "vicuna"  # {question_id?, text|turns|prompt}: no reference, generate only
    SNI = "sni"  # S-NI / UnNI: {definition|prompt, input, output|outputs}
    PROMPT_RESPONSE = "prompt_response"  # {prompt, response|completion}; the prompt is used verbatim


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
    """The format the keys of a record say it has (checked in a fixed order, by exact key name)."""
    keys = {k for k, v in record.items() if v is not None}
    if "instances" in keys:
        return EvalFormat.SELF_INST
    if "definition" in keys or ("prompt" in keys and "input" in keys and keys & {"output", "outputs"}):
        return EvalFormat.SNI
    if "instruction" in keys:
        return EvalFormat.DOLLY
    if "prompt" in keys and keys & {"response", "completion"}:
        return EvalFormat.PROMPT_RESPONSE
    if keys & {"text", "turns", "question_id", "prompt"}:
        return EvalFormat.VICUNA
    raise EvalFormatError(f"cannot detect the evaluation format from keys {sorted(keys)}")


def _where(path: str, lineno: int) -> str:
    return f"{path}:{lineno}"


def _string(rec: Mapping[str, Any], names: tuple[str, ...], where: str, required: bool = True) -> str | None:
    for name in names:
        value = rec.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise EvalFormatError(f"{where}: key '{name}' must be a string, got {type(value).__name__}")
        return value
    if required:
        raise EvalFormatError(f"{where}: missing key {' or '.join(repr(n) for n in names)}")
    return None


def _references(rec: Mapping[str, Any], names: tuple[str, ...], where: str, required: bool) -> list[str]:
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
        raise EvalFormatError(f"{where}: missing key {' or '.join(repr(n) for n in names)}")
    return []


def _task(rec: Mapping[str, Any]) -> str | None:
    for name in ("task", "category", "Task"):
        if isinstance(rec.get(name), str):
            return rec[name]
    return None


def _instruction_record(instruction: str, inp: str | None) -> dict[str, Any]:
    return {"instruction": instruction, "input": inp or ""}


def _parse_dolly(rec: Mapping[str, Any], where: str) -> list[EvalSample]:
    inst = _string(rec, ("instruction",), where)
    inp = _string(rec, ("context", "input"), where, required=False)
    refs = _references(rec, ("response", "output", "outputs"), where, required=True)
    return [EvalSample(0, _instruction_record(inst, inp), DataFormat.INSTRUCTION, refs, _task(rec), where)]


def _parse_self_inst(rec: Mapping[str, Any], where: str) -> list[EvalSample]:
    inst = _string(rec, ("instruction",), where)
    instances = rec.get("instances")
    if not isinstance(instances, list) or not instances:
        raise EvalFormatError(f"{where}: key 'instances' must be a non-empty list of {{input, output}}")
    out = []
    for j, instance in enumerate(instances):
        at = f"{where} instances[{j}]"
        if not isinstance(instance, Mapping):
            raise EvalFormatError(f"{at}: expected an object with 'input' and 'output'")
        inp = _string(instance, ("input",), at, required=False)
        refs = _references(instance, ("output", "outputs"), at, required=True)
        out.append(EvalSample(0, _instruction_record(inst, inp), DataFormat.INSTRUCTION, refs, _task(rec), at))
    return out


def _parse_vicuna(rec: Mapping[str, Any], where: str) -> list[EvalSample]:
    turns = rec.get("turns")
    if turns is not None:
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise EvalFormatError(f"{where}: key 'turns' must be a non-empty list of strings")
        question = turns[0]  # single-turn protocol: the first question only
    else:
        question = _string(rec, ("text", "prompt", "instruction"), where)
    refs = _references(rec, ("reference", "output", "response"), where, required=False)
    return [EvalSample(0, _instruction_record(question, None), DataFormat.INSTRUCTION, refs, _task(rec), where)]


def _parse_sni(rec: Mapping[str, Any], where: str) -> list[EvalSample]:
    definition = _string(rec, ("definition", "prompt", "instruction"), where)
    inp = _string(rec, ("input",), where, required=False)
    refs = _references(rec, ("outputs", "output"), where, required=True)
    return [EvalSample(0, _instruction_record(definition, inp), DataFormat.INSTRUCTION, refs, _task(rec), where)]


def _parse_prompt_response(rec: Mapping[str, Any], where: str) -> list[EvalSample]:
    prompt = _string(rec, ("prompt",), where)
    refs = _references(rec, ("response", "completion"), where, required=False)
    return [EvalSample(0, {"prompt": prompt}, DataFormat.PROMPT_RESPONSE, refs, _task(rec), where)]


PARSERS: dict[EvalFormat, Callable[[Mapping[str, Any], str], list[EvalSample]]] = {
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
    return samples, fmt
