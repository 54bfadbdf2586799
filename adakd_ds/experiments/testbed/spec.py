"""The miniature testbed: task families, splits, model shapes, and the teacher the repository ships.

Why this design: distillation beats SFT only when the teacher knows more than the labels show. So the teacher
trains on 20x the student's distillation split (12000 records against the first 600 of them) and is 6.6x the
student's size, and two of the six families are stochastic: each record's response is one sample from a known set
of correct answers (a list in any order, two of the given words in input order). A teacher trained on many samples
learns the set; one label per prompt shows a student only one member of it. The four deterministic families keep
token difficulty varying within and across responses.

The teacher takes longer to train (16 minutes) than the whole quickstart, so it is shipped (``teacher/``,
with its tokenizer and the key of the settings that made it); ``--retrain-teacher`` rebuilds it into the output
folder, cached there under that key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adakd_ds.experiments.testbed.synthetic_tasks import Task, generate_splits, write_jsonl

# name3 and sentence are left out: one sampled reference caps their ROUGE-L near what the template alone gives, so
# no teacher can reach 2x a student there; add and count are left out: this teacher does not learn them.
TESTBED_TASKS: tuple[str, ...] = tuple(t.value for t in (
    Task.REVERSE, Task.SORT, Task.CAESAR, Task.NTH, Task.ANY_ORDER, Task.PICK2,
))  # fmt: skip
SHIPPED_TEACHER = Path(__file__).resolve().parent / "teacher"
KEY_FILE = "testbed.json"  # the teacher's settings and their key, next to its weights


@dataclass(frozen=True)
class Plan:
    """Sizes and step counts. FULL is the quickstart (about 8 minutes on 2 CPU cores with the shipped teacher) and
    the grid's setting; FAST is CI's version: the same data, teacher and steps, one training seed, one sampling seed.

    The global batch is ``micro_batch`` x ``nproc`` whatever the ranks a stage really runs (``stage_nproc``): the
    same samples make each optimizer step, and AdaKD's statistics are over all ranks, so only float rounding
    changes. On 2 cores two 1-rank stages side by side (``lanes``) cost 0.6x the CPU of one 2-rank stage."""

    tasks: tuple[str, ...] = TESTBED_TASKS
    n_teacher_train: int = 12000
    n_student_train: int = 600  # the distillation split: the first records of the teacher's split
    n_val: int = 100
    n_test: int = 300
    vocab: int = 512
    teacher_hidden: int = 256
    teacher_layers: int = 4
    teacher_steps: int = 2400
    teacher_lr: float = 1.5e-3
    student_hidden: int = 128
    student_layers: int = 2
    student_init_steps: int = 200  # one SFT initialisation shared by every student row (MiniLLM's protocol)
    student_steps: int = 300
    student_lr: float = 2e-3
    kd_ratio: float = 1.0  # pure KD, as in the paper's Table 1
    micro_batch: int = 16
    max_len: int = 80
    nproc: int = 2  # the ranks micro_batch is given for (the shipped teacher's); the global batch is their product
    stage_nproc: int = 1  # the ranks each student stage runs; its micro-batch is scaled to keep the global batch
    lanes: int = 2  # student stages run side by side
    eval_nproc: int = 1  # evaluation of these tiny models is fastest in-process
    train_seeds: tuple[int, ...] = (1, 2, 3)  # one student per seed and row: the std over these is the table's
    eval_seeds: tuple[int, ...] = (1, 2, 3)  # sampling seeds of the sampled evaluation
    max_new_tokens: int = 24

    def micro_batch_for(self, nproc: int) -> int:
        """The micro-batch that gives ``nproc`` ranks this plan's global batch."""
        if (self.micro_batch * self.nproc) % nproc:
            raise ValueError(f"--nproc {nproc} does not divide the global batch {self.micro_batch * self.nproc}")
        return self.micro_batch * self.nproc // nproc


FULL = Plan()
FAST = dataclasses.replace(FULL, train_seeds=(1,), eval_seeds=(1,))  # fewer steps and KD no longer beats SFT

# the fields that decide the teacher's weights (and so its cache key); FAST shares FULL's teacher
TEACHER_FIELDS = ("tasks", "n_teacher_train", "n_val", "n_test", "vocab", "teacher_hidden", "teacher_layers",
                  "teacher_steps", "teacher_lr", "micro_batch", "max_len")  # fmt: skip


def teacher_settings(plan: Plan) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(plan).items()
            if k in TEACHER_FIELDS}  # fmt: skip


def teacher_key(plan: Plan) -> str:
    """A short hash of what makes the teacher: its settings (the data are a function of them and the code)."""
    return hashlib.sha256(json.dumps(teacher_settings(plan), sort_keys=True).encode()).hexdigest()[:12]


