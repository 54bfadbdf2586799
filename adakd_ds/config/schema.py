"""The run configuration: one dataclass tree is the single source of truth, with an explicit Enum for every choice.

A YAML/JSON file and ``--section.key value`` CLI overrides both fill it (load.py); an unknown key is an error that
names the key and where it came from, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from adakd_ds.config.ranges import ranges_first


class Mode(str, enum.Enum):
    SFT = "sft"  # labels only: teacher fine-tuning and the SFT baseline
    DISTILL = "distill"  # KD from the teacher (AdaKD or a plain divergence), optionally mixed with CE


class DType(str, enum.Enum):
    FP32 = "fp32"  # full precision
    BF16 = "bf16"  # DeepSpeed bf16 mixed precision (fp32 master weights)


class DataFormat(str, enum.Enum):
    AUTO = "auto"  # detected from the first record's keys
    INSTRUCTION = "instruction"  # {instruction, input|context, output|response}
    PROMPT_RESPONSE = "prompt_response"  # {prompt, response|completion}
    MESSAGES = "messages"  # {messages: [{role, content}]} through the chat template


class Divergence(str, enum.Enum):
    FKL = "fkl"  # forward KL(p || q)
    RKL = "rkl"  # reverse KL(q || p), the paper's base
    JSD = "jsd"  # generalised Jensen-Shannon, weight jsd_beta
    TVD = "tvd"  # total variation
    SFKL = "sfkl"  # skewed forward KL, skew_lambda
    SRKL = "srkl"  # skewed reverse KL, skew_lambda (DistiLLM)
    AB = "ab"  # alpha-beta divergence, ab_alpha and ab_beta (ABKD)


class Indicator(str, enum.Enum):
    HELLINGER = "hellinger"  # the paper's
    FKL = "fkl"
    RKL = "rkl"
    JSD = "jsd"
    CE = "ce"  # the student's label cross-entropy
    ENTROPY = "entropy"  # the teacher's entropy
    RANDOM = "random"  # a seeded random score (an ablation)


class IdtsGrad(str, enum.Enum):
    """Whether the IDTS temperatures carry gradient (issue 21)."""

    DETACHED = "detached"  # the paper's text: tau (the score, the median) is a constant of the loss
    THROUGH = "through"  # the authors' released code: score, median and tau stay in the graph (Hellinger only)


class IdtsWeight(str, enum.Enum):
    """The per-token weight w_i of the IDTS loss, sum_i w_i * d_i(tau_i) / k (issue 21)."""

    TAU2 = "tau2"  # the paper and the authors' code: w_i = tau_i^2
    NONE = "none"  # w_i = 1
    NORMALIZED = "normalized"  # ours: tau_i^2 / mean over the selected tokens (global) of tau^2, so mean w = 1


class MedianPool(str, enum.Enum):
    """Which scores the IDTS median is taken over, globally (issue 21)."""

    SELECTED = "selected"  # the paper: the tokens LATF kept
    VALID = "valid"  # every valid token of the global micro-batch


class DataPolicy(str, enum.Enum):
    DATASET = "dataset"  # the dataset's responses (supervised KD)
    GKD = "gkd"  # on-policy: with probability gkd_alpha per step, the current student's own samples
    DISTILLM = "distillm"  # adaptive off-policy: fresh student samples or a replay buffer, gated by a threshold phi


class ValMetric(str, enum.Enum):
    CE = "ce"  # the held-out label cross-entropy (eval/ce)
    KD = "kd"  # the held-out KD divergence to the teacher (eval/kd)


class FusedHead(str, enum.Enum):
    AUTO = "auto"  # fused where the model has a standard lm_head (eval/hidden_forward.FUSED_HEAD_FAMILIES)
    TRUE = "true"  # fused; a model outside those families is an error
    FALSE = "false"  # the models materialise their [T, V] logits


class LossKernel(str, enum.Enum):
    """How the loss's per-chunk work runs (adakd_ds/loss/compiled.py)."""

    AUTO = "auto"  # torch.compile where a compiler works (one setup line says which), else eager
    COMPILED = "compiled"  # torch.compile; a compile failure still falls back to eager with one line, never a crash
    EAGER = "eager"  # the reference: plain PyTorch ops, bit-identical to the loss before compiled kernels existed


