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
    # stochastic families: the record's response is one sample from a known set of correct answers
    NAME3 = "name3"  # three distinct animals starting with a letter, in any order
    SENTENCE = "sentence"  # "the <adj> <animal> <verb> in the <place>", verb and place from the animal's own sets
    ANY_ORDER = "any_order"  # the given words in any order
    PICK2 = "pick2"  # two of the given words, in their input order


CLASSIC: tuple[Task, ...] = tuple(list(Task)[:8])  # the deterministic families (the default, as before)
STOCHASTIC: frozenset[Task] = frozenset({Task.NAME3, Task.SENTENCE, Task.ANY_ORDER, Task.PICK2})


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


# name3 and sentence need knowledge a small model must memorise: which animals start with which letter, and each
# animal's own verbs and places (a fixed table). A teacher trained on many samples learns these sets; one sample per
# prompt shows a student only part of them.
ANIMALS: dict[str, tuple[str, ...]] = {
    "b": ("bat", "bear", "bee", "bison", "boar", "bull"),
    "c": ("camel", "cat", "cow", "crab", "crow", "cub"),
    "d": ("deer", "dingo", "dog", "dove", "duck", "dodo"),
    "e": ("eagle", "eel", "egret", "elk", "emu", "ewe"),
    "f": ("ferret", "finch", "fish", "flea", "fly", "fox"),
    "g": ("gecko", "gnu", "goat", "goose", "gull", "gnat"),
    "h": ("hare", "hawk", "hen", "heron", "hog", "horse"),
    "l": ("lamb", "lark", "lion", "llama", "louse", "lynx"),
    "m": ("mink", "mole", "moose", "moth", "mouse", "mule"),
    "p": ("panda", "pig", "pony", "puma", "pug", "puffin"),
    "r": ("rabbit", "ram", "rat", "raven", "rhino", "robin"),
    "s": ("seal", "shark", "sheep", "skunk", "snail", "swan"),
    "t": ("tapir", "tiger", "toad", "trout", "tuna", "turtle"),
    "w": ("walrus", "wasp", "whale", "wolf", "worm", "wren"),
}  # fmt: skip
ADJECTIVES = ("big", "small", "old", "young", "happy", "sleepy")
VERBS = ("runs", "sleeps", "swims", "eats", "sings", "hides", "digs", "plays", "waits", "rests", "jumps", "walks")
PLACES = ("park", "river", "field", "barn", "forest", "garden", "lake", "cave")


def _animal_table() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Each animal's 3 verbs and 2 places, drawn once from a fixed seed (part of the task, not of the split)."""
    rng = _Rng(20261201)
    return {a: (tuple(rng.sample(VERBS, 3)), tuple(rng.sample(PLACES, 2))) for g in ANIMALS.values() for a in g}


ANIMAL_TABLE = _animal_table()


def _gen_name3(rng: _Rng) -> tuple[str, str]:
    letter = rng.choice(sorted(ANIMALS))
    return letter, " ".join(rng.sample(ANIMALS[letter], 3))


def _gen_sentence(rng: _Rng) -> tuple[str, str]:
    animal = rng.choice(sorted(ANIMAL_TABLE))
    verbs, places = ANIMAL_TABLE[animal]
    return animal, f"the {rng.choice(ADJECTIVES)} {animal} {rng.choice(verbs)} in the {rng.choice(places)}"


def _gen_any_order(rng: _Rng) -> tuple[str, str]:
    ws = _words(rng, 3, 5)
    return " ".join(sorted(ws)), " ".join(rng.sample(ws, len(ws)))


def _gen_pick2(rng: _Rng) -> tuple[str, str]:
    ws = _words(rng, 3, 6)
    i, j = sorted(rng.sample(range(len(ws)), 2))
    return " ".join(ws), f"{ws[i]} {ws[j]}"


def is_valid(task: Task | str, inp: str, response: str) -> bool:
    """Whether ``response`` is one of the correct answers to ``inp`` (for every family, stochastic or not)."""
    task = Task(task)
    got = response.split()
    if task is Task.NAME3:
        return len(got) == 3 and len(set(got)) == 3 and set(got) <= set(ANIMALS.get(inp, ()))
    if task is Task.SENTENCE:
        if inp not in ANIMAL_TABLE or len(got) != 7:
            return False
        verbs, places = ANIMAL_TABLE[inp]
        return (
            (got[0], got[2], got[4], got[5]) == ("the", inp, "in", "the")
            and got[1] in ADJECTIVES
            and (got[3] in verbs and got[6] in places)
        )
    if task is Task.ANY_ORDER:
        return sorted(got) == sorted(inp.split())
    if task is Task.PICK2:
        words = inp.split()
        return len(got) == 2 and got[0] in words and got[1] in words and words.index(got[0]) < words.index(got[1])
    return response.strip() == solve(task, inp)


def solve(task: Task | str, inp: str) -> str:
    """The one correct answer of a deterministic family, from its input text."""
    task = Task(task)
    words = inp.split()
    if task is Task.REVERSE:
        return " ".join(reversed(words))
    if task is Task.SORT:
        return " ".join(sorted(words))
    if task is Task.ADD:
        return str(int(words[0]) + int(words[2]))
    if task in (Task.UPPER, Task.LOWER):
        return inp.upper() if task is Task.UPPER else inp.lower()
    if task is Task.CAESAR:
        return _caesar(inp)
    head, _, rest = inp.partition(": ")
    if task is Task.NTH:
        return rest.split()[int(head) - 1]
    if task is Task.COUNT:
        return str(rest.count(head))
    raise ValueError(f"{task.value} has no single answer: use is_valid")


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
    Task.NAME3: ("Name three animals that start with this letter.", "Give three animals whose names start with it."),
    Task.SENTENCE: ("Write a short sentence about this animal.",),
    Task.ANY_ORDER: ("List these words in any order.",),
    Task.PICK2: ("Pick two of these words, keeping their order.",),
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
    Task.NAME3: _gen_name3,
    Task.SENTENCE: _gen_sentence,
    Task.ANY_ORDER: _gen_any_order,
    Task.PICK2: _gen_pick2,
}


def make_record(task: Task, rng: _Rng) -> dict[str, str]:
    """One record of the given family: the instruction phrasing is drawn, then the input, then solved."""
    instruction = rng.choice(_INSTRUCTIONS[task])
    inp, out = _GENERATORS[task](rng)
    return {"instruction": instruction, "input": inp, "output": out, "task": task.value}


def generate_records(n: int, seed: int, tasks: Iterable[Task | str] | None = None) -> list[dict[str, str]]:
    """``n`` distinct records, families in round-robin order; an input never repeats within its family."""
    families = [Task(t) for t in tasks] if tasks is not None else list(CLASSIC)
    if not families:
        raise ValueError("generate_records: no task family given")
    rng = _Rng(seed)
    seen: set[tuple[str, str]] = set()
    out: list[dict[str, str]] = []
    misses = 0
    while len(out) < n:
        task = families[len(out) % len(families)]
        rec = make_record(task, rng)
        # a stochastic family's prompt repeats (its answers differ); a deterministic one's never does
        key = (rec["task"], rec["input"], rec["output"] if task in STOCHASTIC else "")
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
