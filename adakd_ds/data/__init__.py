"""Training data: load and check records, tokenise once (cached), order them globally, collate micro-batches. May import config only."""

from adakd_ds.data.collate import Collator, collate_samples, pad_token_id
from adakd_ds.data.dataset import TokenizedData, build_dataset, load_and_tokenize
from adakd_ds.data.errors import DataError
from adakd_ds.data.formats import check_record, detect_format, render_example, render_prompt
from adakd_ds.data.sampler import GlobalBatchSampler, epoch_seed
from adakd_ds.data.source import dataset_fingerprint, load_source
from adakd_ds.data.tokenize import IGNORE_INDEX, encode_prompts, tokenizer_fingerprint

__all__ = [
    "IGNORE_INDEX",
    "Collator",
    "DataError",
    "GlobalBatchSampler",
    "TokenizedData",
    "build_dataset",
    "check_record",
    "collate_samples",
    "dataset_fingerprint",
    "detect_format",
    "encode_prompts",
    "epoch_seed",
    "load_and_tokenize",
    "load_source",
    "pad_token_id",
    "render_example",
    "render_prompt",
    "tokenizer_fingerprint",
]