class Schedule(str, enum.Enum):
    COSINE = "cosine"  # linear warm-up, then cosine to min_lr_ratio * lr
    CONSTANT = "constant"  # linear warm-up, then flat


@dataclass
class ModelConfig:
    teacher: str | None = None  # HF path or directory; required for mode=distill
    student: str | None = None  # HF path or directory to start from
    student_config: str | None = None  # HF config (dir or config.json) to build a fresh student from
    tokenizer: str | None = None  # defaults to the student, else the teacher
    gradient_checkpointing: bool = False  # non-reentrant
    teacher_cache: str | None = None  # an adakd-cache-teacher directory: distil from it, no teacher model is built


@dataclass
class DataConfig:
    source: str = ""  # local .jsonl/.json/.parquet file, or a hub dataset name when online
    format: DataFormat = DataFormat.AUTO  # the record layout
    split: str = "train"  # the split of a hub dataset (a local file is its one split)
    max_prompt_len: int = 256  # longer prompts are cut from the left
    max_len: int = 512  # prompt + response, cut from the right
    eval_source: str | None = None  # held-out data for eval loss / KD divergence
    cache_dir: str | None = None  # datasets' cache; None means the datasets default


@dataclass
class LossConfig:
    divergence: Divergence = Divergence.RKL  # the base divergence d between teacher and student
    adakd: bool = True  # master switch; latf / idts pick the parts for ablations
    latf: bool = True  # LATF: train on the top-r hardest tokens only
    idts: bool = True  # IDTS: a temperature per token from its difficulty
    indicator: Indicator = Indicator.HELLINGER  # the token difficulty score that LATF and IDTS read
    temperature: float = 1.0  # tau_base (and the fixed temperature without IDTS)
    # LATF ratio controller
    ratio_init: float = 1.0  # r before the first update; with warmup_frac > 0 the warm-up sets r = 1
    r_min: float = 0.1  # the floor of r
    ema_beta: float = 0.99  # EMA factor of the rank-averaged step loss
    eps: float = 0.05  # relative band: r moves when the EMA leaves ref * (1 +- eps)
    delta: float = 0.05  # r is multiplied by (1 + delta) on a rise, (1 - delta) on a fall
    warmup_frac: float = 0.05  # share of optimizer steps with r = 1, whose last EMA is the first reference
    # IDTS
    c: float = 0.5  # strength: tau_i = tau_base * exp(-c * tanh(log(s_i / median)))
    inverse_sign: bool = True  # True: hard tokens get a LOW temperature (the method); False is the ablation
    idts_grad: IdtsGrad = IdtsGrad.DETACHED  # through: the authors' code's gradient via tau (no-op without IDTS)
    idts_weight: IdtsWeight = IdtsWeight.TAU2  # per-token weight with IDTS on (without IDTS: temperature^2 as before)
    median_pool: MedianPool = MedianPool.SELECTED  # the median's pool (matters with LATF and IDTS both on)
    # divergence parameters
    jsd_beta: float = 0.5  # jsd: the mixture weight
    skew_lambda: float = 0.1  # sfkl / srkl: the skew
    ab_alpha: float = 0.2  # ab: alpha (non-zero)
    ab_beta: float = 0.7  # ab: beta (non-zero, alpha + beta non-zero)
    # mixing and memory
    kd_ratio: float = 1.0  # total = kd_ratio * KD + (1 - kd_ratio) * CE; 1.0 is pure KD as in the paper
    chunk_size: int = 0  # tokens per fp32 [chunk, V] working set; 0 = auto (about 2**20 logits per chunk)
    fused_head: FusedHead = FusedHead.AUTO  # logits made chunk by chunk from hidden states: no [T, V] tensor
    # eager by default: on CPU a first compile costs ~20-60 s per process per kernel (every rank, every launch), which
    # a short run or a CI test would not expect; `auto` opts in (docs/benchmarks-compiled.md has the trade-off)
    kernel: LossKernel = LossKernel.EAGER

    @property
    def use_latf(self) -> bool:
        return self.adakd and self.latf

    @property
    def use_idts(self) -> bool:
        return self.adakd and self.idts

    def problems(self) -> list[str]:
        """Combinations the loss cannot compute, one phrase each (collected by RunConfig.validate and AdaKDLoss)."""
        out = []
        if self.use_idts and self.idts_grad == IdtsGrad.THROUGH and self.indicator != Indicator.HELLINGER:
            out.append(
                f"loss.idts_grad through needs loss.indicator hellinger (the authors' score, whose gradient the loss "
                f"implements), got loss.indicator {getattr(self.indicator, 'value', self.indicator)}"
            )
        return out


