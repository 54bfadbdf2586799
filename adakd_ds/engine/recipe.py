"""The distillation recipe: a ZeRO-3 student learns from a ZeRO-3 inference teacher through the AdaKD loss.

Read it top to bottom: setup() builds the data, the student, the teacher and the loss, and resumes; train() runs
optimizer steps of `grad_accum` micro-steps; save_checkpoint() writes a crash-safe checkpoint. Every rank runs every
forward and every collective in the same order, including a rank whose micro-batch has no response token.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import torch

from adakd_ds.checkpoint.export import export_hf
from adakd_ds.checkpoint.manager import CheckpointError, CheckpointManager, read_marker, resolve_resume
from adakd_ds.checkpoint.reshard import load_resharded
from adakd_ds.checkpoint.rollback import set_aside_newer
from adakd_ds.config.load import ConfigError, config_to_dict, resolve_shipped_path, save_config
from adakd_ds.config.schema import FusedHead, LossConfig, Mode, RunConfig
from adakd_ds.data import Collator, GlobalBatchSampler, build_dataset, dataset_fingerprint, tokenizer_fingerprint
from adakd_ds.data.teacher_cache import TeacherCache, batch_rows, open_for_run
from adakd_ds.engine.continuation import check_continuation
from adakd_ds.engine.distributed import init_distributed, seed_everything, shutdown_distributed
from adakd_ds.engine.ds_config import derive_teacher_config, fill_auto, load_ds_config
from adakd_ds.engine.guard.launcher_watch import gone_launcher_note, launcher_ancestors, watch_launchers
from adakd_ds.engine.guard.nan_guard import NanGuard
from adakd_ds.engine.guard.preemption import EXIT_PREEMPTED, PreemptionWatch
from adakd_ds.engine.guard.shared_dir import check_output_dir_shared
from adakd_ds.engine.guard.tokenizer_match import check_teacher_tokenizer
from adakd_ds.engine.history_file import JsonlHistory, truncate_history
from adakd_ds.engine.metrics import MetricsLogger, scalars_from
from adakd_ds.engine.models import (
    build_student,
    build_teacher,
    check_vocab,
    load_tokenizer,
    tokenizer_source,
    unwrap,
    vocab_sizes,
)
from adakd_ds.engine.optim_resume import apply_optimizer_settings
from adakd_ds.engine.policy.heldout import HeldoutEval
from adakd_ds.engine.policy.responses import ResponseProvider
from adakd_ds.engine.run_summary import run_summary
from adakd_ds.engine.schedule import build_scheduler
from adakd_ds.eval.hidden_forward import call_loss, model_output, resolve_fused_head
from adakd_ds.eval.progress import SetupStages, Stage
from adakd_ds.loss.adakd_loss import AdaKDLoss
from adakd_ds.loss.cached_target import CachedTarget
from adakd_ds.loss.dist_stats import all_reduce_sum
from adakd_ds.loss.latf import top_count
from adakd_ds.loss.loss_stats import LossStats


class DistillRecipe:
    """One run. `setup()` then `train()`, which returns the process exit code."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.engine: Any = None
        self.teacher: Any = None
        self.cache: TeacherCache | None = None  # model.teacher_cache: the offline teacher
        self.global_step = 0
        self.consumed_micro = 0  # micro-steps consumed over all epochs, at this run's global micro-batch size
        self.last_saved_step = -1
        self.metrics_note: str | None = None  # printed when training starts (resume / re-shard)
        self.eval_scalars: dict[str, float] = {}  # the held-out numbers of this step, if it evaluated

    # ------------------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        cfg.validate()
        cfg.deepspeed.student = resolve_shipped_path(cfg.deepspeed.student)
        if cfg.deepspeed.teacher:
            cfg.deepspeed.teacher = resolve_shipped_path(cfg.deepspeed.teacher)
        info = init_distributed()
        self.rank, self.world, self.device = info.rank, info.world_size, info.device
        self.out = Path(cfg.output.dir)
        self._setup_output_dir()
        check_output_dir_shared(self.out, self.rank)  # one dir on every node, before any model is built
        self.resume_dir = resolve_resume(cfg.resume, self.out)  # a bad --resume fails before any heavy work
        seed_everything(cfg.train.seed)
        self.stages = SetupStages(enabled=self.rank == 0)
        self.tokenizer = load_tokenizer(cfg.model)
        if cfg.model.teacher_cache:  # the cache's tokenizer and data must be this run's, before anything heavy
            self.cache = open_for_run(cfg.model.teacher_cache, self.tokenizer, cfg.data)
        elif cfg.mode is Mode.DISTILL:  # one shared tokenizer, checked before any model is built
            self.stages.note(check_teacher_tokenizer(cfg.model.teacher, self.tokenizer, tokenizer_source(cfg.model)))
        self.stages.done(Stage.TOKENIZER, f"{len(self.tokenizer)} tokens from {tokenizer_source(cfg.model)}")
        self._setup_data()
        self.stages.done(Stage.DATA, f"{len(self.dataset)} samples, {self.total_steps} optimizer steps")
        self.heldout = HeldoutEval(cfg, self.tokenizer, self.collate.pad_id, self.rank, self.world, _barrier)
        if self.resume_dir is not None:
            check_continuation(self.resume_dir, self.cfg, self.data_hash, self.global_micro * self.cfg.train.grad_accum)
        ds_config = fill_auto(load_ds_config(cfg.deepspeed.student), cfg, self.world, source=cfg.deepspeed.student)
        self._setup_model(ds_config)
        self.stages.done(Stage.STUDENT, "ZeRO-3 engine with optimizer")
        if cfg.mode is Mode.DISTILL and self.cache is None:
            self._setup_teacher_model(ds_config)
            self.stages.done(Stage.TEACHER, "ZeRO-3 inference engine")
        elif self.cache is not None:
            self.stages.done(Stage.TEACHER, f"cached top-{self.cache.k} from {cfg.model.teacher_cache}")
        self.vocab = check_vocab(unwrap(self.engine), self.teacher, self.tokenizer)
        if self.cache is not None and vocab_sizes(self.engine)[1] != self.cache.vocab:
            raise ConfigError(
                f"model.teacher_cache {cfg.model.teacher_cache}: cached over a {self.cache.vocab}-id vocab, "
                f"the student's logits have {vocab_sizes(self.engine)[1]}"
            )
        self.stages.note(self.vocab.note)
        self.fused_head = resolve_fused_head(cfg.loss.fused_head, self.engine, self.teacher)  # no [T, V] logits
        if self.fused_head and self.vocab.student_width is not None:
            if cfg.loss.fused_head is FusedHead.TRUE:
                raise ConfigError("loss.fused_head: true does not support a student vocab padded beyond the teacher's")
            self.fused_head = False  # the padded student's extra logits are sliced off, which needs its logits
            self.stages.note("loss.fused_head: auto -> unfused (a padded student's logits are sliced)")
        self.loss_fn = AdaKDLoss(
            cfg.loss if cfg.mode is Mode.DISTILL else _sft_loss(cfg), self.total_steps, cfg.train.seed
        )
        if cfg.mode is Mode.DISTILL:
            self.stages.note(self.loss_fn.kernel_note)  # loss.kernel: compiled or eager, said once
        self.ckpt = CheckpointManager(self.out, cfg.output.keep_last)
        self.responses = ResponseProvider(cfg, self.tokenizer, self.collate, self.sampler, self.rank, self.total_steps)
        if self.resume_dir is not None:
            self._load_checkpoint(self.resume_dir)
            self._after_resume(self.resume_dir)
            self.stages.done(Stage.RESUME, self.metrics_note or "")
        if self.rank == 0:
            save_config(cfg, str(self.out / "config.yaml"), omit=("loss",) if cfg.mode is Mode.SFT else ())
        tb_dir = str(self.out / "tensorboard") if cfg.output.tensorboard else None
        self.metrics = MetricsLogger(tb_dir, self.total_steps, self.global_step, enabled=self.rank == 0)
        self.preemption = PreemptionWatch().install()
        watch_launchers(self.preemption.request)  # a launcher that dies takes the preemption path, not orphans
        self.launchers = launcher_ancestors()
        self.nan_guard = NanGuard(cfg.train.max_bad_steps)
        # per-step loss and r, also appended to <output.dir>/history.jsonl by rank 0 (the tests read it)
        if self.rank == 0:  # the steps after the checkpoint are trained again: their old lines go
            truncate_history(self.out / "history.jsonl", self.global_step)
        self.history = JsonlHistory(self.out / "history.jsonl" if self.rank == 0 else None)

    def _setup_output_dir(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write_probe_{self.rank}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ValueError(f"output.dir {self.out}: not writable ({exc.strerror})") from None

    def _setup_data(self) -> None:
        cfg = self.cfg
        # rank 0 tokenises and fills the datasets cache first; the others then read it instead of racing on it
        if self.rank != 0:
            _barrier()
        try:
            self.dataset = build_dataset(cfg.data, self.tokenizer)
        finally:  # even when it fails: the others then fail alike, and close()'s barrier pairs with theirs
            if self.rank == 0:
                _barrier()
        self.collate = Collator.for_tokenizer(self.tokenizer)
        self.global_micro = self.world * cfg.train.micro_batch
        self.sampler = GlobalBatchSampler(
            len(self.dataset), self.global_micro, cfg.train.micro_batch, self.rank, cfg.train.seed
        )
        self.steps_per_epoch = self.sampler.steps_per_epoch // cfg.train.grad_accum  # optimizer steps
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{cfg.data.source}: {len(self.dataset)} samples give no full optimizer step of "
                f"{self.global_micro * cfg.train.grad_accum} samples (world x micro_batch x grad_accum)"
            )
        epochs_total = cfg.train.epochs * self.steps_per_epoch
        self.total_steps = cfg.train.max_steps if cfg.train.max_steps > 0 else epochs_total
        self.data_hash = f"{dataset_fingerprint(cfg.data)}:{tokenizer_fingerprint(self.tokenizer)}"

    def _setup_model(self, ds_config: dict[str, Any]) -> None:
        """The student is born partitioned under zero.Init, then wrapped with its optimizer and lr schedule."""
        import deepspeed

        student = build_student(self.cfg.model, ds_config, self.cfg.train.dtype)
        self.engine, *_ = deepspeed.initialize(
            model=student,
            model_parameters=[p for p in student.parameters() if p.requires_grad],
            config=ds_config,
            lr_scheduler=lambda opt: build_scheduler(opt, self.total_steps, self.cfg.train),
        )
        self.engine.train()

    def _setup_teacher_model(self, student_ds: dict[str, Any]) -> None:
        """A second, optimizer-free ZeRO-3 engine in eval mode; its weights never change."""
        teacher_ds = derive_teacher_config(student_ds, self.cfg, self.world)
        self.teacher = build_teacher(self.cfg.model, teacher_ds, self.cfg.train.dtype)

    # ----------------------------------------------------------------------------------------------------- resume
    def _load_checkpoint(self, tag_dir: Path) -> None:
        saved_world = read_marker(tag_dir).get("world_size")
        if saved_world == self.world:
            state = CheckpointManager.load(self.engine, tag_dir)
        else:  # DeepSpeed's universal checkpoint: re-partitions weights AND optimizer moments for this world size
            self.metrics_note = f"re-sharding {tag_dir} from {saved_world} to {self.world} ranks"
            state = load_resharded(self.engine, tag_dir)
        self.global_step = int(state["global_step"])
        self.last_saved_step = self.global_step
        epoch, samples = int(state["epoch"]), int(state["samples_in_epoch"])
        if samples % self.global_micro:
            raise CheckpointError(
                f"{tag_dir}: {samples} samples consumed in epoch {epoch} is not a multiple of this run's global "
                f"micro-batch {self.global_micro}"
            )
        self.consumed_micro = epoch * self.sampler.steps_per_epoch + samples // self.global_micro
        self.loss_fn.load_state_from_checkpoint(state["loss"])
        self.responses.load_state_dict(state.get("policy"), same_world=saved_world == self.world)
        note = f"resumed from {tag_dir} at step {self.global_step}"
        self.metrics_note = f"{self.metrics_note}; {note}" if self.metrics_note else note

    def _after_resume(self, tag_dir: Path) -> None:
        """Forced optimizer changes take effect; a rollback sets the abandoned newer checkpoints aside (rank 0)."""
        saved = json.loads((tag_dir / "trainer_state.json").read_text(encoding="utf-8")).get("config", {})
        notes = [apply_optimizer_settings(self.engine, self.cfg, saved.get("train", {}))]
        if self.rank == 0:
            notes.append(set_aside_newer(tag_dir, self.out / "checkpoints"))
        for note in filter(None, notes):
            self.metrics_note = f"{self.metrics_note}; {note}" if self.metrics_note else note

    # --------------------------------------------------------------------------------------------------- one step
    def _step_totals(self, batches: list[dict[str, torch.Tensor]]) -> tuple[tuple[int, int], float]:
        """Global (k, N) over the optimizer step's micro-batches, known from the labels before any forward."""
        valid = [float((b["labels"][:, 1:] != -100).sum()) for b in batches]
        tokens = float(sum(b["attention_mask"].sum() for b in batches))
        local = torch.tensor([*valid, tokens], dtype=torch.float64)
        counts = all_reduce_sum(local)
        n_micro = [int(c) for c in counts[:-1]]
        cfg = self.loss_fn.cfg
        use_latf = cfg.use_latf and cfg.kd_ratio > 0
        k_micro = [top_count(n, self.loss_fn.controller.ratio) if use_latf and n else n for n in n_micro]
        return (max(sum(k_micro), 1), max(sum(n_micro), 1)), float(counts[-1])

    def _micro_batch(self, epoch: int, micro_step: int) -> dict[str, torch.Tensor]:
        indices = self.sampler.rank_indices(epoch, micro_step)
        batch = self.collate([self.dataset[i] for i in indices])
        batch["sample_index"] = torch.as_tensor(indices, dtype=torch.long)  # the offline teacher's rows
        return batch

    def _loss_step(self, batch: dict[str, torch.Tensor], totals: tuple[int, int]) -> LossStats:
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        labels = batch["labels"].to(self.device)
        targets = torch.full_like(labels, -100)
        targets[:, :-1] = labels[:, 1:]  # logits at t predict token t + 1
        teacher_logits = None  # logits, or hidden states + head (HeadInput) with the fused head
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = model_output(self.teacher, input_ids, attention_mask, self.fused_head)
        elif self.cache is not None:
            ids, logp, tail = batch_rows(self.cache, batch["sample_index"].tolist(), targets.cpu())
            teacher_logits = CachedTarget(
                ids.to(self.device), logp.to(self.device), tail.to(self.device), self.cache.has_tail
            )
        student_logits = model_output(self.engine, input_ids, attention_mask, self.fused_head)
        if self.vocab.student_width is not None:  # a padded student: ids past the teacher's are no tokens (unfused)
            student_logits = student_logits[..., : self.vocab.student_width]
        guarded = functools.partial(self.nan_guard.guarded_loss, self.loss_fn, self.global_step + 1)
        loss, stats = call_loss(  # = guarded(...); a fused student's loss runs as its lm_head's forward
            self.engine,
            guarded,
            student_logits,
            teacher_logits,
            targets,
            step_totals=totals,
            accum=self.cfg.train.grad_accum,
        )
        self.engine.backward(loss)
        self.engine.step()
        return stats

    # ------------------------------------------------------------------------------------------------------ train
    def train(self) -> int:
        cfg = self.cfg
        accum = cfg.train.grad_accum
        if self.metrics_note:
            self.metrics.write(self.metrics_note)
        exit_code = 0
        while self.global_step < self.total_steps:
            epoch, micro = divmod(self.consumed_micro, self.sampler.steps_per_epoch)
            if micro + accum > self.sampler.steps_per_epoch:  # the epoch's tail cannot fill an optimizer step
                self.consumed_micro = (epoch + 1) * self.sampler.steps_per_epoch
                continue
            t0 = time.perf_counter()
            batches = [self._micro_batch(epoch, micro + j) for j in range(accum)]
            batches = self.responses.step_batches(self.engine, self.global_step, epoch, micro, batches)
            totals, step_tokens = self._step_totals(batches)
            stats = [self._loss_step(b, totals) for b in batches]
            self.consumed_micro += accum
            self.global_step += 1
            skipped = self.nan_guard.end_step(self.global_step, self.engine.get_global_grad_norm(), stats)
            if skipped:  # DeepSpeed made no update; LATF does not see the step either
                self.metrics.write(skipped)
                self.history.append({"step": self.global_step, "skipped": True, "lr": float(self.engine.get_lr()[0])})
            else:
                step_loss = sum(s.step_part for s in stats)
                if self.loss_fn.cfg.use_latf and self.loss_fn.cfg.kd_ratio > 0:
                    self.loss_fn.controller.update(step_loss)
                self._heldout_eval()
                self._log(stats[-1], step_loss, step_tokens, time.perf_counter() - t0)
            if cfg.output.save_interval > 0 and self.global_step % cfg.output.save_interval == 0:
                self.save_checkpoint()
            self.preemption.note_step(self.global_step, self.rank)
            if self.preemption.agreed():
                self.metrics.write(f"preemption requested ({self.preemption.signal_name or 'another rank'}): saving")
                if self.last_saved_step != self.global_step:
                    self.save_checkpoint()
                exit_code = EXIT_PREEMPTED
                break
        if exit_code == 0:
            if self.last_saved_step != self.global_step:
                self.save_checkpoint()
            if cfg.output.export:
                self.export(str(self.out / "export"))
        self.metrics.close()
        if self.rank == 0:  # after the bar is closed, so the bar is not drawn again below it
            print(run_summary(cfg, exit_code, self.global_step), flush=True)
            note = gone_launcher_note(self.launchers, wait=3.0) if exit_code == EXIT_PREEMPTED else None
            if note:
                print(note, flush=True)
        return exit_code

    def _log(self, stats: LossStats, step_loss: float, tokens: float, seconds: float) -> None:
        grad_norm = self.engine.get_global_grad_norm()
        kd = self.cfg.mode is not Mode.SFT  # SFT: r, tau and difficulty are constants, so their tags are left out
        scalars = scalars_from(stats, float(self.engine.get_lr()[0]), grad_norm, tokens / seconds, adakd_tags=kd)
        scalars["loss/step"] = step_loss
        scalars.update({**self.responses.scalars(), **self.eval_scalars})
        write = self.global_step % self.cfg.output.log_interval == 0 or self.global_step == self.total_steps
        self.metrics.step(self.global_step, scalars, stats if kd else None, write=write)
        self.history.append(
            {
                "step": self.global_step,
                "loss": step_loss,
                "ratio": self.loss_fn.controller.ratio,
                "lr": float(self.engine.get_lr()[0]),
                "tokens": tokens,
                "seconds": seconds,
                **{k: v for k, v in scalars.items() if k.startswith(("policy/", "eval/", "idts/tau"))},
            }
        )

    def _heldout_eval(self) -> None:
        """data.eval_source every train.eval_interval steps and at the end; distillm's threshold reads it."""
        self.eval_scalars = {}
        if self.heldout.due(self.global_step, self.total_steps):
            self.engine.eval()
            result = self.heldout.run(unwrap(self.engine), unwrap(self.teacher) if self.teacher else None)
            self.engine.train()
            self.responses.observe_validation(result)
            self.eval_scalars = {f"eval/{k}": v for k, v in result.items()}

    # ---------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Sharded ZeRO-3 states + the training state; the teacher is never saved."""
        self.nan_guard.check_weights(self.engine, self.global_step)  # never a checkpoint of non-finite weights
        epoch, micro = divmod(self.consumed_micro, self.sampler.steps_per_epoch)
        client_state = {
            "global_step": self.global_step,
            "epoch": epoch,
            "samples_in_epoch": micro * self.global_micro,
            "global_batch": self.global_micro * self.cfg.train.grad_accum,
            "loss": self.loss_fn.state_dict_for_checkpoint(),
            "policy": self.responses.state_dict(),
            "config": config_to_dict(self.cfg),
            "data_hash": self.data_hash,
            "world_size": self.world,
        }
        path = self.ckpt.save(self.engine, self.global_step, client_state, write_extras=self._write_hf_metadata)
        self.last_saved_step = self.global_step
        return path

    def _write_hf_metadata(self, tag_dir: Path) -> None:
        unwrap(self.engine).config.save_pretrained(tag_dir)
        self.tokenizer.save_pretrained(tag_dir)

    def export(self, out_dir: str) -> str:
        """A consolidated HF model directory (all ranks gather; rank 0 writes)."""
        src = self.cfg.model.student or self.cfg.model.student_config
        return export_hf(self.engine, out_dir, src, self.tokenizer)

    def close(self) -> None:
        if getattr(self, "preemption", None) is not None:
            self.preemption.uninstall()
        holders = {"engine": self.engine, "teacher": self.teacher}
        self.engine = self.teacher = None
        if hasattr(self, "loss_fn"):
            del self.loss_fn
        shutdown_distributed(holders)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _sft_loss(cfg: RunConfig) -> LossConfig:
    """mode=sft trains on labels alone: the same loss module with kd_ratio 0 (no teacher, no AdaKD)."""
    import dataclasses

    return dataclasses.replace(cfg.loss, kd_ratio=0.0, adakd=False)


__all__ = ["EXIT_PREEMPTED", "DistillRecipe"]