def llama_config(vocab: int, hidden: int, layers: int) -> Any:
    """The small Llama shape of the testbed (and of the step benchmark)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )


def write_data(out: Path, plan: Plan) -> dict[str, Path]:
    """teacher_train / train (the student's, a prefix of the teacher's) / val / test; disjoint test and val."""
    paths = {name: out / "data" / f"{name}.jsonl" for name in ("teacher_train", "train", "val", "test")}
    if not paths["test"].is_file():  # written last
        splits = generate_splits(plan.n_teacher_train, plan.n_val, plan.n_test, seed=0, tasks=plan.tasks)
        write_jsonl(splits["train"], str(paths["teacher_train"]))
        write_jsonl(splits["train"][: plan.n_student_train], str(paths["train"]))
        write_jsonl(splits["val"], str(paths["val"]))
        write_jsonl(splits["test"], str(paths["test"]))
    return paths


def train_tokenizer_for(out: Path, data: Path, plan: Plan) -> Path:
    from adakd_ds.experiments.testbed.tokenizer_train import train_tokenizer

    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer_config.json").is_file():
        train_tokenizer(str(data), str(tok_dir), vocab_size=plan.vocab)
    return tok_dir


def write_models(out: Path, plan: Plan, tokenizer: Path) -> dict[str, Path]:
    """The two model configs and the untrained student (a reference row of the table)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer)))
    paths = {}
    for role, hidden, layers in (("teacher", plan.teacher_hidden, plan.teacher_layers),
                                 ("student", plan.student_hidden, plan.student_layers)):  # fmt: skip
        cfg_dir = out / "configs" / role
        if not (cfg_dir / "config.json").is_file():
            llama_config(vocab, hidden, layers).save_pretrained(cfg_dir)
        paths[f"{role}_config"] = cfg_dir
    untrained = out / "student_untrained"
    if not (untrained / "model.safetensors").is_file():
        import torch

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(llama_config(vocab, plan.student_hidden, plan.student_layers))
        model.save_pretrained(untrained)
        AutoTokenizer.from_pretrained(str(tokenizer)).save_pretrained(untrained)
    paths["untrained"] = untrained
    return paths


class ShippedTeacherError(RuntimeError):
    """The shipped teacher is missing or was made with other settings than the plan's."""


def shipped_teacher(plan: Plan, where: Path = SHIPPED_TEACHER) -> Path:
    """The shipped teacher's folder, after checking that its key is this plan's."""
    key_file = where / KEY_FILE
    if not key_file.is_file() or not (where / "model.safetensors").is_file():
        raise ShippedTeacherError(f"no shipped teacher in {where}: run with --retrain-teacher")
    saved = json.loads(key_file.read_text())
    if saved.get("key") != teacher_key(plan):
        raise ShippedTeacherError(f"{where} was made with other settings ({saved.get('settings')}); "
                                  "run with --retrain-teacher")  # fmt: skip
    return where


def teacher_run_config(out: Path, paths: dict[str, Path], plan: Plan) -> dict[str, Any]:
    """The teacher's SFT run on its larger split; its folder is named by the key, so settings never mix."""
    return {
        "mode": "sft",
        "model": {"tokenizer": str(paths["tokenizer"]), "student_config": str(paths["teacher_config"])},
        "data": {"source": str(paths["teacher_train"]), "max_prompt_len": plan.max_len // 2, "max_len": plan.max_len},
        "loss": {"divergence": "rkl", "adakd": False},
        "train": {
            "lr": plan.teacher_lr,
            "max_steps": plan.teacher_steps,
            "micro_batch": plan.micro_batch,
            "warmup_ratio": 0.05,
            "seed": 0,
        },  # fmt: skip
        "output": {
            "dir": str(out / f"teacher-{teacher_key(plan)}"),
            "log_interval": 50,
            "save_interval": 0,
            "keep_last": 1,
        },  # fmt: skip
    }


def ship(export: Path, plan: Plan, where: Path = SHIPPED_TEACHER) -> Path:
    """Copy a trained teacher (config, tokenizer, generation config) into the package, its weights as bf16 (half the
    size; the engine and the evaluation load them as fp32), with the key of the settings that made it."""
    import torch
    from safetensors.torch import load_file, save_file

    tmp = where.with_name(where.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(export, tmp, ignore=shutil.ignore_patterns("model.safetensors", "*.tmp"))
    weights = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(export / "model.safetensors")).items()}
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / KEY_FILE).write_text(json.dumps({"key": teacher_key(plan), "settings": teacher_settings(plan)}, indent=2))
    shutil.rmtree(where, ignore_errors=True)
    tmp.rename(where)
    return where
