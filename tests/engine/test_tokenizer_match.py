"""Issue 12, items 1-2: a teacher with another tokenizer is refused before any model is built; one tokenizer passes.

The references are independent: the expected first difference is found here by a plain loop over both vocabularies.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adakd_ds.engine.guard.tokenizer_match import TokenizerMismatch, check_teacher_tokenizer, tokenizer_difference
from tests.engine_fixtures import run_launch, tiny_llama_config, write_run_config
from tests.helpers_tokenizer import build_byte_bpe_tokenizer, build_tiny_tokenizer


def _first_different_id(a, b) -> int:
    """The first id whose token differs, by a plain loop (independent of tokenizer_match)."""
    va = {i: t for t, i in a.get_vocab().items()}
    vb = {i: t for t, i in b.get_vocab().items()}
    return next(i for i in sorted(va) if vb.get(i) != va[i])


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("toks")
    base = build_tiny_tokenizer(root / "base", pad=True)
    same = build_tiny_tokenizer(root / "same", pad=True)
    other = build_tiny_tokenizer(root / "other", pad=True, corpus_seed=3)
    bpe = build_byte_bpe_tokenizer(root / "bpe", vocab_size=300)
    return root, base, same, other, bpe


def test_identical_tokenizers_pass(toks):
    root, base, same, _, _ = toks
    assert tokenizer_difference(base, same) is None
    line = check_teacher_tokenizer(str(root / "same"), base, str(root / "base"))
    assert "matches" in line and str(len(base)) in line


def test_same_size_other_merges_is_refused_naming_the_first_token(toks):
    root, base, _, other, _ = toks
    assert len(base) == len(other)  # the old size check saw nothing wrong
    first = _first_different_id(base, other)
    with pytest.raises(TokenizerMismatch) as err:
        check_teacher_tokenizer(str(root / "other"), base, str(root / "base"))
    msg = str(err.value)
    assert "\n" not in msg and f"id {first} is {base.convert_ids_to_tokens(first)!r}" in msg
    assert repr(other.convert_ids_to_tokens(first)) in msg


def test_larger_gpt2_style_teacher_is_not_taken_for_a_padded_one(toks):
    root, base, _, _, bpe = toks
    assert len(bpe) > len(base)
    problem = tokenizer_difference(base, bpe)
    assert problem is not None and "id 0 is '<unk>'" in problem and "'<|endoftext|>'" in problem


def test_special_tokens_and_probes_are_compared(toks, tmp_path):
    root, base, _, _, _ = toks
    from transformers import AutoTokenizer

    # the same vocabulary with another eos: the vocab map agrees, the special tokens do not
    swapped = AutoTokenizer.from_pretrained(str(root / "base"))
    swapped.eos_token = swapped.convert_ids_to_tokens(5)
    problem = tokenizer_difference(base, swapped)
    assert problem is not None and problem.startswith("special token eos")
    # the same vocabulary and specials, but no BOS added: the probe strings tokenise differently
    no_bos = AutoTokenizer.from_pretrained(str(root / "base"), add_bos_token=False)
    problem = tokenizer_difference(base, no_bos)
    assert problem is not None and problem.startswith("probe") and "at token 0" in problem


def test_teacher_without_tokenizer_falls_back_to_sizes(toks, tmp_path):
    _, base, _, _, _ = toks
    (tmp_path / "bare").mkdir()
    assert "only the vocabulary sizes" in check_teacher_tokenizer(str(tmp_path / "bare"), base, "elsewhere")


@pytest.mark.slow
def test_run_with_another_teacher_tokenizer_exits_2_before_models(tiny_setup, toks, tmp_path):
    """The issue's case: a larger teacher vocab with a GPT-2-style tokenizer used to be sliced, with exit 0."""
    from transformers import AutoModelForCausalLM

    root, _, _, _, bpe = toks
    teacher = tmp_path / "bpe_teacher"
    AutoModelForCausalLM.from_config(tiny_llama_config(len(bpe), 32, 1, heads=2)).save_pretrained(teacher)
    bpe.save_pretrained(teacher)
    out = tmp_path / "refused"
    cfg = write_run_config(tiny_setup, out, model={"teacher": str(teacher)})
    res = run_launch(["--config", str(cfg)], launcher="python", timeout=120)
    assert res.returncode == 2, res.output[-3000:]
    errors = [line for line in res.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "another tokenizer" in errors[0] and "id 0 is '<unk>'" in errors[0], res.output[-2000:]
    assert "student ready" not in res.output  # refused before the models were built
    assert not (out / "history.jsonl").exists()


def test_fixture_teacher_ships_the_run_tokenizer(tiny_setup):
    """The shared fixture's teacher carries the same tokenizer, so every other engine test passes the new check."""
    from transformers import AutoTokenizer

    run_tok = AutoTokenizer.from_pretrained(str(tiny_setup.tokenizer))
    assert Path(tiny_setup.teacher, "tokenizer_config.json").is_file()
    assert check_teacher_tokenizer(str(tiny_setup.teacher), run_tok, str(tiny_setup.tokenizer)).startswith("teacher")
