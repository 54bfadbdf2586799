"""Generation-based evaluation (MiniLLM / DistiLLM / AdaKD protocol) on an exported HF model, data-parallel over ranks.

Each rank generates for its shard of the prompts (plain transformers, no DeepSpeed); rank 0 gathers the texts, scores
ROUGE-L and exact match against the references (best per sample), and writes predictions.jsonl and results.json.
Sampling defaults to top-p 1.0, temperature 1.0 over several seeds (mean and std over seeds); --greedy is one pass.
Prompts are rendered with the training template (``adakd_ds.data.formats.render_prompt``) and encoded like training
prompts, so a model is scored on exactly the format it learned. Runs as one process or under torchrun.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from adakd_ds.config.schema import Divergence, DType
from adakd_ds.data.formats import render_prompt
from adakd_ds.data.tokenize import encode_prompts
from adakd_ds.eval.chat_scaffold import response_scaffold, strip_scaffold
from adakd_ds.eval.formats import EvalFormat, EvalFormatError, EvalSample, describe_samples, load_eval_samples
from adakd_ds.eval.generate import Decoding, generate_batch, sample_seed, stop_ids
from adakd_ds.eval.heldout_loss import eval_loss, eval_loss_sums, finish_eval_loss, tokenize_pairs
from adakd_ds.eval.metrics import METRIC_LABELS, aggregate, score_sample, summary_line
from adakd_ds.eval.progress import GenerationProgress, SetupStages, Stage

EXIT_BAD_INPUT = 2  # as adakd-distill: bad input is exit code 2
DEFAULT_SEEDS = (10, 20, 30, 40, 50)  # MiniLLM's five evaluation seeds
GREEDY_SEED_LABEL = "greedy"
__all__ = ["eval_loss", "eval_main", "run_eval", "write_outputs", "shard_indices", "Shard"]


class Shard(str, enum.Enum):
    STRIDED = "strided"  # rank r takes samples r, r + W, ...: balanced when lengths drift along the file
    CONTIGUOUS = "contiguous"  # rank r takes one block


def shard_indices(n: int, rank: int, world: int, mode: Shard = Shard.STRIDED) -> list[int]:
    if mode is Shard.STRIDED:
        return list(range(rank, n, world))
    per, extra = divmod(n, world)
    start = rank * per + min(rank, extra)
    return list(range(start, start + per + (1 if rank < extra else 0)))


def init_eval_dist() -> tuple[int, int, bool]:
    """(rank, world_size, we_created_the_group). A plain process (no WORLD_SIZE > 1) stays without a group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, False
    dist.init_process_group("gloo")  # object gathers only; gloo works with CPU and GPU models alike
    return dist.get_rank(), dist.get_world_size(), True


