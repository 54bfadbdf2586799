"""A small, seeded instruction dataset with real, learnable structure: the embedded default data.

Why: tests and quick runs need data that a tiny teacher learns well in a few hundred CPU steps while a 4-8x smaller
student cannot learn it perfectly, with token difficulty that varies inside and across responses (copying is easy,
carries and letter shifts are hard). Records are {instruction, input, output, task}. Everything comes from one seeded
generator that uses only ``random.Random.random()`` (the one method whose stream Python guarantees across versions), so a
seed gives the same data everywhere.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import random
from collections.abc import Callable, Iterable

WORDS: tuple[str, ...] = (
    "ant", "bag", "bed", "bee", "box", "bus", "cap", "car", "cat", "cow",
    "cup", "day", "dog", "egg", "eye", "fan", "fox", "gum", "hat", "hen",
    "ice", "jam", "jar", "key", "kid", "leg", "map", "mud", "net", "owl",
    "pan", "pen", "pig", "pot", "rat", "rug", "sea", "sky", "sun", "toy",
    "van", "web", "yak", "zip", "bird", "book", "cake", "door", "fish", "frog",
    "king", "lamp", "lion", "milk", "moon", "rain", "ship", "star", "tree", "wolf",
)  # fmt: skip
COUNT_LETTERS = "aeiost"  # letters common enough in WORDS that counts vary from 0 to several


class Task(str, enum.Enum):
    """The task families; each has its own instruction phrasings, input sampler and solver."""

    REVERSE = "reverse"
    SORT = "sort"
    ADD = "add"
    UPPER = "upper"
    LOWER = "lower"
    CAESAR = "caesar"
    NTH = "nth"
    COUNT = "count"


class _Rng:
    """Draws built on ``random()`` alone, so the stream is stable across Python versions."""

    def __init__(self, seed: int) -> None:
        self._r = random.Random(seed)

    def below(self, n: int) -> int:
        return min(int(self._r.random() * n), n - 1)

    def between(self, lo: int, hi: int) -> int:  # inclusive
        return lo + self.below(hi - lo + 1)

    def choice(self, seq):  # noqa: ANN001, ANN201 - any sequence
        return seq[self.below(len(seq))]

    def sample(self, seq, k: int) -> list:  # noqa: ANN001 - partial Fisher-Yates
        pool = list(seq)
        for i in range(k):
            j = i + self.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


def _words(rng: _Rng, lo: int, hi: int) -> list[str]:
    return rng.sample(WORDS, rng.between(lo, hi))


def _caesar(text: str) -> str:
    return "".join(chr((ord(c) - 97 + 1) % 26 + 97) if "a" <= c <= "z" else c for c in text)


def _number(rng: _Rng) -> int:
    digits = rng.between(2, 4)
    return rng.between(10 ** (digits - 1), 10**digits - 1)


def _gen_reverse(rng: _Rng) -> tuple[str, str]:
    ws = _words(rng, 3, 6)
    return " ".join(ws), " ".join(reversed(ws))


def _gen_sort(rng: _Rng) -> tuple[str, str]:
    ws = _words(rng, 3, 6)
    return " ".join(ws), " ".join(sorted(ws))


def _gen_add(rng: _Rng) -> tuple[str, str]:
    a, b = _number(rng), _number(rng)
    return f"{a} + {b}", str(a + b)


def _gen_upper(rng: _Rng) -> tuple[str, str]:
    ws = _words(rng, 2, 5)
    return " ".join(ws), " ".join(ws).upper()


def _gen_lower(rng: _Rng) -> tuple[str, str]:
    ws = _words(rng, 2, 5)
    return " ".join(ws).upper(), " ".join(ws)


def _gen_caesar(rng: _Rng) -> tuple[str, str]:
    ws = _words(rng, 1, 3)
    return " ".join(ws), _caesar(" ".join(ws))


def _gen_nth(rng: _Rng) -> tuple[str, str]:
    ws = _words(rng, 3, 7)
    n = rng.between(1, len(ws))
    return f"{n}: " + " ".join(ws), ws[n - 1]


def _gen_count(rng: _Rng) -> tuple[str, str]:
    letter = rng.choice(COUNT_LETTERS)
    ws = _words(rng, 2, 5)
    text = " ".join(ws)
    return f"{letter}: {text}", str(text.count(letter))


_INSTRUCTIONS: dict[Task, tuple[str, ...]] = {
    Task.REVERSE: ("Reverse the order of the words.", "Write the words in reverse order."),
    Task.SORT: ("Sort the words in alphabetical order.", "Put the words in alphabetical order."),
    Task.ADD: ("Add the two numbers.", "What is the sum?"),
    Task.UPPER: ("Write the words in uppercase.", "Convert the words to capital letters."),
    Task.LOWER: ("Write the words in lowercase.", "Convert the words to small letters."),
    Task.CAESAR: ("Shift every letter forward by one (a becomes b, z becomes a).",),
    Task.NTH: ("Give the word at the position before the colon.", "Which word is at the given position?"),
    Task.COUNT: ("Count how many times the letter before the colon appears in the words.",),
}
_GENERATORS: dict[Task, Callable[[_Rng], tuple[str, str]]] = {
    Task.REVERSE: _gen_reverse,
    Task.SORT: _gen_sort,
    Task.ADD: _gen_add,
    Task.UPPER: _gen_upper,
    Task.LOWER: _gen_lower,
    Task.CAESAR: _gen_caesar,
    Task.NTH: _gen_nth,
    Task.COUNT: _gen_count,
}


def make_record(task: Task, rng: _Rng) -> dict[str, str]:
    """One record of the given family: the instruction phrasing is drawn, then the input, then solved."""
    instruction = rng.choice(_INSTRUCTIONS[task])
    inp, out = _GENERATORS[task](rng)
    return {"instruction": instruction, "input": inp, "output": out, "task": task.value}


def generate_records(n: int, seed: int, tasks: Iterable[Task | str] | None = None) -> list[dict[str, str]]:
    """``n`` distinct records, families in round-robin order; an input never repeats within its family."""
    families = [Task(t) for t in tasks] if tasks is not None else list(Task)
    if not families:
        raise ValueError("generate_records: no task family given")
    rng = _Rng(seed)
    seen: set[tuple[str, str]] = set()
    out: list[dict[str, str]] = []
    misses = 0
    while len(out) < n:
        task = families[len(out) % len(families)]
        rec = make_record(task, rng)
        key = (rec["task"], rec["input"])
        if key in seen:
            misses += 1
            if misses > 100 * (n + 10):
                raise ValueError(f"generate_records: cannot draw {n} distinct records (got {len(out)})")
            continue
        seen.add(key)
        out.append(rec)
    return out


def generate_splits(
    n_train: int, n_val: int, n_test: int, seed: int = 0, tasks: Iterable[Task | str] | None = None
) -> dict[str, list[dict[str, str]]]:
    """Disjoint train / val / test splits (no (task, input) pair in two splits).

    Test is drawn first and val second, so they stay the same when only n_train changes.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if value < 0:
            raise ValueError(f"generate_splits: {name} must be >= 0, got {value}")
    records = generate_records(n_train + n_val + n_test, seed, tasks)
    return {
        "test": records[:n_test],
        "val": records[n_test : n_test + n_val],
        "train": records[n_test + n_val :],
    }


def write_jsonl(records: Iterable[dict], path: str) -> None:
    """Write one JSON object per line, atomically (a crash never leaves half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    """Write train.jsonl / val.jsonl / test.jsonl into --out."""
    p = argparse.ArgumentParser(description="Generate the synthetic instruction dataset.")
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--n-test", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for split, recs in generate_splits(args.n_train, args.n_val, args.n_test, args.seed).items():
        write_jsonl(recs, os.path.join(args.out, f"{split}.jsonl"))


if __name__ == "__main__":
    main()