@dataclass
class TrainConfig:
    lr: float = 1e-4  # peak learning rate (AdamW)
    schedule: Schedule = Schedule.COSINE  # the lr schedule after the warm-up
    warmup_ratio: float = 0.03  # of total optimizer steps, for the lr
    min_lr_ratio: float = 0.1  # cosine ends at min_lr_ratio * lr
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # gradient-norm clipping; 0 = none
    epochs: int = 1  # passes over data.source
    max_steps: int = -1  # > 0 overrides epochs
    micro_batch: int = 4  # per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    seed: int = 42  # data order, initialisation and every seeded draw (the same on every rank)
    dtype: DType = DType.FP32  # training precision
    eval_interval: int = 0  # optimizer steps between held-out evals (data.eval_source); 0 = only at the end
    max_bad_steps: int = 5  # consecutive non-finite (skipped) steps before the run aborts


@dataclass
class PolicyConfig:
    """Where each step's responses come from (adakd_ds/engine/policy/data_policy.py)."""

    data_policy: DataPolicy = DataPolicy.DATASET  # where a step's responses come from
    gkd_alpha: float = 0.5  # gkd: probability per optimizer step of training on the student's own samples
    capacity: int = 1000  # distillm: replay buffer size, sequences per rank
    init_threshold: float = 0.0  # distillm: phi at the start
    threshold_step: float = 0.1  # distillm: phi's rise when the validation loss rose by loss_eps
    loss_eps: float = 0.1  # distillm: rise of the validation loss since the last phi rise that raises phi
    val_metric: ValMetric = ValMetric.CE  # distillm: which held-out number is its validation loss

    def problems(self, mode: Mode, eval_source: str | None, eval_interval: int) -> list[str]:
        """Settings that cannot work, one phrase each (collected by RunConfig.validate)."""
        out = []
        if not 0.0 <= self.gkd_alpha <= 1.0:
            out.append(f"policy.gkd_alpha must be in [0, 1], got {self.gkd_alpha}")
        if self.capacity < 1:
            out.append(f"policy.capacity must be >= 1 sequence, got {self.capacity}")
        if not 0.0 <= self.init_threshold <= 1.0:
            out.append(f"policy.init_threshold must be in [0, 1], got {self.init_threshold}")
        if self.data_policy is not DataPolicy.DATASET and mode is not Mode.DISTILL:
            out.append(f"policy.data_policy {self.data_policy.value} needs mode=distill")
        if self.data_policy is DataPolicy.DISTILLM and not eval_source:
            out.append("policy.data_policy distillm needs data.eval_source (its threshold follows the held-out loss)")
        if self.data_policy is DataPolicy.DISTILLM and eval_interval < 1:
            out.append("policy.data_policy distillm needs train.eval_interval >= 1")
        return out


