"""What a user sees while a run starts and while it generates: one line per setup stage, and a generation bar.

Why: loading the tokenizer, the data, the student and the teacher, and DeepSpeed's setup of both, take a minute or
more on a real model, and generating for a few hundred prompts takes minutes. Without output a user cannot tell a
slow start from a hang. Everything here prints on rank 0 only (the other ranks pass enabled=False).
"""

from __future__ import annotations

import enum
import sys
import time
from typing import Any


class Stage(str, enum.Enum):
    TOKENIZER = "tokenizer"
    DATA = "data"
    STUDENT = "student"
    TEACHER = "teacher"
    RESUME = "resume"


class SetupStages:
    """Prints `<prefix>: <stage> ready in <s> s (<detail>)` per finished stage, timed from the previous one."""

    def __init__(self, enabled: bool, prefix: str = "setup") -> None:
        self.enabled = enabled
        self.prefix = prefix
        self._t = time.perf_counter()

    def done(self, stage: Stage, detail: str = "") -> None:
        now = time.perf_counter()
        extra = f" ({detail})" if detail else ""
        self.note(f"{stage.value} ready in {now - self._t:.1f} s{extra}")
        self._t = now

    def note(self, message: str | None) -> None:
        if self.enabled and message:
            print(f"{self.prefix}: {message}", flush=True)


class GenerationProgress:
    """A tqdm bar over this rank's prompts x seeds, with generated tokens/s; tqdm adds the ETA."""

    def __init__(self, total: int, enabled: bool, desc: str = "generating") -> None:
        self.bar: Any = None
        self.tokens = 0
        self._t0 = time.perf_counter()
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="prompt", file=sys.stderr, dynamic_ncols=True)

    def update(self, prompts: int, tokens: int) -> None:
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(prompts)
            rate = self.tokens / max(time.perf_counter() - self._t0, 1e-9)
            self.bar.set_postfix(tok_s=f"{rate:.0f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
