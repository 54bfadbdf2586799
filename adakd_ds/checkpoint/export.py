"""Consolidate a ZeRO-3 student into a plain Hugging Face model directory (model.safetensors + config + tokenizer).

Two sources: a live engine at the end of training (its working-precision params, gathered layer by layer), or
a saved ZeRO checkpoint (its fp32 master weights, merged offline in one process, no process group needed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

import torch

from adakd_ds.checkpoint.generation_config import write_generation_config

EXPORT_DTYPES: dict[str, torch.dtype | None] = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16}
_CONFIG_FILES = ("config.json",)
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


def _is_engine(obj: Any) -> bool:
    from deepspeed.runtime.engine import DeepSpeedEngine

    return isinstance(obj, DeepSpeedEngine)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return state
    done: dict[int, torch.Tensor] = {}  # keep tied tensors tied after the cast
    out = {}
    for name, t in state.items():
        if t.is_floating_point():
            out[name] = done.setdefault(id(t), t.to(dtype))
        else:
            out[name] = t
    return out


def _state_from_engine(engine: Any) -> dict[str, torch.Tensor] | None:
    """Full state dict on rank 0, None elsewhere; a collective: every rank must call it."""
    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict() if _rank() == 0 else None


def _state_from_checkpoint(checkpoint_dir: str, tag: str | None) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"checkpoint directory not found: {checkpoint_dir}")
    tag = tag or read_latest_tag(checkpoint_dir)
    if not os.path.isdir(os.path.join(checkpoint_dir, tag)):
        raise FileNotFoundError(f"{checkpoint_dir}: no checkpoint with tag {tag!r}")
    return get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=tag)


def read_latest_tag(checkpoint_dir: str) -> str:
    path = os.path.join(checkpoint_dir, "latest")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{checkpoint_dir}: no 'latest' file; pass --tag")
    with open(path, encoding="utf-8") as fh:
        return fh.read().strip()


def write_hf_metadata(out_dir: str, model_config_src: str, tokenizer: Any, dtype: torch.dtype | None) -> None:
    """config.json (dtype set to the weights' dtype so from_pretrained's default keeps it), generation_config.json
    (the student's, with the tokenizer's EOS and pad), tokenizer files."""
    from transformers import AutoConfig, AutoTokenizer

    os.makedirs(out_dir, exist_ok=True)
    config = AutoConfig.from_pretrained(model_config_src)
    if dtype is not None:
        config.dtype = dtype
    config.save_pretrained(out_dir)
    src_dir = model_config_src if os.path.isdir(model_config_src) else os.path.dirname(model_config_src)
    if isinstance(tokenizer, str):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    write_generation_config(out_dir, config, src_dir, tokenizer)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def _write(state: dict[str, torch.Tensor], out_dir: str, model_config_src: str, tokenizer: Any) -> None:
    """Write into a sibling temp dir, then swap it in, so a crash never leaves a half model at out_dir."""
    from huggingface_hub import save_torch_state_dict

    out_dir = os.path.abspath(out_dir)
    tmp = f"{out_dir}.tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    float_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    dtype = float_dtypes.pop() if len(float_dtypes) == 1 else None
    save_torch_state_dict(state, tmp, metadata={"format": "pt"})  # drops duplicate names of tied tensors
    write_hf_metadata(tmp, model_config_src, tokenizer, dtype)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def export_hf(
    engine_or_checkpoint_dir: Any,
    out_dir: str,
    model_config_src: str,
    tokenizer: Any = None,
    *,
    tag: str | None = None,
    dtype: torch.dtype | None = None,
) -> str:
    """Write a from_pretrained-loadable model to out_dir; returns out_dir.

    A DeepSpeedEngine: every rank must call (the gather is a collective); rank 0 writes; ends with a barrier.
    A checkpoint directory (holding `latest` / the tag folder): one process, no process group needed.
    `tokenizer` is a tokenizer object, a path, or None (no tokenizer files); `dtype` None keeps the source dtype.
    """
    if _is_engine(engine_or_checkpoint_dir):
        state = _state_from_engine(engine_or_checkpoint_dir)
        if state is not None:
            _write(_cast(state, dtype), out_dir, model_config_src, tokenizer)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        return out_dir
    if not isinstance(engine_or_checkpoint_dir, (str, os.PathLike)):
        raise TypeError(
            f"export_hf needs a DeepSpeedEngine or a checkpoint directory, got {type(engine_or_checkpoint_dir)}"
        )
    state = _state_from_checkpoint(os.fspath(engine_or_checkpoint_dir), tag)
    _write(_cast(state, dtype), out_dir, model_config_src, tokenizer)
    return out_dir


def _find(dirs: list[str], names: tuple[str, ...]) -> str | None:
    for d in dirs:
        if any(os.path.isfile(os.path.join(d, n)) for n in names):
            return d
    return None


def export_main(argv: list[str] | None = None) -> int:
    """adakd-export --checkpoint DIR [--tag T] --out OUT [--config SRC] [--tokenizer SRC] [--dtype keep|fp32|bf16]."""
    parser = argparse.ArgumentParser(prog="adakd-export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="DeepSpeed checkpoint dir (holds 'latest' and tag folders)")
    parser.add_argument("--tag", default=None, help="checkpoint tag; default: the one named in DIR/latest")
    parser.add_argument("--out", required=True, help="output HF model directory (replaced if it exists)")
    parser.add_argument("--config", default=None, help="HF config dir or config.json; default: found next to DIR")
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir; default: found next to DIR, else none")
    parser.add_argument("--dtype", choices=sorted(EXPORT_DTYPES), default="keep", help="weights dtype (keep=fp32)")
    args = parser.parse_args(argv)
    try:
        ckpt = args.checkpoint
        tag = args.tag or read_latest_tag(ckpt)
        near = [os.path.join(ckpt, tag), ckpt, os.path.dirname(os.path.abspath(ckpt))]
        config_src = args.config or _find(near, _CONFIG_FILES)
        if config_src is None:
            raise FileNotFoundError(f"no config.json in {', '.join(near)}; pass --config")
        tok_src = args.tokenizer or _find(near, _TOKENIZER_FILES)
        if tok_src is None:
            print(f"adakd-export: no tokenizer files near {ckpt}; writing none (pass --tokenizer)", file=sys.stderr)
        export_hf(ckpt, args.out, config_src, tok_src, tag=tag, dtype=EXPORT_DTYPES[args.dtype])
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"adakd-export: {exc}", file=sys.stderr)
        return 2
    print(f"adakd-export: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(export_main())
