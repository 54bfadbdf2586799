"""Issue 12, items 2, 7-10 on real ZeRO-3 runs: a padded student trains like the unpadded one, setup prints its stages,
the end names every output, SFT logs no AdaKD tags and records no loss section, and the export has a generation config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from adakd_ds.checkpoint.generation_config import build_generation_config
from adakd_ds.engine.models import check_vocab
from tests.engine.test_engine import TB_TAGS, _event_tags
from tests.engine_fixtures import read_history, run_launch, tiny_llama_config, write_run_config

PAD_ROWS = 24


def _students(root: Path, vocab: int) -> tuple[Path, Path]:
    """The same student saved twice: exact vocab, and padded by PAD_ROWS rows (the first `vocab` rows identical)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(vocab, 32, 1, heads=2))
    exact, padded = root / "student_exact", root / "student_padded"
    model.save_pretrained(exact)
    model.resize_token_embeddings(vocab + PAD_ROWS, mean_resizing=False)
    model.save_pretrained(padded)
    return exact, padded


def test_check_vocab_aligns_padded_models():
    from transformers import AutoModelForCausalLM

    tok = type("Tok", (), {"__len__": lambda self: 200, "name_or_path": "tok"})()
    student = AutoModelForCausalLM.from_config(tiny_llama_config(200, 32, 1, heads=2))
    wide = AutoModelForCausalLM.from_config(tiny_llama_config(200 + PAD_ROWS, 32, 1, heads=2))
    teacher_padded = check_vocab(student, wide, tok)
    assert teacher_padded.student_width is None and f"from {200 + PAD_ROWS} to 200" in teacher_padded.note
    student_padded = check_vocab(wide, student, tok)  # was refused: "their token ids cannot be matched"
    assert student_padded.student_width == 200 and "student's logits are sliced" in student_padded.note
    assert check_vocab(student, student, tok).note is None


def test_generation_config_takes_the_tokenizers_eos_and_pad(tmp_path):
    from transformers import GenerationConfig

    cfg = tiny_llama_config(200, 32, 1)  # eos 2, no pad
    tok = type("Tok", (), {"eos_token_id": 7, "pad_token_id": 0, "bos_token_id": 1})()
    gen = build_generation_config(cfg, None, tok)
    assert (gen.eos_token_id, gen.pad_token_id, gen.bos_token_id) == ([7, 2], 0, 1)
    GenerationConfig(eos_token_id=[2, 9], temperature=0.6, do_sample=True).save_pretrained(tmp_path)
    gen = build_generation_config(cfg, str(tmp_path), tok)  # the student's own file keeps its sampling defaults
    assert (gen.eos_token_id, gen.pad_token_id, gen.temperature) == ([7, 2, 9], 0, 0.6)


