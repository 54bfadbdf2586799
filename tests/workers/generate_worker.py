"""Student generation under the real ZeRO-3 recipe, for tests/data/test_student_generate.py.

usage: generate_worker.py RUN.yaml REPORT_DIR   (the launcher's --local_rank is ignored)
With `policy.data_policy: gkd` and `gkd_alpha: 1` it writes, on rank 0:
- policy.json: {dataset index: [input_ids, labels, dataset prompt]} of the responses that the recipe's own response
  hook trained on at step STEP (epoch 0, micro-step 0), gathered from every rank;
- uneven.json: {global index: [prompt, input_ids, labels]} of prompts that need very different numbers of new tokens
  (rank 0 of 2 holds the long prompts, which leave 2 new tokens; rank 1 the short ones), and the number of student
  forwards each rank ran, to check that the ranks stayed in lockstep.
"""

import json
import sys
from pathlib import Path

import torch

STEP = 3
UNEVEN_BASE = 100  # global indices of the uneven prompts: UNEVEN_BASE .. UNEVEN_BASE + 7
UNEVEN_N = 8


def uneven_prompt(index: int, max_len: int, vocab: int) -> list[int]:
    """Prompt of one global index: the first half long (2 tokens of room), the second half 3 tokens long."""
    gen = torch.Generator().manual_seed(index)
    n = max_len - 2 if index - UNEVEN_BASE < UNEVEN_N // 2 else 3
    return [1] + torch.randint(3, vocab, (n - 1,), generator=gen).tolist()


def distillm_steps(recipe, steps: int) -> list:
    """[source, rows (input_ids, labels), buffer length] per step of a distillm provider on this rank."""
    import dataclasses

    from adakd_ds.config.schema import DataPolicy
    from adakd_ds.engine.policy.responses import ResponseProvider

    cfg = recipe.cfg
    policy = dataclasses.replace(
        cfg.policy, data_policy=DataPolicy.DISTILLM, init_threshold=1.0, capacity=2 * cfg.train.micro_batch
    )
    provider = ResponseProvider(
        dataclasses.replace(cfg, policy=policy), recipe.tokenizer, recipe.collate, recipe.sampler, recipe.rank, steps
    )
    log = []
    for step in range(steps):
        micro = step % recipe.sampler.steps_per_epoch
        (out,) = provider.step_batches(recipe.engine, step, 0, micro, [recipe._micro_batch(0, micro)])
        lengths = out["attention_mask"].sum(-1).tolist()
        rows = [[out["input_ids"][r, :n].tolist(), out["labels"][r, :n].tolist()] for r, n in enumerate(lengths)]
        log.append([provider.last_source.value, rows, len(provider.buffer)])
    return log


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    cfg_path, report = args[0], Path(args[1])
    import torch.distributed as dist

    from adakd_ds.config.load import load_config
    from adakd_ds.engine.models import unwrap
    from adakd_ds.engine.policy.student_generate import generate_samples
    from adakd_ds.engine.recipe import DistillRecipe

    recipe = DistillRecipe(load_config(cfg_path))
    try:
        recipe.setup()
        rank, world, cfg = recipe.rank, recipe.world, recipe.cfg
        # 1. the recipe's response hook on this rank's dataset micro-batch
        batch = recipe._micro_batch(0, 0)
        indices = recipe.sampler.rank_indices(0, 0)
        (out,) = recipe.responses.step_batches(recipe.engine, STEP, 0, 0, [batch])
        rows = {}
        for r, idx in enumerate(indices):
            n = int(out["attention_mask"][r].sum())
            prompt_len = int((batch["labels"][r] == -100).long().argmin())
            rows[idx] = [
                out["input_ids"][r, :n].tolist(),
                out["labels"][r, :n].tolist(),
                batch["input_ids"][r, :prompt_len].tolist(),
            ]
        # 2. distillm with phi = 1 and a buffer of 2 micro-batches: which source each step took, what it trained on
        replay_log = distillm_steps(recipe, steps=8)
        # 3. uneven budgets, counting this rank's student forwards
        student = unwrap(recipe.engine)
        calls = [0]
        hook = student.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        per_rank = UNEVEN_N // world
        mine = list(range(UNEVEN_BASE + rank * per_rank, UNEVEN_BASE + (rank + 1) * per_rank))
        vocab = len(recipe.tokenizer)
        prompts = [uneven_prompt(i, cfg.data.max_len, vocab) for i in mine]
        fake = recipe.collate([{"input_ids": p + [5], "labels": [-100] * len(p) + [5]} for p in prompts])
        recipe.engine.eval()
        samples, _ = generate_samples(
            student, fake, mine, cfg.train.seed, STEP, cfg.data.max_len, recipe.collate.pad_id, {2}, 2, vocab
        )
        hook.remove()
        uneven = {i: [p, s[0], s[1]] for i, p, s in zip(mine, prompts, samples, strict=True)}
        gathered = [None] * world
        dist.all_gather_object(
            gathered, {"policy": rows, "uneven": uneven, "forwards": calls[0], "distillm": replay_log}
        )
        if rank == 0:
            merged = {"policy": {}, "uneven": {}, "forwards": [], "distillm": []}
            for part in gathered:
                merged["policy"].update(part["policy"])
                merged["uneven"].update(part["uneven"])
                merged["forwards"].append(part["forwards"])
                merged["distillm"].append(part["distillm"])
            (report / "result.json").write_text(json.dumps(merged))
        return 0
    finally:
        recipe.close()


if __name__ == "__main__":
    sys.exit(main())
