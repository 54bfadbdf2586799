"""The rows of the experiment grid: a base divergence on the dataset's responses, or an on/off-policy family.

Why a separate axis value and not a divergence: the paper's Table 1 has five method families, and two of them (GKD,
DistiLLM) differ from the others in where the responses come from, not only in the loss. A grid row names one
method; the variant (base, +AdaKD, ...) applies on top of it exactly as it does for a plain divergence.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from adakd_ds.config.schema import DataPolicy, Divergence

# every divergence by its own name, plus the two families that train on student-generated responses
Method = enum.Enum(  # type: ignore[misc]
    "Method",
    {**{d.name: d.value for d in Divergence}, "GKD": "gkd", "DISTILLM": "distillm"},
    type=str,
)
METHOD_DIVERGENCE: dict[str, Divergence] = {
    "gkd": Divergence.RKL,  # the AdaKD paper's GKD runs (TRL's default would be jsd with beta 0.5)
    "distillm": Divergence.SRKL,  # DistiLLM's skewed reverse KL, lambda 0.1 (loss.skew_lambda)
}
DISTILLM_EVAL_INTERVAL = 25  # steps between held-out evals when the base config sets none


def method_fields(method: Any, template: dict[str, Any], heldout: str | Path | None) -> dict[str, dict[str, Any]]:
    """The run-config sections a grid row sets; a plain divergence sets only loss.divergence (so old cells' saved
    configs stay the same). distillm also needs the held-out file its threshold follows."""
    value = Method(method).value
    if value not in METHOD_DIVERGENCE:
        return {"loss": {"divergence": value}}
    fields: dict[str, dict[str, Any]] = {
        "loss": {"divergence": METHOD_DIVERGENCE[value].value},
        "policy": {"data_policy": DataPolicy(value).value},
    }
    if value == DataPolicy.DISTILLM.value:
        source = template.get("data", {}).get("eval_source") or heldout
        if not source:
            raise ValueError("the distillm rows need held-out data: set data.eval_source in the base config")
        interval = template.get("train", {}).get("eval_interval") or DISTILLM_EVAL_INTERVAL
        fields["data"] = {"eval_source": str(source)}
        fields["train"] = {"eval_interval": interval}
    return fields