@pytest.mark.slow
def test_padded_student_trains_like_the_exact_one_and_reports_its_outputs(tiny_setup, tmp_path):
    exact, padded = _students(tmp_path, vocab=200)
    runs = {}
    for name, student in (("padded", padded), ("exact", exact)):
        cfg = write_run_config(
            tiny_setup,
            tmp_path / name,
            model={"student": str(student), "student_config": None},
            train={"max_steps": 3},
            output={"export": name == "padded"},
        )
        res = run_launch(["--config", str(cfg)], launcher="torchrun", nproc=2, timeout=240)
        assert res.returncode == 0, res.output[-4000:]
        runs[name] = res
    # item 2: accepted, said once, and the KD loss is the exact student's (the padded rows are no tokens)
    out = runs["padded"].output
    assert out.count(f"the student's logits are sliced from {200 + PAD_ROWS} to 200") == 1, out[-3000:]
    got, ref = read_history(tmp_path / "padded"), read_history(tmp_path / "exact")
    assert len(got) == len(ref) == 3
    for a, b in zip(got, ref, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
    # item 7: one line per setup stage, in order, on rank 0 only
    stages = [line.split()[1] for line in out.splitlines() if line.startswith("setup: ") and " ready in " in line]
    assert stages == ["tokenizer", "data", "student", "teacher"], out[-3000:]
    # item 8: the end names each output, and each exists
    run = tmp_path / "padded"
    for what, path in (
        ("checkpoint", run / "checkpoints" / "step_00000003"),
        ("export", run / "export"),
        ("tensorboard", run / "tensorboard"),
        ("history", run / "history.jsonl"),
        ("config", run / "config.yaml"),
    ):
        assert any(line.split()[:2] == [what, str(path)] for line in out.splitlines()), (what, out[-2000:])
        assert path.exists()
    # item 10: generation_config.json from the student's, with the tokenizer's eos and pad (the tiny one pads with unk)
    gen = json.loads((run / "export" / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["pad_token_id"], gen["bos_token_id"]) == (2, 0, 1)


@pytest.mark.slow
def test_sft_logs_no_adakd_tags_and_records_no_loss_section(tiny_setup, tmp_path):
    out = tmp_path / "sft"
    cfg = write_run_config(tiny_setup, out, mode="sft", train={"max_steps": 2}, output={"export": False})
    res = run_launch(["--config", str(cfg)], launcher="python", timeout=180)
    assert res.returncode == 0, res.output[-4000:]
    scalars, histograms = _event_tags(out / "tensorboard")
    adakd = {t for t in TB_TAGS if t.startswith(("latf/", "idts/", "difficulty/"))}
    assert adakd and not scalars & adakd and not histograms, (scalars, histograms)
    assert {"loss/total", "loss/ce", "train/lr"} <= scalars
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["mode"] == "sft" and "loss" not in recorded and "train" in recorded
    assert "teacher ready" not in res.output and "run finished at step 2" in res.output
    # the same command again resumes at the last step: the resume stage gets its line too
    again = run_launch(["--config", str(cfg)], launcher="python", timeout=180)
    assert again.returncode == 0, again.output[-4000:]
    stages = [
        line.split()[1] for line in again.output.splitlines() if line.startswith("setup: ") and " ready in " in line
    ]
    assert stages == ["tokenizer", "data", "student", "resume"], again.output[-3000:]
    assert "resumed from" in again.output and "run finished at step 2" in again.output


def test_run_summary_names_the_newest_complete_checkpoint_and_only_what_exists(tmp_path):
    from adakd_ds.config.schema import RunConfig
    from adakd_ds.engine.run_summary import run_summary

    cfg = RunConfig()
    cfg.output.dir = str(tmp_path)
    for step, complete in ((2, True), (4, True), (6, False)):  # step 6 is a half-written save
        tag = tmp_path / "checkpoints" / f"step_{step:08d}"
        tag.mkdir(parents=True)
        if complete:
            (tag / "COMPLETE.json").write_text("{}")
    (tmp_path / "history.jsonl").write_text("{}\n")
    text = run_summary(cfg, 75, 6)
    lines = text.splitlines()
    assert lines[0].startswith("run preempted at step 6 (exit 75)") and "same command" in lines[0]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["checkpoint", str(tmp_path / "checkpoints" / "step_00000004")],
        ["history", str(tmp_path / "history.jsonl")],
    ]  # no export, tensorboard or config.yaml on disk: not named


def test_eval_kd_loss_of_a_padded_student_uses_the_shared_ids(tmp_path):
    """adakd-eval --teacher with a padded student: the divergence over the teacher's ids, by a float64 loop."""
    from transformers import AutoModelForCausalLM

    from adakd_ds.eval.heldout_loss import eval_loss_sums

    exact, padded = _students(tmp_path, vocab=200)
    student = AutoModelForCausalLM.from_pretrained(padded).eval()
    torch.manual_seed(3)
    teacher = AutoModelForCausalLM.from_config(tiny_llama_config(200, 32, 1, heads=2)).eval()
    samples = [([1, 5, 9, 14, 30], [-100, -100, 9, 14, 30]), ([1, 7, 8], [-100, 7, 8])]
    got = eval_loss_sums(student, samples, 0, teacher, ["rkl"], batch_size=2)
    want = 0.0
    with torch.no_grad():
        for ids, labels in samples:
            zs = student(input_ids=torch.tensor([ids])).logits[0, :, :200].double()
            zt = teacher(input_ids=torch.tensor([ids])).logits[0].double()
            for t in range(len(ids) - 1):
                if labels[t + 1] != -100:
                    lq, lp = torch.log_softmax(zs[t], -1), torch.log_softmax(zt[t], -1)
                    want += float((lq.exp() * (lq - lp)).sum())
    assert got["n_tokens"] == 5 and got["rkl"] == pytest.approx(want, rel=1e-5)
