"""The trainer's entry point: DataConfig + tokenizer -> a checked, tokenised, cached datasets.Dataset.

Under several ranks, let rank 0 build it first and the others after a barrier: they then all read the same cache
file instead of racing to write it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import datasets

from adakd_ds.config.schema import DataConfig, DataFormat
from adakd_ds.data.errors import DataError
from adakd_ds.data.source import load_source
from adakd_ds.data.tokenize import tokenize_dataset

logger = logging.getLogger(__name__)


@dataclass
class TokenizedData:
    dataset: datasets.Dataset  # columns input_ids, labels (python lists; collate makes tensors)
    format: DataFormat  # the resolved format (never AUTO)
    num_records: int  # records in the source split
    num_dropped: int  # records dropped for having no response token left after truncation


def load_and_tokenize(
    data_cfg: DataConfig, tokenizer: Any, split: str | None = None, source: str | None = None
) -> TokenizedData:
    """Like build_dataset, but also says how many records there were and how many were dropped."""
    source = source or data_cfg.source
    split = split or data_cfg.split
    raw = load_source(source, DataFormat(data_cfg.format), split, data_cfg.cache_dir)
    tokenized = tokenize_dataset(
        raw.dataset, raw.format, tokenizer, data_cfg.max_prompt_len, data_cfg.max_len, raw.locate
    )
    dropped = len(raw.dataset) - len(tokenized)
    if len(tokenized) == 0:
        raise DataError(
            f"{source}: no samples left: all {len(raw.dataset)} records have no response token after truncation "
            f"(max_prompt_len={data_cfg.max_prompt_len}, max_len={data_cfg.max_len})"
        )
    if dropped:
        logger.warning(
            "%s: dropped %d of %d records with no response token left after truncation (max_prompt_len=%d, max_len=%d)",
            source,
            dropped,
            len(raw.dataset),
            data_cfg.max_prompt_len,
            data_cfg.max_len,
        )
    return TokenizedData(tokenized, raw.format, len(raw.dataset), dropped)


def build_dataset(
    data_cfg: DataConfig, tokenizer: Any, split: str | None = None, source: str | None = None
) -> datasets.Dataset:
    """Load, check and tokenise `source` (default data_cfg.source) split `split` (default data_cfg.split).

    For the held-out set pass source=data_cfg.eval_source. Raises DataError (one line naming file and line/record)
    on bad input, before any training starts.
    """
    return load_and_tokenize(data_cfg, tokenizer, split=split, source=source).dataset