def all_gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def render_prompts(samples: Sequence[EvalSample], tokenizer: Any) -> list[str]:
    return [render_prompt(s.record, s.fmt, tokenizer) for s in samples]


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    indices: Sequence[int],
    decoding: Decoding,
    seed: int | None,
    batch_size: int,
    progress: GenerationProgress | None = None,
) -> list[str]:
    """Decoded responses for the prompts at global ``indices`` (which pick each sample's generator)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = stop_ids(tokenizer, model)
    texts: list[str] = []
    for start in range(0, len(indices), batch_size):
        chunk = list(indices[start : start + batch_size])
        seeds = None if decoding.greedy else [sample_seed(seed or 0, i) for i in chunk]
        out = generate_batch(
            model, [prompt_ids[i] for i in chunk], pad, eos, decoding, seeds, vocab_limit=len(tokenizer)
        )
        texts.extend(tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out)
        if progress is not None:
            progress.update(len(chunk), sum(len(ids) for ids in out))
    return texts


def run_eval(
    model: Any,
    tokenizer: Any,
    samples: Sequence[EvalSample],
    decoding: Decoding,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    batch_size: int = 8,
    max_prompt_len: int = 256,
    teacher: Any | None = None,
    divergences: Sequence[Divergence | str] = (Divergence.RKL, Divergence.FKL),
    loss: bool = True,
    max_len: int = 512,
    shard: Shard = Shard.STRIDED,
) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """Generate, gather and score. Returns (prediction rows, results) on rank 0 and None on the other ranks.

    Every rank must call it (it gathers); with no process group it is a plain single-process evaluation.
    """
    decoding.validate()
    rank, world = (
        (torch.distributed.get_rank(), torch.distributed.get_world_size())
        if (torch.distributed.is_available() and torch.distributed.is_initialized())
        else (0, 1)
    )
    prompts = render_prompts(samples, tokenizer)
    prompt_ids = encode_prompts(tokenizer, prompts, max_prompt_len)
    mine = shard_indices(len(samples), rank, world, shard)
    seed_list: list[int | None] = [None] if decoding.greedy else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("sampling needs at least one seed")
    was_training = model.training
    model.eval()  # dropout off, whoever called us
    try:
        t0 = time.perf_counter()
        progress = GenerationProgress(len(mine) * len(seed_list), enabled=rank == 0)  # rank 0's shard stands for all
        try:
            local = {
                s: generate_texts(model, tokenizer, prompt_ids, mine, decoding, s, batch_size, progress)
                for s in seed_list
            }
        finally:
            progress.close()
        gen_s = time.perf_counter() - t0
        loss_sums = None
        if loss:
            scored = [i for i in mine if samples[i].references]
            refs = [samples[i].references[0] for i in scored]
            pairs = tokenize_pairs(tokenizer, [prompts[i] for i in scored], refs, max_prompt_len, max_len)
            loss_sums = eval_loss_sums(model, pairs, tokenizer.pad_token_id, teacher, divergences, batch_size)
    finally:
        model.train(was_training)
    gathered = all_gather({"indices": mine, "texts": local, "loss": loss_sums, "gen_s": gen_s}, world)
    if rank != 0:
        return None
    texts: dict[int | None, list[str]] = {s: [""] * len(samples) for s in seed_list}
    scaffolds = [response_scaffold(s.record, s.fmt, tokenizer) for s in samples]  # chat templates' <think> etc.
    for part in gathered:
        for s in seed_list:
            for i, text in zip(part["indices"], part["texts"][s], strict=True):
                texts[s][i] = strip_scaffold(text, scaffolds[i])
    scores = [[score_sample(texts[s][i], samples[i].references) for i in range(len(samples))] for s in seed_list]
    labels = [GREEDY_SEED_LABEL if s is None else s for s in seed_list]
    rows = []
    for i, sample in enumerate(samples):
        rows.append(
            {
                "index": i,
                "task": sample.task,
                "source": sample.where,
                "prompt": prompts[i],
                "references": sample.references,
                "seeds": labels,
                "predictions": [texts[s][i] for s in seed_list],
                "scores": [scores[k][i] for k in range(len(seed_list))],
            }
        )
    results: dict[str, Any] = aggregate(scores, [s.task for s in samples])
    results["metric_labels"] = dict(METRIC_LABELS)  # what each number is, with its scale
    results["decoding"] = {**asdict(decoding), "seeds": labels, "max_prompt_len": max_prompt_len}
    results["world_size"] = world
    results["generation_seconds_per_rank"] = [part["gen_s"] for part in gathered]
    if loss:
        totals: dict[str, float] = {}
        for part in gathered:
            for k, v in part["loss"].items():
                totals[k] = totals.get(k, 0.0) + v
        results["eval_loss"] = finish_eval_loss(totals)
    return rows, results


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_outputs(out_dir: str, rows: Sequence[dict[str, Any]], results: dict[str, Any]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    _write_atomic(
        os.path.join(out_dir, "predictions.jsonl"), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    _write_atomic(os.path.join(out_dir, "results.json"), json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def load_model(path: str, dtype: DType, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    torch_dtype = {DType.FP32: torch.float32, DType.BF16: torch.bfloat16}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot load a model from {path!r}: {exc}") from None
    return model.to(device).eval()


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot load a tokenizer from {path!r}: {exc}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Generate and score ROUGE-L / exact match on an evaluation set.")
    p.add_argument("--model", required=True, help="an exported HF model directory")
    p.add_argument("--data", required=True, help="a .jsonl or .json evaluation file")
    p.add_argument("--format", default=EvalFormat.AUTO.value, choices=[f.value for f in EvalFormat])
    p.add_argument("--out", required=True, help="directory for predictions.jsonl and results.json")
    p.add_argument("--tokenizer", default=None, help="defaults to --model")
    p.add_argument("--teacher", default=None, help="an HF model; adds the KD divergences to the eval loss")
    p.add_argument("--divergences", nargs="+", default=["rkl", "fkl"], choices=[d.value for d in Divergence])
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-prompt-len", type=int, default=256)
    p.add_argument("--max-len", type=int, default=512, help="prompt + response length for the eval loss")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--shard", default=Shard.STRIDED.value, choices=[s.value for s in Shard])
    p.add_argument("--no-loss", action="store_true", help="skip the eval loss (CE, and KD with --teacher)")
    p.add_argument("--dtype", default=DType.FP32.value, choices=[d.value for d in DType])
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def eval_main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """The `adakd-eval` entry point; returns the results dict on rank 0."""
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}")
    rank, world, owned = init_eval_dist()
    stages = SetupStages(enabled=rank == 0, prefix="adakd-eval")
    try:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        try:
            samples, fmt = load_eval_samples(args.data, args.format, args.max_samples)
        except EvalFormatError as exc:  # bad input: one line (rank 0) and exit code 2, before any model is loaded
            if rank == 0:
                print(f"adakd-eval: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_BAD_INPUT) from None
        stages.done(Stage.DATA, describe_samples(args.data, samples, fmt, args.format))
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        stages.done(Stage.TOKENIZER, f"{len(tokenizer)} tokens from {args.tokenizer or args.model}")
        model = load_model(args.model, DType(args.dtype), device)
        stages.done(Stage.STUDENT, args.model)
        teacher = load_model(args.teacher, DType(args.dtype), device) if args.teacher else None
        if teacher is not None:
            stages.done(Stage.TEACHER, args.teacher)
        decoding = Decoding(args.greedy, args.temperature, args.top_p, args.max_new_tokens)
        out = run_eval(
            model, tokenizer, samples, decoding, args.seeds, args.batch_size, args.max_prompt_len, teacher,
            args.divergences, not args.no_loss, args.max_len, Shard(args.shard),
        )  # fmt: skip
        if out is None:
            return None
        rows, results = out
        results.update({"model": args.model, "teacher": args.teacher, "data": args.data, "format": fmt.value})
        write_outputs(args.out, rows, results)
        print(f"{summary_line(results)} -> {args.out}", flush=True)
        return results
    finally:
        if owned:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def console_main(argv: list[str] | None = None) -> int:
    """`adakd-eval`: a console script needs an exit code, not the results dict."""
    eval_main(argv)
    return 0
