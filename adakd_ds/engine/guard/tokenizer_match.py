"""Do the teacher and the student speak the same tokenizer? Compared on the tokenizers themselves, not on sizes.

Why: KD compares the teacher's and the student's distributions id by id. Two vocabularies of different sizes are
usually taken for a padded one (Qwen2-7B's 152064 logits over a 151646-token tokenizer), but a teacher with ANOTHER
tokenizer (Qwen3's 151669 tokens against GPT-2's 50257) is also just "larger", and slicing it gives a loss that trains
the student towards nonsense with exit code 0. So before any model is built, the teacher's own tokenizer (loaded from
its path when it ships one) is checked against the run's tokenizer: the token of every id the student uses, the
special tokens, and the ids of a few fixed probe strings. The first difference is one error line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

# Files whose presence says that a model directory ships its own tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
SPECIAL_TOKENS = ("bos", "eos", "unk")  # pad is left out: it is masked and often set by the loader (eos or unk)
# Fixed probes: ASCII, digits, whitespace runs, non-ASCII, markup that chat templates use.
PROBES = (
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  two spaces,\ttab and\nnewline 1234567890 3.14159",
    "naïve café, Grüße, 日本語, emoji 🙂",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n### Instruction:\n",
)


class TokenizerMismatch(ValueError):
    """The teacher's tokenizer differs from the student's; the message names the first difference."""


def has_tokenizer_files(path: str | None) -> bool:
    return bool(path) and os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES)


def load_teacher_tokenizer(teacher_path: str | None) -> Any | None:
    """The tokenizer that ships with the teacher, or None when its directory (or hub repo) holds none."""
    if not teacher_path:
        return None
    from transformers import AutoTokenizer

    local = os.path.isdir(teacher_path)
    if local and not has_tokenizer_files(teacher_path):
        return None
    try:
        return AutoTokenizer.from_pretrained(teacher_path)
    except (OSError, ValueError) as exc:
        if not local:  # a hub name without tokenizer files (or not in the cache when offline)
            return None
        raise TokenizerMismatch(f"teacher {teacher_path}: cannot load its tokenizer: {exc}") from None


def _id_to_token(tokenizer: Any) -> dict[int, str]:
    return {int(i): str(t) for t, i in tokenizer.get_vocab().items()}


def _first_vocab_difference(student: Any, teacher: Any) -> str | None:
    s_map, t_map = _id_to_token(student), _id_to_token(teacher)
    for i in sorted(s_map):
        if i not in t_map:
            return f"id {i} is {s_map[i]!r} in the student's tokenizer and does not exist in the teacher's"
        if t_map[i] != s_map[i]:
            return f"id {i} is {s_map[i]!r} in the student's tokenizer but {t_map[i]!r} in the teacher's"
    return None


def _first_special_difference(student: Any, teacher: Any) -> str | None:
    for name in SPECIAL_TOKENS:
        s_tok, t_tok = getattr(student, f"{name}_token", None), getattr(teacher, f"{name}_token", None)
        s_id, t_id = getattr(student, f"{name}_token_id", None), getattr(teacher, f"{name}_token_id", None)
        if (s_tok, s_id) != (t_tok, t_id):
            return f"special token {name}: {s_tok!r} (id {s_id}) in the student's tokenizer, {t_tok!r} (id {t_id}) in the teacher's"
    return None


def _first_probe_difference(student: Any, teacher: Any) -> str | None:
    for probe in PROBES:
        s_ids = list(student(probe, add_special_tokens=True)["input_ids"])
        t_ids = list(teacher(probe, add_special_tokens=True)["input_ids"])
        if s_ids == t_ids:
            continue
        pos = next(
            (k for k, (a, b) in enumerate(zip(s_ids, t_ids, strict=False)) if a != b), min(len(s_ids), len(t_ids))
        )
        s_tok = student.convert_ids_to_tokens(s_ids[pos]) if pos < len(s_ids) else "<end>"
        t_tok = teacher.convert_ids_to_tokens(t_ids[pos]) if pos < len(t_ids) else "<end>"
        return (
            f"probe {probe!r} differs at token {pos}: {s_tok!r} in the student's tokenizer, {t_tok!r} in the teacher's"
        )
    return None


CHECKS: tuple[Callable[[Any, Any], str | None], ...] = (
    _first_vocab_difference,
    _first_special_difference,
    _first_probe_difference,
)


def tokenizer_difference(student: Any, teacher: Any) -> str | None:
    """The first difference (vocabulary over the student's ids, special tokens, probe strings), or None."""
    for check in CHECKS:
        problem = check(student, teacher)
        if problem:
            return problem
    return None


def check_teacher_tokenizer(teacher_path: str | None, tokenizer: Any, tokenizer_path: str | None = None) -> str:
    """Raise TokenizerMismatch when the teacher ships a tokenizer unlike the run's; returns a line saying what was done."""
    if not teacher_path:
        return "no teacher: tokenizer check skipped"
    if tokenizer_path and os.path.abspath(tokenizer_path) == os.path.abspath(teacher_path):
        return f"tokenizer taken from the teacher {teacher_path}"
    teacher_tok = load_teacher_tokenizer(teacher_path)
    if teacher_tok is None:
        return f"teacher {teacher_path} ships no tokenizer: only the vocabulary sizes can be checked"
    problem = tokenizer_difference(tokenizer, teacher_tok)
    if problem:
        name = getattr(tokenizer, "name_or_path", "") or "<tokenizer>"
        raise TokenizerMismatch(
            f"teacher {teacher_path} uses another tokenizer than {name}: {problem}; KD needs one shared tokenizer"
        )
    return f"teacher tokenizer matches ({len(tokenizer)} ids compared, {len(PROBES)} probes)"
