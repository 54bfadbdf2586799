"""Issue 12, items 3, 4, 6, 7: evaluation files as users bring them.

- {prompt, answer} with a prompt that already holds the template is scored, not taken for Vicuna and wrapped twice;
- a set that should carry references and yields none fails with one line (exit 2);
- {messages} is evaluated in the chat format, rendered and tokenised exactly as training does (compared with the
  training pipeline itself), and the template's empty <think> block is not scored as part of the answer;
- the final line names each metric with its scale and the counts; setup stages and a generation bar are shown.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch

from adakd_ds.config.schema import DataFormat
from adakd_ds.data.formats import INSTRUCTION_TEMPLATE_NO_INPUT, render_example, render_prompt
from adakd_ds.data.tokenize import IGNORE_INDEX, encode_prompts, tokenize_dataset
from adakd_ds.eval.chat_scaffold import response_scaffold, strip_scaffold
from adakd_ds.eval.evaluate import render_prompts
from adakd_ds.eval.formats import EvalFormat, EvalFormatError, describe_samples, load_eval_samples
from adakd_ds.eval.metrics import aggregate, summary_line
from tests.helpers_tokenizer import build_tiny_tokenizer

# Like Qwen3 with thinking off: every assistant turn starts with an empty think block.
THINK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['role'] == 'assistant' %}<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MINILLM_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes it.\n\n"
)
CHATS = [
    [{"role": "user", "content": "name a red animal"}, {"role": "assistant", "content": "a red fox"}],
    [
        {"role": "system", "content": "answer in one word"},
        {"role": "user", "content": "capital of france?"},
        {"role": "assistant", "content": "paris"},
    ],
    [{"role": "user", "content": "write two colors"}, {"role": "assistant", "content": "blue and green"}],
]


def _jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _templated(instruction: str) -> str:
    return MINILLM_PREAMBLE + INSTRUCTION_TEMPLATE_NO_INPUT.format(instruction=instruction)


# ---------------------------------------------------------------- item 3


def test_prompt_answer_file_is_scored_and_never_templated_twice(tmp_path):
    path = _jsonl(tmp_path / "dolly.jsonl", [{"prompt": _templated(f"say {w}"), "answer": w} for w in ("hi", "yo")])
    samples, fmt = load_eval_samples(path)
    assert fmt is EvalFormat.PROMPT_RESPONSE and [s.references for s in samples] == [["hi"], ["yo"]]
    for sample in samples:
        prompt = render_prompt(sample.record, sample.fmt)
        assert prompt == _templated(f"say {sample.references[0]}")  # verbatim: the file's prompt, as it is
        assert prompt.count("### Instruction:") == 1 and prompt.endswith("### Response:\n")
    line = describe_samples(path, samples, fmt, "auto")
    assert "format prompt_response (detected), 2 samples, 2 with references" in line


def test_question_files_with_a_rendered_prompt_are_used_verbatim(tmp_path):
    # Vicuna-like (no reference) and S-NI-like files whose prompt is already rendered
    vic = _jsonl(tmp_path / "v.jsonl", [{"prompt": _templated("tell a joke")}])
    sni = _jsonl(tmp_path / "s.jsonl", [{"prompt": _templated("add 1 and 2"), "input": "1 2", "output": "3"}])
    for path, refs in ((vic, []), (sni, ["3"])):
        (sample,), _ = load_eval_samples(path)
        assert sample.verbatim and sample.references == refs
        assert render_prompt(sample.record, sample.fmt).count("### Response:") == 1
    # a plain question is still wrapped once
    (plain,), _ = load_eval_samples(_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "text": "tell a joke"}]))
    assert (
        not plain.verbatim
        and render_prompt(plain.record, plain.fmt) == _templated("tell a joke")[len(MINILLM_PREAMBLE) :]
    )


def test_a_set_that_should_have_references_but_has_none_fails_in_one_line(tmp_path):
    no_refs = _jsonl(tmp_path / "p.jsonl", [{"prompt": "Q: 1+1?"}, {"prompt": "Q: 2+2?"}])
    with pytest.raises(EvalFormatError, match=r"p\.jsonl: format 'prompt_response' should carry references, but none"):
        load_eval_samples(no_refs, EvalFormat.PROMPT_RESPONSE)
    empty = _jsonl(tmp_path / "d.jsonl", [{"instruction": "I", "response": "  "}])
    with pytest.raises(EvalFormatError, match="none of its 1 samples has one"):
        load_eval_samples(empty)
    empty_answers = _jsonl(tmp_path / "c.jsonl", [{"messages": [*CHATS[0][:1], {"role": "assistant", "content": ""}]}])
    with pytest.raises(EvalFormatError, match="format 'chat' should carry references"):
        load_eval_samples(empty_answers)
    # questions only (Vicuna, or chats that end on the user's turn) are generated without references, as before
    questions = _jsonl(tmp_path / "q.jsonl", [{"messages": CHATS[1][:2]}, {"messages": [*CHATS[0], CHATS[2][0]]}])
    samples, fmt = load_eval_samples(questions)
    assert fmt is EvalFormat.CHAT and all(s.question_only and not s.references for s in samples)
    assert samples[1].record["messages"][-2] == CHATS[2][0]  # the last user turn is what gets answered
    # through the command: exit code 2 and one error line, before any model is loaded
    from adakd_ds.eval.evaluate import eval_main

    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--model", str(tmp_path / "no_model"), "--data", no_refs, "--format", "prompt_response",
                   "--out", str(tmp_path / "out")])  # fmt: skip
    assert exit_info.value.code == 2


# ---------------------------------------------------------------- item 6


def test_summary_line_names_metrics_scale_and_counts():
    scores = [[{"rougeL": 50.0, "exact_match": 0.0, "exact_match_strict": 0.0}, None,
               {"rougeL": 100.0, "exact_match": 100.0, "exact_match_strict": 0.0}]]  # fmt: skip
    results = aggregate(scores, [None, None, None])
    results["decoding"] = {"seeds": ["greedy"]}
    line = summary_line(results)
    assert "ROUGE-L F1 x100 75.00" in line and "exact match % 50.00" in line and "strict exact match % 0.00" in line
    assert "2 of 3 samples scored (1 without reference)" in line and "greedy" in line


# ---------------------------------------------------------------- item 4


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    tok = build_tiny_tokenizer(root / "tok", pad=True)
    tok.chat_template = THINK_TEMPLATE
    tok.save_pretrained(str(root / "tok"))
    return root, tok


def test_chat_eval_renders_and_tokenises_exactly_as_training(chat_tok, tmp_path):
    _, tok = chat_tok
    records = [{"messages": m} for m in CHATS]
    path = _jsonl(tmp_path / "chat.jsonl", records)
    samples, fmt = load_eval_samples(path)
    assert fmt is EvalFormat.CHAT and [s.references for s in samples] == [["a red fox"], ["paris"], ["blue and green"]]
    # the training pipeline's own samples: the prompt is the -100 prefix of the labels
    train = tokenize_dataset(datasets.Dataset.from_list(records), DataFormat.MESSAGES, tok, 64, 128, str)
    eval_ids = encode_prompts(tok, render_prompts(samples, tok), 64)
    for ids, row in zip(eval_ids, train, strict=True):
        n_prompt = sum(1 for label in row["labels"] if label == IGNORE_INDEX)
        assert ids == row["input_ids"][:n_prompt]
        # a model that reproduces the trained response is scored on the answer alone: the <think> block is dropped
        response = [t for t in row["input_ids"][n_prompt:] if t != tok.eos_token_id]
        text = tok.decode(response, skip_special_tokens=True).strip()
        assert text.startswith("<think>")
        sample = samples[train["input_ids"].index(row["input_ids"])]
        assert strip_scaffold(text, response_scaffold(sample.record, sample.fmt, tok)) == sample.references[0]


def test_scaffold_is_only_stripped_where_the_template_writes_one(chat_tok):
    _, tok = chat_tok
    record = {"messages": CHATS[0]}
    assert response_scaffold(record, DataFormat.MESSAGES, tok) == ("<think>\n\n</think>", "")
    assert render_example(record, DataFormat.MESSAGES, tok)[1] == "<think>\n\n</think>\n\na red fox"
    assert strip_scaffold("a red fox", ("<think>\n\n</think>", "")) == "a red fox"
    assert response_scaffold({"instruction": "x"}, DataFormat.INSTRUCTION, tok) == ("", "")


@pytest.mark.slow
def test_chat_eval_end_to_end_prints_stages_bar_and_labelled_summary(chat_tok, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from adakd_ds.eval.evaluate import eval_main
    from tests.engine_fixtures import tiny_llama_config

    root, tok = chat_tok
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_llama_config(len(tok), 32, 1, heads=2)).save_pretrained(model_dir)
    tok.save_pretrained(str(model_dir))
    data = _jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CHATS])
    out = tmp_path / "out"
    res = eval_main(["--model", str(model_dir), "--data", data, "--out", str(out), "--greedy", "--max-new-tokens", "4",
                     "--batch-size", "2"])  # fmt: skip
    captured = capsys.readouterr()
    assert res["format"] == "chat" and res["n_scored"] == 3 and res["metric_labels"]["rougeL"] == "ROUGE-L F1 x100"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [render_prompt({"messages": m}, DataFormat.MESSAGES, tok) for m in CHATS]
    assert (
        "adakd-eval: data ready" in captured.out
        and "format chat (detected), 3 samples, 3 with references" in captured.out
    )
    assert all(f"adakd-eval: {stage} ready" in captured.out for stage in ("tokenizer", "student"))
    assert "generating" in captured.err and "3/3" in captured.err  # the bar reached all prompts
    final = [line for line in captured.out.splitlines() if line.startswith("eval: ")]
    assert len(final) == 1 and "ROUGE-L F1 x100" in final[0] and "3 of 3 samples scored" in final[0], captured.out