@dataclass
class OutputConfig:
    dir: str = "runs/adakd"  # checkpoints, export, TensorBoard, history.jsonl and config.yaml go here
    log_interval: int = 10  # optimizer steps between TensorBoard writes
    save_interval: int = 0  # optimizer steps between checkpoints; 0 = only at the end
    keep_last: int = 2  # complete checkpoints kept by rotation
    export: bool = True  # write a consolidated HF model at the end
    tensorboard: bool = True  # write TensorBoard scalars and histograms


@dataclass
class DeepSpeedConfig:
    student: str = "ds_configs/zero3.json"  # the student's DeepSpeed JSON (ds_configs/)
    teacher: str | None = None  # None: derived from the student's (stage 3, no optimizer)


@dataclass
class RunConfig:
    mode: Mode = Mode.DISTILL  # what the run trains
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    resume: str = "auto"  # auto | none | a checkpoint path
    resume_force: bool = False  # continue a checkpoint although the config changed what the run is

    def validate(self) -> None:
        """Reject settings that would fail late or train the wrong thing."""
        problems = []
        if self.mode is Mode.DISTILL and not (self.model.teacher or self.model.teacher_cache):
            problems.append("model.teacher is required for mode=distill (or model.teacher_cache, a cached one)")
        if self.model.teacher and self.model.teacher_cache:
            problems.append("set model.teacher (a live teacher) or model.teacher_cache (a cached one), not both")
        if self.model.teacher_cache and self.policy.data_policy is not DataPolicy.DATASET:
            problems.append(
                f"policy.data_policy {self.policy.data_policy.value} needs the live teacher on the student's own "
                "samples; model.teacher_cache holds the dataset's responses only (use data_policy dataset)"
            )
        if self.model.teacher_cache and self.loss.idts_grad is IdtsGrad.THROUGH:
            problems.append("loss.idts_grad through is not supported with model.teacher_cache (use detached)")
        if not (self.model.student or self.model.student_config):
            problems.append("set model.student (a model to load) or model.student_config (to build one)")
        if not self.data.source:
            problems.append("data.source is required")
        if not 0.0 <= self.loss.kd_ratio <= 1.0:
            problems.append(f"loss.kd_ratio must be in [0, 1], got {self.loss.kd_ratio}")
        if not 0.0 < self.loss.r_min <= 1.0:
            problems.append(f"loss.r_min must be in (0, 1], got {self.loss.r_min}")
        if not self.loss.r_min <= self.loss.ratio_init <= 1.0:
            problems.append(f"loss.ratio_init must be in [loss.r_min, 1], got {self.loss.ratio_init}")
        for name in ("micro_batch", "grad_accum", "epochs"):
            if getattr(self.train, name) < 1:
                problems.append(f"train.{name} must be >= 1, got {getattr(self.train, name)}")
        for name in ("jsd_beta", "skew_lambda"):
            if not 0.0 < getattr(self.loss, name) < 1.0:
                problems.append(f"loss.{name} must lie strictly in (0, 1), got {getattr(self.loss, name)}")
        if self.loss.ab_alpha == 0 or self.loss.ab_beta == 0 or self.loss.ab_alpha + self.loss.ab_beta == 0:
            problems.append("loss.ab_alpha, loss.ab_beta and their sum must be non-zero")
        if self.loss.chunk_size < 0:
            problems.append(f"loss.chunk_size must be >= 0 (0 = auto), got {self.loss.chunk_size}")
        if self.data.max_prompt_len >= self.data.max_len:
            problems.append("data.max_prompt_len must be smaller than data.max_len")
        if self.train.eval_interval < 0:
            problems.append(f"train.eval_interval must be >= 0, got {self.train.eval_interval}")
        problems += self.loss.problems()
        problems += self.policy.problems(self.mode, self.data.eval_source, self.train.eval_interval)
        problems = ranges_first(self, problems)
        if problems:
            raise ValueError("invalid config: " + "; ".join(problems))
