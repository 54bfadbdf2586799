"""Turn checked records into (input_ids, labels) once, and cache the result with datasets' own map cache.

Layout of one sample (labels UNSHIFTED, same length as input_ids; the trainer shifts):

    input_ids = [BOS] prompt_tokens  response_tokens EOS
    labels    = -100  -100 ... -100  response_tokens EOS

- BOS is added only when the tokenizer itself adds one (e.g. Llama, not Qwen), and not twice when a chat template
  already wrote it.
- A prompt longer than max_prompt_len is cut from the LEFT (the end of the prompt, next to the response, matters
  most), keeping the BOS; then the whole sample is cut to max_len from the RIGHT.
- A sample left with no response token is dropped and counted.

The map gets an explicit fingerprint from the raw data's fingerprint, the tokenizer's content and these settings,
so a second run finds the cache file instead of tokenising again (datasets cannot hash a closure reliably).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import datasets

from adakd_ds.config.schema import DataFormat
from adakd_ds.data.errors import DataError
from adakd_ds.data.formats import render_example

IGNORE_INDEX = -100
# Bump when the layout above changes, so old caches are not reused.
TOKENIZE_VERSION = 1
MAP_BATCH_SIZE = 256


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer itself puts a BOS in front of a text (the behaviour the model was trained with)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def _encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def truncate_prompt(ids: list[int], max_prompt_len: int, keep_first: bool) -> list[int]:
    """Cut from the left to max_prompt_len, keeping ids[0] when keep_first (the BOS)."""
    if len(ids) <= max_prompt_len:
        return ids
    if keep_first and max_prompt_len >= 2:
        return ids[:1] + ids[len(ids) - (max_prompt_len - 1) :]
    return ids[len(ids) - max_prompt_len :] if max_prompt_len > 0 else []


def _with_bos(ids: list[int], bos: int | None) -> list[int]:
    if bos is None or (ids and ids[0] == bos):
        return ids
    return [bos, *ids]


def _finish_prompt(ids: list[int], add_bos: int | None, bos: int | None, max_prompt_len: int) -> list[int]:
    ids = _with_bos(ids, add_bos)
    return truncate_prompt(ids, max_prompt_len, keep_first=bos is not None and ids[:1] == [bos])


def encode_prompts(tokenizer: Any, prompts: list[str], max_prompt_len: int) -> list[list[int]]:
    """Prompt ids exactly as training builds them (BOS, left truncation); evaluation uses this for generation."""
    add_bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
    return [
        _finish_prompt(ids, add_bos, tokenizer.bos_token_id, max_prompt_len)
        for ids in _encode_texts(tokenizer, prompts)
    ]


def build_sample(
    prompt_ids: Sequence[int], response_ids: Sequence[int], max_len: int
) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) cut to max_len from the right, or None when no response token is left."""
    input_ids = list(prompt_ids) + list(response_ids)
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
    input_ids, labels = input_ids[:max_len], labels[:max_len]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return input_ids, labels


def _with_eos(ids: list[int], eos: int | None) -> list[int]:
    if eos is None or (ids and ids[-1] == eos):
        return ids
    return [*ids, eos]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything in the tokenizer that changes the ids (vocab, merges, specials, chat template)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = {
        "class": type(tokenizer).__name__,
        "body": hashlib.sha256(body.encode()).hexdigest(),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "adds_bos": adds_bos(tokenizer),
        "chat_template": getattr(tokenizer, "chat_template", None) or "",
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def tokenize_dataset(
    raw: datasets.Dataset,
    fmt: DataFormat,
    tokenizer: Any,
    max_prompt_len: int,
    max_len: int,
    locate: Callable[[int], str],
) -> datasets.Dataset:
    """Tokenise every record (cached); the result has columns input_ids, labels and fewer rows if any were dropped."""
    if fmt is DataFormat.AUTO:
        raise DataError("tokenize_dataset needs a resolved data format, not 'auto'")
    eos = tokenizer.eos_token_id
    add_bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "raw": raw._fingerprint,
                "tokenizer": tokenizer_fingerprint(tokenizer),
                "format": fmt.value,
                "max_prompt_len": max_prompt_len,
                "max_len": max_len,
                "version": TOKENIZE_VERSION,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:32]

    def encode_batch(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[list[int]]]:
        prompts, responses = [], []
        for index, values in zip(indices, zip(*batch.values(), strict=True), strict=True):
            record = dict(zip(batch.keys(), values, strict=True))
            try:
                prompt, response = render_example(record, fmt, tokenizer)
            except DataError as exc:
                raise DataError(f"{locate(index)}: {exc}") from None
            prompts.append(prompt)
            responses.append(response)
        out: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        prompt_ids = _encode_texts(tokenizer, prompts)
        for p_ids, r_ids in zip(prompt_ids, _encode_texts(tokenizer, responses), strict=True):
            p_ids = _finish_prompt(p_ids, add_bos, tokenizer.bos_token_id, max_prompt_len)
            sample = build_sample(p_ids, _with_eos(r_ids, eos), max_len)
            if sample is not None:
                out["input_ids"].append(sample[0])
                out["labels"].append(sample[1])
        return out

    return raw.map(
        encode_batch,
        batched=True,
        batch_size=MAP_BATCH_SIZE,
        with_indices=True,
        remove_columns=raw.column_names,
        new_fingerprint=fingerprint,
        desc="tokenising",
    )
