"""Runs the real DistillRecipe under a launcher and reports what a test cannot see from outside the ranks.

usage: distill_probe.py RUN.yaml REPORT_DIR   (the launcher's --local_rank is ignored)
Writes REPORT_DIR/rank{r}.json: each parameter's local share of the student and the teacher, whether the teacher's
gathered weights still equal its file after training, and (rank 0) the engine's logits on a fixed batch.
"""

import json
import sys
from pathlib import Path

import torch


def shares(module: torch.nn.Module) -> dict[str, float]:
    return {name: p.ds_tensor.numel() / p.ds_numel for name, p in module.named_parameters()}


def teacher_matches_disk(module: torch.nn.Module, teacher_dir: str) -> bool:
    import deepspeed
    from safetensors.torch import load_file

    disk = load_file(str(Path(teacher_dir) / "model.safetensors"))
    same = True
    for name, p in module.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):
            same &= name in disk and torch.equal(p.data.cpu(), disk[name].to(p.dtype))
    return bool(same)


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    cfg_path, report = args[0], Path(args[1])
    from adakd_ds.config.load import load_config
    from adakd_ds.engine.recipe import DistillRecipe

    recipe = DistillRecipe(load_config(cfg_path))
    try:
        recipe.setup()
        out = {"student_share": shares(recipe.engine.module), "teacher_share": shares(recipe.teacher.module)}
        out["teacher_equal_before"] = teacher_matches_disk(recipe.teacher.module, recipe.cfg.model.teacher)
        out["exit_code"] = recipe.train()
        out["teacher_equal_after"] = teacher_matches_disk(recipe.teacher.module, recipe.cfg.model.teacher)
        recipe.engine.eval()
        ids = torch.arange(3, 23).remainder(150).unsqueeze(0) + 3
        with torch.no_grad():
            logits = recipe.engine(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        if recipe.rank == 0:
            torch.save({"input_ids": ids, "logits": logits}, report / "engine_logits.pt")
        (report / f"rank{recipe.rank}.json").write_text(json.dumps(out))
        return 0
    finally:
        recipe.close()


if __name__ == "__main__":
    sys.exit(main())
