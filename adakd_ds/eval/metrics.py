"""Scores of the MiniLLM / DistiLLM / AdaKD protocol: ROUGE-L F-measure and exact match, best over references.

Why these exact definitions: published numbers use ``rouge_score``'s rougeL (Porter stemming on, its default lower-case
alphanumeric tokenizer) scored as ``score(target=reference, prediction=prediction)``, and the SQuAD-style normalised
exact match of the S-NI evaluation script, both x100 and maximised over the references of a sample. The default ROUGE
tokenizer ignores case and punctuation, so ``exact_match_strict`` (whitespace-trimmed, case-sensitive) is reported too:
it is the one that sees whether the synthetic upper/lower/caesar families were solved.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")


@functools.lru_cache(maxsize=1)
def _scorer():  # noqa: ANN202 - rouge_score.rouge_scorer.RougeScorer
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """rougeL F-measure in [0, 1]."""
    return _scorer().score(reference, prediction)["rougeL"].fmeasure


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD / S-NI)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def exact_match_strict(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


METRICS = {"rougeL": rouge_l, "exact_match": exact_match, "exact_match_strict": exact_match_strict}
# What each reported number is, with its scale: every metric is x100 (a percentage of samples for exact match).
METRIC_LABELS = {
    "rougeL": "ROUGE-L F1 x100",
    "exact_match": "exact match %",
    "exact_match_strict": "strict exact match %",
}


def score_sample(prediction: str, references: Sequence[str]) -> dict[str, float] | None:
    """Each metric x100, the best over the references; None when there is no reference."""
    if not references:
        return None
    return {name: 100.0 * max(fn(prediction, ref) for ref in references) for name, fn in METRICS.items()}


def mean_std(values: Sequence[float]) -> dict[str, float | list[float] | None]:
    """Mean and population std (ddof 0) over seeds, with the per-seed values; None entries when empty."""
    vals = [float(v) for v in values]
    if not vals:
        return {"mean": None, "std": None, "per_seed": []}
    mean = math.fsum(vals) / len(vals)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / len(vals))
    return {"mean": mean, "std": std, "per_seed": vals}


def aggregate(scores: Sequence[Sequence[dict[str, float] | None]], tasks: Sequence[str | None]) -> dict[str, object]:
    """Summaries from ``scores[seed][sample]`` (None = no reference): per-seed means, then mean/std over seeds.

    Per-task breakdowns are included when any sample has a task name.
    """

    def summarise(indices: list[int]) -> dict[str, object]:
        scored = [i for i in indices if scores[0][i] is not None] if scores else []
        out: dict[str, object] = {
            "n": len(indices),
            "n_scored": len(scored),
            "n_no_reference": len(indices) - len(scored),
        }
        for name in METRICS:
            per_seed = (
                [math.fsum(seed_scores[i][name] for i in scored) / len(scored) for seed_scores in scores]
                if (scored)
                else []
            )
            out[name] = mean_std(per_seed)
        return out

    n = len(tasks)
    result = summarise(list(range(n)))
    if any(t is not None for t in tasks):
        names = sorted({t if t is not None else "<none>" for t in tasks})
        result["per_task"] = {
            name: summarise([i for i in range(n) if (tasks[i] if tasks[i] is not None else "<none>") == name])
            for name in names
        }
    return result


def summary_line(results: dict[str, object]) -> str:
    """The final line of an evaluation: each metric by name and scale, mean +/- std over seeds, and the counts."""
    parts = []
    for name, label in METRIC_LABELS.items():
        stats = results.get(name)
        if isinstance(stats, dict) and stats.get("mean") is not None:
            n_seeds = len(stats["per_seed"])
            spread = f" +/- {stats['std']:.2f}" if n_seeds > 1 else ""
            parts.append(f"{label} {stats['mean']:.2f}{spread}")
    seeds = results.get("decoding", {}).get("seeds", []) if isinstance(results.get("decoding"), dict) else []
    scored = f"{results['n_scored']} of {results['n']} samples scored ({results['n_no_reference']} without reference)"
    decoding = "greedy" if seeds == ["greedy"] else f"{len(seeds)} seeds"
    return f"eval: {', '.join(parts) or 'no metric (no reference)'}; {scored}; {decoding}"
